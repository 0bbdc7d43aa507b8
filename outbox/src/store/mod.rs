//! The Source: where the Runner claims events and reports what became of them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use uuid::Uuid;

use crate::delivery::{ClaimedEvent, Settlement};
use crate::error::Error;
use crate::event::StorageBox;
use crate::tables::Tables;

/// A database's [`Sealed`](sealed::Sealed) impl, in its module: that
/// module's `enqueue`, `migrate` and `version` (of the schema), and a
/// [`Store`](shared::Store) of its dialect as its Source.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
macro_rules! backend {
    ($db:ty, $dialect:ident) => {
        impl $crate::store::sealed::Sealed for $db {
            fn enqueue<'a>(
                conn: &'a mut <$db as sqlx::Database>::Connection,
                tables: &'a $crate::Tables,
                events: &'a [$crate::event::NewEvent],
            ) -> futures_util::future::BoxFuture<'a, Result<(), $crate::Error>> {
                Box::pin(enqueue(conn, tables, events))
            }

            fn migrate<'a>(
                pool: &'a sqlx::Pool<$db>,
                migrator: &'a $crate::migrations::Migrator,
            ) -> futures_util::future::BoxFuture<'a, Result<(), $crate::Error>> {
                Box::pin(migrate(pool, migrator))
            }

            fn schema_version<'a>(
                pool: &'a sqlx::Pool<$db>,
                tables: &'a $crate::Tables,
            ) -> futures_util::future::BoxFuture<'a, Result<Option<i64>, $crate::Error>> {
                Box::pin(version(pool, tables))
            }

            fn source(
                pool: sqlx::Pool<$db>,
                tables: &$crate::Tables,
                pooled: bool,
            ) -> std::sync::Arc<dyn $crate::Source> {
                let dialect = $dialect::new(tables);
                std::sync::Arc::new($crate::store::shared::Store::new(
                    pool, tables, dialect, pooled,
                ))
            }
        }
    };
}

mod conn;
mod dialect;
#[cfg(feature = "mysql")]
pub(crate) mod mysql;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
pub(crate) mod schema;
mod shared;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;
mod statements;

/// A delivery in the dead-letter table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The event, as it was stored.
    pub event: StorageBox,
    /// The publisher that could not deliver it.
    pub publisher: String,
    /// The last error.
    pub error: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// When it was dead-lettered.
    pub failed_at: SystemTime,
    /// Why the stored row could not be read as it was written, when it
    /// could not (text that is not UTF-8, headers that are not a JSON object
    /// of strings…): the fields above then hold what could be read of it
    /// (text read lossily, empty headers, zero numbers).
    pub unreadable: Option<String>,
}

/// How much one [`claim`](Source::claim) may take: at most `events` events,
/// and payloads of at most `bytes` bytes in all, so that the memory a claim
/// loads is bounded whatever the events' sizes. A claim takes events in its
/// order while both limits hold, and always at least one event when one is
/// claimable, even when that event's payload alone is larger than `bytes`.
///
/// ```
/// use outbox::ClaimLimit;
///
/// let limit = ClaimLimit::events(100).bytes(32 << 20);
/// assert_eq!((limit.events, limit.bytes), (100, 32 << 20));
/// assert_eq!(ClaimLimit::events(10).bytes, usize::MAX);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimLimit {
    /// The most events a claim takes.
    pub events: usize,
    /// The most payload bytes a claim takes (its first event aside).
    pub bytes: usize,
}

impl ClaimLimit {
    /// At most `events` events, whatever their size.
    pub const fn events(events: usize) -> Self {
        Self {
            events,
            bytes: usize::MAX,
        }
    }

    /// The same, with at most `bytes` bytes of payloads in all.
    #[must_use]
    pub const fn bytes(self, bytes: usize) -> Self {
        Self { bytes, ..self }
    }

    /// `bytes` as an SQL parameter (saturating).
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub(crate) fn bytes_i64(&self) -> i64 {
        i64::try_from(self.bytes).unwrap_or(i64::MAX)
    }
}

