//! Part 6: SQLite (WAL file, synchronous=FULL): enqueue overhead on one
//! connection, and one Runner draining a pre-filled outbox against a raw
//! DELETE loop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use outbox::{OutboxEvent, Runner, Tables, Uuid};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection, Sqlite};

use crate::common::{Config, OrderPlaced, Recorder, Sink, order, random_key};
use crate::enqueue::batch;
use crate::relay::KEYS;

async fn open(path: &Path, conns: u32) -> anyhow::Result<SqlitePool> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30));
    Ok(SqlitePoolOptions::new()
        .max_connections(conns)
        .connect_with(options)
        .await?)
}

async fn exec(pool: &SqlitePool, sql: impl Into<String>) -> anyhow::Result<u64> {
    let sql = sql.into();
    Ok(sqlx::query(AssertSqlSafe(sql))
        .persistent(false)
        .execute(pool)
        .await?
        .rows_affected())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) async fn run(cfg: &Config, rec: &mut Recorder) -> anyhow::Result<()> {
    let dir = Dir(std::env::temp_dir().join(format!(
        "outbox-bench-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    )));
    std::fs::create_dir_all(&dir.0)?;
    enqueue(cfg, rec, &dir.0).await?;
    relay(cfg, rec, &dir.0).await?;
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Outbox,
    Hand,
}

async fn enqueue(cfg: &Config, rec: &mut Recorder, dir: &Path) -> anyhow::Result<()> {
    let pool = open(&dir.join("enqueue.db"), 1).await?;
    outbox::migrate(&pool).await?;
    exec(
        &pool,
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, \
         total_cents INTEGER NOT NULL, created_at INTEGER NOT NULL)",
    )
    .await?;
    // The outbox table's columns and index, without the outbox.
    exec(
        &pool,
        "CREATE TABLE plain_events (id TEXT PRIMARY KEY NOT NULL, event_type TEXT NOT NULL, \
         version INTEGER NOT NULL, topic TEXT NOT NULL, partition_key TEXT, payload BLOB NOT NULL, \
         headers TEXT NOT NULL DEFAULT '{}', created_at INTEGER NOT NULL, due_at INTEGER NOT NULL, \
         attempts INTEGER NOT NULL DEFAULT 0, lease_owner TEXT, lease_until INTEGER, \
         done TEXT NOT NULL DEFAULT '[]', only_publishers TEXT, last_error TEXT) WITHOUT ROWID",
    )
    .await?;
    exec(
        &pool,
        "CREATE INDEX plain_events_key_idx ON plain_events (partition_key, id) \
         WHERE partition_key IS NOT NULL",
    )
    .await?;
    // Rounds of one slice per mode, in a rotating order (see enqueue.rs).
    let rounds = cfg.pick(4, 1);
    let slice = cfg.pick(Duration::from_secs(1), Duration::from_millis(800));
    let modes = [Mode::Outbox, Mode::Hand];
    for k in [1usize, 10] {
        let tag = format!("sqlite.c1.e{k}");
        exec(&pool, "DELETE FROM orders").await?;
        exec(&pool, "DELETE FROM outbox_events").await?;
        exec(&pool, "DELETE FROM plain_events").await?;
        exec(&pool, "PRAGMA wal_checkpoint(TRUNCATE)").await?;
        for &mode in &modes {
            transactions(&pool, mode, k, Duration::from_millis(300)).await?;
        }
        let mut acc = [(0u64, 0.0f64); 2];
        for r in 0..rounds {
            for j in 0..modes.len() {
                let i = (j + r) % modes.len();
                let (n, secs) = transactions(&pool, modes[i], k, slice).await?;
                acc[i].0 += n;
                acc[i].1 += secs;
            }
        }
        let got: Vec<f64> = acc.iter().map(|(n, secs)| *n as f64 / secs).collect();
        rec.add("sqlite", format!("{tag}.outbox_tx_s"), got[0], "tx/s");
        rec.add("sqlite", format!("{tag}.hand_tx_s"), got[1], "tx/s");
        rec.add("sqlite", format!("{tag}.ratio"), got[0] / got[1], "x");
    }
    pool.close().await;
    Ok(())
}

async fn transactions(
    pool: &SqlitePool,
    mode: Mode,
    k: usize,
    window: Duration,
) -> anyhow::Result<(u64, f64)> {
    let orders: Arc<str> =
        "INSERT INTO orders (customer_id, total_cents, created_at) VALUES (?1, ?2, ?3)".into();
    let hand: Arc<str> =
        "INSERT INTO plain_events (id, event_type, version, topic, partition_key, \
                          payload, headers, created_at, due_at) \
                          VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            .into();
    let mut conn = pool.acquire().await?;
    let start = Instant::now();
    let deadline = start + window;
    let mut n = 0u64;
    let mut seq = 0i64;
    while Instant::now() < deadline {
        let events: Vec<OrderPlaced> = batch(seq, k);
        seq += 1;
        let mut tx = conn.begin().await?;
        sqlx::query(AssertSqlSafe(orders.clone()))
            .bind(events[0].customer_id)
            .bind(events[0].total_cents)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        match mode {
            Mode::Outbox if k == 1 => {
                outbox::enqueue(&mut tx, &events[0]).await?;
            }
            Mode::Outbox => {
                outbox::enqueue_all(&mut tx, &events).await?;
            }
            Mode::Hand => {
                for e in &events {
                    let now = now_ms();
                    sqlx::query::<Sqlite>(AssertSqlSafe(hand.clone()))
                        .bind(Uuid::now_v7().to_string())
                        .bind(OrderPlaced::NAME)
                        .bind(i64::from(OrderPlaced::VERSION))
                        .bind(OrderPlaced::TOPIC)
                        .bind(Some(e.customer_id.to_string()))
                        .bind(serde_json::to_vec(e)?)
                        .bind("{}")
                        .bind(now)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        n += 1;
    }
    Ok((n, start.elapsed().as_secs_f64()))
}

async fn fill(pool: &SqlitePool, n: usize) -> anyhow::Result<()> {
    for chunk_start in (0..n).step_by(1000) {
        let events: Vec<OrderPlaced> = (chunk_start..(chunk_start + 1000).min(n))
            .map(|i| order(i as i64, random_key(KEYS)))
            .collect();
        let mut tx = pool.begin().await?;
        outbox::enqueue_all(&mut tx, &events).await?;
        tx.commit().await?;
    }
    exec(pool, "PRAGMA wal_checkpoint(TRUNCATE)").await?;
    exec(pool, "ANALYZE").await?;
    Ok(())
}

async fn relay(cfg: &Config, rec: &mut Recorder, dir: &Path) -> anyhow::Result<()> {
    let n: u64 = cfg.pick(100_000, 10_000);
    rec.add("sqlite", "sqlite.relay_backlog", n as f64, "events");
    for b in [100usize, 1000] {
        let tag = format!("sqlite.b{b}");
        // Raw: a DELETE loop over the same rows.
        let path = dir.join(format!("raw{b}.db"));
        let pool = open(&path, 1).await?;
        outbox::migrate(&pool).await?;
        fill(&pool, n as usize).await?;
        let sql = format!(
            "DELETE FROM {} WHERE id IN (SELECT id FROM {} ORDER BY id LIMIT ?1)",
            "outbox_events", "outbox_events"
        );
        let start = Instant::now();
        let mut total = 0;
        loop {
            let done = sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(b as i64)
                .execute(&pool)
                .await?
                .rows_affected();
            if done == 0 {
                break;
            }
            total += done;
        }
        anyhow::ensure!(total == n, "raw SQLite drain deleted {total} of {n}");
        let raw = n as f64 / start.elapsed().as_secs_f64();
        pool.close().await;
        rec.add("sqlite", format!("{tag}.raw1_ev_s"), raw, "ev/s");

        // One Runner.
        let path = dir.join(format!("runner{b}.db"));
        let pool = open(&path, 1).await?;
        outbox::migrate(&pool).await?;
        fill(&pool, n as usize).await?;
        pool.close().await;
        let pool = open(&path, 2).await?;
        let sink = Sink::counting(n);
        let runner = Runner::builder(pool.clone())
            .tables(Tables::default())
            .without_registered()
            .publisher(sink.clone())
            .batch_size(b)
            .shutdown(sink.reached_target())
            .build()?;
        let start = Instant::now();
        runner.run().await?;
        let end = sink.reached().unwrap_or_else(Instant::now);
        anyhow::ensure!(
            sink.count() >= n,
            "SQLite Runner published {} of {n}",
            sink.count()
        );
        let runner = n as f64 / (end - start).as_secs_f64();
        pool.close().await;
        rec.add("sqlite", format!("{tag}.runner1_ev_s"), runner, "ev/s");
        rec.add(
            "sqlite",
            format!("{tag}.runner1_vs_raw1"),
            runner / raw,
            "x",
        );
    }
    Ok(())
}
