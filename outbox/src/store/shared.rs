//! The Source, written once: every store is a [`Store`] of its
//! [`Dialect`], which supplies the SQL spelling, the binding and the claim.

use std::future::Future;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row};
use sqlx::{Pool, Type};
use uuid::Uuid;

use super::dialect::{Dialect, query};
use super::statements::{Statements, WithIds};
use super::{DeadLetter, Source, legacy, storage_box, system_time_from_millis};
use crate::delivery::{ClaimedEvent, Failure, Outcome, Settlement};
use crate::event::StorageBox;
use crate::{Error, Tables};

/// The events and dead letters of one pair of tables in one database.
pub(crate) struct Store<D: Dialect> {
    pool: Pool<D::DB>,
    sql: Statements<D>,
    dialect: D,
}

impl<D: Dialect> Store<D> {
    pub(crate) fn new(pool: Pool<D::DB>, tables: &Tables, dialect: D) -> Self {
        Self {
            pool,
            sql: Statements::new(tables),
            dialect,
        }
    }
}

type RowOf<D> = <<D as Dialect>::DB as Database>::Row;

/// The logic written once. Its one implementation states, once, what sqlx
/// must offer for a database to run it, which every database the outbox
/// supports does.
pub(crate) trait Logic<D: Dialect> {
    /// The event in the columns of
    /// [`event_columns`](super::statements::event_columns).
    fn event(row: &RowOf<D>) -> Result<StorageBox, sqlx::Error>;
    /// The claimed event in the columns of
    /// [`claimed_columns`](super::statements::claimed_columns).
    fn claimed(row: &RowOf<D>) -> Result<ClaimedEvent, sqlx::Error>;
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
    fn purge_dead_letters(
        &self,
        before: SystemTime,
    ) -> impl Future<Output = Result<u64, Error>> + Send;
}

impl<D: Dialect> Logic<D> for Store<D>
where
    for<'c> &'c mut <D::DB as Database>::Connection: Executor<'c, Database = D::DB>,
    <D::DB as Database>::Arguments: IntoArguments<D::DB>,
    usize: ColumnIndex<RowOf<D>>,
    for<'r> &'r str: Encode<'r, D::DB> + Decode<'r, D::DB> + Type<D::DB>,
    for<'r> String: Decode<'r, D::DB> + Type<D::DB>,
    for<'r> Vec<u8>: Decode<'r, D::DB> + Type<D::DB>,
    for<'r> i32: Encode<'r, D::DB> + Decode<'r, D::DB> + Type<D::DB>,
    for<'r> i64: Encode<'r, D::DB> + Decode<'r, D::DB> + Type<D::DB>,
{
    fn event(row: &RowOf<D>) -> Result<StorageBox, sqlx::Error> {
        Ok(storage_box(
            D::id_at(row, 0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
            D::key_at(row, 4)?,
            row.try_get(5)?,
            row.try_get::<&str, _>(6)?,
            row.try_get(7)?,
            row.try_get(8)?,
        ))
    }

    fn claimed(row: &RowOf<D>) -> Result<ClaimedEvent, sqlx::Error> {
        Ok(ClaimedEvent::new(Self::event(row)?)
            .with_delivered(legacy::delivered(D::list_at(row, 9)?.unwrap_or_default()))
            .with_only(legacy::only(D::list_at(row, 10)?))
            .with_dead(D::list_at(row, 11)?.unwrap_or_default()))
    }

    async fn for_ids(
        &self,
        statement: &WithIds<D>,
        ids: &[Uuid],
        owner: Uuid,
    ) -> Result<u64, Error> {
        let mut changed = 0;
        for chunk in ids.chunks(D::IDS_PER_STATEMENT.unwrap_or(usize::MAX)) {
            let done = statement
                .query(chunk)
                .bind(D::id(owner))
                .execute(&self.pool)
                .await?;
            changed += D::rows_affected(&done);
        }
        Ok(changed)
    }

    async fn renew(&self, owner: Uuid, ids: &[Uuid], lease: Duration) -> Result<u64, Error> {
        // The lease stands before the ids in the text: with positional
        // parameters (`?`) it is bound first.
        let positional = D::param(1) == D::param(3);
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
            renewed += D::rows_affected(&statement.execute(&self.pool).await?);
        }
        Ok(renewed)
    }

    async fn settle(&self, owner: Uuid, s: &Settlement) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await?;
        for failures in s.dead_letters.chunks(D::FAILURES_PER_STATEMENT) {
            let column =
                |of: fn(&Failure) -> &String| D::column(failures.iter().map(of).cloned().collect());
            query(&self.sql.dead)
                .bind(column(|f| &f.publisher))
                .bind(column(|f| &f.error))
                .bind(D::id(s.id))
                .bind(D::id(owner))
                .execute(&mut *tx)
                .await?;
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
        let done = change
            .bind(D::id(s.id))
            .bind(D::id(owner))
            .execute(&mut *tx)
            .await?;
        if D::rows_affected(&done) == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn pending(&self) -> Result<u64, Error> {
        let n: i64 = query(&self.sql.pending)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        let rows = query(&self.sql.list_dead)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let event = Self::event(&row)?;
            out.push(DeadLetter {
                attempts: event.attempt,
                event,
                publisher: row.try_get(9)?,
                error: row.try_get(10)?,
                failed_at: system_time_from_millis(row.try_get(11)?),
            });
        }
        Ok(out)
    }

    /// Requeue the dead letters of the events that are not waiting in the
    /// outbox: drop the parked ones first, put each back once with its
    /// publishers that failed, and delete its dead letters.
    async fn retry_dead_letters(&self, event_ids: Option<&[Uuid]>) -> Result<u64, Error> {
        let per_statement = D::IDS_PER_STATEMENT.unwrap_or(usize::MAX);
        let mut tx = self.pool.begin().await?;
        let mut ids = Vec::new();
        match event_ids {
            Some([]) => return Ok(0),
            Some(filter) => {
                for chunk in filter.chunks(per_statement) {
                    for row in self.sql.dead_ids.query(chunk).fetch_all(&mut *tx).await? {
                        ids.push(D::id_at(&row, 0)?);
                    }
                }
            }
            None => {
                for row in query(&self.sql.all_dead_ids).fetch_all(&mut *tx).await? {
                    ids.push(D::id_at(&row, 0)?);
                }
            }
        }
        let mut requeued = 0;
        for chunk in ids.chunks(per_statement) {
            self.sql.unpark.query(chunk).execute(&mut *tx).await?;
            let inserted = self.sql.requeue.query(chunk).execute(&mut *tx).await?;
            requeued += D::rows_affected(&inserted);
            self.sql.delete_dead.query(chunk).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(requeued)
    }

    async fn purge_dead_letters(&self, before: SystemTime) -> Result<u64, Error> {
        let mut tx = self.pool.begin().await?;
        query(&self.sql.drop_parked)
            .bind(D::instant(before))
            .execute(&mut *tx)
            .await?;
        let done = query(&self.sql.purge_dead)
            .bind(D::instant(before))
            .execute(&mut *tx)
            .await?;
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
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedEvent>, Error> {
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
        Logic::purge_dead_letters(self, before).await
    }
}