/// A store of events the Runner can claim from: one implementation per
/// database. Implement it (and run the conformance tests) to add a backend.
///
/// Every method that changes a claimed event is *fenced*: it only acts while
/// `owner` still holds the event's lease, so a Runner whose lease expired
/// cannot acknowledge work that another Runner has claimed since.
#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// Lease due events, oldest first, within `limit` (a number of events
    /// and of payload bytes, see [`ClaimLimit`]), for `lease`, measured on
    /// the database's clock, incrementing their attempt counter. At most one
    /// event per partition key: the oldest one left, and only when no older
    /// event of that key exists.
    async fn claim(
        &self,
        owner: Uuid,
        limit: ClaimLimit,
        lease: Duration,
    ) -> Result<Vec<ClaimedEvent>, Error>;

    /// Delete events that every publisher has received. Returns how many
    /// were deleted (fewer when a lease was lost).
    async fn ack(&self, owner: Uuid, ids: &[Uuid]) -> Result<u64, Error>;

    /// Record the Runner's decision for one event, in one transaction: write
    /// its [`dead_letters`](Settlement::dead_letters), then, by its
    /// [`Outcome`](crate::Outcome): delete the event (`Finish`); make it due
    /// again after the delay with its delivered/dead publishers and last
    /// error recorded (`Retry`); the same without counting this attempt
    /// (`Hold`); or keep it never due, holding its key (`Park`). Returns
    /// false when the lease was lost and nothing was changed.
    async fn settle(&self, owner: Uuid, settlement: &Settlement) -> Result<bool, Error>;

    /// Extend the leases that `owner` still holds on these events to `lease`
    /// from now (database clock), while they are being published: a batch
    /// that takes longer than one lease is then never claimed again by
    /// another Runner meanwhile. Returns how many leases were extended
    /// (fewer when some were lost).
    async fn renew(&self, owner: Uuid, ids: &[Uuid], lease: Duration) -> Result<u64, Error>;

    /// Give events back unfinished (on shutdown), due at once.
    async fn release(&self, owner: Uuid, ids: &[Uuid]) -> Result<u64, Error>;

    /// How many events in the outbox can still be published without an
    /// operator, due or not: parked events, and the events of their keys
    /// behind them, are not counted (an event of such a key whose
    /// transaction committed late, with an older id, is ahead of the parked
    /// one and counted).
    async fn pending(&self) -> Result<u64, Error>;

    /// Wait until new events may have been committed, or `timeout` passed.
    /// Returning early is always allowed: the Runner then claims at once.
    ///
    /// The default sleeps; PostgreSQL listens for the outbox's notifications.
    async fn wait_for_events(&self, timeout: Duration) {
        tokio::time::sleep(timeout).await;
    }

    /// List dead letters, oldest first.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, Error>;

    /// Put dead-lettered deliveries of these events (all when `None`) back
    /// into the outbox, for the publishers that failed, with their original
    /// ids (so they stay at the head of their key). An event that is still in
    /// the outbox (not parked) is left alone. Returns the number of events
    /// requeued.
    async fn retry_dead_letters(&self, event_ids: Option<&[Uuid]>) -> Result<u64, Error>;

    /// Delete dead letters that failed before `before`, and the parked events
    /// they held back (their keys move on). Returns how many dead letters.
    /// Like [`retry_dead_letters`](Self::retry_dead_letters), it leaves
    /// alone the dead letters of an event still waiting in the outbox for
    /// other publishers (not parked): they are purged once it is finished
    /// or parked, so a parked event always has a dead letter to retry or
    /// purge.
    async fn purge_dead_letters(&self, before: SystemTime) -> Result<u64, Error>;

    /// [`purge_dead_letters`](Self::purge_dead_letters) of those that failed
    /// longer than `age` ago on the database's clock, the clock every other
    /// time of the outbox is on (the Runner's retention uses this). The
    /// default measures on this host's clock; the built-in stores override
    /// it.
    async fn purge_dead_letters_older_than(&self, age: Duration) -> Result<u64, Error> {
        let before = SystemTime::now()
            .checked_sub(age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.purge_dead_letters(before).await
    }
}

/// Rows written by releases before outcomes were typed, read the same as
/// new ones: the dead mark inside `done`, and dead letters of an event that
/// no publisher accepted, recorded under the name `(none)`.
pub(crate) mod legacy {
    /// The mark older releases put in `done` once a delivery was
    /// dead-lettered.
    const DEAD_MARK: &str = "\u{1}dead-lettered";
    /// The name older releases dead-lettered an event under when no
    /// publisher accepted its type.
    pub(crate) const NO_PUBLISHER: &str = "(none)";

    /// Publishers that delivered an event, without the old dead mark.
    pub(crate) fn delivered(mut done: Vec<String>) -> Vec<String> {
        done.retain(|p| p != DEAD_MARK);
        done
    }

    /// Who a requeued event is owed to: a requeued `(none)` dead letter is
    /// owed to every publisher that accepts it now.
    pub(crate) fn only(only: Option<Vec<String>>) -> Option<Vec<String>> {
        only.filter(|list| !list.iter().any(|p| p == NO_PUBLISHER))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn old_marks_are_read_as_typed_facts() {
            let done = vec!["a".to_owned(), super::DEAD_MARK.to_owned()];
            assert_eq!(super::delivered(done), vec!["a".to_owned()]);
            assert_eq!(super::only(Some(vec!["(none)".to_owned()])), None);
            let only = Some(vec!["b".to_owned()]);
            assert_eq!(super::only(only.clone()), only);
        }
    }
}

pub(crate) mod sealed {
    use std::sync::Arc;

    use futures_util::future::BoxFuture;

    use crate::error::Error;
    use crate::event::NewEvent;
    use crate::migrations::Migrator;
    use crate::store::Source;
    use crate::tables::Tables;

