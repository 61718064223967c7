#!/usr/bin/env python3
"""Run a real Apache Kafka (KRaft, single node) and a real PostgreSQL locally, without Docker.

Kafka's jars come from Maven Central through the machine's Maven and run on the
machine's Java; PostgreSQL uses the machine's server binaries (Debian packages,
installed with apt-get when missing) and runs as an unprivileged user, because
PostgreSQL refuses to run as root.

Stdlib only, Python 3.11. Usable as a module (pytest fixtures, fault tests)::

    from localstack import LocalStack
    stack = LocalStack()          # state in <repo>/.stack or $SOCIETY_STACK_DIR
    stack.up()                    # idempotent; returns quickly when already up
    stack.kafka_bootstrap         # "127.0.0.1:19092"
    stack.database_url            # "postgresql://postgres@127.0.0.1:15432/society"
    stack.stop_kafka(kill=True); stack.start_kafka()   # data is kept

and as a CLI (``scripts/stack``)::

    scripts/stack up | down | status [--json] | env | free-ports
    scripts/stack start|restart kafka|postgres
    scripts/stack stop kafka|postgres [--kill]

Environment: SOCIETY_STACK_DIR (state dir), SOCIETY_KAFKA_PORT (default 19092;
the controller listens on the next port), SOCIETY_PG_PORT (default 15432),
SOCIETY_INGEST_CACHE (jar cache, default ~/.cache/society-ingest).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "DATABASE_NAME",
    "KAFKA_VERSION",
    "LocalStack",
    "StackError",
    "kafka_probe",
    "main",
]

KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
# log4j-core 2.24.3 is what kafka_2.13:4.1.1 depends on. Kafka 4.1 still uses
# slf4j-api 1.7.36, so the binding is log4j-slf4j-impl (the SLF4J 1.x binding);
# log4j-slf4j2-impl would lose to slf4j-api 1.7.36 in Maven's dependency
# mediation and SLF4J would fall back to its no-op logger.
LOG4J_VERSION = "2.24.3"

DEFAULT_KAFKA_PORT = 19092
DEFAULT_PG_PORT = 15432
DATABASE_NAME = "society"
PG_SUPERUSER = "postgres"
#: The local stack's superuser password. TCP connections must present it (as a
#: real server would), so a wrong password fails here as it would in production.
PG_PASSWORD = "society-local"
HOST = "127.0.0.1"

KAFKA_READY_TIMEOUT_S = 90.0
KAFKA_STOP_TIMEOUT_S = 30.0  # SIGTERM, then SIGKILL after this long
PG_START_TIMEOUT_S = 60
KAFKA_HEAP = ("-Xmx1G", "-Xms256m")

REPO_ROOT = Path(__file__).resolve().parent.parent

# Runs detached Kafka: this tiny Python child starts the JVM in a new session and
# exits at once, so the JVM is never a child of the caller (no zombie to reap, no
# ResourceWarning from a still-running Popen in a pytest process).
_LAUNCHER = (
    "import subprocess, sys\n"
    "log = open(sys.argv[1], 'ab')\n"
    "p = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log,\n"
    "                     stderr=subprocess.STDOUT, start_new_session=True)\n"
    "print(p.pid, flush=True)\n"
)


class StackError(RuntimeError):
    """A service could not be started, stopped or reached. ``detail`` holds a log tail."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


# --------------------------------------------------------------------------- helpers


def _log(msg: str) -> None:
    print(f"stack: {msg}", file=sys.stderr, flush=True)


