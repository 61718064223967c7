"""The broker's second listener: SASL/SCRAM-SHA-512 over TLS, as a secured production cluster has.

Beside PLAINTEXT (which the demo and most tests use) every stack listens on
SASL_SSL on the port after the controller's. Its files live in
``<state>/kafka/tls/``, made once and kept across restarts:

- ``broker.p12``, ``keystore.password``: the broker's key and self-signed
  certificate (the JDK's keytool; subject alternative names 127.0.0.1 and
  localhost, so clients verify the host name);
- ``ca.pem``: that certificate, for clients to trust (``ssl.ca.location``);
- ``sasl.password``: the SCRAM password of user ``society``, random per state dir;
- ``client.properties``: a ``--kafka-config`` file for this listener.

The user's SCRAM credential lives in the cluster's metadata; it is set (an
idempotent upsert over PLAINTEXT, with the Admin API) each time the broker
is ready, so a re-formatted data dir gets it again.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path

from ._config import HOST, SASL_MECHANISM, SASL_USERNAME, SCRAM_ITERATIONS
from ._errors import StackError
from ._processes import run

#: How long the SASL_SSL listener may take to accept the new credential once the broker is ready.
SASL_READY_TIMEOUT_S = 30.0
#: Marks the listener in server.properties: a broker started before it existed has none.
LISTENER = "SASL_SSL"


def server_properties(files: SaslFiles) -> str:
    """The server.properties lines of the listener (appended to the broker's)."""
    prefix = f"listener.name.{LISTENER.lower()}"
    mechanism = SASL_MECHANISM.lower()
    password = files.keystore_password.read_text().strip()
    return f"""
# The SASL_SSL listener on {files.bootstrap} (scripts/localstack/_sasl.py): SCRAM over TLS.
sasl.enabled.mechanisms={SASL_MECHANISM}
{prefix}.sasl.enabled.mechanisms={SASL_MECHANISM}
{prefix}.{mechanism}.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
{prefix}.ssl.keystore.type=PKCS12
{prefix}.ssl.keystore.location={files.keystore}
{prefix}.ssl.keystore.password={password}
{prefix}.ssl.key.password={password}
"""


class SaslFiles:
    """The listener's certificate, passwords and client file under ``<kafka dir>/tls``."""

    def __init__(self, kafka_dir: Path, port: int) -> None:
        self.port = port
        self.dir = kafka_dir / "tls"
        self.keystore = self.dir / "broker.p12"
        self.keystore_password = self.dir / "keystore.password"
        self.ca = self.dir / "ca.pem"
        self.password_file = self.dir / "sasl.password"
        self.client_config = self.dir / "client.properties"

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def password(self) -> str:
        return self.password_file.read_text().strip()

    def ensure(self, java: str) -> None:
        """The certificate and passwords (once), and the client file (every start: the port may move)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        if not self.password_file.exists():
            write_private(self.password_file, secrets.token_urlsafe(24) + "\n")
        if not (self.keystore.exists() and self.ca.exists() and self.keystore_password.exists()):
            self._make_certificate(_keytool(java))
        write_private(self.client_config, (
            "# Written by scripts/localstack/_sasl.py: this stack's SASL_SSL listener, for\n"
            "# society-ingest --kafka-config (it holds the password: keep it private).\n"
            f"bootstrap.servers={self.bootstrap}\n"
            f"security.protocol={LISTENER}\n"
            f"sasl.mechanism={SASL_MECHANISM}\n"
            f"sasl.username={SASL_USERNAME}\n"
            f"sasl.password={self.password()}\n"
            f"ssl.ca.location={self.ca}\n"
        ))

    def _make_certificate(self, keytool: str) -> None:
        store_password = secrets.token_urlsafe(18)
        tmp = self.dir / "making"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        pass_file = tmp / "keystore.password"
        write_private(pass_file, store_password + "\n")
        store, cert = tmp / "broker.p12", tmp / "ca.pem"
        # keytool reads the password from the file, not from its command line.
        storepass, keypass = ["-storepass:file", str(pass_file)], ["-keypass:file", str(pass_file)]
        run([keytool, "-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048",
             "-validity", "3650", "-dname", "CN=localhost,O=society-ingest local stack",
             "-ext", f"SAN=IP:{HOST},DNS:localhost", "-ext", "BC:c=ca:true",
             "-storetype", "PKCS12", "-keystore", str(store), *storepass, *keypass],
            what="keytool -genkeypair", timeout=120)
        run([keytool, "-exportcert", "-rfc", "-alias", "broker", "-keystore", str(store), *storepass,
             "-file", str(cert)],
            what="keytool -exportcert", timeout=120)
        store.chmod(0o600)
        for name in ("broker.p12", "ca.pem", "keystore.password"):
            (tmp / name).replace(self.dir / name)
        tmp.rmdir()

    def ensure_user(self, plaintext_bootstrap: str) -> None:
        """Set user ``society``'s SCRAM credential, then wait until the SASL_SSL listener accepts it."""
        from confluent_kafka.admin import (
            AdminClient, ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion,
        )

        admin = AdminClient({"bootstrap.servers": plaintext_bootstrap, "client.id": "society-stack", "log_level": 0})
        upsert = UserScramCredentialUpsertion(
            SASL_USERNAME, ScramCredentialInfo(ScramMechanism[SASL_MECHANISM.replace("-", "_")], SCRAM_ITERATIONS),
            self.password().encode())
        try:
            for future in admin.alter_user_scram_credentials([upsert]).values():
                future.result(timeout=30)
        except Exception as e:
            raise StackError(f"could not set the SCRAM credential of {SASL_USERNAME!r}: {e}") from e
        self._wait_accepted()

    def _wait_accepted(self) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({
            "bootstrap.servers": self.bootstrap, "client.id": "society-stack", "log_level": 0,
            "security.protocol": LISTENER, "sasl.mechanism": SASL_MECHANISM,
            "sasl.username": SASL_USERNAME, "sasl.password": self.password(), "ssl.ca.location": str(self.ca),
            "reconnect.backoff.ms": 100, "reconnect.backoff.max.ms": 500,
        })
        deadline = time.monotonic() + SASL_READY_TIMEOUT_S
        while True:
            try:
                admin.list_topics(timeout=2.0)
                return
            except KafkaException as e:
                if time.monotonic() > deadline:
                    raise StackError(f"the {LISTENER} listener on {self.bootstrap} did not accept user "
                                     f"{SASL_USERNAME!r} within {SASL_READY_TIMEOUT_S:.0f} s: {e}") from e


def declared_in(server_properties_file: Path) -> bool:
    """Whether the broker started with `server_properties_file` has the listener (older stacks do not)."""
    try:
        text = server_properties_file.read_text()
    except OSError:
        return False
    return f"{LISTENER}://" in text


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by its owner only (from the first byte)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _keytool(java: str) -> str:
    """The JDK's keytool: beside the java in use, else on PATH."""
    beside = Path(os.path.realpath(java)).parent / "keytool"
    if beside.exists():
        return str(beside)
    found = shutil.which("keytool")
    if not found:
        raise StackError("keytool not found beside java or on PATH: install a JDK 17+ "
                         "(apt-get install -y openjdk-17-jre-headless), which ships it")
    return found
