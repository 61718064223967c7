"""The Kafka broker: jars from Maven Central, a single-node KRaft config, launch, readiness, stop.

Callers hold the stack's lock (LocalStack does) around everything that starts or stops it.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from ._config import (
    HOST,
    KAFKA_HEAP,
    KAFKA_READY_TIMEOUT_S,
    KAFKA_STOP_TIMEOUT_S,
    KAFKA_VERSION,
    LOG4J_VERSION,
    SCALA_VERSION,
)
from ._errors import StackError
from ._processes import (
    StateLock, launch_detached, log, pid_alive, port_open, require_free_port, run, running, stop_process, tail,
)
from ._ports import record
from ._sasl import SaslFiles, declared_in, server_properties, write_private

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

_POM = f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by scripts/localstack/_kafka.py: the Kafka broker's runtime classpath. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.society-ingest</groupId>
  <artifactId>kafka-broker-classpath</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{SCALA_VERSION}</artifactId>
      <version>{KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{LOG4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
"""

_SERVER_PROPERTIES = """\
# Written by scripts/localstack/_kafka.py on every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers={host}:{cport}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport},SASL_SSL://{host}:{sport}
advertised.listeners=PLAINTEXT://{host}:{port},SASL_SSL://{host}:{sport}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
log.dirs={data}

num.partitions=6
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
delete.topic.enable=true
group.initial.rebalance.delay.ms=0

# After a SIGKILL the restarted controller refuses the new broker incarnation
# (DUPLICATE_BROKER_REGISTRATION) until the old session expires: 9 s by default.
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000

# Single node: internal topics with replication factor 1. Fewer partitions than
# the defaults (50) make the first consumer group / transaction start faster.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# Two cores: fewer threads than the defaults.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=2
log.retention.hours=168
{sasl}"""

_LOG4J2 = """\
# Written by scripts/localstack/_kafka.py: broker logs (INFO) to one rolling file.
status = warn
# Kafka logs its own shutdown from a JVM shutdown hook; keep log4j alive for it.
shutdownHook = disable
name = society-stack-kafka
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.filePattern = {log}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


# ----------------------------------------------------------------- readiness


def _admin_client(bootstrap: str) -> AdminClient:
    """A client for readiness probes; confluent-kafka comes from the project's virtualenv."""
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError as e:
        raise StackError(
            f"confluent-kafka is not importable from {sys.executable}: run the stack from the "
            "project's virtualenv (scripts/stack builds it with scripts/bootstrap-venv)") from e
    return AdminClient({
        "bootstrap.servers": bootstrap,
        "client.id": "society-stack",
        # A refused connection is the answer "not up yet", not news: keep librdkafka quiet.
        "log_level": 0,
        # Retry quickly while the broker boots (librdkafka's backoff otherwise grows to 10 s).
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 500,
    })


def _lists_itself(admin: AdminClient, port: int, timeout: float) -> bool:
    """A metadata request is answered within ``timeout`` and names a broker on ``port``."""
    from confluent_kafka import KafkaException

    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return any(broker.port == port for broker in metadata.brokers.values())


