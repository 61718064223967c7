"""The realistic mix of records, as ``SocietyProducer`` calls.

Per agent and step: one memory (a second one 4% of the time), one event,
a bank transaction 6.4% and a market trade 3.2% of the time. That gives
about 48.7% memories, 46.8% events, 3.0% bank and 1.5% market rows, i.e.
2.136 records per agent-step: 2,500 agents at 10 steps a second is about
53,400 records a second. Memory content is 20-600 characters, drawn from a
pool made once (making text is not what is measured).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from producers import SocietyProducer

EXTRA_MEMORY = 0.04
BANK = 0.064
MARKET = 0.032
RECORDS_PER_AGENT_STEP = 1 + EXTRA_MEMORY + 1 + BANK + MARKET
CONTENT_POOL = 4096
WORDS = ("market", "bread", "river", "loan", "friend", "harvest", "tools", "price", "family", "trade",
         "rain", "bank", "house", "winter", "story", "plan", "debt", "child", "festival", "craft")
EVENTS = ("AGENT_MOVED", "CONVERSATION", "TRADE_OFFER", "SKILL_LEARNED", "ASSET_CREATED", "AGENT_MARRIAGE")
MARKETS = (("market_food", "food"), ("market_tools", "tools"), ("market_housing", "housing"))
AGENT_TYPES = ("farmer", "merchant", "crafter", "banker", "scholar")

#: One producer call: method name, positional and keyword arguments.
Call = tuple[str, tuple[Any, ...], dict[str, Any]]


def _sentence(rng: random.Random) -> str:
    length = rng.randint(20, 600)
    text = ""
    while len(text) < length:
        text += rng.choice(WORDS) + " "
    return text[:length]


class Society:
    """Deterministic ``record_*`` calls of agents ``agent_<first>`` … ``agent_<first + count - 1>``."""

    def __init__(self, agents: int, first: int = 0, seed: int = 7) -> None:
        self._rng = random.Random(seed)
        self.names = [f"agent_{i}" for i in range(first, first + agents)]
        self._content = [_sentence(self._rng) for _ in range(CONTENT_POOL)]
        self._balance = dict.fromkeys(self.names, 100.0)

    def agents(self) -> list[Call]:
        """One ``record_agent`` per agent (step 0)."""
        return [("record_agent", (name,), {"persona": f"{AGENT_TYPES[i % 5]} who likes {WORDS[i % len(WORDS)]}",
                                           "agent_type": AGENT_TYPES[i % 5], "step": 0})
                for i, name in enumerate(self.names)]

    def step(self, step: int) -> list[Call]:
        """Every call of one step, agent by agent."""
        rng, names, content = self._rng, self.names, self._content
        calls: list[Call] = []
        for name in names:
            r = rng.random()
            calls.append(("record_memory", (name, content[int(r * CONTENT_POOL)], step),
                          {"importance": round(r, 3), "tags": rng.sample(WORDS, int(r * 4)),
                           "related_agent_id": rng.choice(names) if r < 0.3 else None}))
            if r < EXTRA_MEMORY:
                calls.append(("record_memory", (name, content[-1 - int(r * 1000)], step), {"importance": 0.9}))
            calls.append(("record_event", (EVENTS[int(r * 6)], step),
                          {"agent_id_primary": name, "agent_id_secondary": rng.choice(names) if r < 0.5 else None,
                           "details": {"state": "working", "position": [int(r * 50), step % 50]},
                           "description": f"{name} did something at step {step}"}))
            if rng.random() < BANK:
                amount = round(rng.uniform(-30, 50), 2)
                self._balance[name] += amount
                calls.append(("record_bank_transaction", (f"bt_{name}_{step}", step),
                              {"account_id": f"acct_{name}", "agent_id": name,
                               "transaction_type": "deposit" if amount >= 0 else "withdrawal", "amount": amount,
                               "balance_after": round(self._balance[name], 2)}))
            if rng.random() < MARKET:
                market, resource = MARKETS[step % 3]
                qty, price = rng.randint(1, 10), round(rng.uniform(1, 20), 2)
                calls.append(("record_market_transaction", (f"mt_{name}_{step}", step),
                              {"market_id": market, "resource_type": resource, "buyer_id": name,
                               "seller_id": rng.choice(names), "quantity": qty, "price_per_unit": price,
                               "total_cost": round(qty * price, 2), "buy_order_id": f"bo_{name}_{step}",
                               "sell_order_id": f"so_{name}_{step}"}))
        return calls

    def steps(self, start: int = 0) -> Iterator[list[Call]]:
        """Step after step, for ever."""
        step = start
        while True:
            yield self.step(step)
            step += 1


def call(producer: SocietyProducer, c: Call) -> None:
    """Make call `c` on `producer`."""
    name, args, kwargs = c
    getattr(producer, name)(*args, **kwargs)


def record_mix(producer: SocietyProducer, records: int, agents: int, seed: int = 7) -> dict[str, int]:
    """Record one run of `records` records (run states and agents included) in the mix; return counts per table.

    The producer is flushed; nothing here is timed.
    """
    society = Society(agents, seed=seed)
    producer.start_run({"bench": "mix", "agents": agents, "records": records})
    left = records - 2 - agents  # the run's two states and the agents
    for c in society.agents():
        call(producer, c)
    for calls in society.steps():
        for c in calls[:left]:
            call(producer, c)
        left -= len(calls)
        if left <= 0:
            break
    producer.end_run()
    producer.flush(timeout=600)
    return dict(producer.stats().sent)
