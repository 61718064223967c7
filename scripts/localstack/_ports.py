"""The ports a state dir's services were started on, so that later commands address that stack.

Kafka and PostgreSQL record their port in ``<state>/ports`` each time they are
launched (under the state dir's lock, once the port is known to be free)::

    kafka=28090
    postgres=28500

A LocalStack on that state dir takes its ports from there unless it is given
others (arguments, SOCIETY_KAFKA_PORT, SOCIETY_PG_PORT); given ports that
disagree with a *running* service are an error (``PortMismatch``), never the
address of another stack. A stack started before this file existed is read from
the configs written at its start: ``<state>/kafka/server.properties`` (_kafka)
and ``<pg base>/data/society_stack.conf`` (_postgres).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

FILE_NAME = "ports"
SERVICES = ("kafka", "postgres")
#: The variable that sets each service's port (named in errors).
ENV_VARS = {"kafka": "SOCIETY_KAFKA_PORT", "postgres": "SOCIETY_PG_PORT"}


def recorded(state_dir: Path) -> dict[str, int]:
    """The port each service of ``state_dir`` was last started on (a service never started is missing)."""
    ports = _read_file(state_dir / FILE_NAME)
    if "kafka" not in ports:
        port = _search(state_dir / "kafka" / "server.properties", r"^listeners=PLAINTEXT://[^,:]+:(\d+)")
        if port:
            ports["kafka"] = port
    if "postgres" not in ports:
        base = pg_base(state_dir)
        port = _search(base / "data" / "society_stack.conf", r"^port\s*=\s*(\d+)") if base else None
        if port:
            ports["postgres"] = port
    return ports


def record(state_dir: Path, service: str, port: int) -> None:
    """Remember that ``service`` is being started on ``port`` (callers hold the state dir's lock)."""
    if service not in SERVICES:
        raise ValueError(f"service must be one of {SERVICES}, not {service!r}")
    path = state_dir / FILE_NAME
    ports = _read_file(path)
    if ports.get(service) == port and path.exists():
        return
    ports[service] = port
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
    tmp.write_text("# Written by scripts/localstack when a service starts: the ports this stack listens on.\n"
                   + "".join(f"{s}={ports[s]}\n" for s in SERVICES if s in ports))
    os.replace(tmp, path)  # readers never see half a file


def _read_file(path: Path) -> dict[str, int]:
    try:
        text = path.read_text()
    except OSError:
        return {}
    ports = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in SERVICES and value.strip().isdigit():
            ports[key.strip()] = int(value.strip())
    return ports


def _search(path: Path, pattern: str) -> int | None:
    try:
        m = re.search(pattern, path.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def pg_base(state_dir: Path) -> Path | None:
    """As ``Postgres.base_recorded``: ``<state>/pg.location``'s directory, else ``<state>/pg``."""
    try:
        text = (state_dir / "pg.location").read_text().strip()
    except OSError:
        text = ""
    if text:
        return Path(text)
    default = state_dir / "pg"
    return default if default.exists() else None