def _kafka_uuid() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding."""
    while True:
        s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not s.startswith("-"):
            return s


class Kafka:
    """One broker (KRaft, broker and controller in one JVM) with its files in ``<state>/kafka``."""

    def __init__(self, state_dir: Path, cache_dir: Path, port: int) -> None:
        self.state_dir = state_dir
        self.port = port
        self.controller_port = port + 1
        self.sasl_port = port + 2
        self.home = cache_dir / f"kafka-{KAFKA_VERSION}"
        self.libs = self.home / "libs"
        self.dir = state_dir / "kafka"
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._pidfile = self.dir / "kafka.pid"
        self._config = self.dir / "server.properties"
        self._started_at: float | None = None  # set by launch(), for the "ready in" line
        self.sasl = SaslFiles(self.dir, self.sasl_port)

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def has_sasl_listener(self) -> bool:
        """Whether the broker's config (written at its last launch) has the SASL_SSL listener."""
        return declared_in(self._config)

    def pid(self) -> int | None:
        """Pid of this state dir's broker: the pid file's, while it runs kafka.Kafka on our config."""
        return running(self._pidfile, lambda args: "kafka.Kafka" in args and str(self._config) in args)

    def answers(self) -> bool:
        """The broker answers a metadata request and lists itself in it."""
        # A closed port needs no client (whose request would wait out its timeout).
        return port_open(self.port) and _lists_itself(_admin_client(self.bootstrap), self.port, timeout=2.0)

    def check_ports(self) -> None:
        """PortInUse unless the broker's, the controller's and the SASL_SSL listener's ports are free."""
        for port in (self.port, self.controller_port, self.sasl_port):
            require_free_port(port, service="kafka", env_var="SOCIETY_KAFKA_PORT", state_dir=self.state_dir)

    def launch(self) -> None:
        """Start the JVM (not waiting for it): ports checked, jars resolved, storage formatted."""
        self.check_ports()
        record(self.state_dir, "kafka", self.port)
        classpath = f"{self.ensure_jars()}/*"
        java = _java()
        self._write_files(java)
        self._format_storage(java, classpath)
        out = self.dir / "kafka.out"
        with open(out, "ab") as f:
            f.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting kafka =====\n".encode())
        cmd = [
            java, *KAFKA_HEAP, "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.dir}",
            "-cp", classpath, "kafka.Kafka", str(self._config),
        ]
        log(f"starting kafka {KAFKA_VERSION} on {self.bootstrap} (data {self.data})")
        launch_detached(cmd, output=out, pid_file=self._pidfile, cwd=self.dir)
        self._started_at = time.monotonic()

    def start(self) -> None:
        """Launch the broker unless it runs, then wait until it answers."""
        if self.pid() is None:
            self.launch()
        self.wait_ready()

    def wait_ready(self) -> None:
        """Until a metadata request lists the broker (not just until the port opens)."""
        pid = self.pid()
        if pid is None:
            raise StackError("kafka is not running", self._log_tail())
        admin = _admin_client(self.bootstrap)  # one client: it reconnects while the JVM boots
        deadline = time.monotonic() + KAFKA_READY_TIMEOUT_S
        while not _lists_itself(admin, self.port, timeout=1.0):
            if not pid_alive(pid):
                self._pidfile.unlink(missing_ok=True)
                raise StackError("kafka exited during startup" + self._error_hint(), self._log_tail())
            if time.monotonic() > deadline:
                raise StackError(
                    f"kafka (pid {pid}) did not answer a metadata request on "
                    f"{self.bootstrap} within {KAFKA_READY_TIMEOUT_S:.0f} s", self._log_tail())
        if self.has_sasl_listener():
            self.sasl.ensure_user(self.bootstrap)
        if self._started_at is not None:
            log(f"kafka ready in {time.monotonic() - self._started_at:.1f} s")
            self._started_at = None

    def stop(self, kill: bool = False) -> None:
        """SIGTERM and wait (SIGKILL after 30 s); ``kill=True`` sends SIGKILL at once."""
        pid = self.pid()
        if pid is not None:
            log(f"stopping kafka (pid {pid}{', SIGKILL' if kill else ''})")
            stop_process(pid, name="kafka", kill=kill, grace_s=KAFKA_STOP_TIMEOUT_S)
        self._pidfile.unlink(missing_ok=True)

    def ensure_jars(self) -> Path:
        """Resolve kafka_2.13 and its runtime classpath into the cache (once)."""
        marker = self.home / ".complete"
        if self._jars_complete(marker):
            return self.libs
        with StateLock(self.home / ".lock"):
            if self._jars_complete(marker):
                return self.libs
            mvn = shutil.which("mvn")
            if not mvn:
                raise StackError("mvn not found: install Maven (apt-get install -y maven)")
            (self.home / "pom.xml").write_text(_POM)
            tmp = self.home / "libs.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            log(f"resolving Kafka {KAFKA_VERSION} jars from Maven Central into {self.libs}")
            t0 = time.monotonic()
            run([mvn, "-q", "-B", "-f", str(self.home / "pom.xml"), "dependency:copy-dependencies",
                 "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"],
                what="mvn dependency:copy-dependencies", timeout=900, cwd=self.home)
            jars = sorted(p.name for p in tmp.glob("*.jar"))
            if f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar" not in jars:
                raise StackError(f"Maven did not produce kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar in {tmp}")
            shutil.rmtree(self.libs, ignore_errors=True)
            tmp.rename(self.libs)
            marker.write_text("\n".join(jars) + "\n")
            log(f"resolved {len(jars)} jars in {time.monotonic() - t0:.1f} s")
            return self.libs

    def _jars_complete(self, marker: Path) -> bool:
        try:
            names = marker.read_text().split()
        except OSError:
            return False
        return bool(names) and all((self.libs / n).is_file() for n in names)

    def _write_files(self, java: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sasl.ensure(java)
        # Owner-only: it holds the keystore's password.
        write_private(self._config, _SERVER_PROPERTIES.format(
            host=HOST, port=self.port, cport=self.controller_port, sport=self.sasl_port, data=self.data,
            sasl=server_properties(self.sasl)))
        (self.dir / "log4j2.properties").write_text(_LOG4J2.format(log=self.log))

    def _format_storage(self, java: str, classpath: str) -> None:
        if (self.data / "meta.properties").exists():
            return
        id_file = self.dir / "cluster.id"
        cluster_id = id_file.read_text().strip() if id_file.exists() else ""
        if not cluster_id:
            cluster_id = _kafka_uuid()
            id_file.write_text(cluster_id + "\n")
        log(f"formatting kafka storage {self.data} (cluster id {cluster_id})")
        run([java, "-Xmx256m", "-cp", classpath,
             f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
             "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id,
             "-c", str(self._config)],
            what="kafka storage format", timeout=120, cwd=self.dir)

    def _error_hint(self) -> str:
        """": <exception message>" from the end of the broker log, or ""."""
        for name in ("server.log", "kafka.out"):
            for line in reversed(tail(self.dir / name, 80).splitlines()):
                m = re.match(r"^(?:Caused by: )?[\w.$]+(?:Exception|Error): (.+)", line)
                if m:
                    return ": " + m.group(1)[:300]
        return ""

    def _log_tail(self) -> str:
        parts = []
        for name in ("kafka.out", "server.log"):
            text = tail(self.dir / name, 25)
            if text:
                parts.append(f"--- {self.dir / name} ---\n{text}")
        return "\n".join(parts)


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if not java:
        raise StackError("java not found: install a JDK 17+ (apt-get install -y openjdk-17-jre-headless)")
    return java
