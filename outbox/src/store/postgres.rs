//! PostgreSQL: `FOR UPDATE SKIP LOCKED` claims in single statements, leases on
//! the server clock, acks fenced by the lease holder.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use sqlx::postgres::{PgListener, PgPool, PgRow};
use sqlx::{AssertSqlSafe, PgConnection, Postgres, Row};
use uuid::Uuid;

use super::{
    DeadLetter, Source, claim_in_window, duration_millis, legacy, millis_since_epoch, storage_box,
    system_time_from_millis,
};
use crate::delivery::{ClaimedEvent, Outcome, Settlement};
use crate::event::NewEvent;
use crate::{Error, Tables};

fn q(sql: &Arc<str>) -> sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments> {
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
    retry_dead: Arc<str>,
    purge_dead: Arc<str>,
    vacuum: Arc<str>,
    owns_table: Arc<str>,
    events: String,
}

impl Sql {
    fn new(tables: &Tables) -> Self {
        let ev = tables.qualified("events");
        let dl = tables.qualified("dead_letters");
        Self {
            claim: format!(
                "WITH c AS ( \
                   SELECT e.id FROM {ev} e \
                   WHERE (SELECT set_config('synchronous_commit', 'off', true)) = 'off' \
                     AND e.due_at <= now() \
                     AND (e.lease_until IS NULL OR e.lease_until <= now()) \
                     AND (e.partition_key IS NULL OR NOT EXISTS ( \
                       SELECT 1 FROM {ev} p WHERE p.partition_key = e.partition_key AND p.id < e.id)) \
                     AND e.id <= COALESCE(( \
                       SELECT d.id FROM {ev} d WHERE d.due_at <= now() \
                         AND (d.lease_until IS NULL OR d.lease_until <= now()) \
                       ORDER BY d.id OFFSET $4 LIMIT 1), 'ffffffff-ffff-ffff-ffff-ffffffffffff') \
                   ORDER BY e.id LIMIT $2 \
                   FOR UPDATE SKIP LOCKED) \
                 UPDATE {ev} e SET lease_owner = $1, \
                   lease_until = now() + $3::float8 * interval '1 millisecond', \
                   attempts = e.attempts + 1 \
                 FROM c WHERE e.id = c.id \
                 RETURNING e.id, e.event_type, e.version, e.topic, e.partition_key, e.payload, \
                   e.headers::text, (extract(epoch from e.created_at) * 1000)::int8, e.attempts, \
                   e.done, e.only_publishers, e.dead_publishers"
            )
            .into(),
            ack: format!("DELETE FROM {ev} WHERE id = ANY($1) AND lease_owner = $2").into(),
            retry: format!(
                "UPDATE {ev} SET due_at = now() + $3::float8 * interval '1 millisecond', \
                   done = $4, dead_publishers = $5, last_error = $6, \
                   attempts = GREATEST(attempts - $7, 0), lease_owner = NULL, lease_until = NULL \
                 WHERE id = $1 AND lease_owner = $2"
            )
            .into(),
            delete_one: format!("DELETE FROM {ev} WHERE id = $1 AND lease_owner = $2").into(),
            park: format!(
                "UPDATE {ev} SET due_at = 'infinity', done = $3, dead_publishers = $4, \
                   last_error = $5, lease_owner = NULL, lease_until = NULL \
                 WHERE id = $1 AND lease_owner = $2"
            )
            .into(),
            unpark: format!(
                "DELETE FROM {ev} WHERE due_at = 'infinity' AND id IN ( \
                   SELECT event_id FROM {dl} WHERE $1::uuid[] IS NULL OR event_id = ANY($1))"
            )
            .into(),
            drop_parked: format!(
                "DELETE FROM {ev} WHERE due_at = 'infinity' AND id IN ( \
                   SELECT event_id FROM {dl} WHERE failed_at < to_timestamp($1::float8 / 1000.0))"
            )
            .into(),
            dead: format!(
                "INSERT INTO {dl} (event_id, publisher, event_type, version, topic, partition_key, \
                   payload, headers, created_at, attempts, error) \
                 SELECT e.id, f.publisher, e.event_type, e.version, e.topic, e.partition_key, \
                   e.payload, e.headers, e.created_at, e.attempts, f.error \
                 FROM {ev} e, UNNEST($3::text[], $4::text[]) AS f(publisher, error) \
                 WHERE e.id = $1 AND e.lease_owner = $2 \
                 ON CONFLICT (event_id, publisher) DO UPDATE SET error = EXCLUDED.error, \
                   attempts = EXCLUDED.attempts, failed_at = now()"
            )
            .into(),
            release: format!(
                "UPDATE {ev} SET lease_owner = NULL, lease_until = NULL, \
                   attempts = GREATEST(attempts - 1, 0) \
                 WHERE id = ANY($1) AND lease_owner = $2"
            )
            .into(),
            pending: format!(
                "SELECT count(*) FROM {ev} e WHERE e.due_at < 'infinity' \
                 AND (e.partition_key IS NULL OR NOT EXISTS ( \
                   SELECT 1 FROM {ev} p WHERE p.partition_key = e.partition_key \
                   AND p.due_at = 'infinity'))"
            )
            .into(),
            list_dead: format!(
                "SELECT event_id, event_type, version, topic, partition_key, payload, headers::text, \
                   (extract(epoch from created_at) * 1000)::int8, attempts, publisher, error, \
                   (extract(epoch from failed_at) * 1000)::int8 \
                 FROM {dl} ORDER BY failed_at, event_id, publisher LIMIT $1"
            )
            .into(),
            retry_dead: format!(
                "WITH picked AS ( \
                   SELECT event_id, array_agg(publisher ORDER BY publisher) AS publishers, \
                     min(event_type) AS event_type, min(version) AS version, min(topic) AS topic, \
                     min(partition_key) AS partition_key, (array_agg(payload))[1] AS payload, \
                     (array_agg(headers))[1] AS headers, min(created_at) AS created_at \
                   FROM {dl} WHERE $1::uuid[] IS NULL OR event_id = ANY($1) GROUP BY event_id), \
                 ins AS ( \
                   INSERT INTO {ev} (id, event_type, version, topic, partition_key, payload, headers, \
                     created_at, only_publishers) \
                   SELECT event_id, event_type, version, topic, partition_key, payload, headers, \
                     created_at, publishers FROM picked \
                   ON CONFLICT (id) DO NOTHING RETURNING id), \
                 del AS (DELETE FROM {dl} WHERE event_id IN (SELECT id FROM ins)) \
                 SELECT count(*) FROM ins"
            )
            .into(),
            purge_dead: format!(
                "DELETE FROM {dl} WHERE failed_at < to_timestamp($1::float8 / 1000.0)"
            )
            .into(),
            vacuum: format!("VACUUM (SKIP_LOCKED) {ev}").into(),
            owns_table: "SELECT pg_has_role(current_user, c.relowner, 'USAGE') \
                 FROM pg_class c WHERE c.oid = $1::regclass"
                .into(),
            events: ev,
        }
    }
}

