"""The Kafka broker: jars from Maven Central, a single-node KRaft config, launch, readiness, stop.

Callers hold the stack's lock (LocalStack does) around everything that starts or stops it.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import struct
import time
import uuid
from pathlib import Path

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
    StateLock,
    command_line,
    find_processes,
    launch_detached,
    log,
    pid_alive,
    port_open,
    read_pid,
    require_free_port,
    run,
    stop_process,
    tail,
)

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
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}
advertised.listeners=PLAINTEXT://{host}:{port}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
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
"""

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


# ------------------------------------------------------------- Kafka wire protocol


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return bytes(buf)


def _kafka_call(sock: socket.socket, api_key: int, version: int, corr: int, body: bytes) -> bytes:
    client_id = b"society-stack"
    # Request header v1: api_key, api_version, correlation_id, client_id (non-flexible).
    msg = struct.pack(">hhih", api_key, version, corr, len(client_id)) + client_id + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    data = _recv_exact(sock, size)
    (rcorr,) = struct.unpack_from(">i", data, 0)
    if rcorr != corr:
        raise ConnectionError(f"correlation id mismatch ({rcorr} != {corr})")
    return data[4:]  # response header v0 is just the correlation id


def kafka_probe(host: str, port: int, timeout: float = 2.0) -> dict:
    """ApiVersions v0, then Metadata (v4..v8, no topics) over a raw socket.

    Returns {"cluster_id", "brokers": [(node_id, host, port)], "controller_id"}.
    Raises OSError/ConnectionError/ValueError when the broker does not answer properly.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        resp = _kafka_call(sock, 18, 0, 1, b"")  # ApiVersions v0, empty body
        (err, n) = struct.unpack_from(">hi", resp, 0)
        if err != 0:
            raise ValueError(f"ApiVersions error_code {err}")
        versions = {}
        for i in range(n):
            key, lo, hi = struct.unpack_from(">hhh", resp, 6 + 6 * i)
            versions[key] = (lo, hi)
        if 3 not in versions:
            raise ValueError("broker does not list the Metadata API")
        lo, hi = versions[3]
        # v4..v8 share the layout we parse (brokers, cluster_id, controller_id);
        # v9+ is "flexible" (compact encodings). Kafka 4.x removed v0..v3.
        version = max(lo, 4)
        if version > min(hi, 8):
            raise ValueError(f"broker supports Metadata v{lo}..v{hi}, need one of v4..v8")
        body = struct.pack(">i", 0)  # empty topic array: metadata for no topics
        body += b"\x00"  # allow_auto_topic_creation = false
        if version >= 8:
            body += b"\x00\x00"  # include_cluster/topic_authorized_operations = false
        resp = _kafka_call(sock, 3, version, 2, body)
        off = 4  # throttle_time_ms
        (nb,) = struct.unpack_from(">i", resp, off)
        off += 4
        brokers = []
        for _ in range(nb):
            node_id, hlen = struct.unpack_from(">ih", resp, off)
            off += 6
            bhost = resp[off : off + hlen].decode()
            off += hlen
            bport, rlen = struct.unpack_from(">ih", resp, off)
            off += 6 + max(rlen, 0)
            brokers.append((node_id, bhost, bport))
        (clen,) = struct.unpack_from(">h", resp, off)
        off += 2
        cluster_id = resp[off : off + clen].decode() if clen >= 0 else None
        off += max(clen, 0)
        (controller_id,) = struct.unpack_from(">i", resp, off)
        return {"cluster_id": cluster_id, "brokers": brokers, "controller_id": controller_id}


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
        self.home = cache_dir / f"kafka-{KAFKA_VERSION}"
        self.libs = self.home / "libs"
        self.dir = state_dir / "kafka"
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._pidfile = self.dir / "kafka.pid"
        self._config = self.dir / "server.properties"
        self._started_at: float | None = None  # set by launch(), for the "ready in" line

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def pid(self) -> int | None:
        """Pid of this state dir's broker, from the pid file or (if lost) the process table."""
        pid = read_pid(self._pidfile)
        if pid is not None and pid_alive(pid):
            args = command_line(pid)
            if "kafka.Kafka" in args and str(self._config) in args:
                return pid
        found = find_processes("kafka.Kafka", str(self._config))
        if found:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._pidfile.write_text(f"{found[0][0]}\n")
            return found[0][0]
        return None

    def answers(self) -> bool:
        """The broker answers ApiVersions and lists itself in a Metadata response."""
        try:
            meta = kafka_probe(HOST, self.port, timeout=2.0)
        except (OSError, ValueError, struct.error):
            return False
        return any(port == self.port for _, _, port in meta["brokers"])

    def launch(self) -> None:
        """Start the JVM (not waiting for it): ports checked, jars resolved, storage formatted."""
        for port in (self.port, self.controller_port):
            require_free_port(port, service="kafka", env_var="SOCIETY_KAFKA_PORT",
                              state_dir=self.state_dir)
        classpath = f"{self.ensure_jars()}/*"
        java = _java()
        self._write_files()
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
        pid = launch_detached(cmd, output=out, cwd=self.dir)
        self._pidfile.write_text(f"{pid}\n")
        self._started_at = time.monotonic()

    def wait_ready(self) -> None:
        pid = self.pid()
        if pid is None:
            raise StackError("kafka is not running", self._log_tail())
        deadline = time.monotonic() + KAFKA_READY_TIMEOUT_S
        while True:
            if self.answers():
                if self._started_at is not None:
                    log(f"kafka ready in {time.monotonic() - self._started_at:.1f} s")
                    self._started_at = None
                return
            if not pid_alive(pid):
                self._pidfile.unlink(missing_ok=True)
                raise StackError("kafka exited during startup" + self._error_hint(), self._log_tail())
            if time.monotonic() > deadline:
                raise StackError(
                    f"kafka (pid {pid}) did not answer a metadata request on "
                    f"{self.bootstrap} within {KAFKA_READY_TIMEOUT_S:.0f} s", self._log_tail())
            time.sleep(0.2)

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

    def _write_files(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._config.write_text(_SERVER_PROPERTIES.format(
            host=HOST, port=self.port, cport=self.controller_port, data=self.data))
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
