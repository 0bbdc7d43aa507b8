//! SQLite: the embedded default. One writer at a time; every claim is a
//! single `UPDATE … RETURNING` statement, so it holds the write lock only as
//! long as that statement runs. [`migrate`]: the versioned schema.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sqlx::sqlite::{SqlitePool, SqliteQueryResult, SqliteRow};
use sqlx::{Row, Sqlite, SqliteConnection};
use uuid::Uuid;

use super::dialect::{Dialect, Query, query};
use super::schema::SchemaCheck;
use super::shared::{Logic, Store};
use super::statements::{claimable, claimed_columns, in_window, within_budget};
use super::{
    ClaimLimit, claim_in_window, duration_millis, json_list, millis_since_epoch, parse_json_list,
};
use crate::delivery::ClaimedEvent;
use crate::error::Error;
use crate::event::NewEvent;
use crate::tables::Tables;

pub(crate) mod migrate;
use migrate::{migrate, version};

/// Milliseconds since the Unix epoch on the database's clock.
const NOW: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// Ids are text; the outbox's own statements bind lists of them as JSON.
pub(crate) struct SqliteDialect {
    claim: Arc<str>,
    schema: SchemaCheck,
}

impl SqliteDialect {
    fn new(tables: &Tables) -> Self {
        let ev = tables.qualified("events");
        Self {
            claim: format!(
                "UPDATE {ev} SET lease_owner = ?1, lease_until = {NOW} + ?3, attempts = attempts + 1 \
                 WHERE id IN ({}) \
                 RETURNING {}",
                within_budget(
                    &format!(
                        "SELECT e.id, length(e.payload) AS len FROM {ev} e WHERE {} AND {} \
                         ORDER BY e.id LIMIT ?2",
                        claimable::<Self>(&ev),
                        in_window::<Self>(&ev, "?4", "'g'"),
                    ),
                    "?5"
                ),
                claimed_columns::<Self>(""),
            )
            .into(),
            schema: SchemaCheck::new(tables),
        }
    }
}

fn parse_id(s: &str) -> Result<Uuid, sqlx::Error> {
    Uuid::parse_str(s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

impl Dialect for SqliteDialect {
    type DB = Sqlite;

    const NOW: &'static str = NOW;
    const PARKED: &'static str = "9223372036854775807";
    const GREATEST: &'static str = "MAX";

    fn param(i: usize) -> String {
        format!("?{i}")
    }
    fn millis(column: &str) -> String {
        column.to_owned()
    }
    fn after(param: &str) -> String {
        format!("{NOW} + {param}")
    }
    fn ago(param: &str) -> String {
        format!("{NOW} - {param}")
    }
    fn time(param: &str) -> String {
        param.to_owned()
    }
    fn in_ids(_n: usize) -> String {
        "IN (SELECT value FROM json_each(?1))".to_owned()
    }
    fn failures() -> [String; 3] {
        ["?1".to_owned(), "?2".to_owned(), String::new()]
    }
    fn any_value(column: &str) -> String {
        column.to_owned()
    }
    fn list_agg(column: &str) -> String {
        format!("json_group_array({column})")
    }

    type Id = String;
    type List = String;
    type Time = i64;
    type Column = String;

    const IDS_PER_STATEMENT: Option<usize> = None;
    const FAILURES_PER_STATEMENT: usize = 1;

    fn id(id: Uuid) -> String {
        id.to_string()
    }
    fn list(list: &[String]) -> String {
        json_list(list)
    }
    fn delay(delay: Duration) -> i64 {
        duration_millis(delay)
    }
    fn instant(at: SystemTime) -> i64 {
        millis_since_epoch(at)
    }
    fn bind_ids(query: Query<Sqlite>, ids: &[Uuid]) -> Query<Sqlite> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        query.bind(json_list(&ids))
    }
    fn column(values: Vec<String>) -> String {
        values.into_iter().next().unwrap_or_default()
    }

    fn id_at(row: &SqliteRow, i: usize) -> Result<Uuid, sqlx::Error> {
        parse_id(row.try_get(i)?)
    }
    fn key_at(row: &SqliteRow, i: usize) -> Result<Option<String>, sqlx::Error> {
        row.try_get(i)
    }
    fn list_at(row: &SqliteRow, i: usize) -> Result<Option<Vec<String>>, sqlx::Error> {
        parse_json_list(row.try_get::<Option<&str>, _>(i)?)
    }
    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    async fn ready(&self, pool: &SqlitePool) -> Result<(), Error> {
        self.schema.check(version(pool, self.schema.tables())).await
    }

    async fn claim(
        &self,
        pool: &SqlitePool,
        owner: Uuid,
        limit: ClaimLimit,
        lease: Duration,
    ) -> Result<Vec<ClaimedEvent>, Error> {
        let rows = claim_in_window(limit.events, |window| async move {
            Ok(query(&self.claim)
                .bind(owner.to_string())
                .bind(i64::try_from(limit.events).unwrap_or(i64::MAX))
                .bind(duration_millis(lease))
                .bind(window)
                .bind(limit.bytes_i64())
                .fetch_all(pool)
                .await?)
        })
        .await?;
        let mut events = Store::<Self>::claimed_rows(&rows);
        events.sort_by_key(|e| e.event.id);
        Ok(events)
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
        query::<Sqlite>(&sql)
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

backend!(Sqlite, SqliteDialect);
