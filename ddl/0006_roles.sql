-- Least privilege: two group roles (NOLOGIN) to grant to login roles.
--   society_loader: what the worker, replay and backfill's worker need, and nothing else:
--     read and write rows of the tables they load and their bookkeeping, use the
--     BIGSERIAL sequences, create temporary staging tables. No DDL, no DELETE on data.
--   society_reader: SELECT on every table of this schema, for analysts.
-- Give them to people or services with, e.g.:
--   CREATE ROLE ingest_worker LOGIN PASSWORD '…' IN ROLE society_loader;
--   GRANT society_reader TO analyst;
-- Roles belong to the whole server, so they are created only when missing, and only
-- when the migrating role may create roles; otherwise this migration grants nothing
-- and says so (a NOTICE): a superuser can create the roles and apply the grants by
-- running this file's statements. `migrate` itself always runs as the owner.
DO $roles$
DECLARE
    can_create boolean;
    have_loader boolean;
    have_reader boolean;
    tables_loaded text := 'simulation_runs, agents, agent_memories, market_transactions, '
                          'banking_transactions, simulation_events, ingest_offsets, ingest_workers, '
                          'ingest_conflicts';
BEGIN
    SELECT rolsuper OR rolcreaterole INTO can_create FROM pg_roles WHERE rolname = current_user;
    have_loader := EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'society_loader');
    have_reader := EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'society_reader');
    IF NOT have_loader AND can_create THEN
        CREATE ROLE society_loader NOLOGIN;
        have_loader := true;
    END IF;
    IF NOT have_reader AND can_create THEN
        CREATE ROLE society_reader NOLOGIN;
        have_reader := true;
    END IF;
    IF have_loader THEN
        EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO society_loader', current_database());
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO society_loader', current_schema());
        EXECUTE format('GRANT SELECT, INSERT, UPDATE ON %s TO society_loader', tables_loaded);
        -- A replay starting over forgets its own stored offsets.
        GRANT DELETE ON ingest_offsets TO society_loader;
        -- Start-up checks read which migrations were applied; redrive records what it sent.
        GRANT SELECT ON schema_migrations TO society_loader;
        GRANT SELECT, INSERT ON dlq_redrives TO society_loader;
        EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA %I TO society_loader', current_schema());
    ELSE
        RAISE NOTICE 'role society_loader does not exist and % may not create roles: no grants made', current_user;
    END IF;
    IF have_reader THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO society_reader', current_database());
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO society_reader', current_schema());
        EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO society_reader', current_schema());
        -- Tables later migrations add are readable too.
        EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO society_reader',
                       current_schema());
    ELSE
        RAISE NOTICE 'role society_reader does not exist and % may not create roles: no grants made', current_user;
    END IF;
END
$roles$;
