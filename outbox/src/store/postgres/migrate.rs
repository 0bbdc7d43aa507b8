//! The PostgreSQL schema, versioned: each migration runs in one transaction
//! under a transaction-scoped advisory lock (so it also works through a
//! transaction-mode pooler) with a short `lock_timeout`, so that a migration
//! waiting behind an open write transaction fails fast instead of making
//! the application's writes queue behind its lock request.

use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Postgres, Transaction};

use super::wakeup;
use crate::error::Error;
use crate::migrations::Migrator;
use crate::store::schema::{self, Plan, Script, Step, VERSION_TABLE};
use crate::tables::Tables;

/// `lock_not_available`: a `lock_timeout` ran out.
const LOCK_NOT_AVAILABLE: &str = "55P03";
/// `undefined_table`, `invalid_schema_name`: no version table yet.
const NO_TABLE: [&str; 2] = ["42P01", "3F000"];

/// The migrations of these tables, oldest first.
pub(crate) fn scripts(tables: &Tables) -> Vec<Script> {
    vec![v1(tables)]
}

/// A count above zero when the relation `name` (quoted, qualified) exists.
fn exists(name: &str) -> String {
    format!("SELECT count(*) FROM (SELECT to_regclass('{name}') AS r) x WHERE r IS NOT NULL")
}

/// A sibling of the tables (an index), quoted and qualified.
fn sibling(tables: &Tables, suffix: &str) -> String {
    match tables.quoted_schema() {
        Some(schema) => format!("{schema}.{}", tables.index_name(suffix)),
        None => tables.index_name(suffix),
    }
}

fn record(vt: &str, version: u32, name: &str) -> [Step; 2] {
    let insert = format!("INSERT INTO {vt} (version, name) VALUES ({version}, '{name}')");
    let insert_new = format!("{insert} ON CONFLICT (version) DO NOTHING");
    Step::record(insert, insert_new)
}

/// Version 1: the schema of the releases before versions, statement for
/// statement, each skipped when its work is done (so that baselining tables
/// of those releases takes no lock on a busy table), plus the version table.
fn v1(tables: &Tables) -> Script {
    const NAME: &str = "create_tables";
    let ev = tables.qualified("events");
    let dl = tables.qualified("dead_letters");
    let vt = tables.qualified(VERSION_TABLE);
    let key_idx = tables.index_name("events_key_idx");
    let dl_idx = tables.index_name("dead_letters_failed_idx");
    let mut steps = Vec::new();
    if let Some(schema) = tables.quoted_schema() {
        // CREATE SCHEMA checks the CREATE privilege even when the schema
        // exists: skip it then.
        steps.push(Step::unless(
            format!("CREATE SCHEMA IF NOT EXISTS {schema}"),
            format!(
                "SELECT count(*) FROM pg_namespace WHERE nspname = '{}'",
                tables.schema_name().unwrap_or_default()
            ),
        ));
    }
    steps.push(Step::unless(
        format!(
            "CREATE TABLE IF NOT EXISTS {vt} ( \
               version integer PRIMARY KEY, \
               name text NOT NULL, \
               applied_at timestamptz NOT NULL DEFAULT now())"
        ),
        exists(&vt),
    ));
    steps.push(Step::unless(
        format!(
            "CREATE TABLE IF NOT EXISTS {ev} ( \
               id uuid PRIMARY KEY, \
               event_type text NOT NULL, \
               version integer NOT NULL, \
               topic text NOT NULL, \
               partition_key text, \
               payload bytea NOT NULL, \
               headers jsonb NOT NULL DEFAULT '{{}}', \
               created_at timestamptz NOT NULL DEFAULT now(), \
               due_at timestamptz NOT NULL DEFAULT now(), \
               attempts integer NOT NULL DEFAULT 0, \
               lease_owner uuid, \
               lease_until timestamptz, \
               done text[] NOT NULL DEFAULT '{{}}', \
               dead_publishers text[] NOT NULL DEFAULT '{{}}', \
               only_publishers text[], \
               last_error text)"
        ),
        exists(&ev),
    ));
    // Tables made before dead-lettered publishers had a column of their own
    // (they were marked inside `done`).
    steps.push(Step::unless(
        format!(
            "ALTER TABLE {ev} ADD COLUMN IF NOT EXISTS dead_publishers text[] NOT NULL \
             DEFAULT '{{}}'"
        ),
        format!(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass('{ev}') \
               AND attname = 'dead_publishers' AND NOT attisdropped"
        ),
    ));
    steps.push(Step::unless(
        format!(
            "CREATE INDEX IF NOT EXISTS {key_idx} ON {ev} (partition_key, id) \
             WHERE partition_key IS NOT NULL"
        ),
        exists(&sibling(tables, "events_key_idx")),
    ));
    // The queue head is deleted constantly: dead index entries there are
    // re-scanned by every claim until vacuum runs, so vacuum this table often
    // and without throttling. Every event is updated once (its lease) before
    // it is deleted: with half of each page free, that update stays on its
    // page and adds no index entries (a HOT update), which made a claim-and-ack
    // loop ~40% faster (BENCHMARKS.md). Applies to pages written from now on.
    let options = [
        "fillfactor=50",
        "autovacuum_vacuum_scale_factor=0",
        "autovacuum_vacuum_threshold=5000",
        "autovacuum_vacuum_cost_delay=0",
        "autovacuum_analyze_scale_factor=0",
        "autovacuum_analyze_threshold=5000",
    ];
    steps.push(Step::unless(
        format!(
            "ALTER TABLE {ev} SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0, \
               autovacuum_vacuum_threshold = 5000, autovacuum_vacuum_cost_delay = 0, \
               autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 5000)"
        ),
        format!(
            "SELECT count(*) FROM pg_class WHERE oid = to_regclass('{ev}') \
               AND reloptions @> ARRAY['{}']::text[]",
            options.join("','")
        ),
    ));
    steps.push(Step::unless(
        format!(
            "CREATE TABLE IF NOT EXISTS {dl} ( \
               event_id uuid NOT NULL, \
               publisher text NOT NULL, \
               event_type text NOT NULL, \
               version integer NOT NULL, \
               topic text NOT NULL, \
               partition_key text, \
               payload bytea NOT NULL, \
               headers jsonb NOT NULL, \
               created_at timestamptz NOT NULL, \
               attempts integer NOT NULL, \
               error text NOT NULL, \
               failed_at timestamptz NOT NULL DEFAULT now(), \
               PRIMARY KEY (event_id, publisher))"
        ),
        exists(&dl),
    ));
    steps.push(Step::unless(
        format!("CREATE INDEX IF NOT EXISTS {dl_idx} ON {dl} (failed_at)"),
        exists(&sibling(tables, "dead_letters_failed_idx")),
    ));
    // The wake-up trigger: the function is replaced in place (no lock on
    // the table); the trigger is dropped and created (a lock that waits for
    // every open write) only when it is missing or not the deferred
    // constraint trigger, as in releases before the coalesced wake-up.
    let [function, drop_trigger, create_trigger] = wakeup::trigger(tables, &ev);
    let trigger_done = format!(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass('{ev}') \
           AND tgname = '{}_events_notify' AND tgconstraint <> 0 AND tgdeferrable \
           AND tginitdeferred",
        tables.prefix()
    );
    steps.push(Step::always(function));
    steps.push(Step::unless(drop_trigger, trigger_done.clone()));
    steps.push(Step::unless(create_trigger, trigger_done));
    steps.extend(record(&vt, 1, NAME));
    Script {
        version: 1,
        name: NAME,
        steps,
    }
}

