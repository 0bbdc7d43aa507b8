//! The Source, written once: every store is a [`Store`] of its
//! [`Dialect`], which supplies the SQL spelling, the binding and the claim.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sqlx::database::HasStatementCache;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row};
use sqlx::{Pool, Type};
use uuid::Uuid;

use super::conn::Conn;
use super::dialect::{Dialect, query};
use super::statements::{Purge, Statements, WithIds};
use super::{ClaimLimit, DeadLetter, Source, legacy, system_time_from_millis};
use crate::delivery::{ClaimedEvent, Failure, Outcome, Settlement};
use crate::error::Error;
use crate::event::{StorageBox, parse_headers};
use crate::tables::Tables;

/// The events and dead letters of one pair of tables in one database.
pub(crate) struct Store<D: Dialect> {
    pool: Pool<D::DB>,
    sql: Statements<D>,
    dialect: D,
    /// The Runner's statements (claim, ack, settle, renew, release) each run
    /// unprepared inside a transaction of their own: see [`Conn`].
    pooled: bool,
}

impl<D: Dialect> Store<D> {
    pub(crate) fn new(pool: Pool<D::DB>, tables: &Tables, mut dialect: D, pooled: bool) -> Self {
        dialect.set_pooled(pooled);
        Self {
            pool,
            sql: Statements::new(tables),
            dialect,
            pooled,
        }
    }
}

/// The longest age [`purge_dead_letters_older_than`] measures: longer ones
/// would take the cutoff out of some databases' time range (and nothing
/// failed so long ago).
///
/// [`purge_dead_letters_older_than`]: Source::purge_dead_letters_older_than
const OLDEST: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

type RowOf<D> = <<D as Dialect>::DB as Database>::Row;

/// One row, read column by column as well as each can be: a value that
/// cannot be read as its type (text that is not UTF-8, headers that are not
/// a JSON object of strings, a number out of range) is read as well as it
/// can (text lossily, headers empty, a number as 0) and noted as
/// `column: why`. So one bad row is handed on marked
/// [`unreadable`](ClaimedEvent::unreadable), to be dead-lettered with the
/// reason, instead of failing every claim or listing it is part of.
struct Read<'r, D: Dialect> {
    row: &'r RowOf<D>,
    problems: Vec<String>,
}

/// Why a value could not be read: the decoder's own words.
fn why(error: sqlx::Error) -> String {
    match error {
        sqlx::Error::ColumnDecode { source, .. } | sqlx::Error::Decode(source) => {
            source.to_string()
        }
        other => other.to_string(),
    }
}

