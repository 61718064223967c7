"""What the stack needs from the operating system: subprocesses, pid files, ports, a lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from ._config import HOST
from ._errors import PortInUse, StackError

# Runs a service detached: this tiny Python child starts it in a new session,
# writes its pid file and exits at once, so the service is never a child of the
# caller (no zombie to reap, no ResourceWarning from a still-running Popen in a
# pytest process) and its pid is recorded even if the caller dies right after.
_LAUNCHER = (
    "import subprocess, sys\n"
    "log = open(sys.argv[1], 'ab')\n"
    "p = subprocess.Popen(sys.argv[3:], stdin=subprocess.DEVNULL, stdout=log,\n"
    "                     stderr=subprocess.STDOUT, start_new_session=True)\n"
    "open(sys.argv[2], 'w').write(f'{p.pid}\\n')\n"
    "print(p.pid, flush=True)\n"
)


def log(msg: str) -> None:
    print(f"stack: {msg}", file=sys.stderr, flush=True)


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ("" when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def run(cmd: list[str], *, what: str, log: Path | None = None, timeout: float | None = None,
        **kw) -> subprocess.CompletedProcess:
    """``subprocess.run`` that raises StackError (first output line, log tail) on failure."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except FileNotFoundError as e:
        raise StackError(f"{what}: {cmd[0]} not found") from e
    except subprocess.TimeoutExpired as e:
        raise StackError(f"{what}: timed out after {timeout:.0f} s", tail(log) if log else "") from e
    if res.returncode != 0:
        out = (res.stdout + res.stderr).strip()
        detail = out[-4000:]
        if log is not None:
            detail = (detail + "\n--- " + str(log) + " ---\n" + tail(log)).strip()
        first = next((ln for ln in out.splitlines() if ln.strip()), "")
        raise StackError(f"{what} failed (exit {res.returncode}){': ' + first if first else ''}", detail)
    return res


def launch_detached(cmd: list[str], *, output: Path, pid_file: Path, cwd: Path) -> int:
    """Start ``cmd`` in its own session (stdout and stderr appended to ``output``); its pid,
    also written to ``pid_file``."""
    res = run([sys.executable, "-I", "-W", "ignore", "-c", _LAUNCHER, str(output), str(pid_file), *cmd],
              what=f"launch {Path(cmd[0]).name}", timeout=30, cwd=cwd)
    return int(res.stdout.split()[0])


# ------------------------------------------------------------------ processes
#
# A service is found through its pid file (Kafka's, written at launch; PostgreSQL's
# postmaster.pid) and trusted only while that pid still runs the expected command
# line, so a stale pid file or a reused pid is never taken for a service. Nothing
# scans the process table. Three per-pid reads of /proc remain, because the standard
# library has no call for any: another process's command line, whether a pid is a
# zombie (os.kill(pid, 0) succeeds on one), and whether a pid listens on a port
# (``listens_on``, so status never reports a pid on a port it does not hold). Our services become zombies
# when they exit: they are detached orphans, reaped by whatever init the machine
# has, which in some containers is never. The stack is Linux-only anyway (runuser,
# Debian's PostgreSQL packages).


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """True when ``pid`` runs and is not a zombie."""
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    # "pid (comm) S ..." where comm may contain spaces and parentheses.
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X", b"")


def command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def running(pid_file: Path, is_ours: Callable[[list[str]], bool]) -> int | None:
    """The pid in ``pid_file`` while that process lives and ``is_ours(its command line)``."""
    pid = read_pid(pid_file)
    if pid is None or not pid_alive(pid) or not is_ours(command_line(pid)):
        return None
    return pid


def stop_process(pid: int, *, name: str, kill: bool = False, grace_s: float) -> None:
    """SIGTERM and wait up to ``grace_s``, then SIGKILL; ``kill=True`` sends SIGKILL at once."""
    def gone() -> bool:
        return not pid_alive(pid)

    if not kill:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if wait_until(gone, grace_s, 0.05):
            return
        log(f"{name} did not stop within {grace_s:.0f} s, sending SIGKILL")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not wait_until(gone, 10, 0.05):
        raise StackError(f"{name} (pid {pid}) survived SIGKILL")


def wait_until(cond: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``cond`` until it is true (True) or ``timeout`` seconds have passed (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


# ---------------------------------------------------------------------- ports


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_bindable(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a socket listening on TCP ``port``.

    The listening sockets on ``port`` in the pid's network namespace (/proc/<pid>/net/tcp
    and tcp6), then whether one of them is among the pid's open files. False when
    either cannot be read: a pid is never reported on a port it was not seen on.
    """
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            # sl local_address rem_address st ... inode: "0100007F:4E84", st 0A = LISTEN
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return False
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"{fd_dir}/{fd}") in inodes:
                return True
        except OSError:
            continue  # closed meanwhile
    return False


def require_free_port(port: int, *, service: str, env_var: str, state_dir: Path) -> None:
    """Raise PortInUse, naming the port and ``env_var``, unless ``port`` is free."""
    if not port_bindable(port):
        raise PortInUse(
            f"port {HOST}:{port} for {service} is already in use, not by the stack in {state_dir} "
            f"(ss -ltnp 'sport = :{port}' shows by what); stop that or set {env_var} "
            "(scripts/stack free-ports picks free ports)")


# ----------------------------------------------------------------------- lock


class StateLock:
    """Re-entrant exclusive lock on a file: a thread lock within the process, flock across processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        try:
            if self._depth == 0:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._fd = fd
            self._depth += 1
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None
        self._thread_lock.release()
