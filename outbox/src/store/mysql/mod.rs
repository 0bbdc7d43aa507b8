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
//!   `migrate` warns when it is lower). The server refuses a larger
//!   statement and closes the connection (error 1153, or a reset): the
//!   enqueue's error then names the setting, its value and how to raise it.
//!
//! A binary log in `STATEMENT` format refuses writes under READ COMMITTED:
//! use `ROW` or `MIXED`, the defaults.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sqlx::mysql::{MySqlConnection, MySqlDatabaseError, MySqlPool, MySqlQueryResult, MySqlRow};
use sqlx::{AssertSqlSafe, MySql, Row};
use tokio::sync::OnceCell;
use uuid::Uuid;

use super::dialect::{Dialect, Query, query};
use super::schema::SchemaCheck;
use super::shared::{Logic, Store};
use super::statements::{IDS, WithIds, claimable, claimed_columns, due_ids};
use super::{
    ClaimLimit, claim_in_window, duration_millis, json_list, millis_since_epoch, parse_json_list,
};
use crate::delivery::ClaimedEvent;
use crate::error::Error;
use crate::event::NewEvent;
use crate::tables::Tables;

pub(crate) mod migrate;
use migrate::{migrate, version};

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

/// The server's `max_allowed_packet` as `migrate` last read it in this
/// process (0: not read), for the error of an enqueue that exceeds it.
static MAX_ALLOWED_PACKET: AtomicU64 = AtomicU64::new(0);

/// The server's error for a packet over `max_allowed_packet`
/// (`ER_NET_PACKET_TOO_LARGE`); it closes the connection after it.
const ER_NET_PACKET_TOO_LARGE: u16 = 1153;

/// A statement of at least this many bytes whose connection broke was most
/// likely refused for its size (unless `max_allowed_packet` is known to be
/// more than twice as large).
const LARGE_STATEMENT: usize = 1 << 20;

