//! The production relay on PostgreSQL: several Runner processes, per-key
//! order, wake-up, commit gaps, crashes (SIGKILL), long transactions,
//! sustained load, the key policy, and what a claim leaves on a pooled
//! connection.

use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox::{ClaimLimit, KeyPolicy, OutboxEvent, PublishError};
use outbox_tests::checker;
use outbox_tests::crash::{
    CrashEvent, Producer, RelayTarget, create_sink, kill_all, read_sink, spawn_relay,
    wait_until_drained,
};
use outbox_tests::proxy::FaultProxy;
use outbox_tests::{Answer, Backend, Recorder, TestDb, on_backend, pg_url};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Row};

fn pg(db: &TestDb) -> (&PgPool, &str) {
    match db {
        TestDb::Pg { pool, schema } => (pool, schema),
        _ => unreachable!(),
    }
}

fn relay(schema: &str, name: &str, batch: usize) -> Child {
    let target = RelayTarget {
        backend: "postgres",
        url: pg_url(),
        schema: Some(schema.to_owned()),
        sink_schema: schema.to_owned(),
    };
    spawn_relay(
        env!("CARGO_BIN_EXE_outbox-test-relay"),
        &target,
        name,
        batch,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_runner_processes_share_the_work_without_duplicates() {
    let db = TestDb::new(Backend::Postgres, "multi_process").await;
    let (pool, schema) = pg(&db);
    create_sink(pool, schema).await;
    let mut producer = Producer::new(30);
    for _ in 0..1500 {
        producer.produce(&db).await;
    }
    let mut relays: Vec<Child> = (0..3)
        .map(|i| relay(schema, &format!("r{i}"), 10))
        .collect();
    wait_until_drained(&db, Duration::from_secs(90)).await;
    // Also while they are running: new events, some on fresh keys.
    for _ in 0..300 {
        producer.produce(&db).await;
    }
    wait_until_drained(&db, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    kill_all(&mut relays);

    let delivered = read_sink(pool, schema).await;
    let report = checker::check(&producer.committed, &delivered);
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
    let runners: i64 = sqlx::query(AssertSqlSafe(format!(
        "SELECT count(DISTINCT runner) FROM \"{schema}\".sink"
    )))
    .fetch_one(pool)
    .await
    .unwrap()
    .get(0);
    assert!(runners >= 2, "only {runners} runner did all the work");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runners_lose_nothing_and_keep_key_order() {
    const BATCH: usize = 20;
    const KILLS: usize = 12;
    let db = TestDb::new(Backend::Postgres, "sigkill").await;
    let (pool, schema) = pg(&db);
    create_sink(pool, schema).await;
    let schema = schema.to_owned();

    let mut relays: Vec<Child> = (0..3)
        .map(|i| relay(&schema, &format!("r{i}"), BATCH))
        .collect();
    let producing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let producer = {
        let db = db.clone();
        let producing = producing.clone();
        tokio::spawn(async move {
            let mut producer = Producer::new(40);
            // Enough load whatever the machine's speed: on past the kills
            // until 1,200 events are committed.
            while producing.load(std::sync::atomic::Ordering::SeqCst)
                || producer.committed.len() < 1200
            {
                producer.produce(&db).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            producer
        })
    };
    let mut kills = 0;
    let mut generation = 3;
    while kills < KILLS {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(400..1200))).await;
        let victim = fastrand::usize(..relays.len());
        relays[victim].kill().unwrap(); // SIGKILL
        relays[victim].wait().unwrap();
        kills += 1;
        relays[victim] = relay(&schema, &format!("r{generation}"), BATCH);
        generation += 1;
    }
    producing.store(false, std::sync::atomic::Ordering::SeqCst);
    let producer = producer.await.unwrap();
    wait_until_drained(&db, Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill_all(&mut relays);

    let delivered = read_sink(pool, &schema).await;
    let report = checker::check(&producer.committed, &delivered);
    eprintln!("after {kills} kills: {report}");
    assert!(
        producer.committed.len() > 1000,
        "too little load: {}",
        producer.committed.len()
    );
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.unexpected, 0, "{report}");
    assert_eq!(report.out_of_order, 0, "{report}");
    assert!(
        report.duplicated <= KILLS * BATCH,
        "more duplicates than the killed in-flight batches: {report}"
    );
    db.cleanup().await;
}

async fn published_within(rec: &Recorder, count: usize, limit: Duration) -> bool {
    let start = Instant::now();
    while rec.calls().len() < count {
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

const ORDER_EVENT: &str = "crash.event";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_wakes_an_idle_runner_without_waiting_for_the_poll() {
    let db = TestDb::new(Backend::Postgres, "notify").await;
    let rec = Recorder::new("rec", &[ORDER_EVENT]);
    let runner = db
        .runner()
        .publisher(rec.clone())
        .poll_interval(Duration::from_secs(60))
        .build()
        .unwrap();
    let task = tokio::spawn(runner.run());
    // Let it reach its idle wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut producer = Producer::new(3);
    for n in 1..=5 {
        producer.produce(&db).await;
        assert!(
            published_within(&rec, n, Duration::from_secs(10)).await,
            "event {n} waited for the 60 s poll: no wake-up"
        );
    }
    task.abort();
    db.cleanup().await;
}

/// The listener had taken one of the application's pool connections for
/// good: with a pool of two, two producers each holding a transaction timed
/// out waiting for a connection. It has its own connection now; the Runner
/// still takes the pool's for its claims and acks, between the producers'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_holds_none_of_the_applications_pool_connections() {
    use outbox_tests::fixtures::{ORDER, order};

    let db = TestDb::new(Backend::Postgres, "listener_pool").await;
    let (_, schema) = pg(&db);
    let set_path = format!("SET search_path TO \"{schema}\"");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
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
    let tables = db.tables();
    let rec = Recorder::new("rec", &[ORDER]);
    let runner = outbox::Runner::builder(pool.clone())
        .tables(tables.clone())
        .without_registered()
        .publisher(rec.clone())
        .listen(true)
        .poll_interval(Duration::from_secs(60))
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .shutdown(std::future::pending())
        .build()
        .unwrap();
    let task = tokio::spawn(runner.run());
    // Let it reach its idle wait, listening.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for round in 0..5 {
        let mut first = pool.begin().await.expect("a producer timed out");
        let mut second = pool
            .begin()
            .await
            .expect("the second producer timed out: the pool is one connection short");
        tables.enqueue(&mut first, &order(2 * round)).await.unwrap();
        tables
            .enqueue(&mut second, &order(2 * round + 1))
            .await
            .unwrap();
        first.commit().await.unwrap();
        second.commit().await.unwrap();
        let published = 2 * (round as usize + 1);
        assert!(
            published_within(&rec, published, Duration::from_secs(10)).await,
            "{} of {published} published: no wake-up",
            rec.calls().len()
        );
    }
    task.abort();
    let _ = task.await;
    pool.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_only_mode_publishes_without_listening() {
    let db = TestDb::new(Backend::Postgres, "poll_only").await;
    let rec = Recorder::new("rec", &[ORDER_EVENT]);
    let mut producer = Producer::new(3);
    producer.produce(&db).await;
    let runner = db
        .runner()
        .publisher(rec.clone())
        .listen(false)
        .poll_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    let task = tokio::spawn(runner.run());
    producer.produce(&db).await;
    assert!(published_within(&rec, 2, Duration::from_secs(10)).await);
    let (pool, _) = pg(&db);
    let listeners: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%' AND datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let _ = listeners; // other tests may listen on the same database; nothing to assert globally
    task.abort();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_while_the_listener_was_down_are_claimed_on_reconnect() {
    let db = TestDb::new(Backend::Postgres, "listener_reconnect").await;
    let (_, schema) = pg(&db);
    let proxy = FaultProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let url = pg_url().replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port()));
    let set_path = format!("SET search_path TO \"{schema}\"");
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .after_connect(move |conn, _| {
            let set_path = set_path.clone();
            Box::pin(async move {
                sqlx::query(AssertSqlSafe(set_path)).execute(conn).await?;
                Ok(())
            })
        })
        .connect(&url)
        .await
        .unwrap();
    let rec = Recorder::new("rec", &[ORDER_EVENT]);
    let runner = outbox::Runner::builder(pool)
        .tables(db.tables())
        .without_registered()
        .publisher(rec.clone())
        .poll_interval(Duration::from_secs(60))
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .shutdown(std::future::pending())
        .build()
        .unwrap();
    let task = tokio::spawn(runner.run());
    tokio::time::sleep(Duration::from_millis(500)).await;

    proxy.down();
    let mut producer = Producer::new(2);
    producer.produce(&db).await; // its NOTIFY reaches nobody
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.up();
    assert!(
        published_within(&rec, 1, Duration::from_secs(15)).await,
        "the event committed during the outage waited for the 60 s poll"
    );
    producer.produce(&db).await;
    assert!(
        published_within(&rec, 2, Duration::from_secs(15)).await,
        "no wake-up after the reconnect"
    );
    task.abort();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_late_is_still_published() {
    let db = TestDb::new(Backend::Postgres, "commit_gap").await;
    let rec = Recorder::new("rec", &[ORDER_EVENT]);
    let task = tokio::spawn(db.runner().publisher(rec.clone()).build().unwrap().run());

    // A transaction takes its id (UUIDv7, smaller) first and commits last.
    let mut late = db.begin().await;
    let late_id = late
        .enqueue(&CrashEvent {
            key: "late".into(),
            seq: 0,
        })
        .await;
    let mut producer = Producer::new(5);
    for _ in 0..20 {
        producer.produce(&db).await;
    }
    assert!(published_within(&rec, 20, Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(rec.calls().iter().all(|c| c.id != late_id));
    late.commit().await;
    assert!(
        published_within(&rec, 21, Duration::from_secs(10)).await,
        "the late commit was never published"
    );
    assert!(rec.calls().iter().any(|c| c.id == late_id));
    assert!(
        producer.committed.iter().all(|i| i.id > late_id),
        "the late event must have the smallest id"
    );
    task.abort();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_transaction_elsewhere_does_not_stop_publishing() {
    let db = TestDb::new(Backend::Postgres, "long_tx").await;
    let (pool, _) = pg(&db);
    db.exec("CREATE TABLE ledger (id bigint PRIMARY KEY)").await;
    let mut long = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO ledger VALUES (1)")
        .execute(&mut *long)
        .await
        .unwrap();
    let _: i64 = sqlx::query_scalar("SELECT txid_current()")
        .fetch_one(&mut *long)
        .await
        .unwrap();

    let rec = Recorder::new("rec", &[ORDER_EVENT]);
    let task = tokio::spawn(db.runner().publisher(rec.clone()).build().unwrap().run());
    let mut producer = Producer::new(10);
    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed() < Duration::from_secs(21) {
        for _ in 0..20 {
            producer.produce(&db).await;
        }
        rounds += 1;
        assert!(
            published_within(&rec, producer.committed.len(), Duration::from_secs(5)).await,
            "publishing stalled {:?} into a long transaction",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(rounds >= 10);
    long.rollback().await.unwrap();
    task.abort();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_and_a_runner_sustain_30_seconds_without_backlog_growth() {
    let db = TestDb::new(Backend::Postgres, "sustained").await;
    let (pool, schema) = pg(&db);
    let options: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(reloptions) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = 'outbox_events'",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .unwrap();
    for wanted in [
        "fillfactor=50",
        "autovacuum_vacuum_scale_factor=0",
        "autovacuum_vacuum_cost_delay=0",
    ] {
        assert!(
            options.iter().any(|o| o == wanted),
            "migrate did not set {wanted}: {options:?}"
        );
    }

    let rec = Recorder::new("rec", &[ORDER_EVENT]);
    let task = tokio::spawn(db.runner().publisher(rec.clone()).build().unwrap().run());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producers: Vec<_> = (0..4)
        .map(|_| {
            let (db, stop) = (db.clone(), stop.clone());
            tokio::spawn(async move {
                let mut p = Producer::new(50);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    p.produce(&db).await;
                    tokio::time::sleep(Duration::from_millis(4)).await;
                }
                p.committed.len()
            })
        })
        .collect();
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        samples.push(db.pending().await);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut produced = 0;
    for p in producers {
        produced += p.await.unwrap();
    }
    wait_until_drained(&db, Duration::from_secs(30)).await;
    let half = samples.len() / 2;
    let first = *samples[..half].iter().max().unwrap();
    let second = *samples[half..].iter().max().unwrap();
    eprintln!("produced {produced} events in 30 s; backlog max {first} then {second}");
    assert!(
        produced > 3000,
        "producers too slow to load the runner: {produced}"
    );
    assert!(
        second <= first.max(200) * 2,
        "backlog grew: {first} in the first half, {second} in the second"
    );
    assert!(second < 2000, "backlog too large: {second}");
    task.abort();
    db.cleanup().await;
}

#[derive(Debug, serde::Serialize, serde::Deserialize, OutboxEvent)]
#[outbox(name = "prod.step", key = key)]
struct Step {
    key: String,
    n: u32,
}

on_backend!(
    postgres,
    Postgres,
    [key_policy_block_holds_the_key_until_an_operator_acts]
);
on_backend!(
    sqlite,
    Sqlite,
    [key_policy_block_holds_the_key_until_an_operator_acts]
);

async fn key_policy_block_holds_the_key_until_an_operator_acts(backend: Backend) {
    let db = TestDb::new(backend, "key_block").await;
    let mut tx = db.begin().await;
    let poisoned = tx
        .enqueue(&Step {
            key: "a".into(),
            n: 1,
        })
        .await;
    tx.enqueue(&Step {
        key: "a".into(),
        n: 2,
    })
    .await;
    tx.enqueue(&Step {
        key: "b".into(),
        n: 1,
    })
    .await;
    tx.commit().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let fail_first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let publisher = outbox::publisher_fn::<Step, _, _>("steps", move |step, _| {
        let (sink, fail_first) = (sink.clone(), fail_first.clone());
        async move {
            if step.key == "a"
                && step.n == 1
                && fail_first.swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                return Err(PublishError::permanent("poisoned"));
            }
            sink.lock().unwrap().push(format!("{}{}", step.key, step.n));
            Ok(())
        }
    });
    let publisher = Arc::new(publisher);
    struct Shared(Arc<dyn outbox::Publisher>);
    #[async_trait::async_trait]
    impl outbox::Publisher for Shared {
        fn name(&self) -> &str {
            self.0.name()
        }
        fn accepts(&self, t: &str) -> bool {
            self.0.accepts(t)
        }
        async fn publish(&self, cx: &outbox::Context) -> Result<(), PublishError> {
            self.0.publish(cx).await
        }
    }
    let report = db
        .runner()
        .publisher(Shared(publisher.clone()))
        .key_policy(KeyPolicy::Block)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.dead_lettered, 1);
    assert_eq!(
        *seen.lock().unwrap(),
        vec!["b1"],
        "key a went on past its dead-lettered head"
    );
    assert_eq!(
        db.pending().await,
        0,
        "a parked key counts as nothing to do without an operator"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM outbox_events").await,
        2,
        "a1 (parked) and a2 (held) stay"
    );

    // The operator retries the dead letter: a1 goes first, then a2.
    assert_eq!(
        db.source()
            .retry_dead_letters(Some(&[poisoned]))
            .await
            .unwrap(),
        1
    );
    db.runner()
        .publisher(Shared(publisher.clone()))
        .key_policy(KeyPolicy::Block)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), vec!["b1", "a1", "a2"]);
    db.cleanup().await;
}

#[tokio::test]
async fn purging_a_parked_dead_letter_lets_its_key_move_on() {
    let db = TestDb::new(Backend::Postgres, "key_purge").await;
    let mut tx = db.begin().await;
    tx.enqueue(&Step {
        key: "a".into(),
        n: 1,
    })
    .await;
    tx.enqueue(&Step {
        key: "a".into(),
        n: 2,
    })
    .await;
    tx.commit().await;
    let rec = Recorder::new("steps", &["prod.step"]).script([Answer::Permanent]);
    db.runner()
        .publisher(rec.clone())
        .key_policy(KeyPolicy::Block)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(rec.calls().len(), 1);
    let later = std::time::SystemTime::now() + Duration::from_secs(1);
    assert_eq!(db.source().purge_dead_letters(later).await.unwrap(), 1);
    db.runner()
        .publisher(rec.clone())
        .key_policy(KeyPolicy::Block)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    let ns: Vec<String> = rec.calls().iter().map(|c| c.payload.clone()).collect();
    assert_eq!(ns.len(), 2);
    assert!(ns[1].contains("\"n\":2"), "{ns:?}");
    db.cleanup().await;
}

#[tokio::test]
async fn dead_letters_past_their_retention_are_purged_by_the_runner() {
    let db = TestDb::new(Backend::Postgres, "retention").await;
    let mut producer = Producer::new(1);
    producer.produce(&db).await;
    let rec = Recorder::new("rec", &[ORDER_EVENT]).always(Answer::Permanent);
    db.drain_with(rec.clone()).await;
    assert_eq!(db.source().dead_letters(10).await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    db.runner()
        .publisher(rec)
        .dead_letter_retention(Duration::from_millis(10))
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert!(db.source().dead_letters(10).await.unwrap().is_empty());
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_runner_process_gracefully() {
    let db = TestDb::new(Backend::Postgres, "sigterm").await;
    let (pool, schema) = pg(&db);
    create_sink(pool, schema).await;
    let mut producer = Producer::new(5);
    for _ in 0..50 {
        producer.produce(&db).await;
    }
    let mut child = relay(schema, "term", 10);
    wait_until_drained(&db, Duration::from_secs(30)).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the Runner ignored SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        exit.success(),
        "the Runner did not shut down cleanly on SIGTERM: {exit}"
    );
    assert_eq!(read_sink(pool, schema).await.len(), 50);
    db.cleanup().await;
}

/// The claim commits with `synchronous_commit` off, set inside its own
/// statement: the setting must not stay on the pooled connection, where the
/// application's next transaction (its enqueue) would commit without waiting
/// for the disk.
#[tokio::test]
async fn the_claims_relaxed_commit_does_not_leak_into_the_pool() {
    let db = TestDb::new(Backend::Postgres, "synccommit").await;
    let (_, schema) = pg(&db);
    let one = PgPoolOptions::new()
        .max_connections(1)
        .connect(&pg_url())
        .await
        .unwrap();
    let before: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&one)
        .await
        .unwrap();
    let mut producer = Producer::new(2);
    for _ in 0..3 {
        producer.produce(&db).await;
    }
    let tables = outbox::Tables::default().schema(schema).unwrap();
    let source = outbox::source(one.clone(), &tables);
    let owner = outbox::Uuid::now_v7();
    let claimed = source
        .claim(owner, ClaimLimit::events(10), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2, "one event per key");
    let after: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&one)
        .await
        .unwrap();
    assert_eq!(before, "on");
    assert_eq!(after, before, "the claim changed the connection's setting");
    // The lease itself was committed: another owner cannot claim them.
    let other = db
        .source()
        .claim(
            outbox::Uuid::now_v7(),
            ClaimLimit::events(10),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(other.is_empty(), "leased events were claimed again");
    one.close().await;
    db.cleanup().await;
}

/// Autovacuum visits a table only once per `autovacuum_naptime` (a minute by
/// default); until then every claim wades through the dead rows that acks
/// left at the head of the queue. The Runner's Source vacuums the table
/// itself after every few thousand acked events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_vacuums_the_events_table_it_empties() {
    let db = TestDb::new(Backend::Postgres, "vacuum").await;
    let (pool, schema) = pg(&db);
    let vacuums = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT vacuum_count FROM pg_stat_user_tables \
             WHERE schemaname = $1 AND relname = 'outbox_events'",
        )
        .bind(schema)
        .fetch_one(pool)
        .await
        .unwrap()
    };
    assert_eq!(vacuums().await, 0);
    for chunk in 0..12u64 {
        let events: Vec<CrashEvent> = (0..1000)
            .map(|i| CrashEvent {
                key: format!("k{i}"),
                seq: chunk,
            })
            .collect();
        let mut tx = db.begin().await;
        tx.enqueue_all(&events).await;
        tx.commit().await;
    }
    let rec = Recorder::new("rec", &["crash.event"]);
    let report = db
        .runner()
        .publisher(rec.clone())
        .batch_size(500)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.published, 12_000);
    let start = Instant::now();
    while vacuums().await == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "12,000 events were acked and nobody vacuumed the events table"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db.cleanup().await;
}

/// A claim that hangs (the database stopped answering) does not hold up a
/// shutdown: the Runner stops within the grace period, not after the pool's
/// acquire timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_hanging_claim() {
    let db = TestDb::new(Backend::Postgres, "hanging_claim").await;
    let (_, schema) = pg(&db);
    let proxy = FaultProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let url = pg_url().replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port()));
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(60))
        .connect(&url)
        .await
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = outbox::Runner::builder(pool)
        .tables(outbox::Tables::default().schema(schema).unwrap())
        .without_registered()
        .publisher(Recorder::new("rec", &[ORDER_EVENT]))
        .listen(false)
        .poll_interval(Duration::from_millis(50))
        .shutdown(async move {
            let _ = stop_rx.await;
        })
        .build()
        .unwrap();
    let task = tokio::spawn(runner.run());
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.blackhole(true);
    // Let a claim start and hang.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    stop_tx.send(()).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the Runner waited for its hanging claim")
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        asked.elapsed()
    );
    proxy.blackhole(false);
    db.cleanup().await;
}
