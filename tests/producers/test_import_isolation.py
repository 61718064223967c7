"""``import producers`` stays light: no psycopg, no typer, no consumers (STYLE.md 4)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

_PROBE = """
import json, sys
import producers
from producers import *  # every name in __all__ must resolve
names = list(producers.__all__)
print(json.dumps({
    "modules": sorted(sys.modules),
    "all": names,
    "missing": [n for n in names if not hasattr(producers, n)],
    "star": sorted(n for n in names if n in globals()),
}))
"""


@pytest.fixture(scope="module")
def probe() -> dict:
    """Import producers in a fresh interpreter (this one has consumers loaded already)."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("forbidden", ["psycopg", "psycopg_binary", "typer", "rich", "consumers", "prometheus_client"])
def test_import_producers_does_not_load(probe: dict, forbidden: str) -> None:
    loaded = [m for m in probe["modules"] if m == forbidden or m.startswith(forbidden + ".")]
    assert loaded == []


def test_import_producers_loads_its_own_dependencies(probe: dict) -> None:
    # The probe really imported the package (guards against an empty probe passing).
    for needed in ("producers", "producers.codec", "producers.handler", "fastavro", "pydantic", "confluent_kafka"):
        assert needed in probe["modules"]


def test_all_names_exist(probe: dict) -> None:
    assert probe["all"], "producers.__all__ is empty"
    assert probe["missing"] == []
    assert probe["star"] == sorted(probe["all"])


def test_all_has_no_duplicates_and_is_what_the_docstring_promises(probe: dict) -> None:
    names = probe["all"]
    assert len(names) == len(set(names))
    assert {"KafkaDatabaseHandler", "SocietyProducer", "ProducerSettings"} <= set(names)
