//! What each database supplies to the store logic written once in
//! [`shared`](super::shared) and [`statements`](super::statements): how it
//! spells the few things SQL does not standardise, how it binds and reads
//! values, and its claim (the hot path, different on each).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sqlx::database::HasStatementCache;
use sqlx::{AssertSqlSafe, Database, Encode, Executor, IntoArguments, Pool, Type};
use uuid::Uuid;

use super::ClaimLimit;
use crate::delivery::ClaimedEvent;
use crate::error::Error;
use crate::tables::Tables;

/// A query on database `DB`, as every store builds them.
pub(crate) type Query<DB> = sqlx::query::Query<'static, DB, <DB as Database>::Arguments>;

/// A query for `sql`, a prepared statement.
pub(crate) fn query<DB: Database>(sql: &Arc<str>) -> Query<DB> {
    sqlx::query(AssertSqlSafe(sql.clone()))
}

/// Run `sql` once (DDL, `VACUUM`): as a prepared statement that is closed
/// afterwards, not kept in the connection's cache.
pub(crate) async fn run_once<'c, DB, E>(executor: E, sql: String) -> Result<(), sqlx::Error>
where
    DB: Database + HasStatementCache,
    DB::Arguments: IntoArguments<DB>,
    E: Executor<'c, Database = DB>,
{
    sqlx::query(AssertSqlSafe(sql))
        .persistent(false)
        .execute(executor)
        .await?;
    Ok(())
}

/// A value every database can bind.
pub(crate) trait Bind<DB: Database>: for<'e> Encode<'e, DB> + Type<DB> + Send {}

impl<DB: Database, T: for<'e> Encode<'e, DB> + Type<DB> + Send> Bind<DB> for T {}

/// One database's dialect and its own state (a listener, a version check).
pub(crate) trait Dialect: Send + Sync + Sized + 'static {
    type DB: Database;

    // How it spells things.

    /// The database's clock, as a value of a time column.
    const NOW: &'static str;
    /// `due_at` of a parked event: never due.
    const PARKED: &'static str;
    /// The larger of two numbers.
    const GREATEST: &'static str = "GREATEST";
    /// An empty list of publishers, as a value of a list column.
    const EMPTY_LIST: &'static str = "'[]'";

    /// The `i`th parameter (from 1), where it stands in the statement.
    fn param(i: usize) -> String;
    /// A table name of `tables`, quoted (in standard SQL's double quotes).
    fn table(tables: &Tables, suffix: &str) -> String {
        tables.qualified_with('"', suffix)
    }
    /// A time column as milliseconds since the Unix epoch (an `i64`).
    fn millis(column: &str) -> String;
    /// The `headers` column as text.
    fn text(column: &str) -> String {
        column.to_owned()
    }
    /// `NOW` plus the delay in parameter `param` (bound with [`delay`](Self::delay)).
    fn after(param: &str) -> String;
    /// `NOW` minus the delay in parameter `param` (bound with
    /// [`delay`](Self::delay)).
    fn ago(param: &str) -> String;
    /// The time in parameter `param` (bound with [`instant`](Self::instant)).
    fn time(param: &str) -> String;
    /// `IN (…)` for `n` ids from parameter 1 on (bound with
    /// [`bind_ids`](Self::bind_ids)).
    fn in_ids(n: usize) -> String;
    /// A dead letter's publisher and error in a `SELECT` list, and what the
    /// `FROM` clause needs for them (parameters 1 and 2, bound with
    /// [`column`](Self::column)).
    fn failures() -> [String; 3];
    /// `INSERT` of `rows` into `into`, updating `update` of a row whose
    /// `key` exists.
    fn upsert(into: &str, rows: &str, key: &str, update: &[&str]) -> String {
        let set: Vec<String> = update
            .iter()
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect();
        format!(
            "INSERT INTO {into} {rows} ON CONFLICT ({key}) DO UPDATE SET {}",
            set.join(", ")
        )
    }
    /// `INSERT` of `rows` into `into`, skipping a row whose `key` exists.
    fn insert_or_skip(into: &str, rows: &str, key: &str) -> String {
        format!("INSERT INTO {into} {rows} ON CONFLICT ({key}) DO NOTHING")
    }
    /// One value of `column` in a group (the rows agree on it).
    fn any_value(column: &str) -> String;
    /// The values of `column` in a group, as a value of a list column.
    fn list_agg(column: &str) -> String;

    // How it binds values.

    type Id: Bind<Self::DB>;
    type List: Bind<Self::DB>;
    /// A delay or a point in time.
    type Time: Bind<Self::DB> + Copy;
    /// A column (publishers, errors) of the dead letters one statement
    /// writes: an array of them, or the one.
    type Column: Bind<Self::DB>;

    /// At most this many ids in one statement, or `None` when a list of ids
    /// is one parameter however long.
    const IDS_PER_STATEMENT: Option<usize>;
    /// At most this many dead letters in one statement.
    const FAILURES_PER_STATEMENT: usize;

    fn id(id: Uuid) -> Self::Id;
    fn list(list: &[String]) -> Self::List;
    fn delay(delay: Duration) -> Self::Time;
    fn instant(at: SystemTime) -> Self::Time;
    fn bind_ids(query: Query<Self::DB>, ids: &[Uuid]) -> Query<Self::DB>;
    fn column(values: Vec<String>) -> Self::Column;

    // How it reads them.

    fn id_at(row: &<Self::DB as Database>::Row, i: usize) -> Result<Uuid, sqlx::Error>;
    fn key_at(row: &<Self::DB as Database>::Row, i: usize) -> Result<Option<String>, sqlx::Error>;
    fn list_at(
        row: &<Self::DB as Database>::Row,
        i: usize,
    ) -> Result<Option<Vec<String>>, sqlx::Error>;
    fn rows_affected(result: &<Self::DB as Database>::QueryResult) -> u64;

    // What it does its own way.

    /// [`Source::claim`](super::Source::claim).
    fn claim(
        &self,
        pool: &Pool<Self::DB>,
        owner: Uuid,
        limit: ClaimLimit,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<ClaimedEvent>, Error>> + Send;

    /// The Source runs behind a pooler in transaction mode: its claim must
    /// run as [`Conn`](super::conn::Conn) says.
    fn set_pooled(&mut self, _pooled: bool) {}

    /// Called before every statement of the Source: a check of the server,
    /// once.
    fn ready(&self, _pool: &Pool<Self::DB>) -> impl Future<Output = Result<(), Error>> + Send {
        async { Ok(()) }
    }

    /// `n` events were acked (deleted).
    fn deleted(&self, _pool: &Pool<Self::DB>, _n: u64) {}

    /// [`Source::wait_for_events`](super::Source::wait_for_events).
    fn wait_for_events(
        &self,
        _pool: &Pool<Self::DB>,
        timeout: Duration,
    ) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(timeout)
    }
}
