//! MySQL 8 / MariaDB 10.6+: claims lock the due rows with
//! `SELECT … FOR UPDATE SKIP LOCKED` in a short READ COMMITTED transaction,
//! lease them with an `UPDATE … WHERE id IN (…)` and commit; MySQL has no
//! `UPDATE … RETURNING`, and the rows read under the lock are exactly the rows
//! leased, so nothing is read twice.
//!
//! Storage choices:
//! - ids are `BINARY(16)`: the UUID's bytes, so byte order is UUIDv7 order
//!   (enqueue order), at less than half the index size of `CHAR(36)`, and
//!   sqlx encodes `Uuid` that way natively.
//! - times are `DATETIME(3)` in UTC, written and compared only with
//!   `UTC_TIMESTAMP(3)`: the database's clock, readable by an operator, and
//!   independent of the session `time_zone` (no DST ambiguity, no 2038 limit).
//! - partition keys are `VARBINARY(1024)`: compared byte for byte, so keys
//!   that differ in case, accents or trailing spaces stay distinct, as on the
//!   other backends.
//! - payloads are `LONGBLOB`; one event must fit the server's
//!   `max_allowed_packet` (16 MiB on MariaDB, 64 MiB on MySQL 8 by default;
//!   `migrate` warns when it is lower).
//!
//! A binary log in `STATEMENT` format refuses writes under READ COMMITTED:
//! use `ROW` or `MIXED`, the defaults.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use sqlx::mysql::{MySqlArguments, MySqlConnection, MySqlPool, MySqlRow};
use sqlx::{AssertSqlSafe, MySql, Row};
use tokio::sync::OnceCell;
use uuid::Uuid;

use super::{
    DeadLetter, Source, duration_millis, json_list, legacy, millis_since_epoch, parse_json_list,
    storage_box,
};
use crate::delivery::{ClaimedEvent, Outcome, Settlement};
use crate::event::{NewEvent, StorageBox};
use crate::{Error, Tables};

/// The servers that have `SKIP LOCKED`.
const REQUIRED: &str = "MySQL 8.0.1 or later, or MariaDB 10.6 or later";

/// The database clock, in UTC whatever the session `time_zone`.
const NOW: &str = "UTC_TIMESTAMP(3)";

/// The longest delay or lease honoured, so that `NOW + delay` stays within
/// `DATETIME` (a larger one would yield NULL: due at once, or no lease).
const MAX_DELAY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `DATETIME` bounds, in microseconds from the Unix epoch.
const MIN_DATETIME_MICROS: i64 = -30_610_224_000_000_000;
const MAX_DATETIME_MICROS: i64 = 253_402_300_799_999_999;

/// Rows per multi-row statement, and payload bytes per `INSERT`, kept well
/// below `max_allowed_packet` and the 65 535 placeholders of a statement.
const MAX_ROWS: usize = 500;
const MAX_INSERT_BYTES: usize = 4 << 20;

/// Milliseconds since the Unix epoch of a UTC `DATETIME` column.
fn millis(column: &str) -> String {
    format!("(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {column}) DIV 1000)")
}

/// Microseconds for `INTERVAL ? MICROSECOND`, at the millisecond precision
/// of the other backends.
fn micros(d: Duration) -> i64 {
    duration_millis(d.min(MAX_DELAY)).saturating_mul(1000)
}

/// `?, ?, …` for an `IN` list.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// Pad an id list to a power of two, repeating the last id (which `IN`
/// ignores), so that only a few statement shapes reach the prepared-statement
/// cache.
fn padded(ids: &[Uuid]) -> Vec<Uuid> {
    let mut ids = ids.to_vec();
    if let Some(&last) = ids.last() {
        ids.resize(ids.len().next_power_of_two(), last);
    }
    ids
}

fn q(sql: &Arc<str>) -> sqlx::query::Query<'static, MySql, MySqlArguments> {
    sqlx::query(AssertSqlSafe(sql.clone()))
}

