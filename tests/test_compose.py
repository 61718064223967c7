"""docker-compose.yml agrees with the local stack and wires the worker to its services."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

import localstack  # scripts/ is put on sys.path by conftest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    with (REPO / "docker-compose.yml").open(encoding="utf-8") as f:
        doc = yaml.safe_load(f)  # resolves anchors and << merge keys
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict)
    return doc


@pytest.fixture(scope="module")
def compose_services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _names(service: dict[str, Any], name: str) -> set[str]:
    """Names other containers reach `service` by: its service name and hostname."""
    return {name} | ({service["hostname"]} if service.get("hostname") else set())


def test_kafka_image_is_the_local_stack_version(compose_services: dict[str, Any]) -> None:
    assert compose_services["kafka"]["image"] == f"apache/kafka:{localstack.KAFKA_VERSION}"


def test_testcontainers_use_the_same_kafka_image(compose_services: dict[str, Any]) -> None:
    from support.images import KAFKA_IMAGE

    assert KAFKA_IMAGE == compose_services["kafka"]["image"]


def test_postgres_image_is_present(compose_services: dict[str, Any]) -> None:
    image = compose_services["postgres"]["image"]
    assert isinstance(image, str) and image.startswith("postgres:") and len(image) > len("postgres:")


def test_worker_reaches_kafka_by_its_service_name(compose_services: dict[str, Any]) -> None:
    bootstrap = _env(compose_services["worker"])["KAFKA_BOOTSTRAP_SERVERS"]
    hosts = [entry.rsplit(":", 1) for entry in bootstrap.split(",")]
    kafka_names = _names(compose_services["kafka"], "kafka")
    assert hosts and all(host in kafka_names and port.isdigit() for host, port in hosts), bootstrap
    # ...on a listener the broker advertises under that name.
    advertised = _env(compose_services["kafka"]).get("KAFKA_ADVERTISED_LISTENERS", "")
    for host, port in hosts:
        assert f"//{host}:{port}" in advertised, (bootstrap, advertised)


def test_worker_reaches_postgres_by_its_service_name(compose_services: dict[str, Any]) -> None:
    url = urlsplit(_env(compose_services["worker"])["DATABASE_URL"])
    assert url.scheme in ("postgresql", "postgres")
    assert url.hostname in _names(compose_services["postgres"], "postgres")
    pg = _env(compose_services["postgres"])
    if "POSTGRES_DB" in pg:
        assert url.path.lstrip("/") == pg["POSTGRES_DB"]
    if "POSTGRES_USER" in pg:
        assert url.username == pg["POSTGRES_USER"]
    if "POSTGRES_PASSWORD" in pg:
        assert url.password == pg["POSTGRES_PASSWORD"]
    assert url.port in (None, 5432)  # the container's port, not the host mapping


def test_worker_depends_on_kafka_and_postgres(compose_services: dict[str, Any]) -> None:
    depends = compose_services["worker"].get("depends_on") or []
    names = set(depends) if isinstance(depends, (list, dict)) else set()
    assert {"kafka", "postgres"} <= names, depends


def test_worker_serves_metrics_on_a_published_port(compose_services: dict[str, Any]) -> None:
    worker = compose_services["worker"]
    command = worker["command"]
    assert isinstance(command, list) and "consume" in command, command
    args = command[command.index("consume") + 1:]
    port = args[args.index("--metrics-port") + 1]
    # Inside a container the default 127.0.0.1 would be unreachable for Prometheus.
    assert args[args.index("--metrics-host") + 1] == "0.0.0.0"
    assert port.isdigit() and f"{port}:{port}" in [str(p) for p in worker.get("ports") or []]
    assert f":{port}/healthz" in " ".join(worker["healthcheck"]["test"])
