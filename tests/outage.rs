//! Database outages: a throwaway PostgreSQL server (its own initdb on a free
//! port) restarted with `pg_ctl restart -m immediate` while a Runner drains,
//! and connections dropped mid-claim and mid-ack by a TCP fault proxy. The
//! Runner logs, backs off, reconnects, and nothing is lost.

use std::time::{Duration, Instant};

use outbox::Tables;
use outbox_tests::checker::{self, Item};
use outbox_tests::crash::CrashEvent;
use outbox_tests::pg_cluster::PgCluster;
use outbox_tests::proxy::FaultProxy;
use outbox_tests::{Answer, Recorder};
use sqlx::postgres::{PgPool, PgPoolOptions};

async fn connect(url: &str) -> PgPool {
    let start = Instant::now();
    loop {
        match PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
        {
            Ok(pool) => return pool,
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                eprintln!("waiting for the server: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot connect to {url}: {e}"),
        }
    }
}

/// Commit `n` events, retrying a transaction that fails while the server
/// restarts. A failed commit is retried only when the event is not there:
/// a commit whose answer was lost may still have happened.
async fn produce(pool: &PgPool, committed: &mut Vec<Item>, seqs: &mut [u64], n: usize) {
    for i in 0..n {
        let k = (committed.len() + i) % seqs.len();
        let event = CrashEvent {
            key: format!("k{k}"),
            seq: seqs[k],
        };
        loop {
            let attempt = async {
                let mut tx = pool.begin().await?;
                let id = outbox::enqueue(&mut tx, &event)
                    .await
                    .map_err(|e| match e {
                        outbox::Error::Database(e) => e,
                        other => panic!("{other}"),
                    })?;
                tx.commit().await?;
                Ok::<_, sqlx::Error>(id)
            };
            match attempt.await {
                Ok(id) => {
                    committed.push(Item {
                        id,
                        key: event.key.clone(),
                        seq: event.seq,
                    });
                    break;
                }
                Err(e) => {
                    eprintln!("producer retrying after: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        seqs[k] += 1;
    }
}

async fn pending(pool: &PgPool) -> i64 {
    loop {
        match sqlx::query_scalar("SELECT count(*) FROM outbox_events")
            .fetch_one(pool)
            .await
        {
            Ok(n) => return n,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn wait_for_calls(rec: &Recorder, n: usize) {
    let start = Instant::now();
    while rec.calls().len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "publishing stalled at {}",
            rec.calls().len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_and_dropped_connections_lose_nothing() {
    const BATCH: usize = 25;
    let cluster = tokio::task::spawn_blocking(|| PgCluster::start("outage"))
        .await
        .unwrap();
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", cluster.port()).parse().unwrap()).await;
    let writer = connect(&cluster.url(None)).await;
    outbox::migrate(&writer).await.unwrap();
    let relay_pool = connect(&cluster.url(Some(proxy.port()))).await;

    let mut committed = Vec::new();
    let mut seqs = vec![0u64; 20];
    produce(&writer, &mut committed, &mut seqs, 1500).await;

    let rec =
        Recorder::new("rec", &["crash.event"]).always(Answer::Sleep(Duration::from_millis(2)));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = outbox::Runner::builder(relay_pool)
        .tables(Tables::default())
        .without_registered()
        .publisher(rec.clone())
        .batch_size(BATCH)
        .lease(Duration::from_secs(2))
        .publish_timeout(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(20))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .shutdown(async move {
            let _ = stopped.await;
        })
        .build()
        .unwrap();
    let task = tokio::spawn(runner.run());

    // 1. The server restarts (immediate: every connection dies) mid-drain.
    wait_for_calls(&rec, 300).await;
    let restarted = Instant::now();
    let c = std::sync::Arc::new(cluster);
    let c2 = c.clone();
    tokio::task::spawn_blocking(move || c2.restart_immediate())
        .await
        .unwrap();
    eprintln!("server restarted in {:?}", restarted.elapsed());
    let writer = connect(&c.url(None)).await;
    produce(&writer, &mut committed, &mut seqs, 300).await;

    // 2. Connections are cut again and again while claims and acks run.
    let seen = rec.calls().len();
    wait_for_calls(&rec, seen + 200).await;
    for _ in 0..8 {
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(fastrand::u64(30..150))).await;
    }
    // 3. A short full outage: refused connections, then back.
    proxy.down();
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.up();
    produce(&writer, &mut committed, &mut seqs, 200).await;

    let start = Instant::now();
    while pending(&writer).await > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the outbox did not drain after the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(()).unwrap();
    let report = task
        .await
        .unwrap()
        .expect("the Runner must survive the outage");
    assert!(report.published as usize >= committed.len());

    let delivered: Vec<Item> = rec
        .calls()
        .iter()
        .map(|c| {
            let e: CrashEvent = serde_json::from_str(&c.payload).unwrap();
            Item {
                id: c.id,
                key: e.key,
                seq: e.seq,
            }
        })
        .collect();
    let check = checker::check(&committed, &delivered);
    eprintln!("{check}");
    assert_eq!(check.lost, 0, "{check}");
    assert_eq!(check.unexpected, 0, "{check}");
    assert_eq!(check.out_of_order, 0, "{check}");
    // Each fault can re-deliver at most the batch in flight.
    assert!(check.duplicated <= 10 * BATCH, "{check}");
}
