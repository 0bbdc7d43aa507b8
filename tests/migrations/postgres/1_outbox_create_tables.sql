-- outbox schema version 1: create_tables, for the tables outbox_* (PostgreSQL).
-- From outbox::migrations; apply the versions in order, and do not edit: the last
-- statement records the version, so that outbox::migrate finds the schema current.
CREATE TABLE IF NOT EXISTS "outbox_schema_version" ( version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS "outbox_events" ( id uuid PRIMARY KEY, event_type text NOT NULL, version integer NOT NULL, topic text NOT NULL, partition_key text, payload bytea NOT NULL, headers jsonb NOT NULL DEFAULT '{}', created_at timestamptz NOT NULL DEFAULT now(), due_at timestamptz NOT NULL DEFAULT now(), attempts integer NOT NULL DEFAULT 0, lease_owner uuid, lease_until timestamptz, done text[] NOT NULL DEFAULT '{}', dead_publishers text[] NOT NULL DEFAULT '{}', only_publishers text[], last_error text);
ALTER TABLE "outbox_events" ADD COLUMN IF NOT EXISTS dead_publishers text[] NOT NULL DEFAULT '{}';
CREATE INDEX IF NOT EXISTS "outbox_events_key_idx" ON "outbox_events" (partition_key, id) WHERE partition_key IS NOT NULL;
ALTER TABLE "outbox_events" SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000, autovacuum_vacuum_cost_delay = 0, autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 5000);
CREATE TABLE IF NOT EXISTS "outbox_dead_letters" ( event_id uuid NOT NULL, publisher text NOT NULL, event_type text NOT NULL, version integer NOT NULL, topic text NOT NULL, partition_key text, payload bytea NOT NULL, headers jsonb NOT NULL, created_at timestamptz NOT NULL, attempts integer NOT NULL, error text NOT NULL, failed_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (event_id, publisher));
CREATE INDEX IF NOT EXISTS "outbox_dead_letters_failed_idx" ON "outbox_dead_letters" (failed_at);
CREATE OR REPLACE FUNCTION "outbox_events_notify"() RETURNS trigger LANGUAGE plpgsql AS $fn$ BEGIN IF pg_try_advisory_xact_lock(1258266007129143417) THEN PERFORM pg_notify('outbox..outbox', ''); END IF; RETURN NULL; END $fn$;
DROP TRIGGER IF EXISTS "outbox_events_notify" ON "outbox_events";
CREATE CONSTRAINT TRIGGER "outbox_events_notify" AFTER INSERT ON "outbox_events" DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION "outbox_events_notify"();
INSERT INTO "outbox_schema_version" (version, name) VALUES (1, 'create_tables') ON CONFLICT (version) DO NOTHING;
