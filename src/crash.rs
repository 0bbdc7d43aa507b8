//! The pieces of the crash and outage tests that a Runner process shares
//! with the test driving it: the event, and a publisher that records every
//! delivery in a PostgreSQL "sink" table that outlives the Runner.

use async_trait::async_trait;
use outbox::{Context, OutboxEvent, PublishError, Publisher};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Row};

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};

use crate::TestDb;
use crate::checker::Item;

/// The event the reliability tests enqueue.
#[derive(Debug, Clone, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "crash.event", topic = "crash", key = key)]
pub struct CrashEvent {
    /// The partition key.
    pub key: String,
    /// Position within the key, from 0.
    pub seq: u64,
}

/// Validate a plain SQL identifier (the sink lives in a test's own schema).
fn ident(name: &str) -> &str {
    assert!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "not a plain identifier: {name:?}"
    );
    name
}

/// Create the sink table `schema.sink`.
pub async fn create_sink(pool: &PgPool, schema: &str) {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS \"{}\".sink (n bigserial PRIMARY KEY, event_id uuid NOT NULL, \
         key text NOT NULL, seq bigint NOT NULL, runner text NOT NULL)",
        ident(schema)
    );
    sqlx::query(AssertSqlSafe(sql)).execute(pool).await.unwrap();
}

/// Every delivery recorded in the sink, in arrival order.
pub async fn read_sink(pool: &PgPool, schema: &str) -> Vec<Item> {
    let sql = format!(
        "SELECT event_id, key, seq FROM \"{}\".sink ORDER BY n",
        ident(schema)
    );
    sqlx::query(AssertSqlSafe(sql))
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| Item {
            id: r.get(0),
            key: r.get(1),
            seq: u64::try_from(r.get::<i64, _>(2)).unwrap(),
        })
        .collect()
}

/// A publisher that inserts each delivery into the sink (autocommit, outside
/// any outbox transaction, as a real destination would receive it).
pub struct SinkPublisher {
    pool: PgPool,
    insert: String,
    runner: String,
    jitter_ms: u64,
}

impl SinkPublisher {
    /// Record into `schema.sink` as `runner`; sleep up to `jitter_ms` before
    /// each delivery to widen the windows a crash can hit.
    pub fn new(pool: PgPool, schema: &str, runner: &str, jitter_ms: u64) -> Self {
        Self {
            pool,
            insert: format!(
                "INSERT INTO \"{}\".sink (event_id, key, seq, runner) VALUES ($1, $2, $3, $4)",
                ident(schema)
            ),
            runner: runner.to_owned(),
            jitter_ms,
        }
    }
}

#[async_trait]
impl Publisher for SinkPublisher {
    fn name(&self) -> &str {
        "sink"
    }

    fn accepts(&self, event_type: &str) -> bool {
        event_type == CrashEvent::NAME
    }

    async fn publish(&self, cx: &Context) -> Result<(), PublishError> {
        let event: CrashEvent = cx.decode()?;
        if self.jitter_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(fastrand::u64(
                0..=self.jitter_ms,
            )))
            .await;
        }
        sqlx::query(AssertSqlSafe(self.insert.clone()))
            .bind(cx.id())
            .bind(&event.key)
            .bind(i64::try_from(event.seq).unwrap_or(i64::MAX))
            .bind(&self.runner)
            .execute(&self.pool)
            .await
            .map_err(PublishError::transient)?;
        Ok(())
    }
}

/// Enqueues `CrashEvent`s round-robin over `keys` keys, one per
/// transaction, and remembers what it committed.
pub struct Producer {
    seqs: HashMap<String, u64>,
    /// What was committed, in commit order.
    pub committed: Vec<Item>,
    keys: usize,
    next: usize,
}

impl Producer {
    /// A producer over `keys` keys.
    pub fn new(keys: usize) -> Self {
        Self {
            seqs: HashMap::new(),
            committed: Vec::new(),
            keys,
            next: 0,
        }
    }

    /// Commit one event.
    pub async fn produce(&mut self, db: &TestDb) {
        let key = format!("k{}", self.next % self.keys);
        self.next += 1;
        let seq = *self.seqs.get(&key).unwrap_or(&0);
        let mut tx = db.begin().await;
        let id = tx
            .enqueue(&CrashEvent {
                key: key.clone(),
                seq,
            })
            .await;
        tx.commit().await;
        self.seqs.insert(key.clone(), seq + 1);
        self.committed.push(Item { id, key, seq });
    }
}

/// Where a relay process finds its outbox.
pub struct RelayTarget {
    /// `postgres`, `sqlite` or `mysql`.
    pub backend: &'static str,
    /// Connection URL of the outbox database.
    pub url: String,
    /// Schema (PostgreSQL) or database (MySQL) of the outbox tables, if any.
    pub schema: Option<String>,
    /// PostgreSQL schema holding the sink table.
    pub sink_schema: String,
}

/// Start a relay process (the `outbox-test-relay` binary at `exe`).
pub fn spawn_relay(exe: &str, target: &RelayTarget, name: &str, batch: usize) -> Child {
    let mut cmd = Command::new(exe);
    cmd.env("RELAY_BACKEND", target.backend)
        .env("RELAY_URL", &target.url)
        .env("RELAY_SINK_URL", crate::pg_url())
        .env("RELAY_SINK_SCHEMA", &target.sink_schema)
        .env("RELAY_NAME", name)
        .env("RELAY_BATCH", batch.to_string())
        .env("RELAY_LEASE_MS", "1500")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if let Some(schema) = &target.schema {
        cmd.env("RELAY_SCHEMA", schema);
    }
    cmd.spawn().expect("cannot start the relay binary")
}

/// SIGKILL and reap every process.
pub fn kill_all(children: &mut [Child]) {
    for child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Wait until the outbox holds nothing publishable, at most `limit`.
pub async fn wait_until_drained(db: &TestDb, limit: std::time::Duration) {
    let start = std::time::Instant::now();
    while db.pending().await > 0 {
        assert!(
            start.elapsed() < limit,
            "the outbox did not drain within {limit:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
