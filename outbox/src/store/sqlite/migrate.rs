//! The SQLite schema, versioned: one `BEGIN IMMEDIATE` transaction (the
//! write lock, which keeps migrators apart) taken with a short busy timeout,
//! so that a migration behind an open write transaction fails fast.

use std::time::Duration;

use sqlx::sqlite::SqlitePool;
use sqlx::{AssertSqlSafe, Connection, SqliteConnection};

use super::NOW;
use crate::error::Error;
use crate::migrations::Migrator;
use crate::store::dialect::run_once;
use crate::store::schema::{self, Plan, Script, Step, VERSION_TABLE};
use crate::tables::Tables;

/// `SQLITE_BUSY`, `SQLITE_LOCKED` (primary result codes).
const BUSY: [i64; 2] = [5, 6];

/// The migrations of these tables, oldest first.
pub(crate) fn scripts(tables: &Tables) -> Vec<Script> {
    vec![v1(tables)]
}

/// Version 1: the schema of the releases before versions, plus the version
/// table.
fn v1(tables: &Tables) -> Script {
    const NAME: &str = "create_tables";
    let ev = tables.qualified("events");
    let dl = tables.qualified("dead_letters");
    let vt = tables.qualified(VERSION_TABLE);
    let index = |suffix: &str| match tables.quoted_schema() {
        Some(schema) => format!("{schema}.{}", tables.index_name(suffix)),
        None => tables.index_name(suffix),
    };
    let key_idx = index("events_key_idx");
    let dl_idx = index("dead_letters_failed_idx");
    let ev_plain = tables.unqualified("events");
    let dl_plain = tables.unqualified("dead_letters");
    let values = format!("{vt} (version, name, applied_at) VALUES (1, '{NAME}', {NOW})");
    let mut steps = vec![
        Step::always(format!(
            "CREATE TABLE IF NOT EXISTS {vt} ( \
               version INTEGER PRIMARY KEY NOT NULL, \
               name TEXT NOT NULL, \
               applied_at INTEGER NOT NULL)"
        )),
        Step::always(format!(
            "CREATE TABLE IF NOT EXISTS {ev} ( \
               id TEXT PRIMARY KEY NOT NULL, \
               event_type TEXT NOT NULL, \
               version INTEGER NOT NULL, \
               topic TEXT NOT NULL, \
               partition_key TEXT, \
               payload BLOB NOT NULL, \
               headers TEXT NOT NULL DEFAULT '{{}}', \
               created_at INTEGER NOT NULL, \
               due_at INTEGER NOT NULL, \
               attempts INTEGER NOT NULL DEFAULT 0, \
               lease_owner TEXT, \
               lease_until INTEGER, \
               done TEXT NOT NULL DEFAULT '[]', \
               dead_publishers TEXT, \
               only_publishers TEXT, \
               last_error TEXT) WITHOUT ROWID"
        )),
        Step::always(format!(
            "CREATE INDEX IF NOT EXISTS {key_idx} ON {ev_plain} (partition_key, id) \
             WHERE partition_key IS NOT NULL"
        )),
        Step::always(format!(
            "CREATE TABLE IF NOT EXISTS {dl} ( \
               event_id TEXT NOT NULL, \
               publisher TEXT NOT NULL, \
               event_type TEXT NOT NULL, \
               version INTEGER NOT NULL, \
               topic TEXT NOT NULL, \
               partition_key TEXT, \
               payload BLOB NOT NULL, \
               headers TEXT NOT NULL, \
               created_at INTEGER NOT NULL, \
               attempts INTEGER NOT NULL, \
               error TEXT NOT NULL, \
               failed_at INTEGER NOT NULL, \
               PRIMARY KEY (event_id, publisher)) WITHOUT ROWID"
        )),
        Step::always(format!(
            "CREATE INDEX IF NOT EXISTS {dl_idx} ON {dl_plain} (failed_at)"
        )),
        // Tables made before dead-lettered publishers had a column of their
        // own (they were marked inside `done`) get it; SQLite has no `ADD
        // COLUMN IF NOT EXISTS`, and exported migrations create the table
        // with it.
        Step::repair(
            format!("ALTER TABLE {ev} ADD COLUMN dead_publishers TEXT"),
            format!(
                "SELECT count(*) FROM pragma_table_info('{}_events', '{}') \
                 WHERE name = 'dead_publishers'",
                tables.prefix(),
                tables.schema_name().unwrap_or("main")
            ),
        ),
    ];
    steps.extend(Step::record(
        format!("INSERT INTO {values}"),
        format!("INSERT OR IGNORE INTO {values}"),
    ));
    Script {
        version: 1,
        name: NAME,
        steps,
    }
}

