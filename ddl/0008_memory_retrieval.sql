-- Memory retrieval for the simulation (producers.reads): an agent's recent
-- memories of one run, and ranked retrieval by recency, importance and
-- full-text relevance.
--
-- agent_memories
--   + search_vector: to_tsvector('english', content), a STORED generated column.
--     PostgreSQL computes it on every insert (COPY included); loaders never
--     write it (their column lists come from the Avro schema, which has no such
--     field) and exports leave it out. Stored rather than an expression index
--     because ranking (ts_rank_cd) reads the vector of every candidate: stored,
--     it is read, not re-parsed per query.
--     'english': the simulation's LLM agents write English; stemming lets
--     "traded" find "trade" and stop words ("the", "and") do not count. The
--     configuration is part of the column: queries must use the same one.
--     Content only: tags are labels matched exactly by the seed's GIN index on
--     tags, and array_to_string (the way to fold them in) is not immutable.
--   + agent_memories_search_idx: GIN on search_vector, for text searches across
--     agents ("which memories of this run mention the flood"). One agent's
--     retrieval does not use it: it ranks the agent's newest memories, read
--     from the next index.
--   + agent_memories_run_agent_step_idx: "memories of (run, agent), newest
--     step first" is read straight from this index (the seed's
--     (agent_id_str, step_timestamp) index mixes every run of an agent id,
--     which the simulation reuses in each run); real_timestamp orders a step's
--     memories, newest first.
--
-- Cost on the load path (README, "Memory reads"): binary COPY runs at about half
-- the rate without these, almost all of it parsing the text; parsing at query
-- time instead would double every retrieval, which parses 500 memories.
--
-- Adding a STORED column rewrites the table (an ACCESS EXCLUSIVE lock for as
-- long as that takes): on a large existing table, run the migration while the
-- workers are stopped.
ALTER TABLE agent_memories
    ADD COLUMN search_vector tsvector
    GENERATED ALWAYS AS (to_tsvector('english'::regconfig, content)) STORED;

CREATE INDEX agent_memories_search_idx ON agent_memories USING GIN (search_vector);
CREATE INDEX agent_memories_run_agent_step_idx
    ON agent_memories (simulation_run_id, agent_id_str, step_timestamp DESC, real_timestamp DESC);
