"""Run a real Apache Kafka (KRaft, single node) and a real PostgreSQL locally, without Docker.

Kafka's jars come from Maven Central through the machine's Maven and run on the
machine's Java; PostgreSQL uses the machine's server binaries (Debian packages,
installed with apt-get when missing) and runs as an unprivileged user, because
PostgreSQL refuses to run as root.

Usable as a module (pytest fixtures, fault tests), with scripts/ on ``sys.path``::

    from localstack import LocalStack
    stack = LocalStack()          # state in <repo>/.stack or $SOCIETY_STACK_DIR
    stack.up()                    # idempotent; returns quickly when already up
    stack.kafka_bootstrap         # "127.0.0.1:19092"
    stack.kafka_sasl_bootstrap    # "127.0.0.1:19094": SASL_SSL, SCRAM-SHA-512; stack.kafka_client_config
    stack.database_url            # "postgresql://postgres:society-local@127.0.0.1:15432/society"
    stack.stop_kafka(kill=True); stack.start_kafka()   # data is kept

and as a CLI (``scripts/stack``, which runs ``python -m localstack``)::

    scripts/stack up | down | status [--json] | env | free-ports
    scripts/stack start|restart kafka|postgres
    scripts/stack stop kafka|postgres [--kill]

Environment: SOCIETY_STACK_DIR (state dir), SOCIETY_KAFKA_PORT (default 19092;
the controller listens on the next port, a SASL_SSL listener on the one after:
see ``_sasl``), SOCIETY_PG_PORT (default 15432),
SOCIETY_INGEST_CACHE (jar cache, default ~/.cache/society-ingest).
A state dir remembers the ports its services were started on (``<state>/ports``,
see ``_ports``): without the port variables every command uses those; with
variables that disagree with a running service it fails (PortMismatch).

Modules: ``_stack`` (LocalStack), ``_kafka`` (the broker), ``_postgres`` (the
server), ``_sasl`` (the SASL_SSL listener), ``_processes`` (pid files, ports, the lock, subprocesses),
``_ports`` (the ports a state dir was started on), ``_cli``.
"""

from ._cli import main
from ._config import (
    DATABASE_NAME,
    DEFAULT_KAFKA_PORT,
    DEFAULT_PG_PORT,
    HOST,
    KAFKA_VERSION,
    PG_PASSWORD,
    PG_SUPERUSER,
)
from ._errors import PortInUse, PortMismatch, StackError
from ._stack import LocalStack

__all__ = [
    "DATABASE_NAME",
    "DEFAULT_KAFKA_PORT",
    "DEFAULT_PG_PORT",
    "HOST",
    "KAFKA_VERSION",
    "PG_PASSWORD",
    "PG_SUPERUSER",
    "LocalStack",
    "PortInUse",
    "PortMismatch",
    "StackError",
    "main",
]