def _env_port(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise StackError(f"{name}={raw!r} is not a port number") from None
    if not 1 <= port <= 65534:
        raise StackError(f"{name}={port} is out of range")
    return port


def _tail(path: Path, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def _pid_alive(pid: int) -> bool:
    """True when ``pid`` runs and is not a zombie (an orphan may wait for a reaper)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    # "pid (comm) S ..." where comm may contain spaces and parentheses.
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X", b"")


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _port_bindable(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _find_processes(*needles: str) -> list[tuple[int, list[str]]]:
    """Processes whose command line contains every needle (for diagnostics/adoption)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        args = _cmdline(pid)
        joined = "\0".join(args)
        if args and all(n in joined for n in needles) and _pid_alive(pid):
            found.append((pid, args))
    return found


def _port_owner(port: int) -> tuple[int, list[str]] | None:
    """The process listening on TCP ``port`` (from /proc/net/tcp*), for error messages."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                    return int(entry), _cmdline(int(entry))
            except OSError:
                continue
    return None


def _run(cmd: list[str], *, what: str, log: Path | None = None, timeout: float | None = None,
         **kw) -> subprocess.CompletedProcess:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except FileNotFoundError as e:
        raise StackError(f"{what}: {cmd[0]} not found") from e
    except subprocess.TimeoutExpired as e:
        raise StackError(f"{what}: timed out after {timeout:.0f} s",
                         _tail(log) if log else "") from e
    if res.returncode != 0:
        out = (res.stdout + res.stderr).strip()
        detail = out[-4000:]
        if log is not None:
            detail = (detail + "\n--- " + str(log) + " ---\n" + _tail(log)).strip()
        first = next((ln for ln in out.splitlines() if ln.strip()), "")
        raise StackError(f"{what} failed (exit {res.returncode}){': ' + first if first else ''}",
                         detail)
    return res


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


# ----------------------------------------------------------------------- the stack


class LocalStack:
    """A single-node Kafka (KRaft) and a PostgreSQL server kept under one state dir.

    Every method is idempotent and safe to call from several processes at once
    (a file lock in the state dir serialises starts and stops). A stack started
    by another process is found through its pid files and ports.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike | None = None,
        *,
        kafka_port: int | None = None,
        pg_port: int | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if state_dir is None:
            state_dir = os.environ.get("SOCIETY_STACK_DIR") or REPO_ROOT / ".stack"
        self.state_dir = Path(state_dir).expanduser().absolute()
        self.kafka_port = kafka_port or _env_port("SOCIETY_KAFKA_PORT", DEFAULT_KAFKA_PORT)
        self.controller_port = self.kafka_port + 1
        self.pg_port = pg_port or _env_port("SOCIETY_PG_PORT", DEFAULT_PG_PORT)
        if cache_dir is None:
            cache_dir = os.environ.get("SOCIETY_INGEST_CACHE") or (
                Path.home() / ".cache" / "society-ingest")
        self.cache_dir = Path(cache_dir).expanduser().absolute()
        self.kafka_home = self.cache_dir / f"kafka-{KAFKA_VERSION}"
        self.kafka_libs = self.kafka_home / "libs"
        self.kafka_dir = self.state_dir / "kafka"
        self._lock_depth = 0
        self._lock_fd: int | None = None
        self._thread_lock = threading.RLock()
        self._pg_bin: Path | None = None
        self._kafka_started_at: float | None = None  # set by _launch_kafka, for the log line

    # ------------------------------------------------------------------ public API

    @property
    def kafka_bootstrap(self) -> str:
        return f"{HOST}:{self.kafka_port}"

    @property
    def database_url(self) -> str:
        return f"postgresql://{PG_SUPERUSER}:{PG_PASSWORD}@{HOST}:{self.pg_port}/{DATABASE_NAME}"

    def env(self) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap, "DATABASE_URL": self.database_url}

    def env_lines(self) -> str:
        return "".join(f"export {k}={v}\n" for k, v in self.env().items())

    def up(self) -> None:
        """Start both services and wait until they answer. No-op when already up."""
        with self._locked():
            kafka_pid = self._kafka_pid()
            if kafka_pid is None:
                self._launch_kafka()  # the JVM boots while PostgreSQL starts
            self.start_postgres()
            self._wait_kafka_ready()

    def down(self) -> None:
        """Stop both services (Kafka: SIGTERM, SIGKILL after 30 s; PostgreSQL: fast)."""
        with self._locked():
            errors = []
            for stop in (self.stop_kafka, self.stop_postgres):
                try:
                    stop()
                except StackError as e:
                    errors.append(e)
            if errors:
                raise errors[0]

    def start_kafka(self) -> None:
        with self._locked():
            if self._kafka_pid() is None:
                self._launch_kafka()
            self._wait_kafka_ready()

    def stop_kafka(self, kill: bool = False) -> None:
        """SIGTERM and wait (SIGKILL after 30 s); ``kill=True`` sends SIGKILL at once."""
        with self._locked():
            pid = self._kafka_pid()
            if pid is None:
                self._kafka_pidfile.unlink(missing_ok=True)
                return
            _log(f"stopping kafka (pid {pid}{', SIGKILL' if kill else ''})")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
            gone = lambda: not _pid_alive(pid)  # noqa: E731
            if not self._wait(gone, 10 if kill else KAFKA_STOP_TIMEOUT_S, 0.05):
                if kill:
                    raise StackError(f"kafka (pid {pid}) survived SIGKILL")
                _log(f"kafka did not stop within {KAFKA_STOP_TIMEOUT_S:.0f} s, sending SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                if not self._wait(gone, 10, 0.05):
                    raise StackError(f"kafka (pid {pid}) survived SIGKILL")
            self._kafka_pidfile.unlink(missing_ok=True)

    def restart_kafka(self) -> None:
        with self._locked():
            self.stop_kafka()
            self.start_kafka()

    def start_postgres(self) -> None:
        with self._locked():
            if self._postgres_pid() is not None:
                self._wait_postgres_ready(30)
                return
            self._check_port_free(self.pg_port, "postgres", "SOCIETY_PG_PORT")
            base = self._pg_base()
            data = base / "data"
            if not (data / "PG_VERSION").exists():
                self._initdb(base)
            self._check_pg_version(data)
            self._write_pg_conf(base)
            _log(f"starting postgres on {HOST}:{self.pg_port} (data {data})")
            self._as_pg_user(
                [str(self._pg_tool("pg_ctl")), "-D", str(data), "-l", str(base / "postgres.log"),
                 "-w", "-t", str(PG_START_TIMEOUT_S), "start"],
                what="pg_ctl start", log=base / "postgres.log", timeout=PG_START_TIMEOUT_S + 15)
            self._wait_postgres_ready(30)
            self._ensure_database()

    def stop_postgres(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode``: "smart", "fast" (default) or "immediate" (crash-like)."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"mode must be smart, fast or immediate, not {mode!r}")
        with self._locked():
            pid = self._postgres_pid()
            if pid is None:
                return
            base = self._pg_base()
            _log(f"stopping postgres (pid {pid}, mode {mode})")
            self._as_pg_user(
                [str(self._pg_tool("pg_ctl")), "-D", str(base / "data"), "-m", mode, "-w",
                 "-t", "60", "stop"],
                what="pg_ctl stop", log=base / "postgres.log", timeout=75)
            if not self._wait(lambda: not _pid_alive(pid), 15):
                raise StackError(f"postgres (pid {pid}) did not exit")

    def restart_postgres(self) -> None:
        with self._locked():
            self.stop_postgres()
            self.start_postgres()

    def is_kafka_up(self) -> bool:
        """The broker answers ApiVersions and lists itself in a Metadata response."""
        try:
            meta = kafka_probe(HOST, self.kafka_port, timeout=2.0)
        except (OSError, ValueError, struct.error):
            return False
        return any(port == self.kafka_port for _, _, port in meta["brokers"])

    def is_postgres_up(self) -> bool:
        """``select 1`` succeeds in the society database (False while it is missing)."""
        if not _port_open(self.pg_port):
            return False
        if self._pg_bin is None and self._find_pg_bin() is None:
            return False
        try:
            self._psql("select 1", db=DATABASE_NAME, timeout=10)
        except StackError:
            return False
        return True

    def status(self) -> dict:
        """Both services: ``state`` is "up" (ours, answering), "starting" (ours, not
        answering yet), "down", or "foreign" (something else answers on our port)."""
        def state(pid: int | None, answers: bool) -> str:
            if pid is not None:
                return "up" if answers else "starting"
            return "foreign" if answers else "down"

        kpid, ppid = self._kafka_pid(), self._postgres_pid()
        base = self._pg_base_recorded()
        return {
            "state_dir": str(self.state_dir),
            "kafka": {
                "state": state(kpid, self.is_kafka_up()),
                "pid": kpid,
                "bootstrap": self.kafka_bootstrap,
                "log": str(self.kafka_dir / "server.log"),
                "data": str(self.kafka_dir / "data"),
            },
            "postgres": {
                "state": state(ppid, self.is_postgres_up()),
                "pid": ppid,
                "url": self.database_url,
                "log": str(base / "postgres.log") if base else None,
                "data": str(base / "data") if base else None,
            },
        }

    # ----------------------------------------------------------------- locking

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Re-entrant: a thread lock within the process, flock across processes."""
        with self._thread_lock:
            if self._lock_depth == 0:
                self.state_dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.state_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._lock_fd = fd
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0 and self._lock_fd is not None:
                    os.close(self._lock_fd)  # releases the flock
                    self._lock_fd = None

    @staticmethod
    def _wait(cond, timeout: float, interval: float = 0.1) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if cond():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(interval)

    def _check_port_free(self, port: int, service: str, env_name: str) -> None:
        if _port_bindable(port):
            return
        owner = _port_owner(port)
        by = ""
        if owner:
            pid, args = owner
            cmd = " ".join(args) if len(" ".join(args)) < 160 else f"{args[0]} ... {' '.join(args[-2:])}"
            by = f" by pid {pid} ({cmd})"
        raise StackError(
            f"port {HOST}:{port} for {service} is already in use{by}, not by the stack in "
            f"{self.state_dir}; stop it or set {env_name} (scripts/stack free-ports)")

    # ------------------------------------------------------------------- Kafka

    @property
    def _kafka_pidfile(self) -> Path:
        return self.kafka_dir / "kafka.pid"

    @property
    def _kafka_config(self) -> Path:
        return self.kafka_dir / "server.properties"

    def _kafka_pid(self) -> int | None:
        """Pid of this state dir's broker, from the pid file or (if lost) the process table."""
        pid = _read_pid(self._kafka_pidfile)
        if pid is not None and _pid_alive(pid):
            args = _cmdline(pid)
            if "kafka.Kafka" in args and str(self._kafka_config) in args:
                return pid
        found = _find_processes("kafka.Kafka", str(self._kafka_config))
        if found:
            self.kafka_dir.mkdir(parents=True, exist_ok=True)
            self._kafka_pidfile.write_text(f"{found[0][0]}\n")
            return found[0][0]
        return None

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        if java_home and (Path(java_home) / "bin" / "java").exists():
            return str(Path(java_home) / "bin" / "java")
        java = shutil.which("java")
        if not java:
            raise StackError("java not found: install a JDK 17+ (apt-get install -y openjdk-17-jre-headless)")
        return java

    def ensure_kafka_jars(self) -> Path:
        """Resolve kafka_2.13 and its runtime classpath into the cache (once)."""
        marker = self.kafka_home / ".complete"
        if self._jars_complete(marker):
            return self.kafka_libs
        self.kafka_home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.kafka_home / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self._jars_complete(marker):
                return self.kafka_libs
            mvn = shutil.which("mvn")
            if not mvn:
                raise StackError("mvn not found: install Maven (apt-get install -y maven)")
            (self.kafka_home / "pom.xml").write_text(_POM)
            tmp = self.kafka_home / "libs.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            _log(f"resolving Kafka {KAFKA_VERSION} jars from Maven Central into {self.kafka_libs}")
            t0 = time.monotonic()
            _run([mvn, "-q", "-B", "-f", str(self.kafka_home / "pom.xml"),
                  "dependency:copy-dependencies", "-DincludeScope=runtime",
                  f"-DoutputDirectory={tmp}"],
                 what="mvn dependency:copy-dependencies", timeout=900, cwd=self.kafka_home)
            jars = sorted(p.name for p in tmp.glob("*.jar"))
            if f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar" not in jars:
                raise StackError(f"Maven did not produce kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar in {tmp}")
            shutil.rmtree(self.kafka_libs, ignore_errors=True)
            tmp.rename(self.kafka_libs)
            marker.write_text("\n".join(jars) + "\n")
            _log(f"resolved {len(jars)} jars in {time.monotonic() - t0:.1f} s")
            return self.kafka_libs
        finally:
            os.close(fd)

    def _jars_complete(self, marker: Path) -> bool:
        try:
            names = marker.read_text().split()
        except OSError:
            return False
        return bool(names) and all((self.kafka_libs / n).is_file() for n in names)

    def _write_kafka_files(self) -> None:
        self.kafka_dir.mkdir(parents=True, exist_ok=True)
        data = self.kafka_dir / "data"
        props = _SERVER_PROPERTIES.format(
            host=HOST, port=self.kafka_port, cport=self.controller_port, data=data)
        self._kafka_config.write_text(props)
        (self.kafka_dir / "log4j2.properties").write_text(
            _LOG4J2.format(log=self.kafka_dir / "server.log"))

    def _format_kafka_storage(self, java: str, classpath: str) -> None:
        data = self.kafka_dir / "data"
        if (data / "meta.properties").exists():
            return
        id_file = self.kafka_dir / "cluster.id"
        cluster_id = id_file.read_text().strip() if id_file.exists() else ""
        if not cluster_id:
            cluster_id = _kafka_uuid()
            id_file.write_text(cluster_id + "\n")
        _log(f"formatting kafka storage {data} (cluster id {cluster_id})")
        _run([java, "-Xmx256m", "-cp", classpath,
              f"-Dlog4j2.configurationFile={self.kafka_dir / 'log4j2.properties'}",
              "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id,
              "-c", str(self._kafka_config)],
             what="kafka storage format", timeout=120, cwd=self.kafka_dir)

    def _launch_kafka(self) -> None:
        self._check_port_free(self.kafka_port, "kafka", "SOCIETY_KAFKA_PORT")
        self._check_port_free(self.controller_port, "kafka", "SOCIETY_KAFKA_PORT")
        libs = self.ensure_kafka_jars()
        java = self._java()
        classpath = f"{libs}/*"
        self._write_kafka_files()
        self._format_kafka_storage(java, classpath)
        out = self.kafka_dir / "kafka.out"
        with open(out, "ab") as f:
            f.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting kafka =====\n".encode())
        cmd = [
            java, *KAFKA_HEAP, "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.kafka_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.kafka_dir}",
            "-cp", classpath, "kafka.Kafka", str(self._kafka_config),
        ]
        _log(f"starting kafka {KAFKA_VERSION} on {self.kafka_bootstrap} (data {self.kafka_dir / 'data'})")
        res = _run([sys.executable, "-I", "-W", "ignore", "-c", _LAUNCHER, str(out), *cmd],
                   what="launch kafka", timeout=30, cwd=self.kafka_dir)
        pid = int(res.stdout.split()[0])
        self._kafka_pidfile.write_text(f"{pid}\n")
        self._kafka_started_at = time.monotonic()

    def _wait_kafka_ready(self) -> None:
        pid = self._kafka_pid()
        if pid is None:
            raise StackError("kafka is not running", self._kafka_log_tail())
        deadline = time.monotonic() + KAFKA_READY_TIMEOUT_S
        while True:
            if self.is_kafka_up():
                if self._kafka_started_at is not None:
                    _log(f"kafka ready in {time.monotonic() - self._kafka_started_at:.1f} s")
                    self._kafka_started_at = None
                return
            if not _pid_alive(pid):
                self._kafka_pidfile.unlink(missing_ok=True)
                raise StackError("kafka exited during startup" + self._kafka_error_hint(),
                                 self._kafka_log_tail())
            if time.monotonic() > deadline:
                raise StackError(
                    f"kafka (pid {pid}) did not answer a metadata request on "
                    f"{self.kafka_bootstrap} within {KAFKA_READY_TIMEOUT_S:.0f} s",
                    self._kafka_log_tail())
            time.sleep(0.2)

    def _kafka_error_hint(self) -> str:
        """": <exception message>" from the end of the broker log, or ""."""
        for name in ("server.log", "kafka.out"):
            for line in reversed(_tail(self.kafka_dir / name, 80).splitlines()):
                m = re.match(r"^(?:Caused by: )?[\w.$]+(?:Exception|Error): (.+)", line)
                if m:
                    return ": " + m.group(1)[:300]
        return ""

    def _kafka_log_tail(self) -> str:
        parts = []
        for name in ("kafka.out", "server.log"):
            tail = _tail(self.kafka_dir / name, 25)
            if tail:
                parts.append(f"--- {self.kafka_dir / name} ---\n{tail}")
        return "\n".join(parts)

    # -------------------------------------------------------------- PostgreSQL

    def _pg_user(self) -> str | None:
        """The unprivileged user that runs the server (None: run as ourselves, not root)."""
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "nobody"):
            try:
                pwd.getpwnam(name)
                return name
            except KeyError:
                continue
        raise StackError("running as root and neither user 'postgres' nor 'nobody' exists")

    def _pg_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGPASSWORD"] = PG_PASSWORD
        env["LC_ALL"] = "C.UTF-8" if self._has_c_utf8() else "C"
        env.pop("LANGUAGE", None)
        return env

    @staticmethod
    def _has_c_utf8() -> bool:
        return any(Path(p).exists() for p in ("/usr/lib/locale/C.utf8", "/usr/lib/locale/C.UTF-8"))

    def _as_pg_user(self, cmd: list[str], *, what: str, log: Path | None = None,
                    timeout: float | None = None) -> subprocess.CompletedProcess:
        user = self._pg_user()
        full = ["runuser", "-u", user, "--", *cmd] if user else cmd
        base = self._pg_base_recorded()
        cwd = base if base and base.exists() else "/"
        return _run(full, what=what, log=log, timeout=timeout, env=self._pg_env(), cwd=cwd)

    def _pg_tool(self, name: str) -> Path:
        if self._pg_bin is None:
            self._pg_bin = self._find_pg_bin()
            if self._pg_bin is None:
                self._install_postgres()
                self._pg_bin = self._find_pg_bin()
                if self._pg_bin is None:
                    raise StackError("PostgreSQL server binaries not found even after apt-get install postgresql")
        tool = self._pg_bin / name
        if not tool.exists():
            found = shutil.which(name)
            if not found:
                raise StackError(f"{name} not found (looked in {self._pg_bin} and PATH)")
            return Path(found)
        return tool

    @staticmethod
    def _find_pg_bin() -> Path | None:
        def server_bin(d: Path) -> bool:
            return all((d / t).is_file() for t in ("initdb", "pg_ctl", "postgres"))

        candidates: list[Path] = []
        pg_config = shutil.which("pg_config")
        if pg_config:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                     timeout=10).stdout.strip()
                if out:
                    candidates.append(Path(out))

        def version_key(p: Path) -> tuple:
            return tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)

        candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version_key, reverse=True)
        pg_ctl = shutil.which("pg_ctl")
        if pg_ctl:
            candidates.append(Path(pg_ctl).resolve().parent)
        for d in candidates:
            if server_bin(d):
                return d
        return None

    @staticmethod
    def _install_postgres() -> None:
        if os.geteuid() != 0:
            raise StackError("PostgreSQL server binaries not found; install them "
                             "(sudo apt-get install -y postgresql)")
        _log("PostgreSQL server not found; installing it with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        _run(["apt-get", "update", "-q"], what="apt-get update", timeout=600, env=env)
        _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
             what="apt-get install postgresql", timeout=1200, env=env)

    @property
    def _pg_location_file(self) -> Path:
        return self.state_dir / "pg.location"

    def _pg_base_recorded(self) -> Path | None:
        try:
            text = self._pg_location_file.read_text().strip()
        except OSError:
            text = ""
        if text:
            return Path(text)
        default = self.state_dir / "pg"
        return default if default.exists() else None

    def _pg_base(self) -> Path:
        """Directory (owned by the server's user) holding data/, the log and the socket.

        ``<state>/pg`` when the server's user can reach it; otherwise (e.g. the
        repo under /root, mode 700) ``/var/tmp/society-ingest-<hash>/pg``. The
        choice is remembered in ``<state>/pg.location``.
        """
        recorded = self._pg_base_recorded()
        if recorded is not None and self._pg_location_file.exists():
            return recorded
        self.state_dir.mkdir(parents=True, exist_ok=True)
        user = self._pg_user()
        base = self.state_dir / "pg"
        if user is not None and not self._reachable_by(user, self.state_dir):
            digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:10]
            parent = Path("/var/tmp") / f"society-ingest-{digest}"
            parent.mkdir(mode=0o755, exist_ok=True)
            os.chmod(parent, 0o755)
            base = parent / "pg"
            _log(f"{self.state_dir} is not reachable by user {user}; "
                 f"keeping PostgreSQL data in {base}")
        self._pg_location_file.write_text(f"{base}\n")
        return base

    @staticmethod
    def _reachable_by(user: str, path: Path) -> bool:
        res = subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(path)],
                             capture_output=True, cwd="/")
        return res.returncode == 0

    def _initdb(self, base: Path) -> None:
        user = self._pg_user()
        base.mkdir(parents=True, exist_ok=True)
        if user is not None:
            pw = pwd.getpwnam(user)
            os.chown(base, pw.pw_uid, pw.pw_gid)
        os.chmod(base, 0o700)
        data = base / "data"
        if data.exists():  # a failed earlier initdb
            shutil.rmtree(data)
        locale = "C.UTF-8" if self._has_c_utf8() else "C"
        _log(f"initdb {data} (superuser {PG_SUPERUSER}, run as {user or 'current user'})")
        pwfile = base / "superuser.pw"
        pwfile.write_text(PG_PASSWORD + "\n")
        if user is not None:
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        try:
            # Unix socket: trust (the stack's own tools); TCP: password (what clients use).
            self._as_pg_user(
                [str(self._pg_tool("initdb")), "-D", str(data), "--auth-local=trust",
                 "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-U", PG_SUPERUSER,
                 "--encoding=UTF8", f"--locale={locale}"],
                what="initdb", timeout=180)
        finally:
            pwfile.unlink(missing_ok=True)
        conf = data / "postgresql.conf"
        with open(conf, "a") as f:
            f.write("\n# society-ingest local stack (written by scripts/localstack.py)\n"
                    "include_if_exists = 'society_stack.conf'\n")

    def _check_pg_version(self, data: Path) -> None:
        have = (data / "PG_VERSION").read_text().strip()
        binver = self._pg_tool("postgres")
        try:
            out = subprocess.run([str(binver), "--version"], capture_output=True, text=True,
                                 timeout=10).stdout
        except OSError:
            return
        m = re.search(r"(\d+)(?:\.\d+)?", out)
        if m and m.group(1) != have.split(".")[0]:
            raise StackError(
                f"PostgreSQL data in {data} is version {have} but the server binaries are {m.group(1)}; "
                f"run 'scripts/stack down' and remove {data.parent} to recreate it")

    def _write_pg_conf(self, base: Path) -> None:
        data = base / "data"
        socket_dir = str(base) if len(str(base)) < 90 else ""  # unix socket paths max ~107 bytes
        conf = (
            f"listen_addresses = '{HOST}'\n"
            f"port = {self.pg_port}\n"
            f"unix_socket_directories = '{socket_dir}'\n"
            "max_connections = 200\n"
            "shared_buffers = 256MB\n"
            "max_wal_size = 2GB\n"
            "log_min_messages = warning\n"
            "log_line_prefix = '%m [%p] %q%u@%d '\n"
        )
        path = data / "society_stack.conf"
        path.write_text(conf)
        user = self._pg_user()
        if user is not None:
            pw = pwd.getpwnam(user)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _postgres_pid(self) -> int | None:
        base = self._pg_base_recorded()
        if base is None:
            return None
        pid = _read_pid(base / "data" / "postmaster.pid")
        if pid is None or not _pid_alive(pid):
            return None
        args = _cmdline(pid)
        if not args or not Path(args[0]).name.startswith("postgres"):
            return None
        return pid

    def _psql(self, sql: str, *, db: str, timeout: float = 30) -> str:
        res = _run([str(self._pg_tool("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-tA",
                    "-h", HOST, "-p", str(self.pg_port), "-U", PG_SUPERUSER, "-d", db, "-c", sql],
                   what="psql", timeout=timeout,
                   env={**self._pg_env(), "PGCONNECT_TIMEOUT": "5"}, cwd="/")
        return res.stdout.strip()

    def _wait_postgres_ready(self, timeout: float) -> None:
        isready = str(self._pg_tool("pg_isready"))
        deadline = time.monotonic() + timeout
        while True:
            res = subprocess.run([isready, "-q", "-h", HOST, "-p", str(self.pg_port), "-U", PG_SUPERUSER,
                                  "-d", "postgres", "-t", "2"],
                                 capture_output=True, env=self._pg_env(), cwd="/")
            if res.returncode == 0:
                try:
                    self._psql("select 1", db="postgres", timeout=10)
                    return
                except StackError:
                    pass
            if time.monotonic() > deadline:
                base = self._pg_base_recorded()
                raise StackError(f"postgres did not become ready on {HOST}:{self.pg_port}",
                                 _tail(base / "postgres.log") if base else "")
            time.sleep(0.2)

    def _ensure_database(self) -> None:
        exists = self._psql(f"select 1 from pg_database where datname = '{DATABASE_NAME}'",
                            db="postgres")
        if exists != "1":
            _log(f"creating database {DATABASE_NAME}")
            self._psql(f'create database "{DATABASE_NAME}"', db="postgres")


_POM = f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by scripts/localstack.py: the Kafka broker's runtime classpath. -->
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
# Written by scripts/localstack.py on every start; edit the script, not this file.
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
# Written by scripts/localstack.py: broker logs (INFO) to one rolling file.
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


# --------------------------------------------------------------------------- CLI


def _free_ports(stack: LocalStack) -> tuple[int, int]:
    """Ports for this state dir: the configured ones when free (or ours), else the next free."""
    kafka, pg = stack.kafka_port, stack.pg_port
    if stack._kafka_pid() is None:
        while not (_port_bindable(kafka) and _port_bindable(kafka + 1)):
            kafka += 2
    if stack._postgres_pid() is None:
        while not _port_bindable(pg) or pg in (kafka, kafka + 1):
            pg += 1
    return kafka, pg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stack", description="Local Kafka (KRaft) + PostgreSQL for society-ingest, without Docker.")
    parser.add_argument("--state-dir", help="state dir (default $SOCIETY_STACK_DIR or <repo>/.stack)")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    sub.add_parser("up", help="start both services, wait until ready, print env lines")
    sub.add_parser("down", help="stop both services (data is kept)")
    st = sub.add_parser("status", help="show both services (exit 0 when both are up, 3 otherwise)")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("env", help="print export lines for eval \"$(scripts/stack env)\"")
    sub.add_parser("free-ports", help="print SOCIETY_*_PORT exports, moved off ports used by others")
    for name in ("start", "restart"):
        p = sub.add_parser(name, help=f"{name} one service")
        p.add_argument("service", choices=("kafka", "postgres"))
    p = sub.add_parser("stop", help="stop one service")
    p.add_argument("service", choices=("kafka", "postgres"))
    p.add_argument("--kill", action="store_true",
                   help="crash-like stop: SIGKILL for kafka, immediate mode for postgres")
    args = parser.parse_args(argv)

    try:
        stack = LocalStack(args.state_dir)
        if args.cmd == "up":
            t0 = time.monotonic()
            stack.up()
            _log(f"up in {time.monotonic() - t0:.1f} s (stop with: scripts/stack down)")
            sys.stdout.write(stack.env_lines())
        elif args.cmd == "down":
            stack.down()
        elif args.cmd == "env":
            sys.stdout.write(stack.env_lines())
        elif args.cmd == "free-ports":
            kafka, pg = _free_ports(stack)
            print(f"export SOCIETY_KAFKA_PORT={kafka}\nexport SOCIETY_PG_PORT={pg}")
        elif args.cmd == "status":
            st = stack.status()
            if args.json:
                print(json.dumps(st, indent=2))
            else:
                k, p = st["kafka"], st["postgres"]
                print(f"state dir  {st['state_dir']}")
                print(f"kafka      {k['state']:8} pid {k['pid'] or '-':<8} {k['bootstrap']}  log {k['log']}")
                print(f"postgres   {p['state']:8} pid {p['pid'] or '-':<8} {p['url']}  log {p['log'] or '-'}")
            return 0 if st["kafka"]["state"] == st["postgres"]["state"] == "up" else 3
        elif args.cmd in ("start", "stop", "restart"):
            if args.cmd == "stop":
                if args.service == "kafka":
                    stack.stop_kafka(kill=args.kill)
                else:
                    stack.stop_postgres(mode="immediate" if args.kill else "fast")
            else:
                getattr(stack, f"{args.cmd}_{args.service}")()
    except StackError as e:
        print(f"stack: error: {e}", file=sys.stderr)
        if e.detail:
            print(e.detail, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