    /// What each database supplies: its enqueue, migrate and Source. Sealed,
    /// so that these stay internal and can change between releases.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not a database the outbox is built for",
        label = "the outbox has no store for this database",
        note = "enable the outbox's cargo feature for it: `postgres` for `sqlx::Postgres`, `mysql` for `sqlx::MySql`, `sqlite` for `sqlx::Sqlite` (the default)"
    )]
    pub trait Sealed: sqlx::Database {
        fn enqueue<'a>(
            conn: &'a mut Self::Connection,
            tables: &'a Tables,
            events: &'a [NewEvent],
        ) -> BoxFuture<'a, Result<(), Error>>;

        fn migrate<'a>(
            pool: &'a sqlx::Pool<Self>,
            migrator: &'a Migrator,
        ) -> BoxFuture<'a, Result<(), Error>>;

        /// The recorded schema version, in one read: `None` without a
        /// version table.
        fn schema_version<'a>(
            pool: &'a sqlx::Pool<Self>,
            tables: &'a Tables,
        ) -> BoxFuture<'a, Result<Option<i64>, Error>>;

        /// The Source; `pooled`: behind a pooler in transaction mode.
        fn source(pool: sqlx::Pool<Self>, tables: &Tables, pooled: bool) -> Arc<dyn Source>;
    }
}

/// A database the outbox can live in: `sqlx::Postgres` (feature `postgres`),
/// `sqlx::MySql` (feature `mysql`) or `sqlx::Sqlite` (feature `sqlite`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a database the outbox is built for",
    label = "the outbox has no store for this database",
    note = "enable the outbox's cargo feature for it: `postgres` for `sqlx::Postgres`, `mysql` for `sqlx::MySql`, `sqlite` for `sqlx::Sqlite` (the default), e.g. `outbox = {{ version = \"0.1\", features = [\"postgres\"] }}`"
)]
pub trait Backend: sealed::Sealed {}

impl<DB: sealed::Sealed> Backend for DB {}

/// The Source for a pool: what the Runner uses, exposed for tests and tools
/// (dead-letter administration).
///
/// Its operators' methods ([`pending`](Source::pending), the dead letters)
/// work through a connection pooler in transaction mode too; the Runner's
/// own (claim, ack…) need
/// [`RunnerBuilder::transaction_pooler`](crate::RunnerBuilder::transaction_pooler)
/// there.
pub fn source<DB: Backend>(pool: sqlx::Pool<DB>, tables: &Tables) -> Arc<dyn Source> {
    <DB as sealed::Sealed>::source(pool, tables, false)
}

/// The Source of a Runner: behind a pooler in transaction mode when
/// `pooled`.
pub(crate) fn runner_source<DB: Backend>(
    pool: sqlx::Pool<DB>,
    tables: &Tables,
    pooled: bool,
) -> Arc<dyn Source> {
    <DB as sealed::Sealed>::source(pool, tables, pooled)
}

#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) fn json_list(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".to_owned())
}

/// A list of publishers stored as JSON; not one is an error.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) fn parse_json_list(json: Option<&str>) -> Result<Option<Vec<String>>, sqlx::Error> {
    json.map(|json| {
        serde_json::from_str(json)
            .map_err(|e| sqlx::Error::Decode(format!("not a JSON array of strings: {e}").into()))
    })
    .transpose()
}

/// A claim in two looks: `claim(window)` first over the oldest due rows
/// only (4 x `limit`, at least 64), since scanning the whole table for heads
/// costs a key probe per row when most keys are blocked; then, only if that
/// window holds nothing claimable, over everything (`i64::MAX`), so that a
/// blocked key never holds up the others.
pub(crate) async fn claim_in_window<T, F, Fut>(limit: usize, mut claim: F) -> Result<Vec<T>, Error>
where
    F: FnMut(i64) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, Error>>,
{
    let window = i64::try_from(limit.saturating_mul(4).max(64)).unwrap_or(i64::MAX);
    let first = claim(window).await?;
    if !first.is_empty() {
        return Ok(first);
    }
    claim(i64::MAX).await
}

pub(crate) fn system_time_from_millis(ms: i64) -> SystemTime {
    if ms >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

pub(crate) fn millis_since_epoch(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

pub(crate) fn duration_millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Create or upgrade the outbox tables (default names) to the schema this
/// release needs; see [`Migrator`](crate::migrations::Migrator) for what it
/// does and its settings.
///
/// Versioned and idempotent: when the schema is current it is one read, with
/// no lock and no DDL. Safe to run from several processes at once, and it
/// never makes the application's writes wait for long: a migration that
/// would wait more than its lock timeout for an open write transaction fails
/// with [`Error::MigrationLocked`] instead.
pub async fn migrate<DB: Backend>(pool: &sqlx::Pool<DB>) -> Result<(), Error> {
    Tables::default().migrate(pool).await
}

impl Tables {
    /// [`migrate`](crate::migrate) these tables.
    pub async fn migrate<DB: Backend>(&self, pool: &sqlx::Pool<DB>) -> Result<(), Error> {
        crate::migrations::Migrator::new(self).run(pool).await
    }
}
