"""Private local stacks for the stack's own tests: their own state dir and free ports.

Never the default ports (19092/15432) nor those in SOCIETY_*_PORT: they belong to
the shared stack the rest of the suite runs against.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from localstack import DEFAULT_KAFKA_PORT, DEFAULT_PG_PORT, LocalStack
from localstack._processes import port_bindable

REPO = Path(__file__).resolve().parents[2]
STACK_SCRIPT = REPO / "scripts" / "stack"
#: Below Linux's ephemeral range (32768+), so client connections do not take them meanwhile.
PORT_RANGE = (20000, 32000)


def free_ports() -> tuple[int, int]:
    """A Kafka port (the controller and the SASL_SSL listener take the next two) and a PostgreSQL port, all free now."""
    taken = {DEFAULT_KAFKA_PORT, DEFAULT_KAFKA_PORT + 1, DEFAULT_KAFKA_PORT + 2, DEFAULT_PG_PORT}
    for name in ("SOCIETY_KAFKA_PORT", "SOCIETY_PG_PORT"):
        if os.environ.get(name, "").isdigit():
            port = int(os.environ[name])
            taken |= {port, port + 1, port + 2}
    while True:
        kafka, pg = random.randrange(*PORT_RANGE, 2), random.randrange(*PORT_RANGE)
        wanted = {kafka, kafka + 1, kafka + 2, pg}
        if len(wanted) == 4 and not wanted & taken and all(port_bindable(p) for p in wanted):
            return kafka, pg


@dataclass
class PrivateStack:
    """Where a private stack lives; ``local()`` drives it from this process, ``cli()`` from another."""

    state_dir: Path
    kafka_port: int
    pg_port: int

    def local(self) -> LocalStack:
        return LocalStack(self.state_dir, kafka_port=self.kafka_port, pg_port=self.pg_port)

    def env(self) -> dict[str, str]:
        return {**os.environ, "SOCIETY_STACK_DIR": str(self.state_dir),
                "SOCIETY_KAFKA_PORT": str(self.kafka_port), "SOCIETY_PG_PORT": str(self.pg_port)}

    def env_without_ports(self) -> dict[str, str]:
        """As a later shell has it: the state dir exported, the port variables not."""
        env = self.env()
        del env["SOCIETY_KAFKA_PORT"], env["SOCIETY_PG_PORT"]
        return env

    def cli(self, *args: str, **kw) -> subprocess.CompletedProcess:
        """``scripts/stack *args`` in another process (the wrapper, as users run it)."""
        return subprocess.run([str(STACK_SCRIPT), *args], capture_output=True, text=True, timeout=180,
                              env=kw.pop("env", self.env()), cwd=REPO, **kw)

    def discard(self) -> None:
        """Stop both services and remove their data, including a data dir outside the state dir."""
        self.local().down()
        location = self.state_dir / "pg.location"
        if location.exists():
            base = Path(location.read_text().strip())
            if self.state_dir not in base.parents:  # /var/tmp/society-ingest-<hash>/pg
                shutil.rmtree(base.parent, ignore_errors=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)


def new_private_stack(state_dir: Path) -> PrivateStack:
    return PrivateStack(state_dir, *free_ports())

