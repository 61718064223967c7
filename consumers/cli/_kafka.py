"""The Kafka client options every command that talks to Kafka shares, and ``-X`` properties.

A command takes one parameter ``kafka: KafkaClientSettings = KAFKA_OPTIONS`` and
is decorated with :func:`kafka_options`, which puts the options below in its
place (``--bootstrap-servers``, ``--kafka-config``, ``--security-protocol``,
``--sasl-*``, ``--ssl-*``, ``--client-id``) and hands the command the settings
they make: flags, then the config file, then the environment, then defaults
(``producers.kafka_config.resolve``). No option takes a password, only a
password file; every password is registered with the CLI's masking as soon
as it is read.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
from pathlib import Path
from typing import Annotated, Any, Callable, TypeVar

from consumers._deps import require
from consumers.cli._options import DEFAULT_BOOTSTRAP, typer
from consumers.cli._redact import secrets
from producers import kafka_config
from producers.kafka_config import CONFIG_FILE_ENV, SETTINGS, KafkaClientSettings

rich_markup = require("rich.markup", "cli")
F = TypeVar("F", bound=Callable[..., Any])

#: Placeholder default of a command's ``kafka`` parameter: :func:`kafka_options` replaces the parameter.
KAFKA_OPTIONS: Any = None
PANEL = "Kafka connection"

_HELP = {
    "bootstrap_servers": f"Kafka bootstrap servers, host:port[,host:port] (default {DEFAULT_BOOTSTRAP}).",
    "security_protocol": "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.",
    "sasl_mechanism": "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, GSSAPI or OAUTHBEARER.",
    "sasl_username": "SASL user name.",
    "sasl_password": "File holding the SASL password (no flag takes a password: ps shows command lines).",
    "ssl_ca_location": "CA certificate(s), PEM, that signed the brokers' certificates (default: the system's).",
    "ssl_certificate_location": "Client certificate, PEM, for brokers that require TLS client authentication.",
    "ssl_key_location": "Client private key, PEM.",
    "ssl_key_password": "File holding the client key's password.",
    "ssl_endpoint_identification": "Check that a broker's certificate names its host (default on).",
    "client_id": "Start of every client's client.id (default society-ingest).",
}


def _help(text: str, sources: str) -> str:
    # Typer reads help as rich markup: "[…]" would be taken for a tag and vanish.
    return f"{text} {rich_markup.escape(f'[{sources}]')}"


def _parameter(setting: kafka_config.Setting) -> inspect.Parameter:
    """The option of one setting; a password's option names its file."""
    if setting.secret:
        name, decls, kind, env = f"{setting.field}_file", [setting.file_flag], Path | None, \
            f"{setting.file_env}, or the password itself in {setting.env}"
    elif setting.field == "ssl_endpoint_identification":
        name, kind, env = setting.field, bool | None, setting.env
        decls = [f"{setting.flag}/--no-{str(setting.flag).removeprefix('--')}"]
    else:
        name, decls, kind, env = setting.field, [str(setting.flag)], str | None, setting.env
        if setting.field == "bootstrap_servers":
            decls.append("-b")
    option = typer.Option(*decls, help=_help(_HELP[setting.field], f"env var: {env}; file: {setting.key}"),
                          rich_help_panel=PANEL, show_default=False)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind, option])


_CONFIG_FILE = inspect.Parameter(
    "kafka_config", inspect.Parameter.KEYWORD_ONLY, default=None,
    annotation=Annotated[Path | None, typer.Option(
        "--kafka-config", rich_help_panel=PANEL, show_default=False, dir_okay=False,
        help=_help("Kafka client config file: key=value lines with librdkafka's names (bootstrap.servers, "
                   "security.protocol, sasl.mechanism, sasl.username, sasl.password, ssl.ca.location …). "
                   "Flags win over it, it wins over the environment.", f"env var: {CONFIG_FILE_ENV}"),
    )],
)
_PARAMETERS = [_parameter(s) for s in SETTINGS[:1]] + [_CONFIG_FILE] + [_parameter(s) for s in SETTINGS[1:]]


def client_settings(flags: dict[str, Any], config_file: Path | None) -> KafkaClientSettings:
    """The settings of flags (by field; passwords as ``<field>_file``), the config file, the environment, defaults."""
    return kafka_config.resolve(
        flags=flags, config_file=config_file, environ=os.environ,
        defaults={"bootstrap_servers": DEFAULT_BOOTSTRAP}, on_secret=secrets.add,
    )


def kafka_options(command: F) -> F:
    """Replace `command`'s ``kafka`` parameter by the Kafka client options; call it with their settings."""
    signature = inspect.signature(command, eval_str=True)
    if "kafka" not in signature.parameters:
        raise TypeError(f"{command.__name__} has no kafka parameter for the Kafka options")
    parameters = []
    for p in signature.parameters.values():
        if p.name == "kafka":
            parameters += _PARAMETERS
        else:
            # Keyword-only, like the options: click passes every parameter by name anyway.
            parameters.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))

    @functools.wraps(command)
    def with_kafka(**kwargs: Any) -> Any:
        flags = {p.name: kwargs.pop(p.name) for p in _PARAMETERS}
        kwargs["kafka"] = client_settings(flags, flags.pop("kafka_config"))
        return command(**kwargs)

    with_kafka.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return with_kafka  # type: ignore[return-value]


#: librdkafka properties that hold a secret, and what to do instead of a command line (ps shows those).
_SECRET_PROPERTIES = {
    **{s.key: f"set it in the environment or a file ({s.env}, {s.file_env} or {s.file_flag})"
       for s in SETTINGS if s.secret},
    "ssl.key.pem": "put the key in a file (--ssl-key-location)",
    "ssl.keystore.password": "use PEM files (--ssl-certificate-location, --ssl-key-location, --ssl-key-password-file)",
    "sasl.oauthbearer.client.secret": "no command line takes it: use SCRAM or PLAIN with a password file, or TLS "
                                      "client certificates",
}


#: Any other librdkafka property whose name says it holds a secret (matched by name, so new ones are
#: refused too): ``sasl.oauthbearer.assertion.private.key.passphrase``, ``…private.key.pem`` …
_SECRET_NAME = re.compile(r"password|secret|passphrase|private\.key|key\.pem$")


def _secret_property(key: str) -> str | None:
    """What to do instead of passing `key` on a command line, if it holds a secret; else None."""
    if key in _SECRET_PROPERTIES:
        return _SECRET_PROPERTIES[key]
    if _SECRET_NAME.search(key.lower()):
        return "no command line takes a secret: use SCRAM or PLAIN with a password file, or TLS client certificates"
    return None


def properties(props: list[str] | None, option: str = "--consumer-property") -> dict[str, str]:
    """``-X KEY=VALUE`` options as librdkafka properties; a password among them is refused (and masked)."""
    extra: dict[str, str] = {}
    for number, prop in enumerate(props or [], 1):
        key, sep, value = (part.strip() for part in prop.partition("="))
        instead = _secret_property(key)
        if instead is not None:
            secrets.add(value)
            raise typer.BadParameter(
                f"{key} is refused on the command line, where ps shows it to every user: {instead}",
                param_hint=option)
        if not sep:  # not quoted: a value without its key may be a password
            raise typer.BadParameter(f"value {number} is not KEY=VALUE (it is not shown: it may be a secret)",
                                     param_hint=option)
        extra[key] = value
    return extra
