//! The MySQL/MariaDB schema: created under a server-wide named lock, since
//! DDL commits implicitly and no transaction can keep migrators apart.

use sqlx::AssertSqlSafe;
use sqlx::mysql::{MySqlConnection, MySqlPool};

use std::sync::atomic::Ordering;

use super::{MAX_ALLOWED_PACKET, check_server};
use crate::error::Error;
use crate::store::dialect::run_once;
use crate::tables::Tables;

pub(super) async fn migrate(pool: &MySqlPool, tables: &Tables) -> Result<(), Error> {
    let ev = tables.qualified_with('`', "events");
    let dl = tables.qualified_with('`', "dead_letters");
    // GET_LOCK belongs to the session: this connection is closed afterwards,
    // also when the migration fails or is cancelled, so the lock never
    // outlives it inside the pool.
    let mut conn = pool.acquire().await?;
    conn.close_on_drop();
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

    // A lock name of at most 64 characters, the same in every process and
    // every version of this crate: keep it.
    let lock = "CONCAT('outbox.migrate:', SHA1(CONCAT(COALESCE(?, DATABASE(), ''), '.', ?)))";
    let got: Option<i64> =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT GET_LOCK({lock}, 600)")))
            .bind(tables.schema_name())
            .bind(tables.prefix())
            .fetch_one(&mut *conn)
            .await?;
    if got != Some(1) {
        return Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "waited 600 s for another process to finish migrating the outbox tables {ev}; \
                 look for a stuck migration in SHOW PROCESSLIST and try again"
            ),
        ))
        .into());
    }

    let mut statements = Vec::new();
    if let Some(schema) = tables.schema_name() {
        let exists: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
        )
        .bind(schema)
        .fetch_one(&mut *conn)
        .await?;
        if exists == 0 {
            statements.push(format!(
                "CREATE DATABASE IF NOT EXISTS `{schema}` CHARACTER SET utf8mb4"
            ));
        }
    }
    // The event, as both tables hold it.
    let event = "event_type TEXT NOT NULL, \
                 version INT NOT NULL, \
                 topic TEXT NOT NULL, \
                 partition_key VARBINARY(1024) NULL, \
                 payload LONGBLOB NOT NULL, \
                 headers LONGTEXT NOT NULL, \
                 created_at DATETIME(3) NOT NULL";
    statements.push(format!(
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
    ));
    statements.push(format!(
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
    ));
    // DDL commits implicitly in MySQL: the lock, not a transaction, keeps
    // concurrent migrations apart.
    let mut outcome = Ok(());
    for statement in statements {
        if let Err(e) = run_once(&mut *conn, statement).await {
            outcome = Err(e.into());
            break;
        }
    }
    if outcome.is_ok() {
        outcome = add_dead_publishers(&mut conn, tables, &ev).await;
    }
    sqlx::query(AssertSqlSafe(format!("DO RELEASE_LOCK({lock})")))
        .bind(tables.schema_name())
        .bind(tables.prefix())
        .execute(&mut *conn)
        .await?;
    outcome
}

/// Tables made before dead-lettered publishers had a column of their own
/// (they were marked inside `done`) get it. MySQL 8 has no `ADD COLUMN IF
/// NOT EXISTS`, so ask the catalog first.
async fn add_dead_publishers(
    conn: &mut MySqlConnection,
    tables: &Tables,
    ev: &str,
) -> Result<(), Error> {
    let has: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
           AND COLUMN_NAME = 'dead_publishers'",
    )
    .bind(tables.schema_name())
    .bind(format!("{}_events", tables.prefix()))
    .fetch_one(&mut *conn)
    .await?;
    if has == 0 {
        let add = format!("ALTER TABLE {ev} ADD COLUMN dead_publishers TEXT NULL AFTER done");
        run_once(&mut *conn, add).await?;
    }
    Ok(())
}
