//! The crash test of the production relay on the other backends: Runner
//! processes killed with SIGKILL under a steady keyed load lose nothing and
//! keep each key's order (MariaDB: several processes; SQLite: one process,
//! its single writer). Also several Runners in one process on SQLite.

use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use outbox_tests::checker::{self, Item};
use outbox_tests::crash::{
    Producer, RelayTarget, create_sink, kill_all, read_sink, spawn_relay, wait_until_drained,
};
use outbox_tests::{Backend, Recorder, TestDb, mysql_url};

const BATCH: usize = 20;
const RELAY: &str = env!("CARGO_BIN_EXE_outbox-test-relay");

async fn crash_under_load(
    db: TestDb,
    target: RelayTarget,
    sink: &TestDb,
    relays: usize,
    kills: usize,
) {
    let TestDb::Pg {
        pool: sink_pool,
        schema: sink_schema,
    } = sink
    else {
        unreachable!()
    };
    create_sink(sink_pool, sink_schema).await;
    let mut children: Vec<Child> = (0..relays)
        .map(|i| spawn_relay(RELAY, &target, &format!("r{i}"), BATCH))
        .collect();
    let producing = Arc::new(AtomicBool::new(true));
    let producer = {
        let (db, producing) = (db.clone(), producing.clone());
        tokio::spawn(async move {
            let mut producer = Producer::new(30);
            while producing.load(Ordering::SeqCst) {
                producer.produce(&db).await;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            producer
        })
    };
    for kill in 0..kills {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(400..1100))).await;
        let victim = fastrand::usize(..children.len());
        children[victim].kill().unwrap(); // SIGKILL
        children[victim].wait().unwrap();
        children[victim] = spawn_relay(RELAY, &target, &format!("r{}", relays + kill), BATCH);
    }
    producing.store(false, Ordering::SeqCst);
    let producer = producer.await.unwrap();
    wait_until_drained(&db, Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill_all(&mut children);

    let delivered = read_sink(sink_pool, sink_schema).await;
    let report = checker::check(&producer.committed, &delivered);
    eprintln!("after {kills} kills: {report}");
    assert!(
        producer.committed.len() > 500,
        "too little load: {}",
        producer.committed.len()
    );
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.unexpected, 0, "{report}");
    assert_eq!(report.out_of_order, 0, "{report}");
    assert!(
        report.duplicated <= kills * BATCH,
        "more duplicates than the killed in-flight batches: {report}"
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runners_on_mariadb_lose_nothing_and_keep_key_order() {
    let db = TestDb::new(Backend::MySql, "crash_mysql").await;
    let TestDb::MySql { database, .. } = &db else {
        unreachable!()
    };
    let base = mysql_url();
    let url = format!("{}/{database}", base[..base.rfind('/').unwrap()].to_owned());
    let target = RelayTarget {
        backend: "mysql",
        url,
        schema: Some(database.clone()),
        sink_schema: String::new(),
    };
    let sink = TestDb::postgres("crash_mysql_sink").await;
    let TestDb::Pg { schema, .. } = &sink else {
        unreachable!()
    };
    let target = RelayTarget {
        sink_schema: schema.clone(),
        ..target
    };
    crash_under_load(db, target, &sink, 3, 10).await;
    sink.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runner_on_sqlite_loses_nothing_and_keeps_key_order() {
    let db = TestDb::new(Backend::Sqlite, "crash_sqlite").await;
    let TestDb::Sqlite { path, .. } = &db else {
        unreachable!()
    };
    let sink = TestDb::postgres("crash_sqlite_sink").await;
    let TestDb::Pg { schema, .. } = &sink else {
        unreachable!()
    };
    let target = RelayTarget {
        backend: "sqlite",
        url: format!("sqlite://{}", path.display()),
        schema: None,
        sink_schema: schema.clone(),
    };
    crash_under_load(db, target, &sink, 1, 10).await;
    sink.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_runners_in_one_process_share_a_sqlite_outbox_safely() {
    let db = TestDb::new(Backend::Sqlite, "sqlite_many_runners").await;
    let mut producer = Producer::new(25);
    for _ in 0..600 {
        producer.produce(&db).await;
    }
    let rec = Recorder::new("rec", &["crash.event"]);
    let runners: Vec<_> = (0..3)
        .map(|_| {
            let runner = db
                .runner()
                .publisher(rec.clone())
                .batch_size(10)
                .build()
                .unwrap();
            tokio::spawn(runner.drain())
        })
        .collect();
    // More events while they run.
    for _ in 0..300 {
        producer.produce(&db).await;
    }
    for r in runners {
        r.await.unwrap().unwrap();
    }
    // A Runner may have returned before the last events landed.
    db.drain_with(rec.clone()).await;
    let delivered: Vec<Item> = rec
        .calls()
        .iter()
        .map(|c| {
            let e: outbox_tests::crash::CrashEvent = serde_json::from_str(&c.payload).unwrap();
            Item {
                id: c.id,
                key: e.key,
                seq: e.seq,
            }
        })
        .collect();
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
    db.cleanup().await;
}