/// Refuse servers without `SKIP LOCKED`: MariaDB before 10.6, MySQL before
/// 8.0.1, and version strings that cannot be read.
pub(crate) fn check_server_version(version: &str) -> Result<(), Error> {
    let refuse = || Error::UnsupportedServer {
        found: version.to_owned(),
        required: REQUIRED,
    };
    let mariadb = version.to_ascii_lowercase().contains("mariadb");
    // MariaDB may announce itself as "5.5.5-10.x.y-MariaDB" for old clients.
    let number = match version.strip_prefix("5.5.5-") {
        Some(rest) if mariadb => rest,
        _ => version,
    };
    let mut parts = number
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(str::parse::<u32>);
    let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) else {
        return Err(refuse());
    };
    let patch = parts.next().and_then(Result::ok).unwrap_or(0);
    let supported = if mariadb {
        (major, minor) >= (10, 6)
    } else {
        (major, minor, patch) >= (8, 0, 1)
    };
    if supported { Ok(()) } else { Err(refuse()) }
}

async fn check_server(conn: &mut MySqlConnection) -> Result<(), Error> {
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(&mut *conn)
        .await?;
    check_server_version(&version)
}

/// `due_at` of a parked event: never due.
const PARKED: &str = "TIMESTAMP'9999-12-31 23:59:59.999'";

struct Sql {
    ev: String,
    dl: String,
    claim: Arc<str>,
    retry: Arc<str>,
    delete_one: Arc<str>,
    park: Arc<str>,
    unpark: Arc<str>,
    drop_parked: Arc<str>,
    dead: Arc<str>,
    pending: Arc<str>,
    list_dead: Arc<str>,
    requeue_dead: Arc<str>,
    delete_dead: Arc<str>,
    purge_dead: Arc<str>,
}

impl Sql {
    fn new(tables: &Tables) -> Self {
        let ev = tables.qualified_with('`', "events");
        let dl = tables.qualified_with('`', "dead_letters");
        let created = millis("created_at");
        let e_created = millis("e.created_at");
        let failed = millis("failed_at");
        Self {
            claim: format!(
                "SELECT e.id, e.event_type, e.version, e.topic, e.partition_key, e.payload, \
                   e.headers, {e_created}, e.attempts, e.done, e.only_publishers, \
                   e.dead_publishers \
                 FROM {ev} e \
                 WHERE e.due_at <= {NOW} \
                   AND (e.lease_until IS NULL OR e.lease_until <= {NOW}) \
                   AND (e.partition_key IS NULL OR NOT EXISTS ( \
                     SELECT 1 FROM {ev} p WHERE p.partition_key = e.partition_key AND p.id < e.id)) \
                 ORDER BY e.id LIMIT ? \
                 FOR UPDATE SKIP LOCKED"
            )
            .into(),
            retry: format!(
                "UPDATE {ev} SET due_at = {NOW} + INTERVAL ? MICROSECOND, done = ?, \
                   dead_publishers = ?, last_error = ?, attempts = GREATEST(attempts - ?, 0), \
                   lease_owner = NULL, lease_until = NULL \
                 WHERE id = ? AND lease_owner = ?"
            )
            .into(),
            delete_one: format!("DELETE FROM {ev} WHERE id = ? AND lease_owner = ?").into(),
            park: format!(
                "UPDATE {ev} SET due_at = {PARKED}, done = ?, dead_publishers = ?, \
                   last_error = ?, lease_owner = NULL, lease_until = NULL \
                 WHERE id = ? AND lease_owner = ?"
            )
            .into(),
            unpark: format!("DELETE FROM {ev} WHERE due_at = {PARKED} AND id = ?").into(),
            drop_parked: format!(
                "DELETE FROM {ev} WHERE due_at = {PARKED} AND id IN ( \
                   SELECT event_id FROM {dl} \
                   WHERE failed_at < TIMESTAMP'1970-01-01 00:00:00' + INTERVAL ? MICROSECOND)"
            )
            .into(),
            dead: format!(
                "INSERT INTO {dl} (event_id, publisher, event_type, version, topic, partition_key, \
                   payload, headers, created_at, attempts, error, failed_at) \
                 SELECT e.id, ?, e.event_type, e.version, e.topic, e.partition_key, e.payload, \
                   e.headers, e.created_at, e.attempts, ?, {NOW} \
                 FROM {ev} e WHERE e.id = ? AND e.lease_owner = ? \
                 ON DUPLICATE KEY UPDATE error = ?, attempts = e.attempts, failed_at = {NOW}"
            )
            .into(),
            pending: format!(
                "SELECT COUNT(*) FROM {ev} e WHERE e.due_at < {PARKED} \
                 AND (e.partition_key IS NULL OR NOT EXISTS ( \
                   SELECT 1 FROM {ev} p WHERE p.partition_key = e.partition_key \
                   AND p.due_at = {PARKED}))"
            )
            .into(),
            list_dead: format!(
                "SELECT event_id, event_type, version, topic, partition_key, payload, headers, \
                   {created}, attempts, publisher, error, {failed} \
                 FROM {dl} ORDER BY failed_at, event_id, publisher LIMIT ?"
            )
            .into(),
            // MIN() picks the one value the rows of an event share, which
            // ONLY_FULL_GROUP_BY accepts.
            requeue_dead: format!(
                "INSERT IGNORE INTO {ev} (id, event_type, version, topic, partition_key, payload, \
                   headers, created_at, due_at, done, only_publishers) \
                 SELECT event_id, MIN(event_type), MIN(version), MIN(topic), MIN(partition_key), \
                   MIN(payload), MIN(headers), MIN(created_at), {NOW}, '[]', JSON_ARRAYAGG(publisher) \
                 FROM {dl} WHERE event_id = ? GROUP BY event_id"
            )
            .into(),
            delete_dead: format!("DELETE FROM {dl} WHERE event_id = ?").into(),
            purge_dead: format!(
                "DELETE FROM {dl} \
                 WHERE failed_at < TIMESTAMP'1970-01-01 00:00:00' + INTERVAL ? MICROSECOND"
            )
            .into(),
            ev,
            dl,
        }
    }

