//! The outbox behind PgBouncer in transaction mode, as `.ci/pgbouncer`
//! starts it on 127.0.0.1:6432: a server pool of 3 per database, smaller
//! than the number of clients here, so clients take turns on server
//! connections between transactions. What the README's "Behind a
//! connection pooler" says is tested here.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use outbox::{NewEvent, Runner, Tables};
use outbox_tests::checker::{self, Item};
use outbox_tests::crash::CrashEvent;
use outbox_tests::{Recorder, pg_url, unique_name};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Row};

const POOLER_PORT: u16 = 6432;

/// A database of its own, created and dropped on the server directly.
struct Database {
    name: String,
    admin: PgPool,
}

impl Database {
    async fn new(test: &str) -> Self {
        if tokio::net::TcpStream::connect(("127.0.0.1", POOLER_PORT))
            .await
            .is_err()
        {
            panic!(
                "PgBouncer is not running on 127.0.0.1:{POOLER_PORT}: run .ci/pgbouncer (it \
                 installs Debian's pgbouncer if needed and starts it in transaction mode)"
            );
        }
        let name = unique_name(test);
        let admin = PgPool::connect(&pg_url())
            .await
            .expect("cannot reach PostgreSQL for the tests; start it, or set OUTBOX_TEST_PG_URL");
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&admin)
            .await
            .unwrap();
        Self { name, admin }
    }

    /// Connect options for this database, on the server itself.
    fn direct(&self) -> PgConnectOptions {
        PgConnectOptions::from_str(&pg_url())
            .unwrap()
            .database(&self.name)
    }

    /// Connect options for this database through the pooler: what the
    /// README tells the application to set.
    fn pooled(&self) -> PgConnectOptions {
        self.direct().port(POOLER_PORT).statement_cache_capacity(0)
    }

    /// A pool through the pooler with more connections than its server pool.
    async fn pool(&self, options: PgConnectOptions) -> PgPool {
        PgPoolOptions::new()
            .max_connections(6)
            .connect_with(options)
            .await
            .unwrap()
    }

    async fn drop(self) {
        sqlx::query(AssertSqlSafe(format!(
            "DROP DATABASE \"{}\" WITH (FORCE)",
            self.name
        )))
        .execute(&self.admin)
        .await
        .unwrap();
        self.admin.close().await;
    }
}

/// Every WARN and ERROR logged in this test binary.
fn warnings() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let writer = Writer(logs.clone());
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || writer.clone())
            .init();
        logs
    })
}

