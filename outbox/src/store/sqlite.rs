//! SQLite: the embedded default. One writer at a time; every claim is a
//! single `UPDATE … RETURNING` statement, so it holds the write lock only as
//! long as that statement runs.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{AssertSqlSafe, Row, Sqlite, SqliteConnection};
use uuid::Uuid;

use super::{
    DeadLetter, Source, claim_in_window, duration_millis, json_list, legacy, millis_since_epoch,
    parse_json_list, storage_box, system_time_from_millis,
};
use crate::delivery::{ClaimedEvent, Outcome, Settlement};
use crate::event::NewEvent;
use crate::{Error, Tables};

/// `due_at` of a parked event: never due.
const PARKED: i64 = i64::MAX;

/// Milliseconds since the Unix epoch on the database's clock.
const NOW: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

fn q(sql: &Arc<str>) -> sqlx::query::Query<'static, Sqlite, sqlx::sqlite::SqliteArguments> {
    sqlx::query(AssertSqlSafe(sql.clone()))
}

struct Sql {
    claim: Arc<str>,
    ack: Arc<str>,
    retry: Arc<str>,
    delete_one: Arc<str>,
    park: Arc<str>,
    unpark: Arc<str>,
    drop_parked: Arc<str>,
    dead: Arc<str>,
    release: Arc<str>,
    pending: Arc<str>,
    list_dead: Arc<str>,
    dead_ids: Arc<str>,
    requeue_dead: Arc<str>,
    delete_dead: Arc<str>,
    purge_dead: Arc<str>,
}

impl Sql {
    fn new(tables: &Tables) -> Self {
        let ev = tables.qualified("events");
        let dl = tables.qualified("dead_letters");
        Self {
            claim: format!(
                "UPDATE {ev} SET lease_owner = ?1, lease_until = {NOW} + ?3, attempts = attempts + 1 \
                 WHERE id IN ( \
                   SELECT e.id FROM {ev} e \
                   WHERE e.due_at <= {NOW} \
                     AND (e.lease_until IS NULL OR e.lease_until <= {NOW}) \
                     AND (e.partition_key IS NULL OR NOT EXISTS ( \
                       SELECT 1 FROM {ev} p WHERE p.partition_key = e.partition_key AND p.id < e.id)) \
                     AND e.id <= COALESCE(( \
                       SELECT d.id FROM {ev} d WHERE d.due_at <= {NOW} \
                         AND (d.lease_until IS NULL OR d.lease_until <= {NOW}) \
                       ORDER BY d.id LIMIT 1 OFFSET ?4), 'g') \
                   ORDER BY e.id LIMIT ?2) \
                 RETURNING id, event_type, version, topic, partition_key, payload, headers, \
                   created_at, attempts, done, only_publishers, dead_publishers"
            )
            .into(),
            ack: format!(
                "DELETE FROM {ev} WHERE lease_owner = ?1 AND id IN (SELECT value FROM json_each(?2))"
            )
            .into(),
            retry: format!(
                "UPDATE {ev} SET due_at = {NOW} + ?3, done = ?4, dead_publishers = ?5, \
                   last_error = ?6, attempts = MAX(attempts - ?7, 0), \
                   lease_owner = NULL, lease_until = NULL \
                 WHERE id = ?1 AND lease_owner = ?2"
            )
            .into(),
            delete_one: format!("DELETE FROM {ev} WHERE id = ?1 AND lease_owner = ?2").into(),
            park: format!(
                "UPDATE {ev} SET due_at = {PARKED}, done = ?3, dead_publishers = ?4, \
                   last_error = ?5, lease_owner = NULL, lease_until = NULL \
                 WHERE id = ?1 AND lease_owner = ?2"
            )
            .into(),
            unpark: format!("DELETE FROM {ev} WHERE due_at = {PARKED} AND id = ?1").into(),
            drop_parked: format!(
                "DELETE FROM {ev} WHERE due_at = {PARKED} AND id IN ( \
                   SELECT event_id FROM {dl} WHERE failed_at < ?1)"
            )
            .into(),
            dead: format!(
                "INSERT INTO {dl} (event_id, publisher, event_type, version, topic, partition_key, \
                   payload, headers, created_at, attempts, error, failed_at) \
                 SELECT id, ?3, event_type, version, topic, partition_key, payload, headers, \
                   created_at, attempts, ?4, {NOW} \
                 FROM {ev} WHERE id = ?1 AND lease_owner = ?2 \
                 ON CONFLICT (event_id, publisher) DO UPDATE SET error = excluded.error, \
                   attempts = excluded.attempts, failed_at = excluded.failed_at"
            )
            .into(),
            release: format!(
                "UPDATE {ev} SET lease_owner = NULL, lease_until = NULL, \
                   attempts = MAX(attempts - 1, 0) \
                 WHERE lease_owner = ?1 AND id IN (SELECT value FROM json_each(?2))"
            )
            .into(),
            pending: format!(
                "SELECT count(*) FROM {ev} e WHERE e.due_at < {PARKED} \
                 AND (e.partition_key IS NULL OR NOT EXISTS ( \
                   SELECT 1 FROM {ev} p WHERE p.partition_key = e.partition_key \
                   AND p.due_at = {PARKED}))"
            )
            .into(),
            list_dead: format!(
                "SELECT event_id, event_type, version, topic, partition_key, payload, headers, \
                   created_at, attempts, publisher, error, failed_at \
                 FROM {dl} ORDER BY failed_at, event_id, publisher LIMIT ?1"
            )
            .into(),
            dead_ids: format!(
                "SELECT DISTINCT event_id FROM {dl} \
                 WHERE ?1 IS NULL OR event_id IN (SELECT value FROM json_each(?1))"
            )
            .into(),
            requeue_dead: format!(
                "INSERT OR IGNORE INTO {ev} (id, event_type, version, topic, partition_key, payload, \
                   headers, created_at, due_at, only_publishers) \
                 SELECT event_id, event_type, version, topic, partition_key, payload, headers, \
                   created_at, {NOW}, json_group_array(publisher) \
                 FROM {dl} WHERE event_id = ?1 GROUP BY event_id"
            )
            .into(),
            delete_dead: format!("DELETE FROM {dl} WHERE event_id = ?1").into(),
            purge_dead: format!("DELETE FROM {dl} WHERE failed_at < ?1").into(),
        }
    }
}