pub(crate) struct PgSource {
    pool: PgPool,
    sql: Arc<Sql>,
    channel: String,
    listener: tokio::sync::Mutex<Option<PgListener>>,
    vacuum: Arc<Mutex<Vacuum>>,
}

/// Acked events are deleted at the head of the queue, and until vacuum
/// removes them every claim wades through their dead index entries. The
/// per-table autovacuum settings that `migrate` sets only help once the
/// autovacuum launcher visits the table, which is every
/// `autovacuum_naptime` (one minute by default): long enough, under load,
/// for the dead rows to slow the claims until the Runner falls behind for
/// good (measured: a backlog of 230,000 events after 60 s). So the Source
/// vacuums the events table itself after every [`VACUUM_EVERY`] deleted
/// events, at most once a [`VACUUM_INTERVAL`], in the background, skipping
/// when a vacuum already runs on it, and only when its role owns the table.
#[derive(Default)]
struct Vacuum {
    /// Events deleted since the last vacuum started.
    deleted: u64,
    /// When the last vacuum started.
    last: Option<Instant>,
    running: bool,
    /// Whether this role owns the table; `None` until checked.
    owner: Option<bool>,
}

/// Deleted events after which the Source vacuums the events table.
const VACUUM_EVERY: u64 = 5000;
/// The shortest time between two such vacuums.
const VACUUM_INTERVAL: Duration = Duration::from_secs(1);