impl<'r, D: Dialect> Read<'r, D>
where
    usize: ColumnIndex<RowOf<D>>,
    for<'a> String: Decode<'a, D::DB> + Type<D::DB>,
    for<'a> Vec<u8>: Decode<'a, D::DB> + Type<D::DB>,
    for<'a> i32: Decode<'a, D::DB> + Type<D::DB>,
    for<'a> i64: Decode<'a, D::DB> + Type<D::DB>,
{
    fn new(row: &'r RowOf<D>) -> Self {
        Self {
            row,
            problems: Vec::new(),
        }
    }

    fn note(&mut self, column: &str, why: impl std::fmt::Display) {
        self.problems.push(format!("{column}: {why}"));
    }

    /// The value at `i` as bytes, whatever its type, if it has any.
    fn raw(&self, i: usize) -> Option<Vec<u8>> {
        self.row
            .try_get_unchecked::<Option<Vec<u8>>, _>(i)
            .ok()
            .flatten()
    }

    /// The raw value at `i` as text, lossily.
    fn lossy(&self, i: usize) -> Option<String> {
        self.raw(i)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A nullable text column.
    fn text_or_null(&mut self, i: usize, column: &str) -> Option<String> {
        match self.row.try_get::<Option<String>, _>(i) {
            Ok(text) => text,
            Err(e) => {
                self.note(column, why(e));
                self.lossy(i)
            }
        }
    }

    /// A text column that is never NULL.
    fn text(&mut self, i: usize, column: &str) -> String {
        self.text_or_null(i, column).unwrap_or_else(|| {
            self.note(column, "NULL");
            String::new()
        })
    }

    /// An `INT` column that holds a `u32`.
    fn count(&mut self, i: usize, column: &str) -> u32 {
        match self.row.try_get::<i32, _>(i) {
            Ok(n) => u32::try_from(n).unwrap_or_else(|_| {
                self.note(column, format_args!("{n} is out of range"));
                0
            }),
            Err(e) => {
                self.note(column, why(e));
                0
            }
        }
    }

    /// A time, as milliseconds since the Unix epoch.
    fn time(&mut self, i: usize, column: &str) -> SystemTime {
        match self.row.try_get::<i64, _>(i) {
            Ok(ms) => system_time_from_millis(ms),
            Err(e) => {
                self.note(column, why(e));
                SystemTime::UNIX_EPOCH
            }
        }
    }

    fn bytes(&mut self, i: usize, column: &str) -> Vec<u8> {
        match self.row.try_get::<Vec<u8>, _>(i) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.note(column, why(e));
                self.raw(i).unwrap_or_default()
            }
        }
    }

    fn key(&mut self, i: usize) -> Option<String> {
        D::key_at(self.row, i).unwrap_or_else(|e| {
            self.note("partition_key", why(e));
            self.lossy(i)
        })
    }

    fn headers(&mut self, i: usize) -> BTreeMap<String, String> {
        let noted = self.problems.len();
        let json = self.text(i, "headers");
        if self.problems.len() > noted {
            return BTreeMap::new();
        }
        parse_headers(&json).unwrap_or_else(|e| {
            self.note("headers", format_args!("not a JSON object of strings: {e}"));
            BTreeMap::new()
        })
    }

    fn list(&mut self, i: usize, column: &str) -> Option<Vec<String>> {
        D::list_at(self.row, i).unwrap_or_else(|e| {
            self.note(column, why(e));
            None
        })
    }

    /// The event in the columns of
    /// [`event_columns`](super::statements::event_columns). Fails only
    /// when its id cannot be read.
    fn event(&mut self) -> Result<StorageBox, sqlx::Error> {
        Ok(StorageBox {
            id: D::id_at(self.row, 0)?,
            event_type: self.text(1, "event_type"),
            version: self.count(2, "version"),
            topic: self.text(3, "topic"),
            partition_key: self.key(4),
            payload: self.bytes(5, "payload"),
            headers: self.headers(6),
            created_at: self.time(7, "created_at"),
            attempt: self.count(8, "attempts"),
        })
    }

    /// What could not be read, if anything.
    fn unreadable(self) -> Option<String> {
        (!self.problems.is_empty()).then(|| self.problems.join("; "))
    }

    /// Log a row whose id cannot be read, with what is known of it.
    fn skip(row: &'r RowOf<D>, error: sqlx::Error, what: &str) {
        let read = Self::new(row);
        tracing::error!(
            id = ?read.lossy(0),
            event_type = ?read.lossy(1),
            topic = ?read.lossy(3),
            error = %why(error),
            "outbox: skipping {what} whose id cannot be read; an operator must repair or delete \
             it"
        );
    }
}

