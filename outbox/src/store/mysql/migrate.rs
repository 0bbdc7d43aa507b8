//! The MySQL/MariaDB schema, versioned. DDL commits implicitly, so no
//! transaction keeps migrators apart: a server-wide named lock does, taken
//! with a timeout, and `lock_wait_timeout` bounds each statement's wait for
//! the tables' metadata locks (an open transaction that wrote to them holds
//! one). Every step is skipped when its work is done, and each version is
//! recorded once its steps ran, so a migration cut short is taken up again.

use sqlx::AssertSqlSafe;
use sqlx::mysql::{MySqlConnection, MySqlDatabaseError, MySqlPool};

use std::sync::atomic::Ordering;

use super::{MAX_ALLOWED_PACKET, check_server};
use crate::error::Error;
use crate::migrations::Migrator;
use crate::store::dialect::run_once;
use crate::store::schema::{self, Plan, Script, Step, VERSION_TABLE};
use crate::tables::Tables;

/// `ER_LOCK_WAIT_TIMEOUT`: `lock_wait_timeout` (metadata locks) or
/// `innodb_lock_wait_timeout` ran out.
const LOCK_WAIT_TIMEOUT: u16 = 1205;
/// `ER_NO_SUCH_TABLE`, `ER_BAD_DB_ERROR`: no version table yet.
const NO_TABLE: [u16; 2] = [1146, 1049];

/// A lock name of at most 64 characters, the same in every process and
/// every version of this crate: keep it. Binds the schema and the prefix.
const LOCK: &str = "CONCAT('outbox.migrate:', SHA1(CONCAT(COALESCE(?, DATABASE(), ''), '.', ?)))";

/// The migrations of these tables, oldest first.
pub(crate) fn scripts(tables: &Tables) -> Vec<Script> {
    vec![v1(tables)]
}

/// The tables' schema in a statement: its name, or the connection's.
fn schema_of(tables: &Tables) -> String {
    match tables.schema_name() {
        Some(schema) => format!("'{schema}'"),
        None => "DATABASE()".to_owned(),
    }
}

/// A count above zero when the table with this suffix exists.
fn table_exists(tables: &Tables, suffix: &str) -> String {
    format!(
        "SELECT COUNT(*) FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = {} AND TABLE_NAME = '{}_{suffix}'",
        schema_of(tables),
        tables.prefix()
    )
}