impl PgSource {
    /// Count deleted events; start a vacuum when it is time.
    fn deleted(&self, n: u64) {
        {
            let mut v = self.vacuum.lock().unwrap_or_else(|e| e.into_inner());
            v.deleted = v.deleted.saturating_add(n);
            if v.deleted < VACUUM_EVERY
                || v.running
                || v.owner == Some(false)
                || v.last.is_some_and(|t| t.elapsed() < VACUUM_INTERVAL)
            {
                return;
            }
            v.deleted = 0;
            v.running = true;
            v.last = Some(Instant::now());
        }
        let (pool, sql, state) = (self.pool.clone(), self.sql.clone(), self.vacuum.clone());
        tokio::spawn(async move {
            let owner = state.lock().unwrap_or_else(|e| e.into_inner()).owner;
            let result = vacuum(&pool, &sql, owner).await;
            let mut v = state.lock().unwrap_or_else(|e| e.into_inner());
            v.running = false;
            match result {
                Ok(owner) => v.owner = Some(owner),
                Err(error) => {
                    tracing::warn!(%error, table = %sql.events, "outbox: vacuuming the events table failed");
                }
            }
        });
    }
}

/// Vacuum the events table when this role owns it (checked once, when
/// `owner` is not known yet). Returns whether it does.
async fn vacuum(pool: &PgPool, sql: &Sql, owner: Option<bool>) -> Result<bool, Error> {
    let owner = match owner {
        Some(known) => known,
        None => {
            let owns: bool = q(&sql.owns_table)
                .bind(&sql.events)
                .fetch_one(pool)
                .await?
                .try_get(0)?;
            if !owns {
                tracing::info!(
                    table = %sql.events,
                    "outbox: this role does not own the events table, so it leaves vacuuming it \
                     to autovacuum; under sustained load, lower autovacuum_naptime (e.g. to 1s)"
                );
            }
            owns
        }
    };
    if owner {
        let started = Instant::now();
        sqlx::query(AssertSqlSafe(sql.vacuum.clone()))
            .persistent(false)
            .execute(pool)
            .await?;
        tracing::debug!(took = ?started.elapsed(), "outbox: vacuumed the events table");
    }
    Ok(owner)
}

