//! PostgreSQL: `FOR UPDATE SKIP LOCKED` claims in single statements, leases on
//! the server clock, acks fenced by the lease holder.
//!
//! Here: the dialect, the claim and enqueue. [`migrate`]: the versioned
//! schema. [`vacuum`]: the Source vacuums the events table itself under
//! load. [`wakeup`]: the trigger that notifies a channel on commit, and the
//! listener the Runner waits on.

pub(crate) mod migrate;
mod vacuum;
mod wakeup;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sqlx::postgres::{PgPool, PgQueryResult, PgRow};
use sqlx::{AssertSqlSafe, PgConnection, Postgres, Row};
use uuid::Uuid;

use super::conn::Conn;
use super::dialect::{Dialect, Query, query};
use super::schema::SchemaCheck;
use super::shared::{Logic, Store};
use super::statements::{claimable, claimed_columns, in_window, within_budget};
use super::{ClaimLimit, claim_in_window, duration_millis, millis_since_epoch};
use crate::delivery::ClaimedEvent;
use crate::error::Error;
use crate::event::NewEvent;
use crate::tables::Tables;
use migrate::{migrate, version};

/// The dialect, and the state of the self-vacuum, the listener and the
/// schema check.
pub(crate) struct PgDialect {
    claim: Arc<str>,
    vacuum: vacuum::Vacuum,
    listener: wakeup::Listener,
    schema: SchemaCheck,
    /// Behind a pooler in transaction mode (see [`Conn`]).
    pooled: bool,
}

impl PgDialect {
    fn new(tables: &Tables) -> Self {
        let ev = tables.qualified("events");
        Self {
            claim: format!(
                "WITH c AS ( \
                   SELECT e.id, octet_length(e.payload) AS len FROM {ev} e \
                   WHERE (SELECT set_config('synchronous_commit', 'off', true)) = 'off' \
                     AND {} AND {} \
                   ORDER BY e.id LIMIT $2 \
                   FOR UPDATE SKIP LOCKED), \
                 b AS ({}) \
                 UPDATE {ev} e SET lease_owner = $1, \
                   lease_until = now() + $3::float8 * interval '1 millisecond', \
                   attempts = e.attempts + 1 \
                 FROM b WHERE e.id = b.id \
                 RETURNING {}",
                claimable::<Self>(&ev),
                in_window::<Self>(&ev, "$4", "'ffffffff-ffff-ffff-ffff-ffffffffffff'"),
                within_budget("SELECT id, len FROM c", "$5"),
                claimed_columns::<Self>("e."),
            )
            .into(),
            vacuum: vacuum::Vacuum::new(tables),
            listener: wakeup::Listener::new(tables),
            schema: SchemaCheck::new(tables),
            pooled: false,
        }
    }
}

impl Dialect for PgDialect {
    type DB = Postgres;

    const NOW: &'static str = "now()";
    const PARKED: &'static str = "'infinity'";
    const EMPTY_LIST: &'static str = "'{}'";

    fn param(i: usize) -> String {
        format!("${i}")
    }
    fn millis(column: &str) -> String {
        format!("(extract(epoch from {column}) * 1000)::int8")
    }
    fn text(column: &str) -> String {
        format!("{column}::text")
    }
    fn after(param: &str) -> String {
        format!("now() + {param}::float8 * interval '1 millisecond'")
    }
    fn ago(param: &str) -> String {
        format!("now() - {param}::float8 * interval '1 millisecond'")
    }
    fn time(param: &str) -> String {
        format!("to_timestamp({param}::float8 / 1000.0)")
    }
    fn in_ids(_n: usize) -> String {
        "= ANY($1)".to_owned()
    }
    fn failures() -> [String; 3] {
        [
            "f.publisher".to_owned(),
            "f.error".to_owned(),
            ", UNNEST($1::text[], $2::text[]) AS f(publisher, error)".to_owned(),
        ]
    }
    fn any_value(column: &str) -> String {
        format!("(array_agg({column}))[1]")
    }
    fn list_agg(column: &str) -> String {
        format!("array_agg({column} ORDER BY {column})")
    }

    type Id = Uuid;
    type List = Vec<String>;
    type Time = f64;
    type Column = Vec<String>;

    const IDS_PER_STATEMENT: Option<usize> = None;
    const FAILURES_PER_STATEMENT: usize = usize::MAX;

    fn id(id: Uuid) -> Uuid {
        id
    }
    fn list(list: &[String]) -> Vec<String> {
        list.to_vec()
    }
    fn delay(delay: Duration) -> f64 {
        duration_millis(delay) as f64
    }
    fn instant(at: SystemTime) -> f64 {
        millis_since_epoch(at) as f64
    }
    fn bind_ids(query: Query<Postgres>, ids: &[Uuid]) -> Query<Postgres> {
        query.bind(ids)
    }
    fn column(values: Vec<String>) -> Vec<String> {
        values
    }

    fn id_at(row: &PgRow, i: usize) -> Result<Uuid, sqlx::Error> {
        row.try_get(i)
    }
    fn key_at(row: &PgRow, i: usize) -> Result<Option<String>, sqlx::Error> {
        row.try_get(i)
    }
    fn list_at(row: &PgRow, i: usize) -> Result<Option<Vec<String>>, sqlx::Error> {
        row.try_get(i)
    }
    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }

    async fn claim(
        &self,
        pool: &PgPool,
        owner: Uuid,
        limit: ClaimLimit,
        lease: Duration,
    ) -> Result<Vec<ClaimedEvent>, Error> {
        // The claim commits without waiting for its WAL to reach the disk
        // (`synchronous_commit` off for this one transaction, set inside the
        // statement): a lease is soft state. Should the server crash before
        // the WAL is flushed, the lease is gone and the events are claimed
        // again, which at-least-once allows; an ack, which commits durably
        // and after the claim, flushes the claim's WAL with its own.
        claim_in_window(limit.events, |window| async move {
            let mut conn = Conn::open(pool, self.pooled).await?;
            let claim = query(&self.claim)
                .bind(owner)
                .bind(i64::try_from(limit.events).unwrap_or(i64::MAX))
                .bind(duration_millis(lease) as f64)
                .bind(window)
                .bind(limit.bytes_i64());
            let rows = conn.query(claim).fetch_all(&mut *conn).await?;
            conn.commit().await?;
            let mut events = Store::<Self>::claimed_rows(&rows);
            events.sort_by_key(|e| e.event.id);
            Ok(events)
        })
        .await
    }

    async fn ready(&self, pool: &PgPool) -> Result<(), Error> {
        self.schema.check(version(pool, self.schema.tables())).await
    }

    fn set_pooled(&mut self, pooled: bool) {
        self.pooled = pooled;
    }

    fn deleted(&self, pool: &PgPool, n: u64) {
        self.vacuum.deleted(pool, n);
    }

    async fn wait_for_events(&self, pool: &PgPool, timeout: Duration) {
        self.listener.wait(pool, timeout).await;
    }
}

/// Unnamed statements: the caller's transaction keeps them on one server
/// connection also behind a pooler in transaction mode, whatever the
/// application's statement cache (sqlx 0.9.0 names, and never closes, its
/// statements even with that cache off; through PgBouncer before 1.21 they
/// then collide with other clients' on a shared server connection:
/// `prepared statement "sqlx_s_1" already exists`).
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
                .persistent(false)
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
                .persistent(false)
                .execute(conn)
                .await?;
        }
    }
    Ok(())
}

backend!(Postgres, PgDialect);