/// The recorded schema version (0 when none is recorded yet); `None` when
/// there is no version table.
pub(crate) async fn version(pool: &PgPool, tables: &Tables) -> Result<Option<i64>, Error> {
    let vt = tables.qualified(VERSION_TABLE);
    let read = format!("SELECT COALESCE(max(version), 0)::int8 FROM {vt}");
    // Unnamed, in a transaction of its own: through a pooler in transaction
    // mode the statement's parse and execute then reach one server
    // connection (this read runs before every Source's first statement).
    let mut tx = pool.begin().await?;
    let read = sqlx::query_scalar(AssertSqlSafe(read))
        .persistent(false)
        .fetch_one(&mut *tx)
        .await;
    if read.is_ok() {
        tx.commit().await?;
    }
    match read {
        Ok(version) => Ok(Some(version)),
        Err(sqlx::Error::Database(db)) if db.code().is_some_and(|c| NO_TABLE.contains(&&*c)) => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn migrate(pool: &PgPool, migrator: &Migrator) -> Result<(), Error> {
    let tables = migrator.tables();
    // The fast path: one read, no lock, no DDL.
    if let Plan::Current = schema::plan(tables, version(pool, tables).await?)? {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    match apply(&mut tx, migrator).await {
        Ok(()) => Ok(tx.commit().await?),
        Err(Error::Database(sqlx::Error::Database(db)))
            if db.code().as_deref() == Some(LOCK_NOT_AVAILABLE) =>
        {
            Err(schema::locked(
                tables,
                migrator.lock_wait(),
                format!(
                    "an open transaction that wrote to them, or another process migrating \
                     them; find it in pg_stat_activity [{}]",
                    db.message()
                ),
            ))
        }
        Err(e) => Err(e),
    }
}

async fn apply(tx: &mut Transaction<'static, Postgres>, migrator: &Migrator) -> Result<(), Error> {
    let tables = migrator.tables();
    let ev = tables.qualified("events");
    let vt = tables.qualified(VERSION_TABLE);
    let timeout = schema::millis_at_least_one(migrator.lock_wait());
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(format!("{timeout}ms"))
        .execute(&mut **tx)
        .await?;
    // Serialise concurrent migrations of the same tables: CREATE ... IF NOT
    // EXISTS alone races on the catalog. The key is the one releases before
    // versions took, so that they and this one keep apart too.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("outbox.migrate:{ev}"))
        .execute(&mut **tx)
        .await?;
    // Again under the lock (another migrator may have finished meanwhile);
    // an error inside the transaction would abort it, so ask the catalog.
    let has_table: i64 = sqlx::query_scalar(AssertSqlSafe(exists(&vt)))
        .persistent(false)
        .fetch_one(&mut **tx)
        .await?;
    let found = if has_table > 0 {
        let read = format!("SELECT COALESCE(max(version), 0)::int8 FROM {vt}");
        sqlx::query_scalar(AssertSqlSafe(read))
            .persistent(false)
            .fetch_one(&mut **tx)
            .await?
    } else {
        0
    };
    let Plan::From(found) = schema::plan(tables, Some(found))? else {
        return Ok(());
    };
    schema::apply::<sqlx::Postgres>(&mut **tx, &scripts(tables), found).await?;
    Ok(())
}