pub(crate) struct SqliteSource {
    pool: SqlitePool,
    sql: Sql,
}

fn parse_id(s: &str) -> Result<Uuid, sqlx::Error> {
    Uuid::parse_str(s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn event_of(row: &SqliteRow) -> Result<crate::event::StorageBox, sqlx::Error> {
    Ok(storage_box(
        parse_id(row.try_get(0)?)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
        row.try_get(4)?,
        row.try_get(5)?,
        row.try_get::<&str, _>(6)?,
        row.try_get(7)?,
        row.try_get(8)?,
    ))
}

fn claimed(row: &SqliteRow) -> Result<ClaimedEvent, sqlx::Error> {
    let list = |i: usize| -> Result<Option<Vec<String>>, sqlx::Error> {
        Ok(parse_json_list(row.try_get::<Option<&str>, _>(i)?))
    };
    Ok(ClaimedEvent::new(event_of(row)?)
        .with_delivered(legacy::delivered(list(9)?.unwrap_or_default()))
        .with_only(legacy::only(list(10)?))
        .with_dead(list(11)?.unwrap_or_default()))
}

fn id_list(ids: &[Uuid]) -> String {
    let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    json_list(&ids)
}

#[async_trait]
impl Source for SqliteSource {
    async fn claim(
        &self,
        owner: Uuid,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedEvent>, Error> {
        let rows = claim_in_window(limit, |window| async move {
            Ok(q(&self.sql.claim)
                .bind(owner.to_string())
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .bind(duration_millis(lease))
                .bind(window)
                .fetch_all(&self.pool)
                .await?)
        })
        .await?;
        let mut events = rows.iter().map(claimed).collect::<Result<Vec<_>, _>>()?;
        events.sort_by_key(|e| e.event.id);
        Ok(events)
    }

    async fn ack(&self, owner: Uuid, ids: &[Uuid]) -> Result<u64, Error> {
        let done = q(&self.sql.ack)
            .bind(owner.to_string())
            .bind(id_list(ids))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn settle(&self, owner: Uuid, s: &Settlement) -> Result<bool, Error> {
        let owner = owner.to_string();
        let id = s.id.to_string();
        let mut tx = self.pool.begin().await?;
        for failure in &s.dead_letters {
            q(&self.sql.dead)
                .bind(&id)
                .bind(&owner)
                .bind(&failure.publisher)
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
                    .bind(&id)
                    .bind(&owner)
                    .bind(duration_millis(*delay))
                    .bind(json_list(&s.delivered))
                    .bind(json_list(&s.dead))
                    .bind(error)
                    .bind(i32::from(matches!(s.outcome, Outcome::Hold { .. })))
                    .execute(&mut *tx)
                    .await?
            }
            Outcome::Park { error } => {
                q(&self.sql.park)
                    .bind(&id)
                    .bind(&owner)
                    .bind(json_list(&s.delivered))
                    .bind(json_list(&s.dead))
                    .bind(error)
                    .execute(&mut *tx)
                    .await?
            }
            Outcome::Finish => {
                q(&self.sql.delete_one)
                    .bind(&id)
                    .bind(&owner)
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
        let done = q(&self.sql.release)
            .bind(owner.to_string())
            .bind(id_list(ids))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn pending(&self) -> Result<u64, Error> {
        let n: i64 = q(&self.sql.pending)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, Error> {
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
                failed_at: system_time_from_millis(row.try_get(11)?),
            });
        }
        Ok(out)
    }

    async fn retry_dead_letters(&self, event_ids: Option<&[Uuid]>) -> Result<u64, Error> {
        let mut tx = self.pool.begin().await?;
        let filter = event_ids.map(id_list);
        let ids: Vec<String> = q(&self.sql.dead_ids)
            .bind(filter)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        let mut requeued = 0;
        for id in ids {
            q(&self.sql.unpark).bind(&id).execute(&mut *tx).await?;
            let inserted = q(&self.sql.requeue_dead)
                .bind(&id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if inserted > 0 {
                q(&self.sql.delete_dead).bind(&id).execute(&mut *tx).await?;
                requeued += 1;
            }
        }
        tx.commit().await?;
        Ok(requeued)
    }

    async fn purge_dead_letters(&self, before: SystemTime) -> Result<u64, Error> {
        let before = millis_since_epoch(before);
        let mut tx = self.pool.begin().await?;
        q(&self.sql.drop_parked)
            .bind(before)
            .execute(&mut *tx)
            .await?;
        let done = q(&self.sql.purge_dead)
            .bind(before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}

async fn enqueue(
    conn: &mut SqliteConnection,
    tables: &Tables,
    events: &[NewEvent],
) -> Result<(), Error> {
    let sql: Arc<str> = format!(
        "INSERT INTO {} (id, event_type, version, topic, partition_key, payload, headers, \
           created_at, due_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, {NOW}, {NOW})",
        tables.qualified("events")
    )
    .into();
    for e in events {
        q(&sql)
            .bind(e.id.to_string())
            .bind(&e.event_type)
            .bind(i64::from(e.version))
            .bind(&e.topic)
            .bind(&e.partition_key)
            .bind(&e.payload)
            .bind(e.headers_json())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn migrate(pool: &SqlitePool, tables: &Tables) -> Result<(), Error> {
    let ev = tables.qualified("events");
    let dl = tables.qualified("dead_letters");
    let index = |suffix: &str| match tables.quoted_schema() {
        Some(schema) => format!("{schema}.{}", tables.index_name(suffix)),
        None => tables.index_name(suffix),
    };
    let key_idx = index("events_key_idx");
    let dl_idx = index("dead_letters_failed_idx");
    let ev_plain = tables.unqualified("events");
    let dl_plain = tables.unqualified("dead_letters");
    let statements = [
        format!(
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
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {key_idx} ON {ev_plain} (partition_key, id) \
             WHERE partition_key IS NOT NULL"
        ),
        format!(
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
        ),
        format!("CREATE INDEX IF NOT EXISTS {dl_idx} ON {dl_plain} (failed_at)"),
    ];
    let mut tx = pool.begin().await?;
    for statement in statements {
        sqlx::query(AssertSqlSafe(statement))
            .persistent(false)
            .execute(&mut *tx)
            .await?;
    }
    // Tables made before dead-lettered publishers had a column of their own
    // (they were marked inside `done`) get it; SQLite has no `ADD COLUMN IF
    // NOT EXISTS`.
    let schema = tables.schema_name().unwrap_or("main");
    let has: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pragma_table_info(?1, ?2) WHERE name = 'dead_publishers'",
    )
    .bind(format!("{}_events", tables.prefix()))
    .bind(schema)
    .fetch_one(&mut *tx)
    .await?;
    if has == 0 {
        sqlx::query(AssertSqlSafe(format!(
            "ALTER TABLE {ev} ADD COLUMN dead_publishers TEXT"
        )))
        .persistent(false)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

impl super::sealed::Sealed for Sqlite {
    fn enqueue<'a>(
        conn: &'a mut SqliteConnection,
        tables: &'a Tables,
        events: &'a [NewEvent],
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(enqueue(conn, tables, events))
    }

    fn migrate<'a>(pool: &'a SqlitePool, tables: &'a Tables) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(migrate(pool, tables))
    }

    fn source(pool: SqlitePool, tables: &Tables) -> Arc<dyn Source> {
        Arc::new(SqliteSource {
            pool,
            sql: Sql::new(tables),
        })
    }
}
