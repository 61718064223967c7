"""A large synthetic memory stream, generated inside PostgreSQL, for retrieval benchmarks.

Memories are loaded step by step, all agents of a step together, as the workers
load a real run: one agent's memories are spread over the whole table, not
clustered. Contents are short sentences drawn from a fixed vocabulary
(trades, family, banking, gossip), so full-text queries match a few percent of
an agent's memories, like a real query would. Secondary indexes are dropped
during the load and rebuilt after it (faster than maintaining them row by row),
then the table is analyzed.
"""

from __future__ import annotations

from dataclasses import dataclass

from consumers._deps import psycopg

#: Words sentences are made of: what an agent did, with whom, about what, where.
VERBS = ("sold", "bought", "traded", "borrowed", "lent", "argued about", "celebrated", "shared", "stole", "gifted",
         "discussed", "repaired", "harvested", "cooked", "paid for", "deposited", "withdrew", "promised", "lost",
         "found")
OBJECTS = ("bread", "wheat", "tools", "wood", "stone", "fish", "cloth", "medicine", "a loan", "the rent", "wine",
           "a horse", "the harvest", "the festival", "a debt", "savings", "seeds", "a house", "jewelry", "books")
PLACES = ("at the market", "at the bank", "at home", "by the river", "in the square", "at the farm",
          "in the tavern", "at the mill", "near the temple", "at the docks")
FEELINGS = ("and felt happy", "and felt cheated", "and felt proud", "and was worried", "and laughed",
            "and regretted it", "and made a friend", "and planned to return", "without a word", "after a long day")
TAGS = ("trade", "family", "bank", "gossip", "work", "food", "conflict", "friendship", "health", "festival")


@dataclass(frozen=True)
class CorpusSize:
    """How many memories: runs x agents x steps x memories per step."""

    runs: int = 5
    agents: int = 1000
    steps: int = 500
    per_step: int = 2

    @property
    def memories(self) -> int:
        """Total number of memories."""
        return self.runs * self.agents * self.steps * self.per_step


def _array(words: tuple[str, ...]) -> str:
    return "ARRAY[" + ", ".join("'" + w.replace("'", "''") + "'" for w in words) + "]::text[]"


def _pick(words: tuple[str, ...]) -> str:
    return f"({_array(words)})[1 + floor(random() * {len(words)})::int]"


def _insert_sql(size: CorpusSize) -> str:
    sentence = (f"'agent_' || a || ' ' || {_pick(VERBS)} || ' ' || {_pick(OBJECTS)} || ' with agent_' "
                f"|| floor(random() * {size.agents})::int || ' ' || {_pick(PLACES)} || ' ' || {_pick(FEELINGS)}")
    return f"""
        INSERT INTO agent_memories (memory_id, agent_id_str, simulation_run_id, step_timestamp, real_timestamp,
                                    content, importance, tags, related_agent_id)
        SELECT gen_random_uuid(), 'agent_' || a, %(run)s::uuid, s, now() - make_interval(secs => {size.steps} - s),
               {sentence}, round(random()::numeric, 3)::real,
               ARRAY[{_pick(TAGS)}],
               CASE WHEN random() < 0.5 THEN 'agent_' || floor(random() * {size.agents})::int END
        FROM generate_series(%(first)s::int, %(last)s::int) s, generate_series(0, {size.agents - 1}) a,
             generate_series(1, {size.per_step}) m
        ORDER BY s, a
    """


#: Steps inserted per statement (a bounded transaction, and progress to show).
STEPS_PER_STATEMENT = 100


def build(conninfo: str, size: CorpusSize, progress=None) -> list[str]:
    """Fill the (migrated, empty) database with `size` memories; return the run ids (text)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename = 'agent_memories' AND indexname <> 'agent_memories_pkey'").fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        runs = [str(r[0]) for r in conn.execute(
            "INSERT INTO simulation_runs (status, updated_at) SELECT 'completed', now() "
            "FROM generate_series(1, %s) RETURNING run_id", (size.runs,))]
        conn.execute(
            "INSERT INTO agents (agent_id_str, creation_run_id, creation_step, updated_at) "
            "SELECT 'agent_' || a, r, 0, now() FROM unnest(%s::uuid[]) r, generate_series(0, %s) a",
            (runs, size.agents - 1))
        sql = _insert_sql(size)
        for run in runs:
            for first in range(0, size.steps, STEPS_PER_STATEMENT):
                last = min(first + STEPS_PER_STATEMENT, size.steps) - 1
                conn.execute(sql, {"run": run, "first": first, "last": last})
                if progress:
                    progress(size.agents * size.per_step * (last - first + 1))
        conn.execute("SET maintenance_work_mem = '256MB'")
        for _, definition in indexes:
            conn.execute(definition)
        conn.execute("VACUUM ANALYZE agent_memories")
    return runs