/// An insert of `bytes` that failed with `error`: when the server refused it
/// for exceeding `max_allowed_packet` (its error 1153, or, as it then closes
/// the connection, a connection reset or broken pipe while a large
/// statement was sent), an error that says so, with the limit and how to
/// raise it. Other errors as they are.
fn packet_error(error: sqlx::Error, bytes: usize) -> Error {
    let limit = MAX_ALLOWED_PACKET.load(Ordering::Relaxed);
    let (kind, surely) = match &error {
        sqlx::Error::Database(db)
            if db
                .try_downcast_ref::<MySqlDatabaseError>()
                .is_some_and(|e| e.number() == ER_NET_PACKET_TOO_LARGE) =>
        {
            (std::io::ErrorKind::ConnectionAborted, "")
        }
        sqlx::Error::Io(io)
            if bytes >= LARGE_STATEMENT && (limit == 0 || bytes as u64 > limit / 2) =>
        {
            (io.kind(), "most likely ")
        }
        _ => return error.into(),
    };
    let known = match limit {
        0 => "its value was not read in this process: SELECT @@max_allowed_packet".to_owned(),
        limit => format!("{limit} bytes when migrate read it"),
    };
    // The server takes at most 1 GiB.
    let raise = match (bytes as u64).saturating_mul(2).next_power_of_two() {
        n if n > 1 << 30 => "no setting takes it (1 GiB at most): keep events smaller".to_owned(),
        n => format!(
            "raise it on the server (SET GLOBAL max_allowed_packet = {}, which new connections \
             get, and in the server's configuration file to keep it), or keep events smaller",
            n.max(64 << 20)
        ),
    };
    let message = format!(
        "the statement enqueuing {bytes} bytes of events is {surely}larger than the MySQL \
         server's max_allowed_packet ({known}): the server refused it and closed the \
         connection, so this transaction is lost. {raise} (Tables::max_payload refuses larger \
         ones at enqueue, before any statement) [{error}]"
    );
    sqlx::Error::Io(std::io::Error::new(kind, message)).into()
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

/// The dialect, and whether the server was found to have `SKIP LOCKED`.
pub(crate) struct MySqlDialect {
    /// The claim among the oldest due events, and among all of them (see
    /// [`claim_in_window`]).
    claim_in_window: Arc<str>,
    claim_all: Arc<str>,
    /// The lease of the claimed events (owner, lease, then the ids).
    lease: WithIds<Self>,
    /// The claimed events, read once leased.
    claimed: WithIds<Self>,
    checked: OnceCell<()>,
    schema: SchemaCheck,
}

impl MySqlDialect {
    fn new(tables: &Tables) -> Self {
        let ev = Self::table(tables, "events");
        // The claim locks ids and payload sizes only: the rows are read
        // whole once the claim has picked those within its byte budget.
        let claim = |from: &str| -> Arc<str> {
            format!(
                "SELECT e.id, OCTET_LENGTH(e.payload) FROM {from} WHERE {} \
                 ORDER BY e.id LIMIT ? FOR UPDATE SKIP LOCKED",
                claimable::<Self>(&ev),
            )
            .into()
        };
        Self {
            // The window is a derived table of the oldest due ids, joined
            // back to their rows: MySQL and MariaDB do not bound a scan of
            // the primary key by a subquery's value (`e.id <= (…)`, as the
            // other stores do), so that form still read the whole table
            // whenever fewer than `limit` events were claimable (MariaDB
            // 10.11, 100,000 events in 20 keys, claiming their 20 heads:
            // 200 ms a claim, 13 ms this way). The derived table's rows are
            // read without locks; only the claimed rows are locked.
            claim_in_window: claim(&format!(
                "({} LIMIT ?) w JOIN {ev} e ON e.id = w.id",
                due_ids::<Self>(&ev)
            )),
            claim_all: claim(&format!("{ev} e")),
            lease: WithIds::new(&format!(
                "UPDATE {ev} SET lease_owner = ?, lease_until = {NOW} + INTERVAL ? MICROSECOND, \
                   attempts = attempts + 1 \
                 WHERE id {IDS}"
            )),
            claimed: WithIds::new(&format!(
                "SELECT {} FROM {ev} WHERE id {IDS} ORDER BY id",
                claimed_columns::<Self>(""),
            )),
            checked: OnceCell::new(),
            schema: SchemaCheck::new(tables),
        }
    }
}

fn text(bytes: Option<Vec<u8>>) -> Result<Option<String>, sqlx::Error> {
    bytes
        .map(|b| String::from_utf8(b).map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .transpose()
}

impl Dialect for MySqlDialect {
    type DB = MySql;

    const NOW: &'static str = NOW;
    const PARKED: &'static str = "TIMESTAMP'9999-12-31 23:59:59.999'";

    fn param(_i: usize) -> String {
        "?".to_owned()
    }
    fn table(tables: &Tables, suffix: &str) -> String {
        tables.qualified_with('`', suffix)
    }
    fn millis(column: &str) -> String {
        format!("(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {column}) DIV 1000)")
    }
    fn after(param: &str) -> String {
        format!("{NOW} + INTERVAL {param} MICROSECOND")
    }
    fn ago(param: &str) -> String {
        format!("{NOW} - INTERVAL {param} MICROSECOND")
    }
    fn time(param: &str) -> String {
        format!("TIMESTAMP'1970-01-01 00:00:00' + INTERVAL {param} MICROSECOND")
    }
    fn in_ids(n: usize) -> String {
        format!("IN ({})", placeholders(n.next_power_of_two()))
    }
    fn failures() -> [String; 3] {
        ["?".to_owned(), "?".to_owned(), String::new()]
    }
    /// The new row replaces the old one: every column of it is the event's
    /// now, or its error now.
    fn upsert(into: &str, rows: &str, _key: &str, _update: &[&str]) -> String {
        format!("REPLACE INTO {into} {rows}")
    }
    fn insert_or_skip(into: &str, rows: &str, _key: &str) -> String {
        format!("INSERT IGNORE INTO {into} {rows}")
    }
    /// MIN() picks the one value the rows of an event share, which
    /// ONLY_FULL_GROUP_BY accepts.
    fn any_value(column: &str) -> String {
        format!("MIN({column})")
    }
    fn list_agg(column: &str) -> String {
        format!("JSON_ARRAYAGG({column})")
    }

    type Id = Uuid;
    type List = String;
    type Time = i64;
    type Column = String;

    const IDS_PER_STATEMENT: Option<usize> = Some(MAX_ROWS);
    const FAILURES_PER_STATEMENT: usize = 1;

    fn id(id: Uuid) -> Uuid {
        id
    }
    fn list(list: &[String]) -> String {
        json_list(list)
    }
    fn delay(delay: Duration) -> i64 {
        micros(delay)
    }
    fn instant(at: SystemTime) -> i64 {
        millis_since_epoch(at)
            .saturating_mul(1000)
            .clamp(MIN_DATETIME_MICROS, MAX_DATETIME_MICROS)
    }
    /// With FOUND_ROWS the count is of matched rows: a repeated id still
    /// matches its row once.
    fn bind_ids(query: Query<MySql>, ids: &[Uuid]) -> Query<MySql> {
        padded(ids).into_iter().fold(query, |q, id| q.bind(id))
    }
    fn column(values: Vec<String>) -> String {
        values.into_iter().next().unwrap_or_default()
    }

    fn id_at(row: &MySqlRow, i: usize) -> Result<Uuid, sqlx::Error> {
        row.try_get(i)
    }
    fn key_at(row: &MySqlRow, i: usize) -> Result<Option<String>, sqlx::Error> {
        text(row.try_get(i)?)
    }
    fn list_at(row: &MySqlRow, i: usize) -> Result<Option<Vec<String>>, sqlx::Error> {
        parse_json_list(row.try_get::<Option<&str>, _>(i)?)
    }
    fn rows_affected(result: &MySqlQueryResult) -> u64 {
        result.rows_affected()
    }

    /// Refuse an old server, and tables at an old schema version, once,
    /// before the first statement that needs them.
    async fn ready(&self, pool: &MySqlPool) -> Result<(), Error> {
        self.checked
            .get_or_try_init(|| async {
                let mut conn = pool.acquire().await?;
                check_server(&mut conn).await
            })
            .await?;
        self.schema.check(version(pool, self.schema.tables())).await
    }

    async fn claim(
        &self,
        pool: &MySqlPool,
        owner: Uuid,
        limit: ClaimLimit,
        lease: Duration,
    ) -> Result<Vec<ClaimedEvent>, Error> {
        let events = limit.events.min(MAX_ROWS);
        claim_in_window(events, |window| async move {
            // READ COMMITTED: no gap locks (producers' inserts never wait for
            // a claim), and rows scanned but not picked are unlocked at once.
            let mut tx = pool
                .begin_with("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION")
                .await?;
            let select = match window {
                i64::MAX => query(&self.claim_all),
                window => query(&self.claim_in_window).bind(window),
            };
            let rows = select
                .bind(i64::try_from(events).unwrap_or(1))
                .fetch_all(&mut *tx)
                .await?;
            // The oldest within the byte budget, and always the oldest. A
            // row whose id cannot be read is left out, and not leased.
            let mut ids = Vec::with_capacity(rows.len());
            let mut bytes = 0usize;
            for row in &rows {
                let Ok(id) = Self::id_at(row, 0) else {
                    continue;
                };
                let len = row.try_get::<Option<i64>, _>(1).ok().flatten().unwrap_or(0);
                bytes = bytes.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
                if !ids.is_empty() && bytes > limit.bytes {
                    break;
                }
                ids.push(id);
            }
            if ids.is_empty() {
                tx.commit().await?;
                return Ok(Vec::new());
            }
            let update = query(&self.lease.text(ids.len()))
                .bind(owner)
                .bind(micros(lease));
            Self::bind_ids(update, &ids).execute(&mut *tx).await?;
            let rows = self.claimed.query(&ids).fetch_all(&mut *tx).await?;
            tx.commit().await?;
            Ok(Store::<Self>::claimed_rows(&rows))
        })
        .await
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
        let sql_len = sql.len();
        let mut insert = sqlx::query(AssertSqlSafe(sql));
        let mut bytes = sql_len;
        for e in batch {
            insert = insert
                .bind(e.id)
                .bind(&e.event_type)
                .bind(i32::try_from(e.version).unwrap_or(i32::MAX))
                .bind(&e.topic)
                .bind(e.partition_key.as_deref().map(str::as_bytes))
                .bind(&e.payload)
                .bind(e.headers_json());
            bytes += e.payload.len()
                + e.event_type.len()
                + e.topic.len()
                + e.partition_key.as_ref().map_or(0, String::len)
                + e.headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>();
        }
        if let Err(error) = insert.execute(&mut *conn).await {
            return Err(packet_error(error, bytes));
        }
    }
    Ok(())
}

backend!(MySql, MySqlDialect);

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
