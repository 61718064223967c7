"""A paced background producer that remembers every key it recorded, for reconciliation."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from producers import SocietyProducer

#: Records per table per tick, and the pause between ticks (pacing, so a run spans its fault).
TICK_AGENTS = 50
TICK_PAUSE_S = 0.02


@dataclass
class Produced:
    """Keys handed to the producer, per table."""

    keys: dict[str, set[Any]] = field(
        default_factory=lambda: {t: set() for t in ("agent_memories", "simulation_events", "market_transactions",
                                                       "banking_transactions")}
    )

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.keys.values())


class Workload:
    """Records memories, events, trades and bank rows from a thread until `steps` are done."""

    def __init__(self, producer: SocietyProducer, steps: int, agents: int = TICK_AGENTS) -> None:
        self.producer = producer
        self.steps = steps
        self.agents = agents
        self.produced = Produced()
        self.steps_done = 0
        self.max_call_s = 0.0
        self.error: BaseException | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="workload", daemon=True)

    def start(self) -> Workload:
        self._thread.start()
        return self

    def stop(self) -> None:
        """End after the step in hand (for runs that last until the test has seen enough)."""
        self._stopping.set()

    def reached(self, steps: int) -> bool:
        """Whether `steps` steps are done; raises the thread's error if it died (no waiting out a timeout)."""
        if self.error is not None:
            raise self.error
        return self.steps_done >= steps

    def join(self, timeout: float = 300) -> Produced:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("workload did not finish")
        if self.error is not None:
            raise self.error
        return self.produced

    def _run(self) -> None:
        try:
            for step in range(self.steps):
                if self._stopping.is_set():
                    break
                self.record_step(step)
                self.steps_done = step + 1
                time.sleep(TICK_PAUSE_S)
        except BaseException as e:
            self.error = e

    def record_step(self, step: int) -> None:
        """One step: a memory and an event per agent, a trade and a bank row per ten agents."""
        keys = self.produced.keys
        p = self.producer
        for a in range(self.agents):
            agent = f"agent_{a}"
            t0 = time.perf_counter()
            keys["agent_memories"].add(p.record_memory(agent, f"memory of {agent} at {step}", step, importance=0.5))
            keys["simulation_events"].add(p.record_event("AGENT_MOVED", step, agent_id_primary=agent))
            if a % 10 == 0:
                tx = f"tx_{step}_{a}"
                p.record_market_transaction(
                    tx, step, market_id="market_food", resource_type="food", buyer_id=agent,
                    seller_id="agent_1", quantity=1, price_per_unit=1.5, total_cost=1.5,
                )
                keys["market_transactions"].add(tx)
                p.record_bank_transaction(
                    tx, step, account_id=f"acct_{agent}", agent_id=agent, transaction_type="deposit",
                    amount=1.5, balance_after=float(step),
                )
                keys["banking_transactions"].add(tx)
            self.max_call_s = max(self.max_call_s, (time.perf_counter() - t0) / 4)