/// The logic written once. Its one implementation states, once, what sqlx
/// must offer for a database to run it, which every database the outbox
/// supports does.
pub(crate) trait Logic<D: Dialect> {
    /// The claimed event in the columns of
    /// [`claimed_columns`](super::statements::claimed_columns), marked
    /// [`unreadable`](ClaimedEvent::unreadable) when some column could not
    /// be read. Fails only when its id cannot be read.
    fn claimed(row: &RowOf<D>) -> Result<ClaimedEvent, sqlx::Error>;
    /// The claimed events of these rows, each read on its own: a row whose
    /// id cannot be read is logged and left out.
    fn claimed_rows(rows: &[RowOf<D>]) -> Vec<ClaimedEvent>;
    /// The event ids of these dead-letter rows: one that cannot be read is
    /// logged and left out.
    fn ids(rows: &[RowOf<D>]) -> Vec<Uuid>;
    /// Run `statement` for `ids` (in as many statements as the dialect
    /// needs), fenced by `owner`. Returns how many rows changed.
    fn for_ids(
        &self,
        statement: &WithIds<D>,
        ids: &[Uuid],
        owner: Uuid,
    ) -> impl Future<Output = Result<u64, Error>> + Send;
    fn renew(
        &self,
        owner: Uuid,
        ids: &[Uuid],
        lease: Duration,
    ) -> impl Future<Output = Result<u64, Error>> + Send;
    fn settle(
        &self,
        owner: Uuid,
        s: &Settlement,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    fn pending(&self) -> impl Future<Output = Result<u64, Error>> + Send;
    fn dead_letters(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, Error>> + Send;
    fn retry_dead_letters(
        &self,
        event_ids: Option<&[Uuid]>,
    ) -> impl Future<Output = Result<u64, Error>> + Send;
    /// Delete the dead letters that failed before `cutoff`, as `purge`
    /// states it, and the parked events they held back.
    fn purge(
        &self,
        purge: &Purge,
        cutoff: D::Time,
    ) -> impl Future<Output = Result<u64, Error>> + Send;
}

impl<D: Dialect> Logic<D> for Store<D>
where
    D::DB: HasStatementCache,
    for<'c> &'c mut <D::DB as Database>::Connection: Executor<'c, Database = D::DB>,
    <D::DB as Database>::Arguments: IntoArguments<D::DB>,
    usize: ColumnIndex<RowOf<D>>,
    for<'r> &'r str: Encode<'r, D::DB> + Decode<'r, D::DB> + Type<D::DB>,
    for<'r> String: Decode<'r, D::DB> + Type<D::DB>,
    for<'r> Vec<u8>: Decode<'r, D::DB> + Type<D::DB>,
    for<'r> i32: Encode<'r, D::DB> + Decode<'r, D::DB> + Type<D::DB>,
    for<'r> i64: Encode<'r, D::DB> + Decode<'r, D::DB> + Type<D::DB>,
{
    fn claimed(row: &RowOf<D>) -> Result<ClaimedEvent, sqlx::Error> {
        let mut read = Read::<D>::new(row);
        let event = read.event()?;
        let delivered = read.list(9, "done").unwrap_or_default();
        let only = read.list(10, "only_publishers");
        let dead = read.list(11, "dead_publishers").unwrap_or_default();
        let claimed = ClaimedEvent::new(event)
            .with_delivered(legacy::delivered(delivered))
            .with_only(legacy::only(only))
            .with_dead(dead);
        Ok(match read.unreadable() {
            Some(reason) => claimed.with_unreadable(reason),
            None => claimed,
        })
    }

    fn claimed_rows(rows: &[RowOf<D>]) -> Vec<ClaimedEvent> {
        rows.iter()
            .filter_map(|row| {
                Self::claimed(row)
                    .map_err(|e| Read::<D>::skip(row, e, "a claimed event"))
                    .ok()
            })
            .collect()
    }

    fn ids(rows: &[RowOf<D>]) -> Vec<Uuid> {
        rows.iter()
            .filter_map(|row| {
                D::id_at(row, 0)
                    .map_err(|e| Read::<D>::skip(row, e, "a dead letter"))
                    .ok()
            })
            .collect()
    }

    async fn for_ids(
        &self,
        statement: &WithIds<D>,
        ids: &[Uuid],
        owner: Uuid,
    ) -> Result<u64, Error> {
        let mut conn = Conn::open(&self.pool, self.pooled).await?;
        let mut changed = 0;
        for chunk in ids.chunks(D::IDS_PER_STATEMENT.unwrap_or(usize::MAX)) {
            let done = conn
                .query(statement.query(chunk).bind(D::id(owner)))
                .execute(&mut *conn)
                .await?;
            changed += D::rows_affected(&done);
        }
        conn.commit().await?;
        Ok(changed)
    }

    async fn renew(&self, owner: Uuid, ids: &[Uuid], lease: Duration) -> Result<u64, Error> {
        // The lease stands before the ids in the text: with positional
        // parameters (`?`) it is bound first.
        let positional = D::param(1) == D::param(3);
        let mut conn = Conn::open(&self.pool, self.pooled).await?;
        let mut renewed = 0;
        for chunk in ids.chunks(D::IDS_PER_STATEMENT.unwrap_or(usize::MAX)) {
            let text = self.sql.renew.text(chunk.len());
            let statement = if positional {
                D::bind_ids(query(&text).bind(D::delay(lease)), chunk).bind(D::id(owner))
            } else {
                D::bind_ids(query(&text), chunk)
                    .bind(D::id(owner))
                    .bind(D::delay(lease))
            };
            renewed += D::rows_affected(&conn.query(statement).execute(&mut *conn).await?);
        }
        conn.commit().await?;
        Ok(renewed)
    }

    async fn settle(&self, owner: Uuid, s: &Settlement) -> Result<bool, Error> {
        let mut tx = Conn::begin(&self.pool, self.pooled).await?;
        for failures in s.dead_letters.chunks(D::FAILURES_PER_STATEMENT) {
            let column =
                |of: fn(&Failure) -> &String| D::column(failures.iter().map(of).cloned().collect());
            let dead = query(&self.sql.dead)
                .bind(column(|f| &f.publisher))
                .bind(column(|f| &f.error))
                .bind(D::id(s.id))
                .bind(D::id(owner));
            tx.query(dead).execute(&mut *tx).await?;
        }
        // The statement of the outcome, fenced by the lease (its last two
        // parameters); Hold is Retry without counting the attempt.
        let change = match &s.outcome {
            Outcome::Retry { delay, error }
            | Outcome::Hold {
                delay,
                reason: error,
            } => query(&self.sql.retry)
                .bind(D::delay(*delay))
                .bind(D::list(&s.delivered))
                .bind(D::list(&s.dead))
                .bind(error.as_str())
                .bind(i32::from(matches!(s.outcome, Outcome::Hold { .. }))),
            Outcome::Park { error } => query(&self.sql.park)
                .bind(D::list(&s.delivered))
                .bind(D::list(&s.dead))
                .bind(error.as_str()),
            Outcome::Finish => query(&self.sql.finish),
        };
        let change = change.bind(D::id(s.id)).bind(D::id(owner));
        let done = tx.query(change).execute(&mut *tx).await?;
        if D::rows_affected(&done) == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn pending(&self) -> Result<u64, Error> {
        let mut conn = Conn::begin(&self.pool, true).await?;
        let n: i64 = conn
            .query(query(&self.sql.pending))
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
        conn.commit().await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        let mut conn = Conn::begin(&self.pool, true).await?;
        let list = query(&self.sql.list_dead).bind(i64::try_from(limit).unwrap_or(i64::MAX));
        let rows = conn.query(list).fetch_all(&mut *conn).await?;
        conn.commit().await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut read = Read::<D>::new(row);
            let event = match read.event() {
                Ok(event) => event,
                Err(e) => {
                    Read::<D>::skip(row, e, "a dead letter");
                    continue;
                }
            };
            let publisher = read.text(9, "publisher");
            let error = read.text(10, "error");
            let failed_at = read.time(11, "failed_at");
            out.push(DeadLetter {
                attempts: event.attempt,
                event,
                publisher,
                error,
                failed_at,
                unreadable: read.unreadable(),
            });
        }
        Ok(out)
    }

    /// Requeue the dead letters of the events that are not waiting in the
    /// outbox: drop the parked ones first, put each back once with its
    /// publishers that failed, and delete its dead letters.
    async fn retry_dead_letters(&self, event_ids: Option<&[Uuid]>) -> Result<u64, Error> {
        let per_statement = D::IDS_PER_STATEMENT.unwrap_or(usize::MAX);
        let mut tx = Conn::begin(&self.pool, true).await?;
        let mut ids = Vec::new();
        match event_ids {
            Some([]) => return Ok(0),
            Some(filter) => {
                for chunk in filter.chunks(per_statement) {
                    let dead_ids = tx.query(self.sql.dead_ids.query(chunk));
                    let rows = dead_ids.fetch_all(&mut *tx).await?;
                    ids.extend(Self::ids(&rows));
                }
            }
            None => {
                let all_dead_ids = tx.query(query(&self.sql.all_dead_ids));
                let rows = all_dead_ids.fetch_all(&mut *tx).await?;
                ids.extend(Self::ids(&rows));
            }
        }
        let mut requeued = 0;
        for chunk in ids.chunks(per_statement) {
            let unpark = tx.query(self.sql.unpark.query(chunk));
            unpark.execute(&mut *tx).await?;
            let requeue = tx.query(self.sql.requeue.query(chunk));
            requeued += D::rows_affected(&requeue.execute(&mut *tx).await?);
            let delete = tx.query(self.sql.delete_dead.query(chunk));
            delete.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(requeued)
    }

    async fn purge(&self, purge: &Purge, cutoff: D::Time) -> Result<u64, Error> {
        let mut tx = Conn::begin(&self.pool, true).await?;
        let parked = tx.query(query(&purge.parked).bind(cutoff));
        parked.execute(&mut *tx).await?;
        let dead = tx.query(query(&purge.dead).bind(cutoff));
        let done = dead.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(D::rows_affected(&done))
    }
}

#[async_trait]
impl<D: Dialect> Source for Store<D>
where
    Self: Logic<D>,
{
    async fn claim(
        &self,
        owner: Uuid,
        limit: ClaimLimit,
        lease: Duration,
    ) -> Result<Vec<ClaimedEvent>, Error> {
        if limit.events == 0 {
            return Ok(Vec::new());
        }
        self.dialect.ready(&self.pool).await?;
        self.dialect.claim(&self.pool, owner, limit, lease).await
    }

    async fn ack(&self, owner: Uuid, ids: &[Uuid]) -> Result<u64, Error> {
        self.dialect.ready(&self.pool).await?;
        let acked = self.for_ids(&self.sql.ack, ids, owner).await?;
        self.dialect.deleted(&self.pool, acked);
        Ok(acked)
    }

    async fn settle(&self, owner: Uuid, settlement: &Settlement) -> Result<bool, Error> {
        self.dialect.ready(&self.pool).await?;
        Logic::settle(self, owner, settlement).await
    }

    async fn renew(&self, owner: Uuid, ids: &[Uuid], lease: Duration) -> Result<u64, Error> {
        self.dialect.ready(&self.pool).await?;
        Logic::renew(self, owner, ids, lease).await
    }

    async fn release(&self, owner: Uuid, ids: &[Uuid]) -> Result<u64, Error> {
        self.dialect.ready(&self.pool).await?;
        self.for_ids(&self.sql.release, ids, owner).await
    }

    async fn pending(&self) -> Result<u64, Error> {
        self.dialect.ready(&self.pool).await?;
        Logic::pending(self).await
    }

    async fn wait_for_events(&self, timeout: Duration) {
        self.dialect.wait_for_events(&self.pool, timeout).await;
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        self.dialect.ready(&self.pool).await?;
        Logic::dead_letters(self, limit).await
    }

    async fn retry_dead_letters(&self, event_ids: Option<&[Uuid]>) -> Result<u64, Error> {
        self.dialect.ready(&self.pool).await?;
        Logic::retry_dead_letters(self, event_ids).await
    }

    async fn purge_dead_letters(&self, before: SystemTime) -> Result<u64, Error> {
        self.dialect.ready(&self.pool).await?;
        self.purge(&self.sql.purge_before, D::instant(before)).await
    }

    /// The cutoff is taken on the database's clock, in the statement.
    async fn purge_dead_letters_older_than(&self, age: Duration) -> Result<u64, Error> {
        self.dialect.ready(&self.pool).await?;
        self.purge(&self.sql.purge_older, D::delay(age.min(OLDEST)))
            .await
    }
}
