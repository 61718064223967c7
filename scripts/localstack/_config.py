"""Versions, addresses, credentials and timeouts of the local stack, each with its reason."""

from __future__ import annotations

from pathlib import Path

KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
# log4j-core 2.24.3 is what kafka_2.13:4.1.1 depends on. Kafka 4.1 still uses
# slf4j-api 1.7.36, so the binding is log4j-slf4j-impl (the SLF4J 1.x binding);
# log4j-slf4j2-impl would lose to slf4j-api 1.7.36 in Maven's dependency
# mediation and SLF4J would fall back to its no-op logger.
LOG4J_VERSION = "2.24.3"

HOST = "127.0.0.1"
DEFAULT_KAFKA_PORT = 19092  # the KRaft controller listens on the next port, SASL_SSL on the one after
DEFAULT_PG_PORT = 15432
DATABASE_NAME = "society"
PG_SUPERUSER = "postgres"
#: The local stack's superuser password. TCP connections must present it (as a
#: real server would), so a wrong password fails here as it would in production.
PG_PASSWORD = "society-local"
#: The SASL_SSL listener's user and mechanism (its password is random per state dir, see _sasl).
SASL_USERNAME = "society"
SASL_MECHANISM = "SCRAM-SHA-512"
#: Kafka's minimum for SCRAM-SHA-512 is 4096; 8192 is the Java client tools' default.
SCRAM_ITERATIONS = 8192

KAFKA_READY_TIMEOUT_S = 90.0
KAFKA_STOP_TIMEOUT_S = 30.0  # SIGTERM, then SIGKILL after this long
KAFKA_HEAP = ("-Xmx1G", "-Xms256m")
PG_START_TIMEOUT_S = 60
PG_READY_TIMEOUT_S = 30

#: The checkout this package lives in (scripts/localstack/ -> the repo); its
#: ``.stack`` is the default state dir.
REPO_ROOT = Path(__file__).resolve().parents[2]