fn read_version(tables: &Tables) -> String {
    format!(
        "SELECT COALESCE(MAX(version), 0) FROM {}",
        tables.qualified(VERSION_TABLE)
    )
}

/// The recorded schema version (0 when none is recorded yet); `None` when
/// there is no version table.
pub(crate) async fn version(pool: &SqlitePool, tables: &Tables) -> Result<Option<i64>, Error> {
    match sqlx::query_scalar(AssertSqlSafe(read_version(tables)))
        .persistent(false)
        .fetch_one(pool)
        .await
    {
        Ok(version) => Ok(Some(version)),
        Err(sqlx::Error::Database(db)) if db.message().starts_with("no such table") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn is_busy(error: &Error) -> bool {
    let Error::Database(sqlx::Error::Database(db)) = error else {
        return false;
    };
    db.code()
        .and_then(|code| code.parse::<i64>().ok())
        .is_some_and(|code| BUSY.contains(&(code & 0xff)))
}

pub(crate) async fn migrate(pool: &SqlitePool, migrator: &Migrator) -> Result<(), Error> {
    let tables = migrator.tables();
    // The fast path: one read, no lock, no DDL.
    if let Plan::Current = schema::plan(tables, version(pool, tables).await?)? {
        return Ok(());
    }
    let mut conn = pool.acquire().await?;
    // The connection's own busy timeout, for the migration only: it goes
    // back to the pool afterwards (a connection of an in-memory database
    // cannot be closed instead, it holds the database).
    let before: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&mut *conn)
        .await?;
    let wait = schema::millis_at_least_one(migrator.lock_wait());
    run_once(&mut *conn, format!("PRAGMA busy_timeout = {wait}")).await?;
    let outcome = apply(&mut conn, tables).await;
    let restored = run_once(&mut *conn, format!("PRAGMA busy_timeout = {before}")).await;
    if restored.is_err() {
        conn.close_on_drop();
    }
    match outcome {
        Ok(()) => restored.map_err(Error::from),
        Err(e) if is_busy(&e) => Err(schema::locked(
            tables,
            Duration::from_millis(wait),
            format!("an open write transaction on this database [{e}]"),
        )),
        Err(e) => Err(e),
    }
}

/// In one `BEGIN IMMEDIATE` transaction: the version again (another
/// migrator may have finished meanwhile), then every step not yet done.
async fn apply(conn: &mut SqliteConnection, tables: &Tables) -> Result<(), Error> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let master = match tables.quoted_schema() {
        Some(schema) => format!("{schema}.sqlite_master"),
        None => "sqlite_master".to_owned(),
    };
    let has_table: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {master} WHERE type = 'table' AND name = '{}_{VERSION_TABLE}'",
        tables.prefix()
    )))
    .persistent(false)
    .fetch_one(&mut *tx)
    .await?;
    let found = if has_table > 0 {
        sqlx::query_scalar(AssertSqlSafe(read_version(tables)))
            .persistent(false)
            .fetch_one(&mut *tx)
            .await?
    } else {
        0
    };
    let Plan::From(found) = schema::plan(tables, Some(found))? else {
        return Ok(tx.commit().await?);
    };
    schema::apply::<sqlx::Sqlite>(&mut *tx, &scripts(tables), found).await?;
    Ok(tx.commit().await?)
}
