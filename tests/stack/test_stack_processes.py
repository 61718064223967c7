"""Pid files, zombies and the state-dir lock: how one stack is shared by several processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from localstack._processes import StateLock, listens_on, pid_alive, running, wait_until

pytestmark = pytest.mark.stack

_TRY_LOCK = textwrap.dedent("""
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("held")
    else:
        print("free")
""")


def _other_process_sees(path: Path) -> str:
    return subprocess.run([sys.executable, "-c", _TRY_LOCK, str(path)], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()


def test_the_lock_is_held_across_processes_until_the_outermost_exit(tmp_path: Path) -> None:
    lock = StateLock(tmp_path / "state" / ".lock")
    with lock:
        with lock:  # re-entrant: up() calls start_postgres() under the same lock
            assert _other_process_sees(lock.path) == "held"
        assert _other_process_sees(lock.path) == "held"
    assert _other_process_sees(lock.path) == "free"


def test_the_lock_serialises_threads_of_one_process(tmp_path: Path) -> None:
    lock, inside, overlaps = StateLock(tmp_path / ".lock"), [], []

    def work() -> None:
        for _ in range(50):
            with lock:
                inside.append(1)
                overlaps.append(len(inside))
                inside.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(overlaps) == 1 and len(overlaps) == 200


def test_a_zombie_is_not_alive() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Exited but not reaped yet: a zombie, which os.kill(pid, 0) would still find.
        assert wait_until(lambda: not pid_alive(proc.pid), timeout=10)
        os.kill(proc.pid, 0)
    finally:
        proc.wait()
    assert pid_alive(os.getpid())


def test_a_pid_file_counts_only_while_its_process_runs_the_expected_command(tmp_path: Path) -> None:
    pid_file = tmp_path / "service.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    assert running(pid_file, lambda args: Path(args[0]).name.startswith("python")) == os.getpid()
    assert running(pid_file, lambda args: "kafka.Kafka" in args) is None  # a reused pid

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    pid_file.write_text(f"{proc.pid}\n")  # a stale pid file
    assert running(pid_file, lambda args: True) is None
    pid_file.write_text("not a pid\n")
    assert running(pid_file, lambda args: True) is None
    assert running(tmp_path / "missing.pid", lambda args: True) is None


def test_listens_on_sees_only_the_ports_a_process_listens_on() -> None:
    with socket.socket() as listening, socket.socket() as bound_only:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        bound_only.bind(("127.0.0.1", 0))
        port, other = listening.getsockname()[1], bound_only.getsockname()[1]
        assert listens_on(os.getpid(), port)
        assert not listens_on(os.getpid(), other)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            assert not listens_on(child.pid, port)  # the port is held, but not by that pid
        finally:
            child.kill()
            child.wait()
    assert not listens_on(child.pid, port)  # gone
