"""A synthetic society that drives the real KafkaDatabaseHandler.

The record mix follows the LLM Society simulation: per agent per step about
one memory (20-600 characters) and one event, occasional market trades and
deposits or withdrawals, and interest rows for every account every 30 steps.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from dataclasses import dataclass
from typing import Any

from producers import SocietyProducer
from producers.handler import KafkaDatabaseHandler

INTEREST_EVERY_STEPS = 30
MARKETS = ("market_food", "market_tools", "market_housing")
RESOURCES = {"market_food": "food", "market_tools": "tools", "market_housing": "housing"}
AGENT_TYPES = ("farmer", "merchant", "crafter", "banker", "scholar")
EVENTS = ("AGENT_MOVED", "CONVERSATION", "TRADE_OFFER", "SKILL_LEARNED", "ASSET_CREATED", "AGENT_MARRIAGE")
WORDS = (
    "market", "bread", "river", "loan", "friend", "harvest", "tools", "price", "family", "trade",
    "rain", "bank", "house", "winter", "story", "plan", "debt", "child", "festival", "craft",
)


class AgentState(enum.Enum):
    """Enum members in event details, as the real simulation sends them."""

    IDLE = "idle"
    WORKING = "working"
    TRADING = "trading"


@dataclass(frozen=True, slots=True)
class SimulationReport:
    """What ``simulate`` recorded."""

    run_id: str
    recorded: dict[str, int]
    seconds: float


def _sentence(rng: random.Random) -> str:
    length = rng.randint(20, 600)
    words = []
    size = 0
    while size < length:
        word = rng.choice(WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:length]


async def run_society(
    handler: KafkaDatabaseHandler, agents: int, steps: int, seed: int = 7, steps_per_second: float | None = None
) -> SimulationReport:
    """Simulate `agents` agents for `steps` steps through `handler`.

    Each step's records go out as one burst, as in the simulation. With
    `steps_per_second`, a step lasts at least 1 / steps_per_second seconds (a
    step that took longer is followed at once, without a faster burst to catch
    up); without it, steps follow each other flat out.
    """
    rng = random.Random(seed)
    started = time.perf_counter()
    producer: SocietyProducer = handler.producer
    run_id = await handler.start_simulation_run({"agents": agents, "steps": steps, "seed": seed})
    names = [f"agent_{i}" for i in range(agents)]
    balances = {name: 100.0 for name in names}
    for i, name in enumerate(names):
        producer.record_agent(name, persona=f"{AGENT_TYPES[i % 5]} who likes {rng.choice(WORDS)}",
                              agent_type=AGENT_TYPES[i % 5], step=0)
    tx = 0
    for step in range(steps):
        step_started = time.perf_counter()
        for name in names:
            await handler.save_agent_memory(
                agent_id=name,
                memory_data={
                    "content": _sentence(rng),
                    "importance": round(rng.random(), 3),
                    "tags": rng.sample(WORDS, rng.randint(0, 3)),
                    "related_agent_id": rng.choice(names) if rng.random() < 0.3 else None,
                    "timestamp": time.time(),
                    "processed": False,  # extra keys the simulation carries are ignored
                },
                step=step,
            )
            await handler.save_simulation_event(
                event_type=rng.choice(EVENTS),
                step=step,
                agent_id_primary=name,
                agent_id_secondary=rng.choice(names) if rng.random() < 0.5 else None,
                details={"state": rng.choice(list(AgentState)), "position": (rng.randint(0, 50), rng.randint(0, 50))},
                description=f"{name} did something at step {step}",
            )
            if rng.random() < 0.1:
                tx += 1
                market = rng.choice(MARKETS)
                qty, price = rng.randint(1, 10), round(rng.uniform(1, 20), 2)
                await handler.save_market_transaction(
                    transaction_data={
                        "transaction_id": f"mt_{tx}",
                        "timestamp": time.time(),
                        "market_id": market,
                        "resource_type": RESOURCES[market],
                        "buyer_id": name,
                        "seller_id": rng.choice(names),
                        "quantity": qty,
                        "price_per_unit": price,
                        "total_cost": qty * price,
                        "buy_order_id": f"bo_{tx}",
                        "sell_order_id": f"so_{tx}",
                    },
                    step=step,
                )
            if rng.random() < 0.05:
                tx += 1
                amount = round(rng.uniform(-30, 50), 2)
                balances[name] += amount
                await handler.save_banking_transaction(
                    transaction_data={
                        "transaction_id": f"bt_{tx}",
                        "timestamp": time.time(),
                        "account_id": f"acct_{name}",
                        "transaction_type": "deposit" if amount >= 0 else "withdrawal",
                        "amount": amount,
                        "balance_after": round(balances[name], 2),
                        "description": None,
                        "counterparty_id": None,
                        "reference_id": None,
                    },
                    step=step,
                    agent_id=name,
                )
            if (step + 1) % INTEREST_EVERY_STEPS == 0:
                tx += 1
                interest = round(balances[name] * 0.01, 2)
                balances[name] += interest
                await handler.save_banking_transaction(
                    {"transaction_id": f"bt_{tx}", "timestamp": time.time(), "account_id": f"acct_{name}",
                     "transaction_type": "interest", "amount": interest,
                     "balance_after": round(balances[name], 2), "description": "monthly interest"},
                    step,
                    name,
                )
        # A step boundary: let the rest of the loop run, and keep the pace if one was asked.
        ahead = 0.0 if steps_per_second is None else step_started + 1 / steps_per_second - time.perf_counter()
        await asyncio.sleep(max(0.0, ahead))
    await handler.end_simulation_run("completed")
    recorded: dict[str, Any] = producer.stats().sent
    recorded["simulation_runs"] = 1  # two states (start, end) of one row
    return SimulationReport(run_id, recorded, time.perf_counter() - started)
