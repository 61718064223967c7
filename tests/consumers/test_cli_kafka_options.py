"""The Kafka client options every Kafka command shares: precedence, no password flag, passwords never shown.

No service is needed: these fail (or print help) before any client connects.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from consumers.cli._kafka import KAFKA_OPTIONS, kafka_options
from consumers.cli._redact import Secrets
from producers.kafka_config import KafkaClientSettings
from support.cli import Ran, run_cli

SECRET = "Zq9-not-for-ps"
KAFKA_COMMANDS = [
    ["topics", "create"], ["topics", "alter"], ["topics", "delete"], ["topics", "list"], ["topics", "describe"],
    ["consume"], ["replay"], ["simulate"], ["status"], ["dlq", "list"], ["dlq", "show"], ["dlq", "redrive"],
    ["bench"], ["backfill"],
]


def cli(*args: str, **env: str) -> Ran:
    """``python -m consumers.cli`` with no Kafka or database settings but `env`."""
    return run_cli(*args, timeout=60, COLUMNS="200", **env)


def _probe_app() -> tuple[typer.Typer, list[KafkaClientSettings]]:
    """A one-command app that records the settings its options made."""
    got: list[KafkaClientSettings] = []
    app = typer.Typer()

    @app.command()
    @kafka_options
    def show(name: str = "x", kafka: KafkaClientSettings = KAFKA_OPTIONS) -> None:
        got.append(kafka)

    return app, got


def test_flags_win_over_the_file_which_wins_over_the_environment(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("KAFKA_")]:
        monkeypatch.delenv(name)
    config = tmp_path / "client.properties"
    config.write_text("bootstrap.servers=file:9093\nsasl.username=file-user\nsasl.mechanism=SCRAM-SHA-512\n")
    password = tmp_path / "pw"
    password.write_text(SECRET + "\n")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "env-user")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "env:9092")
    monkeypatch.setenv("KAFKA_SSL_CA_LOCATION", "/env/ca.pem")
    app, got = _probe_app()
    result = CliRunner().invoke(app, ["--kafka-config", str(config), "--sasl-username", "flag-user",
                                      "--sasl-password-file", str(password), "--no-ssl-endpoint-identification"])
    assert result.exit_code == 0, result.output
    [kafka] = got
    assert (kafka.bootstrap_servers, kafka.sasl_username, kafka.ssl_ca_location, kafka.security_protocol) == (
        "file:9093", "flag-user", "/env/ca.pem", "SASL_SSL")
    assert kafka.sasl_password.get_secret_value() == SECRET and kafka.ssl_endpoint_identification is False

    for name in ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_USERNAME", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_SSL_CA_LOCATION"):
        monkeypatch.delenv(name)
    assert CliRunner().invoke(app, []).exit_code == 0
    assert got[-1] == KafkaClientSettings(bootstrap_servers="127.0.0.1:19092")  # the CLI's default broker


@pytest.mark.parametrize("command", KAFKA_COMMANDS, ids=" ".join)
def test_help_offers_password_files_never_a_password(command: list[str]) -> None:
    ran = cli(*command, "--help", KAFKA_SASL_PASSWORD=SECRET, KAFKA_SASL_USERNAME="u")
    assert ran.returncode == 0, ran.stderr
    for option in ("--bootstrap-servers", "--kafka-config", "--security-protocol", "--sasl-mechanism",
                   "--sasl-username", "--sasl-password-file", "--ssl-ca-location", "--ssl-key-password-file"):
        assert option in ran.stdout, option
    assert "--sasl-password " not in ran.stdout and "--ssl-key-password " not in ran.stdout
    assert SECRET not in ran.stdout + ran.stderr


@pytest.mark.parametrize("command", [["consume"], ["replay", "--dry-run"]], ids=" ".join)
@pytest.mark.parametrize("key", ["sasl.password", "ssl.key.password"])
def test_a_password_as_a_librdkafka_property_is_refused(command: list[str], key: str) -> None:
    ran = cli(*command, "-d", "postgresql://u@127.0.0.1:1/db", "-X", f"{key}={SECRET}")
    assert ran.returncode == 2, ran.stderr
    assert f"{key} is refused on the command line, where ps shows it" in " ".join(ran.stderr.split())
    assert "set it in the environment or a file" in " ".join(ran.stderr.split())
    assert SECRET not in ran.stdout + ran.stderr


def test_inconsistent_settings_fail_before_connecting_with_one_line() -> None:
    ran = cli("topics", "list", "--sasl-username", "someone", KAFKA_SASL_PASSWORD=SECRET)
    lines = [line for line in ran.stderr.splitlines() if line.strip()]
    assert ran.returncode == 1 and len(lines) == 1, ran.stderr
    assert lines[0] == (
        "error: invalid Kafka settings: sasl_username (from --sasl-username), sasl_password (KAFKA_SASL_PASSWORD) set, "
        "but security_protocol is PLAINTEXT: SASL needs SASL_SSL (or SASL_PLAINTEXT)")


def test_an_unreadable_password_file_is_one_line(tmp_path: Path) -> None:
    ran = cli("dlq", "list", "--security-protocol", "SASL_SSL", "--sasl-mechanism", "PLAIN", "--sasl-username", "u",
              "--sasl-password-file", str(tmp_path / "missing"))
    assert ran.returncode == 1
    assert ran.stderr.strip() == (f"error: cannot read the password file {tmp_path / 'missing'} "
                                  "(--sasl-password-file): No such file or directory")


def test_a_kafka_password_is_masked_wherever_it_stands_alone() -> None:
    secrets = Secrets()
    secrets.add("ion")
    secrets.add(None)
    assert secrets.scrub("authentication failed (password ion) [ion], ion=ion") == (
        "authentication failed (password ***) [***], ***=***")


@pytest.mark.parametrize("line", [f"sasl.passwrd: {SECRET}==", f"sasl.passwrd {SECRET}", f"{SECRET}=="],
                         ids=["colon", "space", "bare"])
def test_a_bad_config_file_line_is_never_printed_even_with_debug(tmp_path: Path, line: str) -> None:
    config = tmp_path / "p.properties"
    config.write_text(f"bootstrap.servers=h:1\nsecurity.protocol=SASL_SSL\n\n\n{line}\n")
    for debug in ([], ["--debug"]):
        ran = cli(*debug, "topics", "list", "--kafka-config", str(config))
        assert ran.returncode != 0, ran.stderr
        assert f"{config}, line 5: not one of the known keys" in ran.stderr
        assert SECRET not in ran.stderr + ran.stdout
    ran = cli("topics", "list", KAFKA_CONFIG_FILE=str(config))
    assert "line 5: not one of the known keys" in ran.stderr and SECRET not in ran.stderr + ran.stdout


def test_the_drop_in_handler_never_quotes_a_bad_config_file_line(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from producers.errors import KafkaSettingsError
    from producers.handler import resolve_kafka

    config = tmp_path / "p.properties"
    config.write_text(f"bootstrap.servers=h:1\n{SECRET}==\n")
    monkeypatch.setenv("KAFKA_CONFIG_FILE", str(config))
    with pytest.raises(KafkaSettingsError, match="line 2: not one of the known keys") as e:
        resolve_kafka(None, None, None)
    assert SECRET not in str(e.value)


@pytest.mark.parametrize("key", ["sasl.oauthbearer.assertion.private.key.passphrase", "ssl.keystore.password",
                                 "sasl.oauthbearer.client.secret", "sasl.oauthbearer.assertion.private.key.pem",
                                 "ssl.key.pem", "some.future.Secret"])
def test_every_secret_librdkafka_property_is_refused_by_its_name(key: str) -> None:
    from consumers.cli._kafka import properties

    with pytest.raises(typer.BadParameter, match=f"^{key} is refused on the command line") as e:
        properties([f"{key}={SECRET}"])
    assert SECRET not in str(e.value)
    assert properties(["debug=all", "ssl.certificate.pem=x"]) == {"debug": "all", "ssl.certificate.pem": "x"}


def test_a_property_without_equals_is_not_quoted() -> None:
    from consumers.cli._kafka import properties

    with pytest.raises(typer.BadParameter, match="value 2 is not KEY=VALUE") as e:
        properties(["debug=all", SECRET])
    assert SECRET not in str(e.value)
