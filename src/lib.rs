//! Support for the integration tests and examples of the outbox workspace:
//! a database per test on any backend, scriptable recording publishers and
//! a recording wrapper around any publisher; the conformance suites'
//! per-backend macros ([`on_every_backend!`], [`on_backend!`]) and shared
//! [`fixtures`].

pub mod checker;
pub mod crash;
pub mod fixtures;
mod macros;
pub mod pg_cluster;
pub mod proxy;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use outbox::testing::{MemoryOutbox, MemoryTransaction};
use outbox::{
    Context, FailureKind, NewEvent, OutboxEvent, PublishError, Publisher, RunnerBuilder, Source,
    StateRequirement, Tables, Uuid,
};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, MySql, Postgres, Sqlite, Transaction};

/// The PostgreSQL server the tests use: `OUTBOX_TEST_PG_URL`, or the local one.
pub fn pg_url() -> String {
    std::env::var("OUTBOX_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The MySQL/MariaDB server the tests use: `OUTBOX_TEST_MYSQL_URL`, or the
/// local one. Each test creates and drops its own database there.
pub fn mysql_url() -> String {
    std::env::var("OUTBOX_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// A unique, valid identifier for one test.
pub fn unique_name(test: &str) -> String {
    let clean: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(24)
        .collect();
    format!("t_{clean}_{:08x}", fastrand::u32(..))
}

/// One test's own database: a fresh PostgreSQL schema, SQLite file or
/// MySQL/MariaDB database.
#[derive(Clone)]
pub enum TestDb {
    /// A schema in the shared PostgreSQL database.
    Pg {
        /// Pool whose `search_path` is the test's schema.
        pool: PgPool,
        /// The schema.
        schema: String,
    },
    /// A SQLite file in the temp folder.
    Sqlite {
        /// The pool.
        pool: SqlitePool,
        /// The file.
        path: PathBuf,
    },
    /// A database of its own on the MySQL/MariaDB server.
    MySql {
        /// Pool whose default database is the test's database.
        pool: MySqlPool,
        /// The database.
        database: String,
    },
    /// `outbox::testing::MemoryOutbox`es: one per pair of tables (by
    /// prefix), made when they are migrated or first used.
    Memory {
        /// The outboxes by table prefix.
        outboxes: Arc<Mutex<BTreeMap<String, MemoryOutbox>>>,
        /// The ids of the committed business rows (`insert_order`).
        orders: Arc<Mutex<Vec<i64>>>,
    },
}

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
    /// MySQL 8 / MariaDB 10.6+.
    MySql,
    /// `outbox::testing::MemoryOutbox`: no database.
    Memory,
}

impl Backend {
    /// Whether a Runner can claim while another transaction holds
    /// uncommitted writes (not SQLite: one writer at a time).
    pub fn runs_beside_open_writes(self) -> bool {
        self != Self::Sqlite
    }
}

impl TestDb {
    /// A fresh database on `backend`, with the outbox migrated and an
    /// `orders` business table.
    pub async fn new(backend: Backend, test: &str) -> Self {
        let db = match backend {
            Backend::Postgres => Self::postgres(test).await,
            Backend::Sqlite => Self::sqlite(test).await,
            Backend::MySql => Self::mysql(test).await,
            Backend::Memory => Self::memory(),
        };
        db.migrate().await;
        if backend != Backend::Memory {
            db.exec("CREATE TABLE orders (id BIGINT PRIMARY KEY, total_cents BIGINT NOT NULL)")
                .await;
        }
        db
    }

    /// A fresh schema, not migrated.
    pub async fn postgres(test: &str) -> Self {
        let schema = unique_name(test);
        let admin = PgPool::connect(&pg_url())
            .await
            .expect("cannot reach PostgreSQL for the tests; start it, or set OUTBOX_TEST_PG_URL");
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let set_path = format!("SET search_path TO \"{schema}\"");
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .after_connect(move |conn, _| {
                let set_path = set_path.clone();
                Box::pin(async move {
                    sqlx::query(AssertSqlSafe(set_path)).execute(conn).await?;
                    Ok(())
                })
            })
            .connect(&pg_url())
            .await
            .unwrap();
        Self::Pg { pool, schema }
    }

    /// A fresh SQLite file, not migrated.
    pub async fn sqlite(test: &str) -> Self {
        let dir = std::env::temp_dir().join("outbox-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.db", unique_name(test)));
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .unwrap();
        Self::Sqlite { pool, path }
    }

    /// A fresh MySQL/MariaDB database, not migrated.
    pub async fn mysql(test: &str) -> Self {
        let database = unique_name(test);
        let admin = MySqlPool::connect(&mysql_url()).await.expect(
            "cannot reach MySQL/MariaDB for the tests; start it, or set OUTBOX_TEST_MYSQL_URL",
        );
        let create = format!("CREATE DATABASE `{database}` CHARACTER SET utf8mb4");
        sqlx::query(AssertSqlSafe(create))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let options: MySqlConnectOptions = mysql_url().parse().unwrap();
        let pool = MySqlPoolOptions::new()
            .max_connections(8)
            .connect_with(options.database(&database))
            .await
            .unwrap();
        Self::MySql { pool, database }
    }

    /// An empty in-memory outbox (migrated or not, it works), whose clock
    /// shows the host's time (the scenarios compare times with it).
    pub fn memory() -> Self {
        Self::Memory {
            outboxes: Arc::default(),
            orders: Arc::default(),
        }
    }

    /// The in-memory outbox of `tables`, made on first use.
    fn memory_outbox_of(
        outboxes: &Mutex<BTreeMap<String, MemoryOutbox>>,
        tables: &Tables,
    ) -> MemoryOutbox {
        outboxes
            .lock()
            .unwrap()
            .entry(tables.prefix().to_owned())
            .or_insert_with(|| MemoryOutbox::new().clock_start(SystemTime::now()))
            .clone()
            .with_tables(tables.clone())
    }

    /// The in-memory outbox of this test's tables, on the in-memory backend.
    pub fn memory_outbox(&self) -> Option<MemoryOutbox> {
        match self {
            Self::Memory { outboxes, .. } => Some(Self::memory_outbox_of(outboxes, &self.tables())),
            _ => None,
        }
    }

    /// The outbox tables of this test.
    pub fn tables(&self) -> Tables {
        match self {
            Self::Pg { schema, .. } => Tables::default().schema(schema.clone()).unwrap(),
            Self::Sqlite { .. } => Tables::default(),
            Self::MySql { database, .. } => Tables::default().schema(database.clone()).unwrap(),
            Self::Memory { .. } => Tables::default(),
        }
    }

    /// Other outbox tables in this test's schema, with their own prefix (not
    /// migrated).
    pub fn tables_with_prefix(&self, prefix: &str) -> Tables {
        let tables = Tables::new(prefix).unwrap();
        match self.tables().schema_name() {
            Some(schema) => tables.schema(schema).unwrap(),
            None => tables,
        }
    }

    /// Create the outbox tables.
    pub async fn migrate(&self) {
        self.migrate_tables(&self.tables()).await.unwrap()
    }

    /// `Tables::migrate` on this database.
    pub async fn migrate_tables(&self, tables: &Tables) -> Result<(), outbox::Error> {
        match self {
            Self::Pg { pool, .. } => tables.migrate(pool).await,
            Self::Sqlite { pool, .. } => tables.migrate(pool).await,
            Self::MySql { pool, .. } => tables.migrate(pool).await,
            Self::Memory { outboxes, .. } => {
                Self::memory_outbox_of(outboxes, tables);
                Ok(())
            }
        }
    }

    /// Run one statement.
    pub async fn exec(&self, sql: &str) -> u64 {
        if let Self::Memory { .. } = self {
            no_sql(sql)
        }
        let sql = AssertSqlSafe(sql.to_owned());
        match self {
            Self::Memory { .. } => unreachable!(),
            Self::Pg { pool, .. } => sqlx::query(sql)
                .execute(pool)
                .await
                .unwrap()
                .rows_affected(),
            Self::Sqlite { pool, .. } => sqlx::query(sql)
                .execute(pool)
                .await
                .unwrap()
                .rows_affected(),
            Self::MySql { pool, .. } => sqlx::query(sql)
                .execute(pool)
                .await
                .unwrap()
                .rows_affected(),
        }
    }

    /// Run a query returning one integer.
    pub async fn scalar(&self, sql: &str) -> i64 {
        if let Self::Memory { .. } = self {
            no_sql(sql)
        }
        let sql = AssertSqlSafe(sql.to_owned());
        match self {
            Self::Memory { .. } => unreachable!(),
            Self::Pg { pool, .. } => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
            Self::Sqlite { pool, .. } => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
            Self::MySql { pool, .. } => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        }
    }

    /// How many business rows (`Tx::insert_order`) were committed.
    pub async fn orders(&self) -> i64 {
        match self {
            Self::Memory { orders, .. } => orders.lock().unwrap().len() as i64,
            _ => self.scalar("SELECT count(*) FROM orders").await,
        }
    }

    /// Start a transaction.
    pub async fn begin(&self) -> Tx {
        self.begin_in(self.tables()).await
    }

    /// Start a transaction that enqueues into `tables`.
    pub async fn begin_in(&self, tables: Tables) -> Tx {
        match self {
            Self::Pg { pool, .. } => Tx::Pg(pool.begin().await.unwrap(), tables),
            Self::Sqlite { pool, .. } => Tx::Sqlite(pool.begin().await.unwrap(), tables),
            Self::MySql { pool, .. } => Tx::MySql(pool.begin().await.unwrap(), tables),
            Self::Memory { outboxes, orders } => Tx::Memory(MemoryTx {
                tx: Self::memory_outbox_of(outboxes, &tables).begin(),
                orders: Vec::new(),
                committed: orders.clone(),
            }),
        }
    }

    /// A Runner builder for this database with test-friendly timings and
    /// no inventory publishers.
    pub fn runner(&self) -> RunnerBuilder {
        let builder = match self {
            Self::Pg { pool, .. } => outbox::Runner::builder(pool.clone()),
            Self::Sqlite { pool, .. } => outbox::Runner::builder(pool.clone()),
            Self::MySql { pool, .. } => outbox::Runner::builder(pool.clone()),
            Self::Memory { .. } => outbox::Runner::with_source(self.source()),
        };
        let builder = match self {
            // A Runner over a given Source takes no tables.
            Self::Memory { .. } => builder,
            _ => builder.tables(self.tables()),
        };
        builder
            .without_registered()
            .poll_interval(Duration::from_millis(20))
            .backoff(Duration::from_millis(10), Duration::from_millis(100))
            .shutdown(std::future::pending())
    }

    /// Drain the outbox through this one publisher with [`runner`](Self::runner)'s
    /// settings, and return the report.
    pub async fn drain_with(&self, publisher: impl outbox::Publisher) -> outbox::RunReport {
        self.runner()
            .publisher(publisher)
            .build()
            .unwrap()
            .drain()
            .await
            .unwrap()
    }

    /// The Source, for dead-letter administration and store-level tests.
    pub fn source(&self) -> Arc<dyn Source> {
        self.source_for(&self.tables())
    }

    /// The Source of other tables on this database.
    pub fn source_for(&self, tables: &Tables) -> Arc<dyn Source> {
        match self {
            Self::Pg { pool, .. } => outbox::source(pool.clone(), tables),
            Self::Sqlite { pool, .. } => outbox::source(pool.clone(), tables),
            Self::MySql { pool, .. } => outbox::source(pool.clone(), tables),
            Self::Memory { outboxes, .. } => Self::memory_outbox_of(outboxes, tables).source(),
        }
    }

    /// Events still in the outbox.
    pub async fn pending(&self) -> u64 {
        self.source().pending().await.unwrap()
    }

    /// Drop the schema or delete the file.
    pub async fn cleanup(self) {
        match self {
            Self::Pg { pool, schema } => {
                pool.close().await;
                let admin = PgPool::connect(&pg_url()).await.unwrap();
                sqlx::query(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
                    .execute(&admin)
                    .await
                    .unwrap();
                admin.close().await;
            }
            Self::Sqlite { pool, path } => {
                pool.close().await;
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Self::MySql { pool, database } => {
                pool.close().await;
                let admin = MySqlPool::connect(&mysql_url()).await.unwrap();
                sqlx::query(AssertSqlSafe(format!("DROP DATABASE `{database}`")))
                    .execute(&admin)
                    .await
                    .unwrap();
                admin.close().await;
            }
            Self::Memory { .. } => {}
        }
    }
}

/// A scenario ran SQL on the in-memory backend: it belongs in the list of
/// scenarios that only the SQL backends run.
fn no_sql(sql: &str) -> ! {
    panic!(
        "the in-memory backend runs no SQL ({sql}); list this scenario among the SQL-only ones \
         of `on_every_backend!`, saying why"
    )
}

/// A transaction of the in-memory backend, with its business rows.
pub struct MemoryTx {
    tx: MemoryTransaction,
    orders: Vec<i64>,
    committed: Arc<Mutex<Vec<i64>>>,
}

/// A transaction on either backend.
pub enum Tx {
    /// PostgreSQL.
    Pg(Transaction<'static, Postgres>, Tables),
    /// SQLite.
    Sqlite(Transaction<'static, Sqlite>, Tables),
    /// MySQL/MariaDB.
    MySql(Transaction<'static, MySql>, Tables),
    /// In memory.
    Memory(MemoryTx),
}

impl Tx {
    /// Insert a business row.
    pub async fn insert_order(&mut self, id: i64, total_cents: i64) {
        let sql = "INSERT INTO orders (id, total_cents) VALUES ($1, $2)";
        match self {
            Self::Pg(tx, _) => {
                sqlx::query(sql)
                    .bind(id)
                    .bind(total_cents)
                    .execute(&mut **tx)
                    .await
                    .unwrap();
            }
            Self::Sqlite(tx, _) => {
                sqlx::query(sql)
                    .bind(id)
                    .bind(total_cents)
                    .execute(&mut **tx)
                    .await
                    .unwrap();
            }
            Self::MySql(tx, _) => {
                sqlx::query("INSERT INTO orders (id, total_cents) VALUES (?, ?)")
                    .bind(id)
                    .bind(total_cents)
                    .execute(&mut **tx)
                    .await
                    .unwrap();
            }
            Self::Memory(tx) => tx.orders.push(id),
        }
    }

    /// `outbox::enqueue` in this transaction.
    pub async fn enqueue<E: OutboxEvent>(&mut self, event: &E) -> Uuid {
        match self {
            Self::Pg(tx, t) => t.enqueue(tx, event).await.unwrap(),
            Self::Sqlite(tx, t) => t.enqueue(tx, event).await.unwrap(),
            Self::MySql(tx, t) => t.enqueue(tx, event).await.unwrap(),
            Self::Memory(tx) => tx.tx.enqueue(event).unwrap(),
        }
    }

    /// `outbox::enqueue_all` in this transaction.
    pub async fn enqueue_all<E: OutboxEvent>(&mut self, events: &[E]) -> Vec<Uuid> {
        match self {
            Self::Pg(tx, t) => t.enqueue_all(tx, events).await.unwrap(),
            Self::Sqlite(tx, t) => t.enqueue_all(tx, events).await.unwrap(),
            Self::MySql(tx, t) => t.enqueue_all(tx, events).await.unwrap(),
            Self::Memory(tx) => tx.tx.enqueue_all(events).unwrap(),
        }
    }

    /// `outbox::enqueue_raw` in this transaction.
    pub async fn enqueue_raw(&mut self, events: &[NewEvent]) {
        self.try_enqueue_raw(events).await.unwrap();
    }

    /// `outbox::enqueue_raw` in this transaction, returning its error.
    pub async fn try_enqueue_raw(&mut self, events: &[NewEvent]) -> Result<(), outbox::Error> {
        match self {
            Self::Pg(tx, t) => t.enqueue_raw(tx, events).await,
            Self::Sqlite(tx, t) => t.enqueue_raw(tx, events).await,
            Self::MySql(tx, t) => t.enqueue_raw(tx, events).await,
            Self::Memory(tx) => tx.tx.enqueue_raw(events),
        }
    }

    /// Commit.
    pub async fn commit(self) {
        match self {
            Self::Pg(tx, _) => tx.commit().await.unwrap(),
            Self::Sqlite(tx, _) => tx.commit().await.unwrap(),
            Self::MySql(tx, _) => tx.commit().await.unwrap(),
            Self::Memory(tx) => {
                tx.tx.commit();
                tx.committed.lock().unwrap().extend(tx.orders);
            }
        }
    }

    /// Roll back.
    pub async fn rollback(self) {
        match self {
            Self::Pg(tx, _) => tx.rollback().await.unwrap(),
            Self::Sqlite(tx, _) => tx.rollback().await.unwrap(),
            Self::MySql(tx, _) => tx.rollback().await.unwrap(),
            Self::Memory(tx) => tx.tx.rollback(),
        }
    }
}

/// What a [`Recorder`] was given.
#[derive(Debug, Clone)]
pub struct Call {
    /// The publisher's name.
    pub publisher: String,
    /// The event id.
    pub id: Uuid,
    /// The event type.
    pub event_type: String,
    /// The topic.
    pub topic: String,
    /// The partition key.
    pub key: Option<String>,
    /// The payload as text.
    pub payload: String,
    /// Which attempt.
    pub attempt: u32,
    /// When it was called.
    pub at: Instant,
}

/// How a [`Recorder`] answers one call.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Succeed.
    Ok,
    /// Fail, to be retried.
    Transient,
    /// Fail for good.
    Permanent,
    /// Panic.
    Panic,
    /// Sleep, then succeed.
    Sleep(Duration),
}

/// A publisher that records every call and answers from a script (then Ok).
#[derive(Clone)]
pub struct Recorder {
    name: String,
    event_types: Vec<String>,
    calls: Arc<Mutex<Vec<Call>>>,
    script: Arc<Mutex<VecDeque<Answer>>>,
    always: Option<Answer>,
}

impl Recorder {
    /// Records events of these types.
    pub fn new(name: &str, event_types: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            event_types: event_types.iter().map(|s| (*s).to_owned()).collect(),
            calls: Arc::default(),
            script: Arc::default(),
            always: None,
        }
    }

    /// Answer the next calls like this, in order; then succeed.
    pub fn script(self, answers: impl IntoIterator<Item = Answer>) -> Self {
        self.script.lock().unwrap().extend(answers);
        self
    }

    /// Answer every call like this.
    pub fn always(mut self, answer: Answer) -> Self {
        self.always = Some(answer);
        self
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Calls that were answered with success: the deliveries.
    pub fn payloads(&self) -> Vec<String> {
        self.calls().into_iter().map(|c| c.payload).collect()
    }
}

#[async_trait]
impl Publisher for Recorder {
    fn name(&self) -> &str {
        &self.name
    }

    fn accepts(&self, event_type: &str) -> bool {
        self.event_types.iter().any(|t| t == event_type)
    }

    async fn publish(&self, cx: &Context) -> Result<(), PublishError> {
        let e = cx.event();
        self.calls.lock().unwrap().push(Call {
            publisher: self.name.clone(),
            id: e.id,
            event_type: e.event_type.clone(),
            topic: e.topic.clone(),
            key: e.partition_key.clone(),
            payload: String::from_utf8_lossy(&e.payload).into_owned(),
            attempt: cx.attempt(),
            at: Instant::now(),
        });
        let answer = match &self.always {
            Some(a) => a.clone(),
            None => self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Answer::Ok),
        };
        match answer {
            Answer::Ok => Ok(()),
            Answer::Transient => Err(PublishError::transient("scripted transient failure")),
            Answer::Permanent => Err(PublishError::permanent("scripted permanent failure")),
            Answer::Panic => panic!("scripted panic in publisher {}", self.name),
            Answer::Sleep(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
        }
    }
}

/// What one call of a [`Recording`] publisher returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The event id.
    pub id: Uuid,
    /// Which attempt.
    pub attempt: u32,
    /// `None` on success; else the failure's kind and message.
    pub error: Option<(FailureKind, String)>,
}

impl Outcome {
    /// The failure's kind, `None` on success.
    pub fn kind(&self) -> Option<FailureKind> {
        self.error.as_ref().map(|(kind, _)| *kind)
    }
}

/// Called after each call of a [`Recording`] with the number of calls so
/// far.
type AfterEach = Arc<dyn Fn(usize) + Send + Sync>;

/// Wraps a publisher (a broker's, say): passes every call on unchanged and
/// records what each returned, in the order they finished.
pub struct Recording<P> {
    inner: Arc<P>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    after_each: Option<AfterEach>,
}

impl<P> Clone for Recording<P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            outcomes: self.outcomes.clone(),
            after_each: self.after_each.clone(),
        }
    }
}

impl<P: Publisher> Recording<P> {
    /// Records the calls of `inner`, under its name.
    pub fn new(inner: P) -> Self {
        Self {
            inner: Arc::new(inner),
            outcomes: Arc::default(),
            after_each: None,
        }
    }

    /// After each call, call `f` with the number of calls so far (to cut a
    /// connection after the 10th, say).
    pub fn after_each(mut self, f: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.after_each = Some(Arc::new(f));
        self
    }

    /// Every call so far.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().unwrap().clone()
    }

    /// Assert that the calls failed as transient at least once, then the
    /// last one succeeded: what an outage should look like.
    pub fn assert_transient_failures_then_success(&self) {
        let outcomes = self.outcomes();
        let (last, failed) = outcomes.split_last().expect("the publisher was called");
        assert_eq!(last.error, None, "the last attempt succeeded");
        assert!(!failed.is_empty(), "attempts failed before the last");
        for outcome in failed {
            assert_eq!(outcome.kind(), Some(FailureKind::Transient), "{outcome:?}");
        }
    }
}

#[async_trait]
impl<P: Publisher> Publisher for Recording<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn accepts(&self, event_type: &str) -> bool {
        self.inner.accepts(event_type)
    }

    fn required_state(&self) -> Option<StateRequirement> {
        self.inner.required_state()
    }

    async fn publish(&self, cx: &Context) -> Result<(), PublishError> {
        let result = self.inner.publish(cx).await;
        let calls = {
            let mut outcomes = self.outcomes.lock().unwrap();
            outcomes.push(Outcome {
                id: cx.id(),
                attempt: cx.attempt(),
                error: result.as_ref().err().map(|e| (e.kind(), e.to_string())),
            });
            outcomes.len()
        };
        if let Some(f) = &self.after_each {
            f(calls);
        }
        result
    }
}