/// The NOTIFY channel of these tables: readable when it fits PostgreSQL's
/// 63-byte limit, a hash otherwise.
pub(crate) fn channel(tables: &Tables) -> String {
    let name = format!(
        "outbox.{}.{}",
        tables.schema_name().unwrap_or(""),
        tables.prefix()
    );
    if name.len() <= 63 {
        name
    } else {
        format!("outbox.{:016x}", fnv1a(name.as_bytes()))
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn claimed(row: &PgRow) -> Result<ClaimedEvent, sqlx::Error> {
    let event = storage_box(
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
        row.try_get(4)?,
        row.try_get(5)?,
        row.try_get::<&str, _>(6)?,
        row.try_get(7)?,
        row.try_get(8)?,
    );
    Ok(ClaimedEvent::new(event)
        .with_delivered(legacy::delivered(row.try_get(9)?))
        .with_only(legacy::only(row.try_get(10)?))
        .with_dead(row.try_get(11)?))
}

#[async_trait]
impl Source for PgSource {
    async fn claim(
        &self,
        owner: Uuid,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedEvent>, Error> {
        // The claim commits without waiting for its WAL to reach the disk
        // (`synchronous_commit` off for this one transaction, set inside the
        // statement): a lease is soft state. Should the server crash before
        // the WAL is flushed, the lease is gone and the events are claimed
        // again, which at-least-once allows; an ack, which commits durably
        // and after the claim, flushes the claim's WAL with its own.
        //
        claim_in_window(limit, |window| async move {
            let rows = q(&self.sql.claim)
                .bind(owner)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .bind(duration_millis(lease) as f64)
                .bind(window)
                .fetch_all(&self.pool)
                .await?;
            Ok(rows.iter().map(claimed).collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn ack(&self, owner: Uuid, ids: &[Uuid]) -> Result<u64, Error> {
        let done = q(&self.sql.ack)
            .bind(ids)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        self.deleted(done.rows_affected());
        Ok(done.rows_affected())
    }

    async fn settle(&self, owner: Uuid, s: &Settlement) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await?;
        if !s.dead_letters.is_empty() {
            let publishers: Vec<&str> = s
                .dead_letters
                .iter()
                .map(|f| f.publisher.as_str())
                .collect();
            let errors: Vec<&str> = s.dead_letters.iter().map(|f| f.error.as_str()).collect();
            q(&self.sql.dead)
                .bind(s.id)
                .bind(owner)
                .bind(publishers)
                .bind(errors)
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
                    .bind(s.id)
                    .bind(owner)
                    .bind(duration_millis(*delay) as f64)
                    .bind(&s.delivered)
                    .bind(&s.dead)
                    .bind(error)
                    .bind(i32::from(matches!(s.outcome, Outcome::Hold { .. })))
                    .execute(&mut *tx)
                    .await?
            }
            Outcome::Park { error } => {
                q(&self.sql.park)
                    .bind(s.id)
                    .bind(owner)
                    .bind(&s.delivered)
                    .bind(&s.dead)
                    .bind(error)
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
        let done = q(&self.sql.release)
            .bind(ids)
            .bind(owner)
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

    async fn wait_for_events(&self, timeout: Duration) {
        let mut guard = self.listener.lock().await;
        let Some(listener) = guard.as_mut() else {
            match PgListener::connect_with(&self.pool).await {
                Ok(mut listener) => match listener.listen(&self.channel).await {
                    Ok(()) => {
                        tracing::debug!(channel = %self.channel, "outbox: listening");
                        *guard = Some(listener);
                        // Notifications sent while nobody listened are lost:
                        // claim at once.
                    }
                    Err(error) => {
                        tracing::warn!(%error, "outbox: LISTEN failed; polling");
                        drop(guard);
                        tokio::time::sleep(timeout).await;
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "outbox: cannot open the listener connection; polling");
                    drop(guard);
                    tokio::time::sleep(timeout).await;
                }
            }
            return;
        };
        match tokio::time::timeout(timeout, listener.try_recv()).await {
            Err(_elapsed) => {}
            Ok(Ok(Some(_))) => while listener.next_buffered().is_some() {},
            Ok(Ok(None)) => tracing::info!("outbox: listener reconnected; claiming at once"),
            Ok(Err(error)) => {
                tracing::warn!(%error, "outbox: listener failed; it reconnects on the next wait");
                *guard = None;
            }
        }
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        let rows = q(&self.sql.list_dead)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let event = storage_box(
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
                row.try_get(4)?,
                row.try_get(5)?,
                row.try_get::<&str, _>(6)?,
                row.try_get(7)?,
                row.try_get(8)?,
            );
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
        q(&self.sql.unpark)
            .bind(event_ids)
            .execute(&mut *tx)
            .await?;
        let n: i64 = q(&self.sql.retry_dead)
            .bind(event_ids)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        tx.commit().await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn purge_dead_letters(&self, before: SystemTime) -> Result<u64, Error> {
        let before = millis_since_epoch(before) as f64;
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
    conn: &mut PgConnection,
    tables: &Tables,
    events: &[NewEvent],
) -> Result<(), Error> {
    let ev = tables.qualified("events");
    match events {
        [] => {}
        [e] => {
            let sql = format!(
                "INSERT INTO {ev} (id, event_type, version, topic, partition_key, payload, headers) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)"
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(e.id)
                .bind(&e.event_type)
                .bind(i32::try_from(e.version).unwrap_or(i32::MAX))
                .bind(&e.topic)
                .bind(&e.partition_key)
                .bind(&e.payload)
                .bind(e.headers_json())
                .execute(conn)
                .await?;
        }
        many => {
            let sql = format!(
                "INSERT INTO {ev} (id, event_type, version, topic, partition_key, payload, headers) \
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int4[], $4::text[], $5::text[], \
                   $6::bytea[], $7::text[]::jsonb[])"
            );
            let ids: Vec<Uuid> = many.iter().map(|e| e.id).collect();
            let types: Vec<&str> = many.iter().map(|e| e.event_type.as_str()).collect();
            let versions: Vec<i32> = many
                .iter()
                .map(|e| i32::try_from(e.version).unwrap_or(i32::MAX))
                .collect();
            let topics: Vec<&str> = many.iter().map(|e| e.topic.as_str()).collect();
            let keys: Vec<Option<&str>> = many.iter().map(|e| e.partition_key.as_deref()).collect();
            let payloads: Vec<&[u8]> = many.iter().map(|e| e.payload.as_slice()).collect();
            let headers: Vec<String> = many.iter().map(NewEvent::headers_json).collect();
            sqlx::query(AssertSqlSafe(sql))
                .bind(ids)
                .bind(types)
                .bind(versions)
                .bind(topics)
                .bind(keys)
                .bind(payloads)
                .bind(headers)
                .execute(conn)
                .await?;
        }
    }
    Ok(())
}

async fn migrate(pool: &PgPool, tables: &Tables) -> Result<(), Error> {
    let ev = tables.qualified("events");
    let dl = tables.qualified("dead_letters");
    let key_idx = tables.index_name("events_key_idx");
    let dl_idx = tables.index_name("dead_letters_failed_idx");
    let mut statements = Vec::new();
    if let Some(schema) = tables.quoted_schema() {
        statements.push(format!("CREATE SCHEMA IF NOT EXISTS {schema}"));
    }
    statements.push(format!(
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
    ));
    // Tables made before dead-lettered publishers had a column of their own
    // (they were marked inside `done`).
    statements.push(format!(
        "ALTER TABLE {ev} ADD COLUMN IF NOT EXISTS dead_publishers text[] NOT NULL DEFAULT '{{}}'"
    ));
    statements.push(format!(
        "CREATE INDEX IF NOT EXISTS {key_idx} ON {ev} (partition_key, id) \
         WHERE partition_key IS NOT NULL"
    ));
    // The queue head is deleted constantly: dead index entries there are
    // re-scanned by every claim until vacuum runs, so vacuum this table often
    // and without throttling. Every event is updated once (its lease) before
    // it is deleted: with half of each page free, that update stays on its
    // page and adds no index entries (a HOT update), which made a claim-and-ack
    // loop ~40% faster (BENCHMARKS.md). Applies to pages written from now on.
    statements.push(format!(
        "ALTER TABLE {ev} SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0, \
           autovacuum_vacuum_threshold = 5000, autovacuum_vacuum_cost_delay = 0, \
           autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 5000)"
    ));
    statements.push(format!(
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
    ));
    statements.push(format!(
        "CREATE INDEX IF NOT EXISTS {dl_idx} ON {dl} (failed_at)"
    ));
    // Wake-up: a NOTIFY on commit, with no event data. A NOTIFY makes its
    // transaction's commit take a global lock, which serialises committing
    // writers; so at most one committing transaction at a time sends it
    // (the others skip: the Runner claims again right after a batch, and
    // polls). The trigger is deferred to commit time, so a long transaction
    // holds the lock only while it commits.
    let channel = channel(tables);
    let lock_key = i64::from_ne_bytes(fnv1a(channel.as_bytes()).to_ne_bytes());
    let notify_fn = match tables.quoted_schema() {
        Some(schema) => format!("{schema}.{}", tables.index_name("events_notify")),
        None => tables.index_name("events_notify"),
    };
    let trigger = tables.index_name("events_notify");
    statements.push(format!(
        "CREATE OR REPLACE FUNCTION {notify_fn}() RETURNS trigger LANGUAGE plpgsql AS $fn$ \
         BEGIN \
           IF pg_try_advisory_xact_lock({lock_key}) THEN \
             PERFORM pg_notify('{channel}', ''); \
           END IF; \
           RETURN NULL; \
         END $fn$"
    ));
    statements.push(format!("DROP TRIGGER IF EXISTS {trigger} ON {ev}"));
    statements.push(format!(
        "CREATE CONSTRAINT TRIGGER {trigger} AFTER INSERT ON {ev} \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {notify_fn}()"
    ));

    let mut tx = pool.begin().await?;
    // Serialise concurrent migrations of the same tables: CREATE ... IF NOT
    // EXISTS alone races on the catalog.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("outbox.migrate:{ev}"))
        .execute(&mut *tx)
        .await?;
    for statement in statements {
        sqlx::query(AssertSqlSafe(statement))
            .persistent(false)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

impl super::sealed::Sealed for Postgres {
    fn enqueue<'a>(
        conn: &'a mut PgConnection,
        tables: &'a Tables,
        events: &'a [NewEvent],
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(enqueue(conn, tables, events))
    }

    fn migrate<'a>(pool: &'a PgPool, tables: &'a Tables) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(migrate(pool, tables))
    }

    fn source(pool: PgPool, tables: &Tables) -> Arc<dyn Source> {
        Arc::new(PgSource {
            pool,
            sql: Arc::new(Sql::new(tables)),
            channel: channel(tables),
            listener: tokio::sync::Mutex::new(None),
            vacuum: Arc::default(),
        })
    }
}
