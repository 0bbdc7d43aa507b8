-- outbox schema version 1: create_tables, for the tables outbox_* (SQLite).
-- From outbox::migrations; apply the versions in order, and do not edit: the last
-- statement records the version, so that outbox::migrate finds the schema current.
CREATE TABLE IF NOT EXISTS "outbox_schema_version" ( version INTEGER PRIMARY KEY NOT NULL, name TEXT NOT NULL, applied_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS "outbox_events" ( id TEXT PRIMARY KEY NOT NULL, event_type TEXT NOT NULL, version INTEGER NOT NULL, topic TEXT NOT NULL, partition_key TEXT, payload BLOB NOT NULL, headers TEXT NOT NULL DEFAULT '{}', created_at INTEGER NOT NULL, due_at INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, lease_owner TEXT, lease_until INTEGER, done TEXT NOT NULL DEFAULT '[]', dead_publishers TEXT, only_publishers TEXT, last_error TEXT) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS "outbox_events_key_idx" ON "outbox_events" (partition_key, id) WHERE partition_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS "outbox_dead_letters" ( event_id TEXT NOT NULL, publisher TEXT NOT NULL, event_type TEXT NOT NULL, version INTEGER NOT NULL, topic TEXT NOT NULL, partition_key TEXT, payload BLOB NOT NULL, headers TEXT NOT NULL, created_at INTEGER NOT NULL, attempts INTEGER NOT NULL, error TEXT NOT NULL, failed_at INTEGER NOT NULL, PRIMARY KEY (event_id, publisher)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS "outbox_dead_letters_failed_idx" ON "outbox_dead_letters" (failed_at);
INSERT OR IGNORE INTO "outbox_schema_version" (version, name, applied_at) VALUES (1, 'create_tables', CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER));