/// Version 1: the schema of the releases before versions, plus the version
/// table.
fn v1(tables: &Tables) -> Script {
    const NAME: &str = "create_tables";
    let ev = tables.qualified_with('`', "events");
    let dl = tables.qualified_with('`', "dead_letters");
    let vt = tables.qualified_with('`', VERSION_TABLE);
    let mut steps = Vec::new();
    if let Some(schema) = tables.schema_name() {
        steps.push(Step::unless(
            format!("CREATE DATABASE IF NOT EXISTS `{schema}` CHARACTER SET utf8mb4"),
            format!(
                "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{schema}'"
            ),
        ));
    }
    steps.push(Step::unless(
        format!(
            "CREATE TABLE IF NOT EXISTS {vt} ( \
               version INT NOT NULL PRIMARY KEY, \
               name VARCHAR(255) NOT NULL, \
               applied_at DATETIME(3) NOT NULL) \
             ENGINE = InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        ),
        table_exists(tables, VERSION_TABLE),
    ));
    // The event, as both tables hold it.
    let event = "event_type TEXT NOT NULL, \
                 version INT NOT NULL, \
                 topic TEXT NOT NULL, \
                 partition_key VARBINARY(1024) NULL, \
                 payload LONGBLOB NOT NULL, \
                 headers LONGTEXT NOT NULL, \
                 created_at DATETIME(3) NOT NULL";
    steps.push(Step::unless(
        format!(
            "CREATE TABLE IF NOT EXISTS {ev} ( \
               id BINARY(16) NOT NULL PRIMARY KEY, \
               {event}, \
               due_at DATETIME(3) NOT NULL, \
               attempts INT NOT NULL DEFAULT 0, \
               lease_owner BINARY(16) NULL, \
               lease_until DATETIME(3) NULL, \
               done TEXT NOT NULL, \
               dead_publishers TEXT NULL, \
               only_publishers TEXT NULL, \
               last_error LONGTEXT NULL, \
               INDEX key_idx (partition_key, id)) \
             ENGINE = InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        ),
        table_exists(tables, "events"),
    ));
    steps.push(Step::unless(
        format!(
            "CREATE TABLE IF NOT EXISTS {dl} ( \
               event_id BINARY(16) NOT NULL, \
               publisher VARCHAR(255) NOT NULL, \
               {event}, \
               attempts INT NOT NULL, \
               error LONGTEXT NOT NULL, \
               failed_at DATETIME(3) NOT NULL, \
               PRIMARY KEY (event_id, publisher), \
               INDEX failed_idx (failed_at)) \
             ENGINE = InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        ),
        table_exists(tables, "dead_letters"),
    ));
    // Tables made before dead-lettered publishers had a column of their own
    // (they were marked inside `done`) get it. MySQL 8 has no `ADD COLUMN IF
    // NOT EXISTS`, so ask the catalog first; exported migrations create the
    // table with it.
    steps.push(Step::repair(
        format!("ALTER TABLE {ev} ADD COLUMN dead_publishers TEXT NULL AFTER done"),
        format!(
            "SELECT COUNT(*) FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = {} AND TABLE_NAME = '{}_events' \
               AND COLUMN_NAME = 'dead_publishers'",
            schema_of(tables),
            tables.prefix()
        ),
    ));
    let values = format!("{vt} (version, name, applied_at) VALUES (1, '{NAME}', UTC_TIMESTAMP(3))");
    steps.extend(Step::record(
        format!("INSERT INTO {values}"),
        format!("INSERT IGNORE INTO {values}"),
    ));
    Script {
        version: 1,
        name: NAME,
        steps,
    }
}

fn read_version(tables: &Tables) -> String {
    format!(
        "SELECT CAST(COALESCE(MAX(version), 0) AS SIGNED) FROM {}",
        tables.qualified_with('`', VERSION_TABLE)
    )
}

fn number(error: &sqlx::Error) -> Option<u16> {
    match error {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(MySqlDatabaseError::number),
        _ => None,
    }
}

/// The recorded schema version (0 when none is recorded yet); `None` when
/// there is no version table.
pub(crate) async fn version(pool: &MySqlPool, tables: &Tables) -> Result<Option<i64>, Error> {
    match sqlx::query_scalar(AssertSqlSafe(read_version(tables)))
        .persistent(false)
        .fetch_one(pool)
        .await
    {
        Ok(version) => Ok(Some(version)),
        Err(e) if number(&e).is_some_and(|n| NO_TABLE.contains(&n)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn migrate(pool: &MySqlPool, migrator: &Migrator) -> Result<(), Error> {
    let tables = migrator.tables();
    {
        let mut conn = pool.acquire().await?;
        check_server(&mut conn).await?;
        let max_packet: i64 = sqlx::query_scalar("SELECT CAST(@@max_allowed_packet AS SIGNED)")
            .fetch_one(&mut *conn)
            .await?;
        MAX_ALLOWED_PACKET.store(u64::try_from(max_packet).unwrap_or(0), Ordering::Relaxed);
        if max_packet < 16 << 20 {
            tracing::warn!(
                max_allowed_packet = max_packet,
                "the MySQL server's max_allowed_packet is below 16 MiB: an event larger than it \
                 cannot be enqueued; raise it (SET GLOBAL max_allowed_packet = 67108864, and in \
                 the server configuration)"
            );
        }
    }
    // The fast path: one read, no lock, no DDL.
    if let Plan::Current = schema::plan(tables, version(pool, tables).await?)? {
        return Ok(());
    }

    // GET_LOCK and the session's lock_wait_timeout belong to the session:
    // this connection is closed afterwards, also when the migration fails or
    // is cancelled, so neither outlives it inside the pool.
    let mut conn = pool.acquire().await?;
    conn.close_on_drop();
    let seconds = schema::seconds_at_least_one(migrator.lock_wait());
    run_once(
        &mut *conn,
        format!("SET SESSION lock_wait_timeout = {seconds}"),
    )
    .await?;
    let got: Option<i64> =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT GET_LOCK({LOCK}, {seconds})")))
            .bind(tables.schema_name())
            .bind(tables.prefix())
            .fetch_one(&mut *conn)
            .await?;
    if got != Some(1) {
        return Err(schema::locked(
            tables,
            migrator.lock_wait(),
            "another process migrating them (the named lock outbox.migrate:…); look for it \
             in SHOW PROCESSLIST",
        ));
    }
    let outcome = apply(&mut conn, tables).await;
    // Closing the connection releases the lock too, should this fail.
    let released = sqlx::query(AssertSqlSafe(format!("DO RELEASE_LOCK({LOCK})")))
        .bind(tables.schema_name())
        .bind(tables.prefix())
        .execute(&mut *conn)
        .await;
    match outcome {
        Ok(()) => released.map(drop).map_err(Error::from),
        Err(Error::Database(e)) if number(&e) == Some(LOCK_WAIT_TIMEOUT) => Err(schema::locked(
            tables,
            migrator.lock_wait(),
            format!(
                "an open transaction that uses them; find it in information_schema.INNODB_TRX \
                 or SHOW PROCESSLIST [{e}]"
            ),
        )),
        outcome => outcome,
    }
}

/// Under the named lock: the version again (another migrator may have
/// finished meanwhile), then every step not yet done.
async fn apply(conn: &mut MySqlConnection, tables: &Tables) -> Result<(), Error> {
    let found: i64 = match sqlx::query_scalar(AssertSqlSafe(read_version(tables)))
        .persistent(false)
        .fetch_one(&mut *conn)
        .await
    {
        Ok(version) => version,
        Err(e) if number(&e).is_some_and(|n| NO_TABLE.contains(&n)) => 0,
        Err(e) => return Err(e.into()),
    };
    let Plan::From(found) = schema::plan(tables, Some(found))? else {
        return Ok(());
    };
    schema::apply::<sqlx::MySql>(&mut *conn, &scripts(tables), found).await?;
    Ok(())
}