#[derive(Clone)]
struct Writer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Commit `events` of the keys `k{i}` with `i % producers == me`, one to
/// four per transaction, through `pool`; returns what was committed, in
/// commit order.
async fn produce(
    pool: PgPool,
    me: usize,
    producers: usize,
    keys: usize,
    events: usize,
) -> Vec<Item> {
    let mine: Vec<String> = (0..keys)
        .filter(|k| k % producers == me)
        .map(|k| format!("k{k}"))
        .collect();
    let mut seqs = vec![0u64; mine.len()];
    let mut committed = Vec::with_capacity(events);
    let mut n = 0;
    while committed.len() < events {
        let size = (1 + n % 4).min(events - committed.len());
        let batch: Vec<CrashEvent> = (0..size)
            .map(|i| {
                let k = (n + i) % mine.len();
                seqs[k] += 1;
                CrashEvent {
                    key: mine[k].clone(),
                    seq: seqs[k] - 1,
                }
            })
            .collect();
        let mut tx = pool.begin().await.unwrap();
        let ids = if size == 1 {
            vec![outbox::enqueue(&mut tx, &batch[0]).await.unwrap()]
        } else {
            outbox::enqueue_all(&mut tx, &batch).await.unwrap()
        };
        tx.commit().await.unwrap();
        committed.extend(ids.into_iter().zip(batch).map(|(id, e)| Item {
            id,
            key: e.key,
            seq: e.seq,
        }));
        n += size;
    }
    committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_and_two_runners_through_the_pooler() {
    const PRODUCERS: usize = 4;
    const KEYS: usize = 50;
    const EVENTS: usize = 10_000;
    let logs = warnings();
    let db = Database::new("pgbouncer_stress").await;
    let direct = PgPool::connect_with(db.direct()).await.unwrap();
    outbox::migrate(&direct).await.unwrap();

    let app = db.pool(db.pooled()).await;
    let recorder = Recorder::new("sink", &["crash.event"]);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    // One Runner on a pool as the README says, one on a pool that keeps
    // sqlx's default statement cache: the Runner does not depend on it.
    let mut runners = Vec::new();
    for options in [db.pooled(), db.direct().port(POOLER_PORT)] {
        let pool = db.pool(options).await;
        let mut stop = stop.clone();
        let runner = Runner::builder(pool)
            .without_registered()
            .publisher(recorder.clone())
            .transaction_pooler(true)
            .batch_size(50)
            .poll_interval(Duration::from_millis(20))
            .shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .build()
            .unwrap();
        runners.push(tokio::spawn(runner.run()));
    }

    let producers: Vec<_> = (0..PRODUCERS)
        .map(|me| {
            tokio::spawn(produce(
                app.clone(),
                me,
                PRODUCERS,
                KEYS,
                EVENTS / PRODUCERS,
            ))
        })
        .collect();
    let mut committed = Vec::new();
    for p in producers {
        committed.extend(p.await.unwrap());
    }

    // Operators' calls go through the pooler too.
    let source = outbox::source(app.clone(), &Tables::default());
    let deadline = Instant::now() + Duration::from_secs(180);
    while source.pending().await.unwrap() > 0 {
        assert!(
            Instant::now() < deadline,
            "the Runners did not drain the outbox in 180 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_tx.send(true).unwrap();
    let mut published = Vec::new();
    for runner in runners {
        published.push(runner.await.unwrap().unwrap().published);
    }

    let delivered: Vec<Item> = recorder
        .calls()
        .into_iter()
        .map(|call| {
            let e: CrashEvent = serde_json::from_str(&call.payload).unwrap();
            Item {
                id: call.id,
                key: e.key,
                seq: e.seq,
            }
        })
        .collect();
    let report = checker::check(&committed, &delivered);
    assert_eq!(committed.len(), EVENTS);
    assert_eq!(
        (
            report.lost,
            report.duplicated,
            report.unexpected,
            report.out_of_order
        ),
        (0, 0, 0, 0),
        "{report}"
    );
    assert!(
        published.iter().all(|&n| n > 0),
        "both Runners should have published: {published:?}"
    );
    assert_eq!(published.iter().sum::<u64>(), EVENTS as u64);
    assert!(source.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(source.retry_dead_letters(None).await.unwrap(), 0);
    assert_eq!(
        source
            .purge_dead_letters_older_than(Duration::from_secs(1))
            .await
            .unwrap(),
        0
    );

    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let bad: Vec<&str> = logs
        .lines()
        // Any statement error, and any warning of the outbox but its
        // start-up notes about the event types of other tests (sqlx's
        // slow-statement warnings are not failures).
        .filter(|l| {
            l.contains("prepared statement")
                || l.contains("ERROR")
                || (l.contains(" outbox::") && !l.contains(" outbox::registry:"))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{} warnings or errors were logged through the pooler:\n{}",
        bad.len(),
        bad.iter().take(20).copied().collect::<Vec<_>>().join("\n")
    );

    for pool in [app, direct] {
        pool.close().await;
    }
    db.drop().await;
}

/// What the README says the application needs: `outbox::enqueue` in its
/// transactions works through the pooler whatever the pool's statement
/// cache, and so do the application's own statements when they are
/// unnamed (`.persistent(false)`) inside a transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_applications_transactions_through_the_pooler() {
    let db = Database::new("pgbouncer_app").await;
    let direct = PgPool::connect_with(db.direct()).await.unwrap();
    outbox::migrate(&direct).await.unwrap();
    sqlx::query("CREATE TABLE orders (id bigint PRIMARY KEY, key text NOT NULL)")
        .execute(&direct)
        .await
        .unwrap();
    let pools = [
        db.pool(db.pooled()).await,
        db.pool(db.direct().port(POOLER_PORT)).await,
    ];
    let mut tasks = Vec::new();
    for t in 0..8i64 {
        let pool = pools[t as usize % 2].clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let id = t * 1000 + i;
                let mut tx = pool.begin().await.unwrap();
                sqlx::query("INSERT INTO orders (id, key) VALUES ($1, $2)")
                    .bind(id)
                    .bind(format!("t{t}"))
                    .persistent(false)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                let event = CrashEvent {
                    key: format!("t{t}"),
                    seq: i as u64,
                };
                outbox::enqueue(&mut tx, &event).await.unwrap();
                let raw = || NewEvent::new("raw.event", b"{}".to_vec());
                outbox::enqueue_raw(&mut tx, &[raw(), raw()]).await.unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let orders: i64 = sqlx::query("SELECT count(*) FROM orders")
        .fetch_one(&direct)
        .await
        .unwrap()
        .get(0);
    let events: i64 = sqlx::query("SELECT count(*) FROM outbox_events")
        .fetch_one(&direct)
        .await
        .unwrap()
        .get(0);
    assert_eq!((orders, events), (400, 1200));
    let keys: HashSet<String> = sqlx::query("SELECT DISTINCT partition_key FROM outbox_events")
        .fetch_all(&direct)
        .await
        .unwrap()
        .iter()
        .filter_map(|r| r.get::<Option<String>, _>(0))
        .collect();
    assert_eq!(keys.len(), 8);
    for pool in pools {
        pool.close().await;
    }
    direct.close().await;
    db.drop().await;
}

#[tokio::test]
async fn listen_is_refused_behind_a_transaction_pooler() {
    let pool = PgPoolOptions::new()
        .connect_lazy("postgres://postgres@127.0.0.1:6432/test")
        .unwrap();
    let error = Runner::builder(pool.clone())
        .without_registered()
        .transaction_pooler(true)
        .listen(true)
        .build()
        .err()
        .expect("listen(true) behind a transaction pooler must be refused");
    assert!(
        error.to_string().contains("notifications are lost"),
        "{error}"
    );
    Runner::builder(pool.clone())
        .without_registered()
        .transaction_pooler(true)
        .build()
        .expect("transaction_pooler alone turns listening off");
    Runner::builder(pool)
        .without_registered()
        .transaction_pooler(true)
        .listen(false)
        .build()
        .expect("listen(false) is what it does anyway");
}

/// Why the README tells the application to write its own statements
/// `.persistent(false)` with sqlx 0.9.0: with the statement cache off, it
/// still names each prepared statement (`sqlx_s_1`, …, counted per client
/// connection) and never closes it, so through a pooler the second client
/// on a server connection meets the first one's `sqlx_s_1`. Should this
/// fail, sqlx no longer does that (0.9.1 sends such statements unnamed):
/// update the README's "Behind a connection pooler".
#[tokio::test]
async fn sqlx_0_9_0_names_statements_even_with_the_cache_off() {
    use sqlx::Connection;
    let db = Database::new("pgbouncer_named").await;
    let mut errors = Vec::new();
    let mut clients = Vec::new();
    // One client after the other: each finds the server connection the
    // previous one left idle.
    for _ in 0..4 {
        let mut conn = sqlx::PgConnection::connect_with(&db.pooled())
            .await
            .unwrap();
        let mut tx = conn.begin().await.unwrap();
        match sqlx::query("SELECT $1::int4")
            .bind(1)
            .execute(&mut *tx)
            .await
        {
            Ok(_) => tx.commit().await.unwrap(),
            Err(e) => {
                errors.push(e.to_string());
                tx.rollback().await.unwrap();
            }
        }
        clients.push(conn);
    }
    for conn in clients {
        conn.close().await.unwrap();
    }
    assert!(
        !errors.is_empty() && errors.iter().all(|e| e.contains("already exists")),
        "{errors:?}"
    );
    db.drop().await;
}
