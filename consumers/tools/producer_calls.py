"""What one ``SocietyProducer.record_*`` call costs the simulation's thread, against a real broker.

Each call is timed on the caller's thread with ``time.perf_counter_ns``: the
cost the simulation pays (validate, encode, enqueue, serve delivery reports),
not delivery. Two measurements:

- per method: `calls` calls of each ``record_*`` with realistic arguments,
  reported as p50 / p99 microseconds;
- the mix of a running society (about 49% memories, 47% events with
  ``details``, 3% bank and 1.5% market transactions; memory content 20-600
  characters, as ``simulate`` writes it), reported as p50 / p99 microseconds and records per second
  from one thread (calls divided by the loop's wall time).

Arguments are built before the timed loops, so only the calls are measured.
``python -m consumers.tools.producer_calls`` prints the figures as JSON.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from consumers.tools.simulate import WORDS, _sentence
from consumers.topics import admin_client, all_topics, create_topics, delete_topics
from producers import ProducerSettings, SocietyProducer

AGENTS = 2500
#: The society's mix: (method, share of the records).
MIX = (("record_memory", 0.49), ("record_event", 0.47), ("record_bank_transaction", 0.03),
       ("record_market_transaction", 0.015))

Call = tuple[str, tuple[Any, ...], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class CallTimes:
    """Percentiles of one kind of call, in microseconds, and its rate from one thread."""

    calls: int
    p50_us: float
    p99_us: float
    records_per_s: float
    #: The calling thread's CPU time per call (mean): what the calls cost when other processes
    #: also want the machine's cores (wall-clock figures then include waiting for a core).
    cpu_us_per_call: float


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(WORDS, k=words))


def _call(method: str, i: int, rng: random.Random) -> Call:
    """One realistic call of `method` (the i-th of the workload)."""
    agent = f"agent_{rng.randrange(AGENTS)}"
    step = i // AGENTS
    if method == "record_memory":
        return method, (agent, _sentence(rng), step), {
            "importance": round(rng.random(), 3), "tags": rng.sample(WORDS, rng.randint(0, 3))}
    if method == "record_event":
        return method, (rng.choice(("trade", "loan", "marriage", "birth", "migration")), step), {
            "agent_id_primary": agent, "agent_id_secondary": f"agent_{rng.randrange(AGENTS)}",
            "details": {"resource": rng.choice(WORDS), "quantity": rng.randint(1, 20),
                        "price": round(rng.uniform(0.5, 50), 2), "accepted": rng.random() < 0.5},
            "description": _text(rng, rng.randint(3, 20))}
    if method == "record_bank_transaction":
        return method, (f"bt_{i}", step), {
            "account_id": f"acct_{agent}", "agent_id": agent, "transaction_type": rng.choice(("deposit", "withdraw")),
            "amount": round(rng.uniform(1, 500), 2), "balance_after": round(rng.uniform(0, 5000), 2),
            "description": "wage", "counterparty_id": f"agent_{rng.randrange(AGENTS)}"}
    if method == "record_market_transaction":
        quantity, price = rng.randint(1, 20), round(rng.uniform(0.5, 50), 2)
        return method, (f"mt_{i}", step), {
            "market_id": f"market_{rng.choice(WORDS)}", "resource_type": rng.choice(WORDS), "buyer_id": agent,
            "seller_id": f"agent_{rng.randrange(AGENTS)}", "quantity": float(quantity), "price_per_unit": price,
            "total_cost": quantity * price, "buy_order_id": f"bo_{i}", "sell_order_id": f"so_{i}"}
    if method == "record_agent":
        return method, (f"agent_{i}",), {"persona": _text(rng, rng.randint(3, 30)), "agent_type": "trader", "step": 0}
    raise ValueError(f"unknown producer call {method!r}")


def workload(method: str | None, n: int, seed: int = 7) -> list[Call]:
    """`n` calls of `method`, or of the society's mix (``MIX``) when `method` is None."""
    rng = random.Random(seed)
    names = [m for m, _ in MIX]
    weights = [w for _, w in MIX]
    return [_call(method or rng.choices(names, weights)[0], i, rng) for i in range(n)]


def time_calls(producer: SocietyProducer, calls: list[Call]) -> CallTimes:
    """Run `calls` on `producer`, timing each on this thread."""
    clock = time.perf_counter_ns
    bound = [(getattr(producer, m), a, k) for m, a, k in calls]
    times = [0] * len(bound)
    cpu = time.thread_time_ns()
    started = clock()
    for i, (fn, args, kwargs) in enumerate(bound):
        t0 = clock()
        fn(*args, **kwargs)
        times[i] = clock() - t0
    elapsed = clock() - started
    cpu = time.thread_time_ns() - cpu
    times.sort()
    n = len(times)
    return CallTimes(n, times[n // 2] / 1e3, times[int(n * 0.99)] / 1e3, n / (elapsed / 1e9), cpu / n / 1e3)


def measure(
    make_producer: Callable[[], SocietyProducer], calls: int = 20_000, mix_calls: int = 100_000, seed: int = 7
) -> dict[str, CallTimes]:
    """Per-method and mix timings, each on a fresh producer and run (flushed and closed after)."""
    out: dict[str, CallTimes] = {}
    for method in ("record_agent", "record_memory", "record_event", "record_bank_transaction",
                   "record_market_transaction", None):
        work = workload(method, mix_calls if method is None else calls, seed)
        with make_producer() as producer:
            producer.start_run({"measure": method or "mix"})
            out[method or "mix"] = time_calls(producer, work)
            producer.end_run()
    return out


def main() -> None:
    """Print the timings as JSON, on topics of a fresh prefix (deleted after); argument: calls per method.

    The broker is ``KAFKA_BOOTSTRAP_SERVERS`` (PLAINTEXT); the mix makes five times as many calls.
    """
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    prefix = f"calls-{uuid.uuid4().hex[:8]}"
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    admin = admin_client(bootstrap)
    try:
        create_topics(admin, prefix, bootstrap, partitions=6)
        settings = ProducerSettings(bootstrap_servers=bootstrap, topic_prefix=prefix)
        result = measure(lambda: SocietyProducer(settings), calls=calls, mix_calls=calls * 5)
    finally:
        delete_topics(admin, all_topics(prefix))
    print(json.dumps({k: asdict(v) for k, v in result.items()}, indent=1))


if __name__ == "__main__":
    main()
