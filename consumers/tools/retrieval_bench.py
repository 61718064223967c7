"""Latency of memory reads on a large table, and what ddl/0008 costs the load path.

    python -m consumers.tools.retrieval_bench -d "$DATABASE_URL"        # 5,000,000 memories
    python -m consumers.tools.retrieval_bench -d "$DATABASE_URL" --copy-rows 200000

Makes its own scratch database on the server of ``-d`` (dropped at the end,
also on Ctrl-C, unless ``--keep``), fills it with a synthetic memory stream
(``consumers.tools.memory_corpus``), then times through ``producers.reads``,
for `samples` random (run, agent) pairs: ``recent_memories(count=10)`` and
``retrieve_memories(k=10)`` with a random query. The first pass reads pages
the load left in PostgreSQL's and the OS's caches ("first pass"); the second
pass repeats the same calls ("warm"). ``--copy-rows`` instead measures binary
COPY of the same rows into a table migrated up to 0007 and one up to 0008
(the generated search_vector and two more indexes), alternating, and prints
the ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from consumers._deps import psycopg
from consumers.migrations import default_ddl_dir, migrate
from consumers.table_specs import SPECS
from consumers.tools.memory_corpus import OBJECTS, PLACES, VERBS, CorpusSize, build
from producers import tables
from producers.reads import MemoryReader

#: Queries of the kind an agent asks its memory stream.
QUERIES = ("bread at the market", "a loan from the bank", "the harvest festival", "who cheated me",
           "fish by the river", "medicine for my family", "tools", "wine in the tavern", "debt", "a friend")
SPEC = SPECS[tables.AGENT_MEMORIES]


def _percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": round(at(0.50), 2), "p95_ms": round(at(0.95), 2), "p99_ms": round(at(0.99), 2),
            "mean_ms": round(statistics.fmean(ordered), 2), "n": len(ordered)}


def _url(base: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(base, dbname=dbname)


def _create(base: str, name: str) -> str:
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return _url(base, name)


def _drop(base: str, name: str) -> None:
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def measure_latency(url: str, samples: int = 500, seed: int = 7) -> dict[str, Any]:
    """p50/p95/p99 of recent_memories and retrieve_memories over `samples` random (run, agent) pairs."""
    with psycopg.connect(url, autocommit=True) as conn:
        runs = [r[0] for r in conn.execute("SELECT run_id FROM simulation_runs")]
        agents = [r[0] for r in conn.execute("SELECT DISTINCT agent_id_str FROM agents")]
        memories = conn.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = 'agent_memories'").fetchone()[0]
    rng = random.Random(seed)
    calls = [(rng.choice(runs), rng.choice(agents), rng.choice(QUERIES)) for _ in range(samples)]
    out: dict[str, Any] = {"memories": memories, "runs": len(runs), "agents": len(agents)}
    with MemoryReader(url, size=1) as reader:
        reader.recent_memories("agent_0", 1, run_id=runs[0])  # connect outside the timings
        for name in ("first_pass", "warm"):
            recent, retrieve = [], []
            for run, agent, query in calls:
                t = time.perf_counter()
                got = reader.recent_memories(agent, 10, run_id=run)
                recent.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                ranked = reader.retrieve_memories(agent, query, 10, run_id=run)
                retrieve.append((time.perf_counter() - t) * 1000)
                assert got and ranked, f"no memories of {agent} in run {run}"
            out[name] = {"get_recent_agent_memories": _percentiles(recent), "retrieve_memories": _percentiles(retrieve)}
    return out


def _rows(n: int, run_id: uuid.UUID, agents: int, seed: int) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    rows = []
    for i in range(n):
        content = (f"agent_{i % agents} {rng.choice(VERBS)} {rng.choice(OBJECTS)} with agent_{rng.randrange(agents)} "
                   f"{rng.choice(PLACES)}" + " and talked about it" * rng.randrange(0, 20))
        record = {"memory_id": uuid.uuid4(), "agent_id_str": f"agent_{i % agents}", "simulation_run_id": run_id,
                  "step_timestamp": i // agents, "real_timestamp": now, "content": content,
                  "importance": round(rng.random(), 3), "tags": ["trade"], "related_agent_id": None}
        rows.append(tuple(record[c] for c in SPEC.column_names))
    return rows


def _copy_rate(url: str, rows: list[tuple[Any, ...]], agents: int) -> float:
    run_id = rows[0][SPEC.column_names.index("simulation_run_id")]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO simulation_runs (run_id, status) VALUES (%s, 'bench')", (run_id,))
        conn.execute("INSERT INTO agents (creation_run_id, agent_id_str) "
                     "SELECT %s, 'agent_' || g FROM generate_series(0, %s) g", (run_id, agents - 1))
        conn.execute("CHECKPOINT")
        start = time.perf_counter()
        with conn.transaction(), conn.cursor().copy(
            f"COPY agent_memories ({', '.join(SPEC.column_names)}) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(SPEC.copy_types)
            for row in rows:
                copy.write_row(row)
        return len(rows) / (time.perf_counter() - start)


def measure_copy_cost(base: str, rows: int = 200_000, repeats: int = 3, agents: int = 2500) -> dict[str, Any]:
    """Binary COPY rate into agent_memories migrated up to 0007 vs up to 0008, alternating; medians and ratio."""
    tag = uuid.uuid4().hex[:8]
    before, after = f"reads_copy_0007_{tag}", f"reads_copy_0008_{tag}"
    old_ddl = Path(tempfile.mkdtemp())
    try:
        for f in sorted(default_ddl_dir().glob("*.sql")):
            if int(f.name[:4]) <= 7:
                shutil.copy(f, old_ddl / f.name)
        urls = {"0007": _create(base, before), "0008": _create(base, after)}
        migrate(urls["0007"], old_ddl)
        migrate(urls["0008"])
        rates: dict[str, list[float]] = {"0007": [], "0008": []}
        _copy_rate(urls["0007"], _rows(20_000, uuid.uuid4(), agents, 0), agents)  # warm-up, untimed
        _copy_rate(urls["0008"], _rows(20_000, uuid.uuid4(), agents, 0), agents)
        for repeat in range(repeats):
            order = ("0007", "0008") if repeat % 2 == 0 else ("0008", "0007")
            for which in order:
                rates[which].append(_copy_rate(urls[which], _rows(rows, uuid.uuid4(), agents, repeat), agents))
        return {"rows": rows, "repeats": repeats,
                "copy_rows_per_s_0007": round(statistics.median(rates["0007"])),
                "copy_rows_per_s_0008": round(statistics.median(rates["0008"])),
                "ratio_0008_to_0007": round(statistics.median(a / b for a, b in zip(rates["0008"], rates["0007"])), 3)}
    finally:
        _drop(base, before)
        _drop(base, after)
        shutil.rmtree(old_ddl, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module doc."""
    p = argparse.ArgumentParser(prog="python -m consumers.tools.retrieval_bench", description=__doc__.split("\n")[0])
    p.add_argument("-d", "--database-url", required=True, help="a server where databases may be created")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--per-step", type=int, default=2)
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--use", metavar="DBNAME", help="measure an existing database (built with --keep) instead")
    p.add_argument("--keep", action="store_true", help="keep the scratch database (its name is printed)")
    p.add_argument("--copy-rows", type=int, default=0, help="measure ddl/0008's load-path cost on N rows instead")
    args = p.parse_args(argv)
    if args.copy_rows:
        print(json.dumps(measure_copy_cost(args.database_url, args.copy_rows), indent=2))
        return 0
    if args.use:
        print(json.dumps(measure_latency(_url(args.database_url, args.use), args.samples), indent=2))
        return 0
    size = CorpusSize(args.runs, args.agents, args.steps, args.per_step)
    name = f"reads_bench_{uuid.uuid4().hex[:8]}"
    url = _create(args.database_url, name)
    try:
        migrate(url)
        started = time.monotonic()
        build(url, size, lambda n: None)
        result = {"database": name, "build_s": round(time.monotonic() - started), **measure_latency(url, args.samples)}
        print(json.dumps(result, indent=2))
    finally:
        if not args.keep:
            _drop(args.database_url, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
