"""KafkaClientSettings: where each value comes from (flags > file > environment > defaults), passwords, messages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from confluent_kafka import KafkaError
from pydantic import ValidationError

from producers import KafkaClientSettings, KafkaSettingsError, ProducerSettings
from producers.kafka_config import SETTINGS, read_config_file, resolve

SECRET = "s3cret-Pa55"
SASL = {
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "KAFKA_SASL_USERNAME": "env-user",
    "KAFKA_SASL_PASSWORD": SECRET,
}


def _file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_each_field_from_the_first_source_that_has_it(tmp_path: Path) -> None:
    config = _file(tmp_path, "client.properties", (
        "# a comment\n! another\n\n"
        "bootstrap.servers = file:9093\n"
        "sasl.username=file-user\n"
        "ssl.ca.location=/file/ca.pem\n"
    ))
    env = {**SASL, "KAFKA_BOOTSTRAP_SERVERS": "env:9092", "KAFKA_SSL_CA_LOCATION": "/env/ca.pem",
           "KAFKA_CLIENT_ID": "env-id"}
    got = resolve(flags={"sasl_username": "flag-user"}, config_file=config, environ=env,
                  defaults={"bootstrap_servers": "default:1", "client_id": "default-id"})
    assert got.bootstrap_servers == "file:9093"           # file over environment and default
    assert got.sasl_username == "flag-user"               # flag over file and environment
    assert got.ssl_ca_location == "/file/ca.pem"          # file over environment
    assert got.client_id == "env-id"                      # environment over default
    assert got.security_protocol == "SASL_SSL" and got.sasl_mechanism == "SCRAM-SHA-512"
    assert got.sasl_password.get_secret_value() == SECRET


def test_the_config_file_may_be_named_by_the_environment(tmp_path: Path) -> None:
    config = _file(tmp_path, "c", "bootstrap.servers=file:9093\n")
    got = resolve(environ={"KAFKA_CONFIG_FILE": str(config), "KAFKA_BOOTSTRAP_SERVERS": "env:9092"})
    assert got.bootstrap_servers == "file:9093"
    other = _file(tmp_path, "d", "bootstrap.servers=flag-file:9094\n")
    assert resolve(config_file=other, environ={"KAFKA_CONFIG_FILE": str(config)}).bootstrap_servers == "flag-file:9094"


@pytest.mark.parametrize("text", [f"{SECRET}\n", f"{SECRET}\r\n", SECRET])
def test_passwords_from_files_lose_one_trailing_newline(tmp_path: Path, text: str) -> None:
    path = _file(tmp_path, "pw", text)
    env = {**SASL, "KAFKA_SASL_PASSWORD": ""}
    from_env_file = resolve(environ={**env, "KAFKA_SASL_PASSWORD_FILE": str(path), "KAFKA_BOOTSTRAP_SERVERS": "h:1"})
    from_flag = resolve(flags={"sasl_password_file": path}, environ={**env, "KAFKA_BOOTSTRAP_SERVERS": "h:1"})
    assert from_env_file.sasl_password.get_secret_value() == from_flag.sasl_password.get_secret_value() == SECRET


def test_every_password_is_heard_as_soon_as_it_is_read(tmp_path: Path) -> None:
    heard: list[str] = []
    key_pw = _file(tmp_path, "key", "key-pass\n")
    config = _file(tmp_path, "c", "sasl.password=from-file\n")
    resolve(config_file=config, flags={"ssl_key_password_file": key_pw},
            environ={**SASL, "KAFKA_BOOTSTRAP_SERVERS": "h:1", "KAFKA_SSL_KEY_LOCATION": "/k.pem"},
            on_secret=heard.append)
    assert heard == [SECRET, "from-file", "key-pass"]


def test_a_password_flag_is_refused() -> None:
    with pytest.raises(KafkaSettingsError, match="sasl_password cannot be a flag .*--sasl-password-file") as e:
        resolve(flags={"sasl_password": SECRET}, environ={"KAFKA_BOOTSTRAP_SERVERS": "h:1"})
    assert SECRET not in str(e.value)


@pytest.mark.parametrize(("environ", "message"), [
    ({"KAFKA_SASL_PASSWORD": SECRET, "KAFKA_SASL_PASSWORD_FILE": "/x"},
     "both KAFKA_SASL_PASSWORD and KAFKA_SASL_PASSWORD_FILE are set"),
    ({"KAFKA_SASL_PASSWORD": "", "KAFKA_SASL_PASSWORD_FILE": "/does/not/exist"},
     "cannot read the password file /does/not/exist \\(KAFKA_SASL_PASSWORD_FILE\\): No such file"),
])
def test_password_sources_that_do_not_add_up(environ: dict[str, str], message: str) -> None:
    with pytest.raises(KafkaSettingsError, match=message) as e:
        resolve(environ={**SASL, **environ, "KAFKA_BOOTSTRAP_SERVERS": "h:1"})
    assert SECRET not in str(e.value)


def test_a_password_file_variable_holding_a_password_is_not_shown() -> None:
    env = {**SASL, "KAFKA_SASL_PASSWORD": "", "KAFKA_BOOTSTRAP_SERVERS": "h:1"}
    with pytest.raises(KafkaSettingsError, match=r"^the value of KAFKA_SASL_PASSWORD_FILE is not a readable file "
                                                 r"\(No such file or directory; not shown") as e:
        resolve(environ={**env, "KAFKA_SASL_PASSWORD_FILE": "Zsecret9"})
    assert "Zsecret9" not in str(e.value)
    with pytest.raises(KafkaSettingsError, match=r"the value of --sasl-password-file is not a readable file"):
        resolve(flags={"sasl_password_file": "Zsecret9"}, environ=env)


def test_an_empty_password_file_is_an_error(tmp_path: Path) -> None:
    path = _file(tmp_path, "pw", "\n")
    with pytest.raises(KafkaSettingsError, match=f"the password file {path} \\(--sasl-password-file\\) is empty"):
        resolve(flags={"sasl_password_file": path}, environ={"KAFKA_BOOTSTRAP_SERVERS": "h:1"})


@pytest.mark.parametrize(("text", "message"), [
    (f"{SECRET}==\n", r"line 1: not one of the known keys \(bootstrap.servers, .*\) followed by .* -X KEY=VALUE"),
    (f"\n{SECRET}\n", r"line 2: not one of the known keys"),
    (f"\nsasl.jaas.config={SECRET}\n", r"line 2: not one of the known keys"),
    (f"sasl.pasword: {SECRET}\n", r"line 1: not one of the known keys"),
    ("sasl.username=a\nsasl.username=b\n", r"line 2: sasl.username is given twice"),
])
def test_config_file_errors_name_the_line_never_its_text(tmp_path: Path, text: str, message: str) -> None:
    path = _file(tmp_path, "c", text)
    with pytest.raises(KafkaSettingsError, match=message) as e:
        read_config_file(path)
    assert SECRET not in str(e.value)


@pytest.mark.parametrize("line", [f"sasl.password: {SECRET}", f"sasl.password {SECRET}", f"sasl.password={SECRET}",
                                  f"  sasl.password \t=  {SECRET}  ", f"sasl.password:{SECRET}"])
def test_config_file_lines_are_java_properties(tmp_path: Path, line: str) -> None:
    got = read_config_file(_file(tmp_path, "c", f"bootstrap.servers: h:1\n{line}\n"))
    assert got == {"bootstrap_servers": "h:1", "sasl_password": SECRET}


def test_config_file_keys_are_librdkafkas(tmp_path: Path) -> None:
    lines = [f"{s.key}=x" for s in SETTINGS if s.field != "sasl_mechanism"] + ["sasl.mechanisms=PLAIN", "# x=y"]
    got = read_config_file(_file(tmp_path, "c", "\n".join(lines)))
    assert set(got) == {s.field for s in SETTINGS}
    assert got["sasl_mechanism"] == "PLAIN"


@pytest.mark.parametrize(("environ", "message"), [
    ({"KAFKA_SASL_USERNAME": "u"},
     "sasl_username \\(KAFKA_SASL_USERNAME\\) set, but security_protocol is PLAINTEXT: SASL needs SASL_SSL"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "security_protocol SASL_SSL needs sasl_mechanism"),
    ({"KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "KAFKA_SASL_MECHANISM": "scram-sha-256", "KAFKA_SASL_USERNAME": "u"},
     "sasl_mechanism SCRAM-SHA-256 needs sasl_password \\(KAFKA_SASL_PASSWORD\\)"),
    ({"KAFKA_SSL_CA_LOCATION": "/ca.pem"}, "ssl_ca_location .* set, but security_protocol is PLAINTEXT: TLS needs"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SLL"},
     "security_protocol from KAFKA_SECURITY_PROTOCOL: Input should be 'PLAINTEXT', 'SSL'"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_ENDPOINT_IDENTIFICATION": "maybe"},
     "ssl_endpoint_identification from KAFKA_SSL_ENDPOINT_IDENTIFICATION: expected true or false"),
])
def test_inconsistent_settings_are_one_line_naming_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(KafkaSettingsError, match="^invalid Kafka settings: .*" + message) as e:
        resolve(environ={"KAFKA_BOOTSTRAP_SERVERS": "h:1", **environ})
    assert "\n" not in str(e.value)


def test_inconsistent_settings_name_the_file_or_flag_they_came_from(tmp_path: Path) -> None:
    config = _file(tmp_path, "c", "sasl.username=u\n")
    with pytest.raises(KafkaSettingsError, match=rf"sasl_username \(from sasl.username in {config}\) set, but "):
        resolve(config_file=config, environ={"KAFKA_BOOTSTRAP_SERVERS": "h:1"})
    with pytest.raises(KafkaSettingsError, match=r"ssl_ca_location \(from --ssl-ca-location\) set, but "):
        resolve(flags={"ssl_ca_location": "/ca.pem"}, environ={"KAFKA_BOOTSTRAP_SERVERS": "h:1"})


def test_validation_errors_never_quote_a_password() -> None:
    for build in (lambda: KafkaClientSettings(bootstrap_servers="h:1", sasl_password=SECRET),
                  lambda: ProducerSettings(kafka={"bootstrap_servers": "", "sasl_password": SECRET}),
                  lambda: ProducerSettings(bootstrap_servers="h:1", kafka={"sasl_password": SECRET})):
        with pytest.raises(ValidationError) as e:
            build()
        assert SECRET not in str(e.value)


def test_librdkafka_properties_and_what_is_shown() -> None:
    s = resolve(environ={**SASL, "KAFKA_BOOTSTRAP_SERVERS": "h:1", "KAFKA_SSL_CA_LOCATION": "/ca.pem",
                         "KAFKA_SSL_ENDPOINT_IDENTIFICATION": "none"})
    assert s.librdkafka() == {
        "bootstrap.servers": "h:1", "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "env-user", "sasl.password": SECRET, "ssl.ca.location": "/ca.pem",
        "ssl.endpoint.identification.algorithm": "none", "client.id": "society-ingest",
    }
    assert s.describe() == 'h:1 (SASL_SSL, SCRAM-SHA-512, user "env-user")'
    assert SECRET not in repr(s) and SECRET not in str(s) and s.secrets() == [SECRET]
    assert KafkaClientSettings(bootstrap_servers="h:1").librdkafka() == {
        "bootstrap.servers": "h:1", "security.protocol": "PLAINTEXT", "client.id": "society-ingest"}


def test_bootstrap_servers_is_short_for_kafka_settings() -> None:
    short = ProducerSettings(bootstrap_servers="h:1")
    assert short.kafka == KafkaClientSettings(bootstrap_servers="h:1")
    assert short.librdkafka()["client.id"] == "society-ingest-producer"
    with pytest.raises(ValidationError, match="pass kafka= or bootstrap_servers=, not both"):
        ProducerSettings(bootstrap_servers="h:1", kafka=short.kafka)


def test_a_refusal_names_the_user_never_the_password() -> None:
    s = resolve(environ={**SASL, "KAFKA_BOOTSTRAP_SERVERS": "h:1"})
    auth = KafkaError(KafkaError._AUTHENTICATION, "sasl_ssl://h:1/bootstrap: SASL authentication error: Authentication "
                      "failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 "
                      "(after 322ms in state AUTH_REQ)")
    assert s.refused(auth) == (
        'Kafka at h:1 (SASL_SSL, SCRAM-SHA-512, user "env-user"): authentication failed (SASL authentication error: '
        "Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512): "
        "check KAFKA_SASL_USERNAME / the password "
        "(--sasl-password-file / KAFKA_SASL_PASSWORD / KAFKA_SASL_PASSWORD_FILE / sasl.password)")
    tls = KafkaError(KafkaError._SSL, "ssl://h:1/bootstrap: SSL handshake failed: certificate verify failed")
    assert s.refused(tls).startswith("Kafka at h:1 (SASL_SSL, SCRAM-SHA-512, user \"env-user\"): the TLS handshake "
                                     "failed (SSL handshake failed: certificate verify failed): check KAFKA_SSL_CA")
    assert s.refused(KafkaError(KafkaError._TRANSPORT, "down")) is None


def test_the_drop_in_handler_reads_what_the_cli_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from producers.handler import resolve_kafka

    for name in [n for n in os.environ if n.startswith("KAFKA_")]:
        monkeypatch.delenv(name)
    for name, value in {**SASL, "KAFKA_BOOTSTRAP_SERVERS": "env:9092"}.items():
        monkeypatch.setenv(name, value)
    got = resolve_kafka("kafka://url:9093/prefix", None, None)
    assert (got.bootstrap_servers, got.sasl_username, got.sasl_password.get_secret_value()) == (
        "url:9093", "env-user", SECRET)
    assert resolve_kafka(None, None, None).bootstrap_servers == "env:9092"
    monkeypatch.setenv("KAFKA_CONFIG_FILE", str(_file(tmp_path, "c", "bootstrap.servers=file:9094\n")))
    assert resolve_kafka(None, None, None).bootstrap_servers == "file:9094"   # the file over the environment
    assert resolve_kafka(None, None, "arg:9095").bootstrap_servers == "arg:9095"
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS")
    monkeypatch.setenv("KAFKA_CONFIG_FILE", str(_file(tmp_path, "d", "sasl.username=u\n")))
    with pytest.raises(KafkaSettingsError, match="no Kafka brokers: set --bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS"):
        resolve_kafka(None, None, None)
    monkeypatch.delenv("KAFKA_CONFIG_FILE")
    with pytest.raises(ValueError, match="no Kafka broker: pass bootstrap_servers="):
        resolve_kafka(None, None, None)
