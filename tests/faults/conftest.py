"""Fault tests restart the services, so they need the project's local stack."""

from __future__ import annotations

import pytest

from localstack import LocalStack


@pytest.fixture
def stack(services) -> LocalStack:
    if services.stack is None:
        pytest.fail(
            f"fault tests stop and restart Kafka and PostgreSQL, which needs the local stack "
            f"(scripts/stack); services came from {services.source}"
        )
    yield services.stack
    # Leave both services up for the next test, whatever this one did.
    services.stack.start_kafka()
    services.stack.start_postgres()
