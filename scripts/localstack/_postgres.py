"""The PostgreSQL server: binaries, initdb, pg_ctl start/stop as an unprivileged user, readiness.

PostgreSQL refuses to run as root, and these machines run everything as root:
the server then runs as ``postgres`` (or ``nobody``) through ``runuser``. The
Unix socket trusts the stack's own tools; TCP asks for PG_PASSWORD, as a real
server would. Callers hold the stack's lock (LocalStack does) around starts and stops.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import re
import shutil
import subprocess
import time
from pathlib import Path

from ._config import (
    DATABASE_NAME,
    HOST,
    PG_PASSWORD,
    PG_READY_TIMEOUT_S,
    PG_START_TIMEOUT_S,
    PG_SUPERUSER,
)
from ._errors import StackError
from ._ports import pg_base, record
from ._processes import log, pid_alive, port_open, require_free_port, run, running, tail, wait_until

_STOP_MODES = ("smart", "fast", "immediate")


class Postgres:
    """One server whose data dir is ``<base>/data``; ``<base>`` is recorded in ``<state>/pg.location``."""

    def __init__(self, state_dir: Path, port: int) -> None:
        self.state_dir = state_dir
        self.port = port
        self._location_file = state_dir / "pg.location"
        self._bin: Path | None = None

    # ------------------------------------------------------------ lifecycle

    def pid(self) -> int | None:
        """The postmaster's pid, from ``postmaster.pid``, while it runs a ``postgres`` binary."""
        base = self.base_recorded()
        if base is None:
            return None
        return running(base / "data" / "postmaster.pid",
                       lambda args: bool(args) and Path(args[0]).name.startswith("postgres"))

    def start(self) -> None:
        if self.pid() is not None:
            self._wait_ready(PG_READY_TIMEOUT_S)
            return
        self.check_port()
        record(self.state_dir, "postgres", self.port)
        base = self._base()
        data = base / "data"
        if not (data / "PG_VERSION").exists():
            self._initdb(base)
        self._check_version(data)
        self._write_conf(base)
        log(f"starting postgres on {HOST}:{self.port} (data {data})")
        self._as_server_user(
            [str(self._tool("pg_ctl")), "-D", str(data), "-l", str(base / "postgres.log"),
             "-w", "-t", str(PG_START_TIMEOUT_S), "start"],
            what="pg_ctl start", log=base / "postgres.log", timeout=PG_START_TIMEOUT_S + 15)
        self._wait_ready(PG_READY_TIMEOUT_S)
        self._ensure_database()

    def check_port(self) -> None:
        """PortInUse unless the server's port is free."""
        require_free_port(self.port, service="postgres", env_var="SOCIETY_PG_PORT", state_dir=self.state_dir)

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode``: "smart", "fast" (default) or "immediate" (crash-like)."""
        if mode not in _STOP_MODES:
            raise ValueError(f"mode must be smart, fast or immediate, not {mode!r}")
        pid = self.pid()
        if pid is None:
            return
        base = self._base()
        log(f"stopping postgres (pid {pid}, mode {mode})")
        self._as_server_user(
            [str(self._tool("pg_ctl")), "-D", str(base / "data"), "-m", mode, "-w", "-t", "60", "stop"],
            what="pg_ctl stop", log=base / "postgres.log", timeout=75)
        if not wait_until(lambda: not pid_alive(pid), 15):
            raise StackError(f"postgres (pid {pid}) did not exit")

    def answers(self) -> bool:
        """``select 1`` succeeds in the society database (False while it is missing)."""
        if not port_open(self.port):
            return False
        if self._bin is None and _find_bin() is None:
            return False
        try:
            self._psql("select 1", db=DATABASE_NAME, timeout=10)
        except StackError:
            return False
        return True

    # --------------------------------------------------------------- places

    def base_recorded(self) -> Path | None:
        """The base dir chosen earlier (None before the first start)."""
        return pg_base(self.state_dir)

    def _base(self) -> Path:
        """Directory (owned by the server's user) holding data/, the log and the socket.

        ``<state>/pg`` when the server's user can reach it; otherwise (e.g. the
        repo under /root, mode 700) ``/var/tmp/society-ingest-<hash>/pg``. The
        choice is remembered in ``<state>/pg.location``.
        """
        recorded = self.base_recorded()
        if recorded is not None and self._location_file.exists():
            return recorded
        self.state_dir.mkdir(parents=True, exist_ok=True)
        user = _server_user()
        base = self.state_dir / "pg"
        if user is not None and not _reachable_by(user, self.state_dir):
            digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:10]
            parent = Path("/var/tmp") / f"society-ingest-{digest}"
            parent.mkdir(mode=0o755, exist_ok=True)
            os.chmod(parent, 0o755)
            base = parent / "pg"
            log(f"{self.state_dir} is not reachable by user {user}; keeping PostgreSQL data in {base}")
        self._location_file.write_text(f"{base}\n")
        return base

    # ---------------------------------------------------------------- setup

    def _initdb(self, base: Path) -> None:
        user = _server_user()
        base.mkdir(parents=True, exist_ok=True)
        _give_to(user, base)
        os.chmod(base, 0o700)
        data = base / "data"
        if data.exists():  # a failed earlier initdb
            shutil.rmtree(data)
        log(f"initdb {data} (superuser {PG_SUPERUSER}, run as {user or 'current user'})")
        pwfile = base / "superuser.pw"
        pwfile.write_text(PG_PASSWORD + "\n")
        _give_to(user, pwfile)
        try:
            # Unix socket: trust (the stack's own tools); TCP: password (what clients use).
            self._as_server_user(
                [str(self._tool("initdb")), "-D", str(data), "--auth-local=trust",
                 "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-U", PG_SUPERUSER,
                 "--encoding=UTF8", f"--locale={_locale()}"],
                what="initdb", timeout=180)
        finally:
            pwfile.unlink(missing_ok=True)
        with open(data / "postgresql.conf", "a") as f:
            f.write("\n# society-ingest local stack (written by scripts/localstack/_postgres.py)\n"
                    "include_if_exists = 'society_stack.conf'\n")

    def _check_version(self, data: Path) -> None:
        have = (data / "PG_VERSION").read_text().strip()
        try:
            out = subprocess.run([str(self._tool("postgres")), "--version"], capture_output=True,
                                 text=True, timeout=10).stdout
        except OSError:
            return
        m = re.search(r"(\d+)(?:\.\d+)?", out)
        if m and m.group(1) != have.split(".")[0]:
            raise StackError(
                f"PostgreSQL data in {data} is version {have} but the server binaries are {m.group(1)}; "
                f"run 'scripts/stack down' and remove {data.parent} to recreate it")

    def _write_conf(self, base: Path) -> None:
        socket_dir = str(base) if len(str(base)) < 90 else ""  # unix socket paths max ~107 bytes
        path = base / "data" / "society_stack.conf"
        path.write_text(
            f"listen_addresses = '{HOST}'\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = '{socket_dir}'\n"
            "max_connections = 200\n"
            "shared_buffers = 256MB\n"
            "max_wal_size = 2GB\n"
            "log_min_messages = warning\n"
            "log_line_prefix = '%m [%p] %q%u@%d '\n"
        )
        _give_to(_server_user(), path)

    def _ensure_database(self) -> None:
        exists = self._psql(f"select 1 from pg_database where datname = '{DATABASE_NAME}'", db="postgres")
        if exists != "1":
            log(f"creating database {DATABASE_NAME}")
            self._psql(f'create database "{DATABASE_NAME}"', db="postgres")

    # ---------------------------------------------------------------- tools

    def _psql(self, sql: str, *, db: str, timeout: float = 30) -> str:
        res = run([str(self._tool("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-tA",
                   "-h", HOST, "-p", str(self.port), "-U", PG_SUPERUSER, "-d", db, "-c", sql],
                  what="psql", timeout=timeout, env={**_client_env(), "PGCONNECT_TIMEOUT": "5"}, cwd="/")
        return res.stdout.strip()

    def _wait_ready(self, timeout: float) -> None:
        isready = str(self._tool("pg_isready"))
        deadline = time.monotonic() + timeout
        while True:
            res = subprocess.run([isready, "-q", "-h", HOST, "-p", str(self.port), "-U", PG_SUPERUSER,
                                  "-d", "postgres", "-t", "2"],
                                 capture_output=True, env=_client_env(), cwd="/")
            if res.returncode == 0:
                with contextlib.suppress(StackError):
                    self._psql("select 1", db="postgres", timeout=10)
                    return
            if time.monotonic() > deadline:
                base = self.base_recorded()
                raise StackError(f"postgres did not become ready on {HOST}:{self.port}",
                                 tail(base / "postgres.log") if base else "")
            time.sleep(0.2)

    def _as_server_user(self, cmd: list[str], *, what: str, log: Path | None = None,
                        timeout: float | None = None) -> subprocess.CompletedProcess:
        user = _server_user()
        full = ["runuser", "-u", user, "--", *cmd] if user else cmd
        base = self.base_recorded()
        cwd = base if base and base.exists() else "/"
        return run(full, what=what, log=log, timeout=timeout, env=_client_env(), cwd=cwd)

    def _tool(self, name: str) -> Path:
        if self._bin is None:
            self._bin = _find_bin()
            if self._bin is None:
                _install_server()
                self._bin = _find_bin()
                if self._bin is None:
                    raise StackError("PostgreSQL server binaries not found even after apt-get install postgresql")
        tool = self._bin / name
        if tool.exists():
            return tool
        found = shutil.which(name)
        if not found:
            raise StackError(f"{name} not found (looked in {self._bin} and PATH)")
        return Path(found)


def _server_user() -> str | None:
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


def _give_to(user: str | None, path: Path) -> None:
    if user is not None:
        pw = pwd.getpwnam(user)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _reachable_by(user: str, path: Path) -> bool:
    res = subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(path)], capture_output=True, cwd="/")
    return res.returncode == 0


def _locale() -> str:
    has_c_utf8 = any(Path(p).exists() for p in ("/usr/lib/locale/C.utf8", "/usr/lib/locale/C.UTF-8"))
    return "C.UTF-8" if has_c_utf8 else "C"


def _client_env() -> dict[str, str]:
    """The environment for PostgreSQL's tools: no PG* from the caller, the stack's password."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = PG_PASSWORD
    env["LC_ALL"] = _locale()
    env.pop("LANGUAGE", None)
    return env


def _find_bin() -> Path | None:
    def server_bin(d: Path) -> bool:
        return all((d / t).is_file() for t in ("initdb", "pg_ctl", "postgres"))

    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10).stdout.strip()
            if out:
                candidates.append(Path(out))

    def version_key(p: Path) -> tuple:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version_key, reverse=True)
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        candidates.append(Path(pg_ctl).resolve().parent)
    return next((d for d in candidates if server_bin(d)), None)


def _install_server() -> None:
    if os.geteuid() != 0:
        raise StackError("PostgreSQL server binaries not found; install them (sudo apt-get install -y postgresql)")
    log("PostgreSQL server not found; installing it with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-q"], what="apt-get update", timeout=600, env=env)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
        what="apt-get install postgresql", timeout=1200, env=env)