    fn lease(&self, n: usize) -> String {
        format!(
            "UPDATE {} SET lease_owner = ?, lease_until = {NOW} + INTERVAL ? MICROSECOND, \
               attempts = attempts + 1 \
             WHERE id IN ({})",
            self.ev,
            placeholders(n)
        )
    }

    fn ack(&self, n: usize) -> String {
        format!(
            "DELETE FROM {} WHERE lease_owner = ? AND id IN ({})",
            self.ev,
            placeholders(n)
        )
    }

    fn release(&self, n: usize) -> String {
        format!(
            "UPDATE {} SET lease_owner = NULL, lease_until = NULL, \
               attempts = GREATEST(attempts - 1, 0) \
             WHERE lease_owner = ? AND id IN ({})",
            self.ev,
            placeholders(n)
        )
    }
}

pub(crate) struct MySqlSource {
    pool: MySqlPool,
    sql: Sql,
    checked: OnceCell<()>,
}

fn text(bytes: Option<Vec<u8>>) -> Result<Option<String>, sqlx::Error> {
    bytes
        .map(|b| String::from_utf8(b).map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .transpose()
}

fn event_of(row: &MySqlRow) -> Result<StorageBox, sqlx::Error> {
    Ok(storage_box(
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
        text(row.try_get(4)?)?,
        row.try_get(5)?,
        row.try_get::<&str, _>(6)?,
        row.try_get(7)?,
        row.try_get(8)?,
    ))
}

impl MySqlSource {
    /// Refuse an old server once, before the first statement that needs it.
    async fn ready(&self) -> Result<(), Error> {
        self.checked
            .get_or_try_init(|| async {
                let mut conn = self.pool.acquire().await?;
                check_server(&mut conn).await
            })
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Source for MySqlSource {
    async fn claim(
        &self,
        owner: Uuid,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedEvent>, Error> {
        self.ready().await?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        // READ COMMITTED: no gap locks (producers' inserts never wait for a
        // claim), and rows scanned but not picked are unlocked at once.
        let mut tx = self
            .pool
            .begin_with("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION")
            .await?;
        let rows = q(&self.sql.claim)
            .bind(i64::try_from(limit.min(MAX_ROWS)).unwrap_or(1))
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut event = event_of(row)?;
            // The row is locked: the UPDATE below makes it exactly this.
            event.attempt = event.attempt.saturating_add(1);
            let list = |i: usize| -> Result<Option<Vec<String>>, sqlx::Error> {
                Ok(parse_json_list(row.try_get::<Option<&str>, _>(i)?))
            };
            events.push(
                ClaimedEvent::new(event)
                    .with_delivered(legacy::delivered(list(9)?.unwrap_or_default()))
                    .with_only(legacy::only(list(10)?))
                    .with_dead(list(11)?.unwrap_or_default()),
            );
        }
        let ids: Vec<Uuid> = events.iter().map(|e| e.event.id).collect();
        let ids = padded(&ids);
        let mut update = sqlx::query(AssertSqlSafe(self.sql.lease(ids.len())))
            .bind(owner)
            .bind(micros(lease));
        for id in &ids {
            update = update.bind(*id);
        }
        update.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(events)
    }

    async fn ack(&self, owner: Uuid, ids: &[Uuid]) -> Result<u64, Error> {
        self.ready().await?;
        let mut acked = 0;
        for chunk in ids.chunks(MAX_ROWS) {
            let chunk = padded(chunk);
            let mut delete = sqlx::query(AssertSqlSafe(self.sql.ack(chunk.len()))).bind(owner);
            for id in &chunk {
                delete = delete.bind(*id);
            }
            acked += delete.execute(&self.pool).await?.rows_affected();
        }
        Ok(acked)
    }

    async fn settle(&self, owner: Uuid, s: &Settlement) -> Result<bool, Error> {
        self.ready().await?;
        let mut tx = self.pool.begin().await?;
        for failure in &s.dead_letters {
            q(&self.sql.dead)
                .bind(&failure.publisher)
                .bind(&failure.error)
                .bind(s.id)
                .bind(owner)
                .bind(&failure.error)
                .execute(&mut *tx)
                .await?;
        }
        let changed = match &s.outcome {
            Outcome::Retry { delay, error }
            | Outcome::Hold {
                delay,
                reason: error,
            } => {
                q(&self.sql.retry)
                    .bind(micros(*delay))
                    .bind(json_list(&s.delivered))
                    .bind(json_list(&s.dead))
                    .bind(error)
                    .bind(i32::from(matches!(s.outcome, Outcome::Hold { .. })))
                    .bind(s.id)
                    .bind(owner)
                    .execute(&mut *tx)
                    .await?
            }
            Outcome::Park { error } => {
                q(&self.sql.park)
                    .bind(json_list(&s.delivered))
                    .bind(json_list(&s.dead))
                    .bind(error)
                    .bind(s.id)
                    .bind(owner)
                    .execute(&mut *tx)
                    .await?
            }
            Outcome::Finish => {
                q(&self.sql.delete_one)
                    .bind(s.id)
                    .bind(owner)
                    .execute(&mut *tx)
                    .await?
            }
        }
        .rows_affected();
        if changed == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn release(&self, owner: Uuid, ids: &[Uuid]) -> Result<u64, Error> {
        self.ready().await?;
        let mut released = 0;
        for chunk in ids.chunks(MAX_ROWS) {
            // With FOUND_ROWS the count is of matched rows: a repeated id
            // still matches its row once.
            let chunk = padded(chunk);
            let mut update = sqlx::query(AssertSqlSafe(self.sql.release(chunk.len()))).bind(owner);
            for id in &chunk {
                update = update.bind(*id);
            }
            released += update.execute(&self.pool).await?.rows_affected();
        }
        Ok(released)
    }

    async fn pending(&self) -> Result<u64, Error> {
        self.ready().await?;
        let n: i64 = q(&self.sql.pending)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        self.ready().await?;
        let rows = q(&self.sql.list_dead)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let event = event_of(&row)?;
            out.push(DeadLetter {
                attempts: event.attempt,
                event,
                publisher: row.try_get(9)?,
                error: row.try_get(10)?,
                failed_at: super::system_time_from_millis(row.try_get(11)?),
            });
        }
        Ok(out)
    }

    async fn retry_dead_letters(&self, event_ids: Option<&[Uuid]>) -> Result<u64, Error> {
        self.ready().await?;
        let dl = &self.sql.dl;
        let mut tx = self.pool.begin().await?;
        let ids: Vec<Uuid> = match event_ids {
            Some([]) => return Ok(0),
            Some(filter) => {
                let mut ids = Vec::new();
                for chunk in filter.chunks(MAX_ROWS) {
                    let chunk = padded(chunk);
                    let sql = format!(
                        "SELECT DISTINCT event_id FROM {dl} WHERE event_id IN ({}) ORDER BY event_id",
                        placeholders(chunk.len())
                    );
                    let mut select = sqlx::query_scalar::<_, Uuid>(AssertSqlSafe(sql));
                    for id in &chunk {
                        select = select.bind(*id);
                    }
                    ids.extend(select.fetch_all(&mut *tx).await?);
                }
                ids
            }
            None => {
                let sql = format!("SELECT DISTINCT event_id FROM {dl} ORDER BY event_id");
                sqlx::query_scalar(AssertSqlSafe(sql))
                    .fetch_all(&mut *tx)
                    .await?
            }
        };
        let mut requeued = 0;
        for id in ids {
            q(&self.sql.unpark).bind(id).execute(&mut *tx).await?;
            let inserted = q(&self.sql.requeue_dead)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if inserted > 0 {
                q(&self.sql.delete_dead).bind(id).execute(&mut *tx).await?;
                requeued += 1;
            }
        }
        tx.commit().await?;
        Ok(requeued)
    }

    async fn purge_dead_letters(&self, before: SystemTime) -> Result<u64, Error> {
        self.ready().await?;
        let micros = millis_since_epoch(before)
            .saturating_mul(1000)
            .clamp(MIN_DATETIME_MICROS, MAX_DATETIME_MICROS);
        let mut tx = self.pool.begin().await?;
        q(&self.sql.drop_parked)
            .bind(micros)
            .execute(&mut *tx)
            .await?;
        let done = q(&self.sql.purge_dead)
            .bind(micros)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}

async fn enqueue(
    conn: &mut MySqlConnection,
    tables: &Tables,
    events: &[NewEvent],
) -> Result<(), Error> {
    let ev = tables.qualified_with('`', "events");
    let row = format!("(?, ?, ?, ?, ?, ?, ?, {NOW}, {NOW}, '[]')");
    let mut rest = events;
    while !rest.is_empty() {
        // As many rows as fit the limits, and at least one.
        let mut n = 0;
        let mut bytes = 0;
        while n < rest.len()
            && n < MAX_ROWS
            && (n == 0 || bytes + rest[n].payload.len() <= MAX_INSERT_BYTES)
        {
            bytes += rest[n].payload.len();
            n += 1;
        }
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        let sql = format!(
            "INSERT INTO {ev} (id, event_type, version, topic, partition_key, payload, headers, \
               created_at, due_at, done) VALUES {}",
            vec![row.as_str(); batch.len()].join(", ")
        );
        let mut insert = sqlx::query(AssertSqlSafe(sql));
        for e in batch {
            insert = insert
                .bind(e.id)
                .bind(&e.event_type)
                .bind(i32::try_from(e.version).unwrap_or(i32::MAX))
                .bind(&e.topic)
                .bind(e.partition_key.as_deref().map(str::as_bytes))
                .bind(&e.payload)
                .bind(e.headers_json());
        }
        insert.execute(&mut *conn).await?;
    }
    Ok(())
}

async fn migrate(pool: &MySqlPool, tables: &Tables) -> Result<(), Error> {
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
    statements.push(format!(
        "CREATE TABLE IF NOT EXISTS {ev} ( \
           id BINARY(16) NOT NULL PRIMARY KEY, \
           event_type TEXT NOT NULL, \
           version INT NOT NULL, \
           topic TEXT NOT NULL, \
           partition_key VARBINARY(1024) NULL, \
           payload LONGBLOB NOT NULL, \
           headers LONGTEXT NOT NULL, \
           created_at DATETIME(3) NOT NULL, \
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
           event_type TEXT NOT NULL, \
           version INT NOT NULL, \
           topic TEXT NOT NULL, \
           partition_key VARBINARY(1024) NULL, \
           payload LONGBLOB NOT NULL, \
           headers LONGTEXT NOT NULL, \
           created_at DATETIME(3) NOT NULL, \
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
        if let Err(e) = sqlx::query(AssertSqlSafe(statement))
            .persistent(false)
            .execute(&mut *conn)
            .await
        {
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
        sqlx::query(AssertSqlSafe(format!(
            "ALTER TABLE {ev} ADD COLUMN dead_publishers TEXT NULL AFTER done"
        )))
        .persistent(false)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

impl super::sealed::Sealed for MySql {
    fn enqueue<'a>(
        conn: &'a mut MySqlConnection,
        tables: &'a Tables,
        events: &'a [NewEvent],
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(enqueue(conn, tables, events))
    }

    fn migrate<'a>(pool: &'a MySqlPool, tables: &'a Tables) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(migrate(pool, tables))
    }

    fn source(pool: MySqlPool, tables: &Tables) -> Arc<dyn Source> {
        Arc::new(MySqlSource {
            pool,
            sql: Sql::new(tables),
            checked: OnceCell::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_servers_without_skip_locked() {
        for old in [
            "10.5.20-MariaDB",
            "10.5.20-MariaDB-1:10.5.20+maria~deb11",
            "5.5.5-10.5.8-MariaDB",
            "10.3.39-MariaDB-log",
            "5.7.44",
            "5.7.44-log",
            "8.0.0",
            "5.6.51-91.0",
            "",
            "MySQL",
            "x.y.z",
        ] {
            let err = check_server_version(old).unwrap_err();
            let Error::UnsupportedServer { found, required } = &err else {
                panic!("{old:?}: {err}")
            };
            assert_eq!(found, old);
            assert_eq!(*required, REQUIRED);
            let message = err.to_string();
            assert!(message.contains("MariaDB 10.6"), "{message}");
            assert!(message.contains("MySQL 8.0.1"), "{message}");
        }
    }

    #[test]
    fn accepts_servers_with_skip_locked() {
        for new in [
            "10.11.19-MariaDB-1",
            "10.11.19-MariaDB-0+deb12u1",
            "10.6.0-MariaDB",
            "5.5.5-10.6.12-MariaDB",
            "11.4.2-MariaDB-ubu2404",
            "8.0.36",
            "8.0.1",
            "8.0.36-28",
            "8.4.0-log",
            "9.1.0",
        ] {
            check_server_version(new).unwrap_or_else(|e| panic!("{new:?}: {e}"));
        }
    }

    #[test]
    fn quotes_names_with_backticks() {
        let t = Tables::new("ob").unwrap().schema("app").unwrap();
        assert_eq!(t.qualified_with('`', "events"), "`app`.`ob_events`");
        assert_eq!(
            Tables::default().qualified_with('`', "events"),
            "`outbox_events`"
        );
    }

    #[test]
    fn pads_id_lists_to_few_shapes() {
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
        let p = padded(&ids);
        assert_eq!(p.len(), 8);
        assert_eq!(&p[..5], &ids[..]);
        assert!(p[5..].iter().all(|id| *id == ids[4]));
        assert!(padded(&[]).is_empty());
        assert_eq!(placeholders(3), "?, ?, ?");
    }

    #[test]
    fn clamps_delays_within_datetime() {
        assert_eq!(micros(Duration::from_millis(1500)), 1_500_000);
        assert_eq!(micros(Duration::MAX), micros(MAX_DELAY));
    }
}
