"""LocalStack: the facade over one Kafka broker and one PostgreSQL server under a state dir."""

from __future__ import annotations

import os
from pathlib import Path

from ._config import (
    DATABASE_NAME,
    DEFAULT_KAFKA_PORT,
    DEFAULT_PG_PORT,
    HOST,
    PG_PASSWORD,
    PG_SUPERUSER,
    REPO_ROOT,
    SASL_USERNAME,
)
from ._errors import PortMismatch, StackError
from ._kafka import Kafka
from ._ports import ENV_VARS, recorded
from ._postgres import Postgres
from ._processes import StateLock, listens_on, port_bindable


class LocalStack:
    """A single-node Kafka (KRaft) and a PostgreSQL server kept under one state dir.

    Every method is idempotent and safe to call from several processes at once
    (a file lock in the state dir serialises starts and stops). A stack started
    by another process is found through its pid files, and can be stopped or
    restarted from here.

    Unlike the rest of the project, the constructor reads the environment
    (SOCIETY_STACK_DIR, SOCIETY_KAFKA_PORT, SOCIETY_PG_PORT, SOCIETY_INGEST_CACHE):
    ``LocalStack()`` in a test fixture must find the stack ``scripts/stack`` started.

    Each port comes from the argument, else its variable, else the port the state
    dir's service was last started on (``<state>/ports``, see ``_ports``), else the
    default. A port given (argument or variable) that disagrees with a running
    service of the state dir raises PortMismatch: commands must not address another
    stack than the one in the state dir.
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
        given = {"kafka": _given_port(kafka_port, "kafka_port", ENV_VARS["kafka"]),
                 "postgres": _given_port(pg_port, "pg_port", ENV_VARS["postgres"])}
        started_on = recorded(self.state_dir)
        self.kafka_port = given["kafka"][0] or started_on.get("kafka") or DEFAULT_KAFKA_PORT
        self.controller_port = self.kafka_port + 1
        self.kafka_sasl_port = self.kafka_port + 2
        self.pg_port = given["postgres"][0] or started_on.get("postgres") or DEFAULT_PG_PORT
        if cache_dir is None:
            cache_dir = os.environ.get("SOCIETY_INGEST_CACHE") or Path.home() / ".cache" / "society-ingest"
        self.cache_dir = Path(cache_dir).expanduser().absolute()
        self._kafka = Kafka(self.state_dir, self.cache_dir, self.kafka_port)
        self._postgres = Postgres(self.state_dir, self.pg_port)
        self._lock = StateLock(self.state_dir / ".lock")
        self._refuse_other_ports(given, started_on)

    def _refuse_other_ports(self, given: dict[str, tuple[int | None, str]], started_on: dict[str, int]) -> None:
        """PortMismatch when a given port is not the one a running service of the state dir listens on."""
        for service, pid in (("kafka", self._kafka.pid), ("postgres", self._postgres.pid)):
            port, source = given[service]
            running_on = started_on.get(service)
            if port is None or running_on is None or port == running_on:
                continue
            running = pid()
            if running is not None:
                raise PortMismatch(
                    f"{source}={port}, but the stack in {self.state_dir} runs {service} on {HOST}:{running_on} "
                    f"(pid {running}): unset {ENV_VARS[service]} (or set it to {running_on}) to use that stack, "
                    "or set SOCIETY_STACK_DIR to another state dir for a stack of its own")

    @property
    def kafka_bootstrap(self) -> str:
        return self._kafka.bootstrap

    @property
    def database_url(self) -> str:
        return f"postgresql://{PG_SUPERUSER}:{PG_PASSWORD}@{HOST}:{self.pg_port}/{DATABASE_NAME}"

    @property
    def kafka_home(self) -> Path:
        return self._kafka.home

    @property
    def kafka_libs(self) -> Path:
        return self._kafka.libs

    @property
    def kafka_dir(self) -> Path:
        return self._kafka.dir

    @property
    def kafka_sasl_bootstrap(self) -> str:
        """The SASL_SSL listener (SCRAM-SHA-512, user ``society``): see ``kafka_client_config``."""
        return self._kafka.sasl.bootstrap

    @property
    def kafka_client_config(self) -> Path:
        """A ``--kafka-config`` file for the SASL_SSL listener: address, user, password, CA."""
        return self._kafka.sasl.client_config

    def has_sasl_listener(self) -> bool:
        """Whether the broker was started with the SASL_SSL listener (a stack started by older code was not)."""
        return self._kafka.has_sasl_listener()

    def env(self) -> dict[str, str]:
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap, "DATABASE_URL": self.database_url}
        if self.has_sasl_listener():
            # Not the clients' own KAFKA_SASL_* names: those would turn every client to SASL.
            sasl = self._kafka.sasl
            env.update({
                "SOCIETY_STACK_SASL_BOOTSTRAP_SERVERS": sasl.bootstrap,
                "SOCIETY_STACK_SASL_USERNAME": SASL_USERNAME,
                "SOCIETY_STACK_SASL_PASSWORD_FILE": str(sasl.password_file),
                "SOCIETY_STACK_SSL_CA_LOCATION": str(sasl.ca),
                "SOCIETY_STACK_KAFKA_CONFIG": str(sasl.client_config),
            })
        return env

    def env_lines(self) -> str:
        return "".join(f"export {k}={v}\n" for k, v in self.env().items())

    def ensure_kafka_jars(self) -> Path:
        """Resolve kafka_2.13 and its runtime classpath into the cache (once)."""
        return self._kafka.ensure_jars()

    # ------------------------------------------------------------ both services

    def up(self) -> None:
        """Start both services and wait until they answer. No-op when already up."""
        with self._lock:
            kafka_runs = self._kafka.pid() is not None
            # Both ports before either service starts: a conflict leaves nothing half-started.
            if not kafka_runs:
                self._kafka.check_ports()
            if self._postgres.pid() is None:
                self._postgres.check_port()
            if not kafka_runs:
                self._kafka.launch()  # the JVM boots while PostgreSQL starts
            self._postgres.start()
            self._kafka.wait_ready()

    def down(self) -> None:
        """Stop both services (Kafka: SIGTERM, SIGKILL after 30 s; PostgreSQL: fast)."""
        with self._lock:
            errors = []
            for stop in (self.stop_kafka, self.stop_postgres):
                try:
                    stop()
                except StackError as e:
                    errors.append(e)
            if errors:
                raise errors[0]

    def status(self) -> dict:
        """Both services: ``state`` is "up" (ours, listening on the port shown and
        answering there), "starting" (ours, not yet both), "down", or "foreign"
        (something else answers on our port)."""
        def state(pid: int | None, port: int, answers: bool) -> str:
            if pid is not None:
                return "up" if answers and listens_on(pid, port) else "starting"
            return "foreign" if answers else "down"

        kpid, ppid = self._kafka.pid(), self._postgres.pid()
        base = self._postgres.base_recorded()
        return {
            "state_dir": str(self.state_dir),
            "kafka": {
                "state": state(kpid, self.kafka_port, self.is_kafka_up()),
                "pid": kpid,
                "bootstrap": self.kafka_bootstrap,
                "sasl_bootstrap": self.kafka_sasl_bootstrap if self.has_sasl_listener() else None,
                "log": str(self._kafka.log),
                "data": str(self._kafka.data),
            },
            "postgres": {
                "state": state(ppid, self.pg_port, self.is_postgres_up()),
                "pid": ppid,
                "url": self.database_url,
                "log": str(base / "postgres.log") if base else None,
                "data": str(base / "data") if base else None,
            },
        }

    # ------------------------------------------------------------------- Kafka

    def start_kafka(self) -> None:
        with self._lock:
            self._kafka.start()

    def stop_kafka(self, kill: bool = False) -> None:
        """SIGTERM and wait (SIGKILL after 30 s); ``kill=True`` sends SIGKILL at once."""
        with self._lock:
            self._kafka.stop(kill=kill)

    def restart_kafka(self) -> None:
        with self._lock:
            self.stop_kafka()
            self.start_kafka()

    def is_kafka_up(self) -> bool:
        """The broker answers a metadata request and lists itself in it."""
        return self._kafka.answers()

    # -------------------------------------------------------------- PostgreSQL

    def start_postgres(self) -> None:
        with self._lock:
            self._postgres.start()

    def stop_postgres(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode``: "smart", "fast" (default) or "immediate" (crash-like)."""
        with self._lock:
            self._postgres.stop(mode)

    def restart_postgres(self) -> None:
        with self._lock:
            self.stop_postgres()
            self.start_postgres()

    def is_postgres_up(self) -> bool:
        """``select 1`` succeeds in the society database (False while it is missing)."""
        return self._postgres.answers()


def free_ports(stack: LocalStack) -> tuple[int, int]:
    """Ports for this state dir: the configured ones (given, else those it last ran on, else the
    defaults) when free (or ours), else the next free.

    Kafka takes three: its own, the controller's (+1) and the SASL_SSL listener's (+2).
    """
    kafka, pg = stack.kafka_port, stack.pg_port
    if stack._kafka.pid() is None:
        while not all(port_bindable(kafka + i) for i in range(3)):
            kafka += 2
    if stack._postgres.pid() is None:
        while not port_bindable(pg) or pg in (kafka, kafka + 1, kafka + 2):
            pg += 1
    return kafka, pg


def _given_port(arg: int | None, arg_name: str, env_var: str) -> tuple[int | None, str]:
    """The port given for a service, and where it came from (named in PortMismatch); None: not given."""
    if arg:
        return arg, arg_name
    return _env_port(env_var), env_var


def _env_port(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        port = int(raw)
    except ValueError:
        raise StackError(f"{name}={raw!r} is not a port number") from None
    if not 1 <= port <= 65534:
        raise StackError(f"{name}={port} is out of range")
    return port
