"""One configuration for every Kafka client: where the brokers are, how to authenticate, the client id.

:class:`KafkaClientSettings` builds every client of the project: the embedded
producer, the worker's consumer and dead-letter producer, the admin client and
the clients of every CLI command. It is an explicit, frozen model; the library
never reads the environment. The command line and the drop-in handler collect
its values with :func:`resolve`, from (first wins):

1. flags (``--security-protocol`` …; no flag takes a password, only a password *file*),
2. a config file (``--kafka-config FILE`` or ``KAFKA_CONFIG_FILE``): ``key=value``
   (or ``key: value``, ``key value``) lines with librdkafka's property names, ``#``
   comments (see :func:`read_config_file`),
3. the environment (``KAFKA_SECURITY_PROTOCOL`` …, each name in :data:`SETTINGS`),
4. defaults.

Passwords are SecretStr. They come from the environment (``KAFKA_SASL_PASSWORD``),
a file named by ``KAFKA_SASL_PASSWORD_FILE`` or ``--sasl-password-file`` (its
content, one trailing newline dropped), or the config file; never from a
command line, where ``ps`` shows them. ``on_secret`` hears each one as soon as
it is read, so a caller can keep it out of everything it prints.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from producers.errors import KafkaSettingsError

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER"]
#: Mechanisms that authenticate with a user name and a password.
PASSWORD_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: The variable naming a config file (the flag is --kafka-config).
CONFIG_FILE_ENV = "KAFKA_CONFIG_FILE"
DEFAULT_CLIENT_ID = "society-ingest"


@dataclass(frozen=True, slots=True)
class Setting:
    """Where one field of KafkaClientSettings may come from."""

    field: str
    #: Environment variable; a password's file is named by ``<env>_FILE``.
    env: str
    #: Key in a config file: librdkafka's property name.
    key: str
    #: Command-line flag; a password has none, only ``file_flag``.
    flag: str | None
    secret: bool = False

    @property
    def file_env(self) -> str:
        return f"{self.env}_FILE"

    @property
    def file_flag(self) -> str:
        return "--" + self.field.replace("_", "-") + "-file"

    def names(self) -> str:
        """Every name of the setting, for messages: ``--flag / ENV / key``."""
        first = [self.file_flag, self.env, self.file_env] if self.secret else [self.flag, self.env]
        return " / ".join([*first, self.key])


SETTINGS: tuple[Setting, ...] = (
    Setting("bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS", "bootstrap.servers", "--bootstrap-servers"),
    Setting("security_protocol", "KAFKA_SECURITY_PROTOCOL", "security.protocol", "--security-protocol"),
    Setting("sasl_mechanism", "KAFKA_SASL_MECHANISM", "sasl.mechanism", "--sasl-mechanism"),
    Setting("sasl_username", "KAFKA_SASL_USERNAME", "sasl.username", "--sasl-username"),
    Setting("sasl_password", "KAFKA_SASL_PASSWORD", "sasl.password", None, secret=True),
    Setting("ssl_ca_location", "KAFKA_SSL_CA_LOCATION", "ssl.ca.location", "--ssl-ca-location"),
    Setting("ssl_certificate_location", "KAFKA_SSL_CERTIFICATE_LOCATION", "ssl.certificate.location",
            "--ssl-certificate-location"),
    Setting("ssl_key_location", "KAFKA_SSL_KEY_LOCATION", "ssl.key.location", "--ssl-key-location"),
    Setting("ssl_key_password", "KAFKA_SSL_KEY_PASSWORD", "ssl.key.password", None, secret=True),
    Setting("ssl_endpoint_identification", "KAFKA_SSL_ENDPOINT_IDENTIFICATION",
            "ssl.endpoint.identification.algorithm", "--ssl-endpoint-identification"),
    Setting("client_id", "KAFKA_CLIENT_ID", "client.id", "--client-id"),
)
BY_FIELD = {s.field: s for s in SETTINGS}
_BY_KEY = {s.key: s for s in SETTINGS} | {"sasl.mechanisms": BY_FIELD["sasl_mechanism"]}  # librdkafka's alias
_SASL_FIELDS = ("sasl_mechanism", "sasl_username", "sasl_password")
_TLS_FIELDS = ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location", "ssl_key_password")
_TRUE, _FALSE = {"true", "1", "yes", "on", "https"}, {"false", "0", "no", "off", "none"}


def _named(field: str) -> str:
    return f"{field} ({BY_FIELD[field].env})"


class KafkaClientSettings(BaseModel):
    """How every Kafka client of the project connects: brokers, security protocol, SASL, TLS, client id.

    Secrets are SecretStr: they show as ``**********`` in repr and logs and reach
    only librdkafka, through :meth:`librdkafka`. Validation errors never quote
    the input (pydantic's would print a password before it became a SecretStr).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    bootstrap_servers: str = Field(min_length=1)
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    #: CA certificate(s) (PEM) that signed the brokers' certificates; unset: the system's.
    ssl_ca_location: str | None = None
    #: Client certificate and key (PEM) for brokers that require TLS client authentication.
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None
    #: Check that a broker's certificate names the host connected to (off only for testing).
    ssl_endpoint_identification: bool = True
    #: Start of every client's client.id; each client adds its role (``-worker-<id>``, ``-dlq-<id>`` …).
    client_id: str = Field(default=DEFAULT_CLIENT_ID, min_length=1)

    @field_validator("security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("ssl_endpoint_identification", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> Any:
        if isinstance(value, str):
            word = value.strip().lower()
            if word in _TRUE | _FALSE:
                return word in _TRUE
            raise ValueError("expected true or false (https or none)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> KafkaClientSettings:
        protocol = self.security_protocol
        if not protocol.startswith("SASL_"):
            given = [_named(f) for f in _SASL_FIELDS if getattr(self, f) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} set, but security_protocol is {protocol}: "
                                 "SASL needs SASL_SSL (or SASL_PLAINTEXT)")
        elif self.sasl_mechanism is None:
            raise ValueError(f"security_protocol {protocol} needs {_named('sasl_mechanism')}, e.g. SCRAM-SHA-512")
        elif self.sasl_mechanism in PASSWORD_MECHANISMS:
            missing = [_named(f) for f in ("sasl_username", "sasl_password") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"sasl_mechanism {self.sasl_mechanism} needs {' and '.join(missing)}")
        if not protocol.endswith("SSL"):
            given = [_named(f) for f in _TLS_FIELDS if getattr(self, f) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} set, but security_protocol is {protocol}: "
                                 "TLS needs SSL or SASL_SSL")
        return self

    def librdkafka(self) -> dict[str, Any]:
        """The librdkafka properties of these settings (passwords in clear: for librdkafka only)."""
        conf: dict[str, Any] = {}
        for s in SETTINGS:
            value = getattr(self, s.field)
            if value is None or s.field == "ssl_endpoint_identification":
                continue
            conf[s.key] = value.get_secret_value() if isinstance(value, SecretStr) else value
        if self.security_protocol.endswith("SSL"):
            conf["ssl.endpoint.identification.algorithm"] = "https" if self.ssl_endpoint_identification else "none"
        return conf

    def describe(self) -> str:
        """The brokers and how this client meets them, for messages (never a password)."""
        how = [self.security_protocol] if self.security_protocol != "PLAINTEXT" else []
        if self.sasl_mechanism:
            how.append(self.sasl_mechanism)
        if self.sasl_username:
            how.append(f'user "{self.sasl_username}"')
        return self.bootstrap_servers + (f" ({', '.join(how)})" if how else "")

    def secrets(self) -> list[str]:
        """The passwords in these settings (for a caller that masks them in what it prints)."""
        return [s.get_secret_value() for s in (self.sasl_password, self.ssl_key_password) if s is not None]

    def refused(self, error: Any) -> str | None:
        """One line for a librdkafka error that means the brokers refused these settings, else None.

        A failed SASL authentication (wrong user or password, a mechanism the
        broker does not enable) or TLS handshake (an untrusted or mismatched
        certificate) is a configuration failure: retrying cannot fix it.
        """
        from confluent_kafka import KafkaError

        code = error.code()
        reason = _AFTER.sub("", _BROKER.sub("", error.str()))
        if code == KafkaError._AUTHENTICATION:
            return (f"Kafka at {self.describe()}: authentication failed ({reason}): check "
                    f"{BY_FIELD['sasl_username'].env} / the password ({BY_FIELD['sasl_password'].names()})")
        if code == KafkaError._SSL:
            return (f"Kafka at {self.describe()}: the TLS handshake failed ({reason}): check "
                    f"{BY_FIELD['ssl_ca_location'].env} (the CA that signed the brokers' certificates) and "
                    f"{BY_FIELD['security_protocol'].env}")
        return None

    def principal(self) -> str:
        """Who the brokers see, for messages: the SASL user, else the anonymous (or certificate) principal."""
        if self.sasl_username:
            return f'user "{self.sasl_username}"'
        if self.ssl_certificate_location:
            return "the principal of the client certificate"
        return "User:ANONYMOUS (no SASL user)"

    def denied(self, error: Any, *, group: str | None = None, topic: str | None = None) -> str | None:
        """One line for a librdkafka error that means the brokers' ACLs deny these settings, else None.

        Authorization fails the same way on every retry: the caller treats it as
        a configuration failure. `group` and `topic` name what was asked for.
        """
        from confluent_kafka import KafkaError

        what = {KafkaError.GROUP_AUTHORIZATION_FAILED: "group", KafkaError.TOPIC_AUTHORIZATION_FAILED: "topic",
                KafkaError.CLUSTER_AUTHORIZATION_FAILED: "the cluster",
                KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "its transactional id"}.get(error.code())
        if what is None:
            return None
        target = {"group": f"group {group}" if group else "its consumer group",
                  "topic": f"topic {topic}" if topic else "a topic"}.get(what, what)
        return (f"Kafka at {self.describe()}: {self.principal()} is not authorized for {target} "
                f"({error.name()}): check its ACLs")


# "sasl_ssl://127.0.0.1:19094/bootstrap: SASL authentication error: … (after 322ms in state AUTH_REQ)"
_BROKER = re.compile(r"^\w+://\S+: ")
_AFTER = re.compile(r"\s*\(after \d+ms in state \w+\)\s*$")


def as_client_settings(kafka: KafkaClientSettings | str) -> KafkaClientSettings:
    """`kafka` as settings: a bare ``host:port[,…]`` string means PLAINTEXT with the defaults."""
    return kafka if isinstance(kafka, KafkaClientSettings) else KafkaClientSettings(bootstrap_servers=kafka)


def bootstrap_shorthand(data: Any) -> Any:
    """For a model with a ``kafka`` field: ``bootstrap_servers="h:9092"`` stands for ``kafka={"bootstrap_servers": "h:9092"}``."""
    if isinstance(data, dict) and "bootstrap_servers" in data:
        data = dict(data)
        servers = data.pop("bootstrap_servers")
        if data.get("kafka") is not None:
            raise ValueError("pass kafka= or bootstrap_servers=, not both")
        data["kafka"] = {"bootstrap_servers": servers}
    return data


def read_secret_file(path: str | Path, source: str, on_secret: Callable[[str], None] | None = None) -> str:
    """The password in the file at `path` (named by `source` in errors): its text, one trailing newline dropped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or type(e).__name__
        if "/" not in str(path) and "\\" not in str(path):  # may be the password itself, set by mistake
            raise KafkaSettingsError(f"the value of {source} is not a readable file ({reason}; "
                                     "not shown: it may be a password)") from None
        raise KafkaSettingsError(f"cannot read the password file {path} ({source}): {reason}") from None
    secret = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
    if not secret:
        raise KafkaSettingsError(f"the password file {path} ({source}) is empty")
    if on_secret is not None:
        on_secret(secret)
    return secret


def read_environment(environ: Mapping[str, str], on_secret: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The settings set in `environ` (empty variables count as unset), passwords read from their files."""
    found: dict[str, Any] = {}
    for s in SETTINGS:
        value = environ.get(s.env) or None
        if s.secret:
            path = environ.get(s.file_env) or None
            if value is not None and path is not None:
                raise KafkaSettingsError(f"both {s.env} and {s.file_env} are set: keep one")
            if path is not None:
                value = read_secret_file(path, s.file_env, on_secret)
            elif value is not None and on_secret is not None:
                on_secret(value)
        if value is not None:
            found[s.field] = value
    return found


# A Java properties line: the key ends at the first '=', ':' or whitespace; one '=' or ':' may follow,
# with whitespace around it (``key=value``, ``key: value``, ``key value``).
_PROPERTY = re.compile(r"(?P<key>[^=:\s]*)\s*(?P<sep>[=:]?)\s*(?P<value>.*)")


def read_config_file(path: str | Path, on_secret: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The settings in a client config file: Java properties lines with librdkafka's names, ``#`` or ``!`` comments.

    A line is ``key=value``, ``key: value`` or ``key value`` (as Kafka's
    ``client.properties``; no escapes or continued lines). Keys: those of
    :data:`SETTINGS` (``bootstrap.servers``, ``security.protocol``,
    ``sasl.mechanism``, ``sasl.username``, ``sasl.password``, ``ssl.ca.location`` …).
    An unknown key, a key without a value or a key given twice is an error naming
    the line, never quoting its text (a line that is not a known key may be a
    password); only a known key is named. A password in the file is as safe as
    the file's permissions: make it readable by its owner only.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise KafkaSettingsError(f"cannot read the Kafka config file {path}: "
                                 f"{getattr(e, 'strerror', None) or e}") from None
    found: dict[str, Any] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        match = _PROPERTY.fullmatch(line)
        key, value = (match["key"], match["value"].strip()) if match else ("", "")
        setting = _BY_KEY.get(key)
        if setting is None:
            raise KafkaSettingsError(
                f"{path}, line {number}: not one of the known keys ({', '.join(s.key for s in SETTINGS)}) "
                "followed by '=', ':' or a space and its value (other librdkafka properties go in -X KEY=VALUE)")
        if setting.field in found:
            raise KafkaSettingsError(f"{path}, line {number}: {key} is given twice")
        if setting.secret and value and on_secret is not None:
            on_secret(value)
        if value:
            found[setting.field] = value
    return found


def read_flags(flags: Mapping[str, Any], on_secret: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Settings given as flags, by field name; a password only as ``<field>_file`` (a path)."""
    found: dict[str, Any] = {}
    for s in SETTINGS:
        if s.secret:
            if flags.get(s.field) is not None:
                raise KafkaSettingsError(f"{s.field} cannot be a flag (ps shows command lines): "
                                         f"use {s.file_flag}, {s.file_env} or {s.env}")
            path = flags.get(f"{s.field}_file")
            if path is not None:
                found[s.field] = read_secret_file(path, s.file_flag, on_secret)
        elif flags.get(s.field) is not None:
            found[s.field] = flags[s.field]
    return found


def _origin(layer: str, s: Setting, environ: Mapping[str, str]) -> str:
    """Where a value of `s` came from, for messages."""
    if layer == "environment":
        return s.file_env if s.secret and not environ.get(s.env) else s.env
    if layer == "flag":
        return s.file_flag if s.secret else str(s.flag)
    if layer == "default":
        return "the default"
    return f"{s.key} in {layer.removeprefix('file ')}"


def resolve(
    *,
    flags: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    on_secret: Callable[[str], None] | None = None,
) -> KafkaClientSettings:
    """Settings from flags, then a config file, then `environ`, then `defaults` (first wins, field by field).

    `config_file` None takes the file named by ``KAFKA_CONFIG_FILE`` in `environ`, if any.
    Raises KafkaSettingsError, one line naming where a bad value came from (never the value).
    """
    environ = environ or {}
    config_file = config_file or environ.get(CONFIG_FILE_ENV) or None
    layers: list[tuple[str, dict[str, Any]]] = [
        ("default", dict(defaults or {})),
        ("environment", read_environment(environ, on_secret)),
    ]
    if config_file is not None:
        layers.append((f"file {config_file}", read_config_file(config_file, on_secret)))
    layers.append(("flag", read_flags(flags or {}, on_secret)))
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for layer, values in layers:
        for field, value in values.items():
            merged[field] = value
            origin[field] = _origin(layer, BY_FIELD[field], environ)
    if "bootstrap_servers" not in merged:
        raise KafkaSettingsError(f"no Kafka brokers: set {BY_FIELD['bootstrap_servers'].names()}")
    try:
        return KafkaClientSettings(**merged)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            field = str(err["loc"][0]) if err["loc"] else None
            message = err["msg"].removeprefix("Value error, ")
            for named, source in origin.items():  # "sasl_username (KAFKA_SASL_USERNAME)": where it really came from
                if source != BY_FIELD[named].env:
                    message = message.replace(_named(named), f"{named} (from {source})")
            problems.append(f"{field} from {origin.get(field, 'nowhere')}: {message}" if field else message)
        raise KafkaSettingsError("invalid Kafka settings: " + "; ".join(problems)) from None
