"""The wheel carries the schemas and migrations, so an installed worker (Docker image) finds them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_contains_every_schema_and_migration(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(tmp_path)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("society_ingest-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    schemas = {f"producers/_schemas/{p.relative_to(REPO / 'schemas')}" for p in (REPO / "schemas").rglob("*.avsc")}
    migrations = {f"consumers/_ddl/{p.name}" for p in (REPO / "ddl").glob("*.sql")}
    assert schemas and migrations
    assert schemas <= names, sorted(schemas - names)
    assert migrations <= names, sorted(migrations - names)
    assert "producers/__init__.py" in names and "consumers/cli/__init__.py" in names
    assert not any(n.startswith(("tests/", "scripts/")) for n in names)
