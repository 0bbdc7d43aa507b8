//! The conformance suite: the Runner's contract (atomicity, fan-out,
//! retries, dead letters, bad input, panics, shutdown, order per key) and the
//! `Source` contract (leases, fencing, per-key claims, retry scheduling,
//! payload fidelity, concurrent migrations), run on every store backend.
//!
//! Each test gets its own database: a PostgreSQL schema, a SQLite file or a
//! MySQL/MariaDB database, dropped at the end. Run one backend with
//! `cargo test --test relay mysql::` (or `postgres::`, `sqlite::`).
//!
//! # Adding a backend
//!
//! 1. Implement `outbox::Backend` for the sqlx database: its `Source`,
//!    enqueue and migrate, in `outbox/src/store/`.
//! 2. Let the test support make a fresh database of it: a variant of
//!    `outbox_tests::{Backend, TestDb, Tx}` in `src/lib.rs` (create, drop,
//!    and one arm per `match`; the compiler lists them).
//! 3. Add one line to `on_every_backend!` below:
//!    `on_backend!(module, Variant, [$($name),*]);`.
//!
//! Every scenario then runs on it. Scenarios take only a [`Backend`] and go
//! through `TestDb` and the public `Source` trait, never through a backend's
//! SQL, so nothing else needs to change; a scenario that a backend cannot
//! run asks `Backend` about the capability (see `runs_beside_open_writes`),
//! never for the backend by name.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use outbox::{Failure, NewEvent, OutboxEvent, Outcome, PublishError, Settlement, Tables, Uuid};
use outbox_tests::{Answer, Backend, Recorder, TestDb};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "test.order", topic = "orders", key = order_id)]
struct TestOrder {
    order_id: i64,
    total_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "test.invoice", topic = "orders", version = 2)]
struct TestInvoice {
    invoice: String,
}

fn order(id: i64) -> TestOrder {
    TestOrder {
        order_id: id,
        total_cents: id * 100,
    }
}

const ORDER: &str = "test.order";

async fn place(db: &TestDb, id: i64) -> outbox::Uuid {
    let mut tx = db.begin().await;
    tx.insert_order(id, id * 100).await;
    let event_id = tx.enqueue(&order(id)).await;
    tx.commit().await;
    event_id
}

/// Every scenario, on every backend: one line per backend.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        on_backend!(postgres, Postgres, [$($name),*]);
        on_backend!(sqlite, Sqlite, [$($name),*]);
        on_backend!(mysql, MySql, [$($name),*]);
    };
}

/// A module of tests that run each scenario on `Backend::$backend`.
macro_rules! on_backend {
    ($module:ident, $backend:ident, [$($name:ident),*]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(outbox_tests::Backend::$backend).await
                }
            )*
        }
    };
}

on_every_backend!(
    commit_publishes_and_rollback_never_does,
    uncommitted_event_is_invisible_until_commit,
    publishers_see_the_enqueued_id,
    fan_out_does_not_repeat_a_succeeded_publisher,
    transient_failures_retry_with_growing_backoff,
    exhausted_retries_are_dead_lettered,
    permanent_failure_is_dead_lettered_at_once,
    undecodable_payload_is_dead_lettered_and_others_go_on,
    panicking_publisher_counts_as_a_failed_attempt,
    shutdown_releases_work_after_the_grace_period,
    shutdown_lets_in_flight_work_finish,
    batch_enqueue_publishes_every_event_in_order,
    two_event_types_share_a_topic,
    dead_letters_can_be_listed_retried_and_purged,
    same_key_waits_for_its_head_other_keys_go_on,
    expired_lease_fences_the_old_holder,
    an_event_without_publisher_waits_for_one,
    a_no_publisher_dead_letter_of_an_older_release_reaches_every_publisher,
    a_retried_dead_letter_waits_for_its_publisher,
    migrate_is_idempotent,
    a_blocked_key_with_a_deep_backlog_holds_up_no_other_key,
    large_payloads_round_trip,
    unicode_and_empty_fields_round_trip,
    claim_takes_each_key_head_and_every_keyless_event,
    concurrent_claimers_keep_per_key_order,
    concurrent_migrations_agree,
    retry_waits_for_its_delay,
);

async fn commit_publishes_and_rollback_never_does(backend: Backend) {
    let db = TestDb::new(backend, "commit_rollback").await;
    place(&db, 1).await;

    let mut tx = db.begin().await;
    tx.insert_order(2, 200).await;
    tx.enqueue(&order(2)).await;
    tx.rollback().await;

    let rec = Recorder::new("rec", &[ORDER]);
    let report = db
        .runner()
        .publisher(rec.clone())
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.published, 1);
    let keys: Vec<_> = rec.calls().into_iter().map(|c| c.key).collect();
    assert_eq!(keys, vec![Some("1".to_owned())]);
    assert_eq!(db.scalar("SELECT count(*) FROM orders").await, 1);
    assert_eq!(db.pending().await, 0);
    db.cleanup().await;
}

async fn uncommitted_event_is_invisible_until_commit(backend: Backend) {
    let db = TestDb::new(backend, "uncommitted").await;
    let mut tx = db.begin().await;
    tx.insert_order(1, 100).await;
    tx.enqueue(&order(1)).await;

    if backend.runs_beside_open_writes() {
        // SQLite has one writer: the open transaction blocks others, so a
        // Runner cannot run beside it there.
        let rec = Recorder::new("rec", &[ORDER]);
        let report = db
            .runner()
            .publisher(rec.clone())
            .build()
            .unwrap()
            .drain()
            .await
            .unwrap();
        assert_eq!(report.published, 0, "an uncommitted event was published");
    }
    tx.commit().await;

    let rec = Recorder::new("rec", &[ORDER]);
    let report = db
        .runner()
        .publisher(rec.clone())
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.published, 1);
    db.cleanup().await;
}

async fn publishers_see_the_enqueued_id(backend: Backend) {
    let db = TestDb::new(backend, "ids").await;
    let a = place(&db, 1).await;
    let b = place(&db, 2).await;
    assert_eq!(a.get_version_num(), 7, "event ids are UUIDv7");
    assert!(a < b, "UUIDv7 ids grow in enqueue order");
    let rec = Recorder::new("rec", &[ORDER]);
    db.runner()
        .publisher(rec.clone())
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    let mut seen: Vec<_> = rec.calls().into_iter().map(|c| c.id).collect();
    seen.sort();
    assert_eq!(seen, vec![a, b]);
    db.cleanup().await;
}

async fn fan_out_does_not_repeat_a_succeeded_publisher(backend: Backend) {
    let db = TestDb::new(backend, "fan_out").await;
    place(&db, 1).await;
    let good = Recorder::new("good", &[ORDER]);
    let flaky = Recorder::new("flaky", &[ORDER]).script([Answer::Transient, Answer::Transient]);
    let report = db
        .runner()
        .publisher(good.clone())
        .publisher(flaky.clone())
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(
        good.calls().len(),
        1,
        "a succeeded publisher was called again"
    );
    assert_eq!(flaky.calls().len(), 3);
    assert_eq!(report.published, 2);
    assert_eq!(report.retried, 2);
    assert_eq!(db.pending().await, 0);
    db.cleanup().await;
}

async fn transient_failures_retry_with_growing_backoff(backend: Backend) {
    let db = TestDb::new(backend, "backoff").await;
    place(&db, 1).await;
    let rec = Recorder::new("rec", &[ORDER]).script(vec![Answer::Transient; 3]);
    let initial = Duration::from_millis(80);
    db.runner()
        .publisher(rec.clone())
        .backoff(initial, Duration::from_secs(5))
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    let calls = rec.calls();
    let attempts: Vec<u32> = calls.iter().map(|c| c.attempt).collect();
    assert_eq!(attempts, vec![1, 2, 3, 4]);
    // Delay after failure n is initial * 2^(n-1), jittered down to half.
    for (n, pair) in calls.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        let floor = initial * (1 << n) / 2;
        assert!(
            gap >= floor,
            "retry {n} came after {gap:?}, before the backoff floor {floor:?}"
        );
    }
    db.cleanup().await;
}

async fn exhausted_retries_are_dead_lettered(backend: Backend) {
    let db = TestDb::new(backend, "exhausted").await;
    let id = place(&db, 1).await;
    let rec = Recorder::new("rec", &[ORDER]).always(Answer::Transient);
    let report = db
        .runner()
        .publisher(rec.clone())
        .max_attempts(3)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.dead_lettered, 1);
    assert_eq!(rec.calls().len(), 3);
    let dead = db.source().dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event.id, id);
    assert_eq!(dead[0].publisher, "rec");
    assert_eq!(dead[0].attempts, 3);
    assert!(
        dead[0].error.contains("gave up after 3 attempts"),
        "{}",
        dead[0].error
    );
    assert!(
        dead[0].error.contains("scripted transient failure"),
        "{}",
        dead[0].error
    );
    assert_eq!(
        dead[0].event.payload,
        serde_json::to_vec(&order(1)).unwrap()
    );
    assert_eq!(db.pending().await, 0);
    db.cleanup().await;
}

async fn permanent_failure_is_dead_lettered_at_once(backend: Backend) {
    let db = TestDb::new(backend, "permanent").await;
    place(&db, 1).await;
    let rec = Recorder::new("rec", &[ORDER]).script([Answer::Permanent]);
    let other = Recorder::new("other", &[ORDER]);
    let report = db
        .runner()
        .publisher(rec.clone())
        .publisher(other.clone())
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(rec.calls().len(), 1, "a permanent failure was retried");
    assert_eq!(other.calls().len(), 1);
    assert_eq!(report.dead_lettered, 1);
    let dead = db.source().dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].publisher, "rec");
    assert_eq!(dead[0].error, "scripted permanent failure");
    db.cleanup().await;
}

async fn undecodable_payload_is_dead_lettered_and_others_go_on(backend: Backend) {
    let db = TestDb::new(backend, "undecodable").await;
    let mut tx = db.begin().await;
    tx.enqueue_raw(&[
        NewEvent::new(ORDER, b"{not json".to_vec()).partition_key("9"),
        NewEvent::new(ORDER, br#"{"order_id": "wrong type"}"#.to_vec()),
    ])
    .await;
    tx.commit().await;
    place(&db, 9).await;

    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let typed = outbox::publisher_fn::<TestOrder, _, _>("typed", move |event, _cx| {
        let sink = sink.clone();
        async move {
            sink.lock().unwrap().push(event);
            Ok::<(), PublishError>(())
        }
    });
    let report = db
        .runner()
        .publisher(typed)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![order(9)],
        "the good event behind bad ones was not published"
    );
    assert_eq!(report.dead_lettered, 2);
    let dead = db.source().dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 2);
    for d in &dead {
        assert!(
            d.error.starts_with("cannot decode event `test.order`"),
            "{}",
            d.error
        );
        assert_eq!(d.attempts, 1, "a bad payload was retried");
    }
    db.cleanup().await;
}

async fn panicking_publisher_counts_as_a_failed_attempt(backend: Backend) {
    let db = TestDb::new(backend, "panic").await;
    place(&db, 1).await;
    place(&db, 2).await;
    let rec = Recorder::new("rec", &[ORDER]).script([Answer::Panic]);
    let report = db
        .runner()
        .publisher(rec.clone())
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.retried, 1);
    assert_eq!(report.published, 2);
    assert_eq!(rec.calls().len(), 3);

    place(&db, 3).await;
    let always = Recorder::new("always", &[ORDER]).always(Answer::Panic);
    let report = db
        .runner()
        .publisher(always)
        .max_attempts(2)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.dead_lettered, 1);
    let dead = db.source().dead_letters(10).await.unwrap();
    assert!(
        dead[0].error.contains("publisher panicked: scripted panic"),
        "{}",
        dead[0].error
    );
    db.cleanup().await;
}

async fn shutdown_releases_work_after_the_grace_period(backend: Backend) {
    let db = TestDb::new(backend, "shutdown_release").await;
    place(&db, 1).await;
    let slow = Recorder::new("slow", &[ORDER]).script([Answer::Sleep(Duration::from_secs(30))]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = db
        .runner()
        .publisher(slow.clone())
        .publish_timeout(Duration::from_secs(40))
        .lease(Duration::from_secs(60))
        .grace_period(Duration::from_millis(200))
        .shutdown(async move {
            let _ = stopped.await;
        })
        .build()
        .unwrap();
    let task = tokio::spawn(runner.run());
    while slow.calls().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let asked = Instant::now();
    stop.send(()).unwrap();
    let report = task.await.unwrap().unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        asked.elapsed()
    );
    assert_eq!(report.published, 0);
    // Released: due at once for the next Runner, and the cut-short attempt
    // is not counted.
    let rec = Recorder::new("slow", &[ORDER]);
    db.runner()
        .publisher(rec.clone())
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    let calls = rec.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].attempt, 1);
    db.cleanup().await;
}

async fn shutdown_lets_in_flight_work_finish(backend: Backend) {
    let db = TestDb::new(backend, "shutdown_finish").await;
    place(&db, 1).await;
    let slow = Recorder::new("slow", &[ORDER]).script([Answer::Sleep(Duration::from_millis(300))]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = db
        .runner()
        .publisher(slow.clone())
        .grace_period(Duration::from_secs(10))
        .shutdown(async move {
            let _ = stopped.await;
        })
        .build()
        .unwrap();
    let task = tokio::spawn(runner.run());
    while slow.calls().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(()).unwrap();
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.published, 1);
    assert_eq!(
        db.pending().await,
        0,
        "the finished event was not acknowledged"
    );
    db.cleanup().await;
}

async fn batch_enqueue_publishes_every_event_in_order(backend: Backend) {
    let db = TestDb::new(backend, "batch").await;
    // Three keys, interleaved; each key's events must arrive in order.
    let events: Vec<TestOrder> = (0..60)
        .map(|i| TestOrder {
            order_id: i % 3,
            total_cents: i,
        })
        .collect();
    let mut tx = db.begin().await;
    let ids = tx.enqueue_all(&events).await;
    tx.commit().await;
    assert_eq!(ids.len(), 60);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));

    let rec = Recorder::new("rec", &[ORDER]);
    let report = db
        .runner()
        .publisher(rec.clone())
        .batch_size(7)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.published, 60);
    for key in 0..3 {
        let totals: Vec<i64> = rec
            .calls()
            .iter()
            .filter(|c| c.key.as_deref() == Some(&key.to_string()))
            .map(|c| {
                serde_json::from_str::<TestOrder>(&c.payload)
                    .unwrap()
                    .total_cents
            })
            .collect();
        let expected: Vec<i64> = (0..60).filter(|i| i % 3 == key).collect();
        assert_eq!(totals, expected, "key {key} out of order");
    }
    db.cleanup().await;
}

async fn two_event_types_share_a_topic(backend: Backend) {
    let db = TestDb::new(backend, "same_topic").await;
    place(&db, 1).await;
    let mut tx = db.begin().await;
    tx.enqueue(&TestInvoice {
        invoice: "INV-1".into(),
    })
    .await;
    tx.commit().await;
    let orders = Recorder::new("orders", &[ORDER]);
    let invoices = Recorder::new("invoices", &["test.invoice"]);
    db.runner()
        .publisher(orders.clone())
        .publisher(invoices.clone())
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    let (o, i) = (orders.calls(), invoices.calls());
    assert_eq!((o.len(), i.len()), (1, 1));
    assert_eq!(o[0].topic, "orders");
    assert_eq!(i[0].topic, "orders");
    assert_eq!(i[0].event_type, "test.invoice");
    assert_eq!(i[0].key, None);
    assert_eq!(i[0].payload, r#"{"invoice":"INV-1"}"#);
    db.cleanup().await;
}

async fn dead_letters_can_be_listed_retried_and_purged(backend: Backend) {
    let db = TestDb::new(backend, "dead_admin").await;
    let id = place(&db, 1).await;
    place(&db, 2).await;
    let good = Recorder::new("good", &[ORDER]);
    let bad = Recorder::new("bad", &[ORDER]).always(Answer::Permanent);
    db.runner()
        .publisher(good.clone())
        .publisher(bad.clone())
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    let source = db.source();
    assert_eq!(source.dead_letters(10).await.unwrap().len(), 2);

    // Retry one event: only the publisher that failed gets it again.
    assert_eq!(source.retry_dead_letters(Some(&[id])).await.unwrap(), 1);
    assert_eq!(source.retry_dead_letters(Some(&[id])).await.unwrap(), 0);
    let dead = source.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_ne!(dead[0].event.id, id);
    let good2 = Recorder::new("good", &[ORDER]);
    let bad2 = Recorder::new("bad", &[ORDER]);
    db.runner()
        .publisher(good2.clone())
        .publisher(bad2.clone())
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert!(
        good2.calls().is_empty(),
        "a publisher that had succeeded got the retried event"
    );
    let retried = bad2.calls();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].id, id, "a retried dead letter keeps its id");

    // Purge: nothing is older than a minute ago; everything is older than now.
    let minute_ago = std::time::SystemTime::now() - Duration::from_secs(60);
    assert_eq!(source.purge_dead_letters(minute_ago).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let later = std::time::SystemTime::now() + Duration::from_secs(1);
    assert_eq!(source.purge_dead_letters(later).await.unwrap(), 1);
    assert!(source.dead_letters(10).await.unwrap().is_empty());
    db.cleanup().await;
}

async fn same_key_waits_for_its_head_other_keys_go_on(backend: Backend) {
    let db = TestDb::new(backend, "key_order").await;
    // Key 1: three events; key 2: one event. Key 1's head fails twice.
    let mut tx = db.begin().await;
    tx.enqueue(&TestOrder {
        order_id: 1,
        total_cents: 1,
    })
    .await;
    tx.enqueue(&TestOrder {
        order_id: 2,
        total_cents: 1,
    })
    .await;
    tx.enqueue(&TestOrder {
        order_id: 1,
        total_cents: 2,
    })
    .await;
    tx.enqueue(&TestOrder {
        order_id: 1,
        total_cents: 3,
    })
    .await;
    tx.commit().await;
    let rec =
        Recorder::new("rec", &[ORDER]).script([Answer::Transient, Answer::Ok, Answer::Transient]);
    db.runner()
        .publisher(rec.clone())
        .backoff(Duration::from_millis(100), Duration::from_millis(200))
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    let calls: Vec<(String, i64, u32)> = rec
        .calls()
        .iter()
        .map(|c| {
            let e: TestOrder = serde_json::from_str(&c.payload).unwrap();
            (c.key.clone().unwrap(), e.total_cents, c.attempt)
        })
        .collect();
    let key1: Vec<_> = calls
        .iter()
        .filter(|c| c.0 == "1")
        .map(|c| (c.1, c.2))
        .collect();
    assert_eq!(
        key1,
        vec![(1, 1), (1, 2), (1, 3), (2, 1), (3, 1)],
        "key 1 out of order: {calls:?}"
    );
    // Key 2 was not held up by key 1's failing head: it went in the first batch.
    let first_key2 = calls.iter().position(|c| c.0 == "2").unwrap();
    let second_try = calls.iter().position(|c| c.0 == "1" && c.2 == 2).unwrap();
    assert!(first_key2 < second_try, "{calls:?}");
    db.cleanup().await;
}

async fn expired_lease_fences_the_old_holder(backend: Backend) {
    let db = TestDb::new(backend, "lease").await;
    let id = place(&db, 1).await;
    let source = db.source();
    let (a, b) = (outbox::Uuid::now_v7(), outbox::Uuid::now_v7());
    let claimed = source
        .claim(a, 10, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(
        source
            .claim(b, 10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty(),
        "a leased event was claimed twice"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let reclaimed = source.claim(b, 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].event.id, id);
    assert_eq!(reclaimed[0].event.attempt, 2);
    assert_eq!(
        source.ack(a, &[id]).await.unwrap(),
        0,
        "an expired lease holder acknowledged"
    );
    let settlement = outbox::Settlement::finish(id);
    assert!(!source.settle(a, &settlement).await.unwrap());
    assert_eq!(db.pending().await, 1);
    assert_eq!(source.ack(b, &[id]).await.unwrap(), 1);
    assert_eq!(db.pending().await, 0);
    db.cleanup().await;
}

/// The story of the issue that typed the outcomes: events enqueued while
/// no publisher of their type is deployed are never finished without one.
/// They wait (a drain says why), no dead letter is written, and the Runner
/// deployed later gives each of its publishers each event exactly once, in
/// order.
async fn an_event_without_publisher_waits_for_one(backend: Backend) {
    let db = TestDb::new(backend, "no_publisher").await;
    let mut tx = db.begin().await;
    let mut ids = Vec::new();
    for key in [1, 1, 2] {
        ids.push(tx.enqueue(&order(key)).await);
    }
    tx.commit().await;
    let undeployed = db
        .runner()
        .publisher(Recorder::new("invoices", &["test.invoice"]))
        .max_attempts(2)
        .build()
        .unwrap()
        .drain()
        .await;
    match undeployed {
        Err(outbox::Error::NoPublisher { event_types }) => {
            assert_eq!(event_types, vec![ORDER.to_owned()]);
        }
        other => panic!("drain without a publisher returned {other:?}"),
    }
    let source = db.source();
    assert!(source.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(db.pending().await, 3, "an event without publisher left");
    assert_eq!(source.retry_dead_letters(None).await.unwrap(), 0);

    let (billing, audit) = (
        Recorder::new("billing", &[ORDER]),
        Recorder::new("audit", &[ORDER]),
    );
    let report = db
        .runner()
        .publisher(billing.clone())
        .publisher(audit.clone())
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.published, 6);
    for recorder in [&billing, &audit] {
        let of_key = |key: &str| -> Vec<Uuid> {
            let calls = recorder.calls();
            calls
                .iter()
                .filter(|c| c.key.as_deref() == Some(key))
                .map(|c| c.id)
                .collect()
        };
        assert_eq!(of_key("1"), ids[..2], "each event of key 1 once, in order");
        assert_eq!(of_key("2"), ids[2..], "the event of key 2 once");
    }
    assert_eq!(db.pending().await, 0);
    db.cleanup().await;
}

/// Dead letters an older release wrote under the pseudo-publisher `(none)`
/// (no publisher accepted the event) go, once retried, to every publisher
/// that accepts the event now.
async fn a_no_publisher_dead_letter_of_an_older_release_reaches_every_publisher(backend: Backend) {
    let db = TestDb::new(backend, "legacy_none").await;
    let id = place(&db, 1).await;
    let source = db.source();
    let owner = Uuid::now_v7();
    assert_eq!(source.claim(owner, 10, LEASE).await.unwrap().len(), 1);
    let legacy = Settlement::finish(id).with_dead_letters(vec![Failure {
        publisher: "(none)".into(),
        error: "no publisher for event type `test.order` is registered in this Runner".into(),
    }]);
    assert!(source.settle(owner, &legacy).await.unwrap());
    assert_eq!(source.retry_dead_letters(None).await.unwrap(), 1);

    let (billing, audit) = (
        Recorder::new("billing", &[ORDER]),
        Recorder::new("audit", &[ORDER]),
    );
    db.runner()
        .publisher(billing.clone())
        .publisher(audit.clone())
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(billing.calls().len(), 1);
    assert_eq!(audit.calls().len(), 1);
    db.cleanup().await;
}

/// A retried dead letter is owed only to the publisher that failed; a
/// Runner without that publisher neither finishes it nor calls the others.
async fn a_retried_dead_letter_waits_for_its_publisher(backend: Backend) {
    let db = TestDb::new(backend, "owed_elsewhere").await;
    let id = place(&db, 1).await;
    let source = db.source();
    let owner = Uuid::now_v7();
    assert_eq!(source.claim(owner, 10, LEASE).await.unwrap().len(), 1);
    let dead = Settlement::finish(id)
        .with_delivered(vec!["billing".into()])
        .with_dead_letters(vec![Failure {
            publisher: "audit".into(),
            error: "refused".into(),
        }]);
    assert!(source.settle(owner, &dead).await.unwrap());
    assert_eq!(source.retry_dead_letters(None).await.unwrap(), 1);

    let billing = Recorder::new("billing", &[ORDER]);
    let without_audit = db
        .runner()
        .publisher(billing.clone())
        .build()
        .unwrap()
        .drain()
        .await;
    assert!(
        matches!(without_audit, Err(outbox::Error::NoPublisher { .. })),
        "{without_audit:?}"
    );
    assert!(billing.calls().is_empty(), "billing had it already");
    assert_eq!(db.pending().await, 1, "the retried dead letter was dropped");

    let audit = Recorder::new("audit", &[ORDER]);
    db.runner()
        .publisher(billing.clone())
        .publisher(audit.clone())
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(audit.calls().len(), 1);
    assert!(billing.calls().is_empty());
    db.cleanup().await;
}

async fn migrate_is_idempotent(backend: Backend) {
    let db = TestDb::new(backend, "migrate").await;
    place(&db, 1).await;
    db.migrate().await;
    db.migrate().await;
    assert_eq!(db.pending().await, 1, "migrate touched existing events");
    db.cleanup().await;
}

#[tokio::test]
async fn identifiers_from_configuration_are_validated() {
    let db = TestDb::new(Backend::Postgres, "identifiers").await;
    let evil = "x\"; DROP TABLE orders; --";
    let err = Tables::new(evil).unwrap_err();
    assert!(
        err.to_string()
            .contains("invalid table prefix \"x\\\"; DROP TABLE orders; --\""),
        "{err}"
    );
    assert!(Tables::default().schema(evil).is_err());
    assert_eq!(
        db.scalar("SELECT count(*) FROM orders").await,
        0,
        "orders table is gone"
    );
    db.cleanup().await;
}

#[tokio::test]
async fn concurrent_migrations_on_postgres_agree() {
    let db = TestDb::postgres("concurrent_migrate").await;
    let TestDb::Pg { pool, .. } = &db else {
        unreachable!()
    };
    let tables = db.tables();
    let runs = (0..6).map(|_| {
        let (pool, tables) = (pool.clone(), tables.clone());
        tokio::spawn(async move { tables.migrate(&pool).await })
    });
    for run in futures_util::future::join_all(runs).await {
        run.unwrap().unwrap();
    }
    assert_eq!(db.pending().await, 0);
    db.cleanup().await;
}

// ---- Store-level scenarios: the `Source` contract, on every backend. ----

const LEASE: Duration = Duration::from_secs(30);

async fn enqueue_raw(db: &TestDb, events: &[NewEvent]) {
    let mut tx = db.begin().await;
    tx.enqueue_raw(events).await;
    tx.commit().await;
}

fn sorted_ids(claimed: &[outbox::ClaimedEvent]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = claimed.iter().map(|c| c.event.id).collect();
    ids.sort();
    ids
}

fn random_bytes(n: usize) -> Vec<u8> {
    std::iter::repeat_with(|| fastrand::u8(..))
        .take(n)
        .collect()
}

async fn large_payloads_round_trip(backend: Backend) {
    let db = TestDb::new(backend, "large_payload").await;
    // Five 1 MiB payloads of random bytes (neither JSON nor UTF-8), enqueued
    // in one call: more than one statement's worth on some backends.
    let events: Vec<NewEvent> = (0..5)
        .map(|_| NewEvent::new("test.blob", random_bytes(1 << 20)))
        .collect();
    enqueue_raw(&db, &events).await;
    let source = db.source();
    let owner = Uuid::now_v7();
    let claimed = source.claim(owner, 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 5);
    for c in &claimed {
        let sent = events.iter().find(|e| e.id == c.event.id).unwrap();
        assert!(
            c.event.payload == sent.payload,
            "a 1 MiB payload came back changed ({} bytes)",
            c.event.payload.len()
        );
    }

    // Through the dead-letter table and back.
    let id = events[0].id;
    let settlement = Settlement::finish(id).with_dead_letters(vec![Failure {
        publisher: "sink".into(),
        error: "refused".into(),
    }]);
    assert!(source.settle(owner, &settlement).await.unwrap());
    let dead = source.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].event.payload == events[0].payload,
        "the dead letter's payload changed"
    );
    assert_eq!(source.retry_dead_letters(None).await.unwrap(), 1);
    let again = source.claim(owner, 10, LEASE).await.unwrap();
    assert_eq!(sorted_ids(&again), vec![id]);
    assert!(
        again[0].event.payload == events[0].payload,
        "the retried payload changed"
    );
    assert_eq!(again[0].only, Some(vec!["sink".to_owned()]));
    let rest: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    assert_eq!(source.ack(owner, &rest).await.unwrap(), 5);
    assert_eq!(db.pending().await, 0);
    db.cleanup().await;
}

async fn unicode_and_empty_fields_round_trip(backend: Backend) {
    let db = TestDb::new(backend, "unicode").await;
    let before = SystemTime::now() - Duration::from_secs(60);
    let mut events = vec![
        NewEvent::new("tëst.ünïcode.事件", r#"{"name":"Zoë 🚀 ünïcödé ∑"}"#)
            .topic("主题/événements 🚀")
            .partition_key("ключ-🔑")
            .version(3)
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .header("tracé-ñame 🌍", "välue ✓")
            .header("empty", ""),
        // Empty payload, no headers, no key, empty topic.
        NewEvent::new("test.empty", Vec::new()).topic(""),
        // An empty key is a key, not the absence of one.
        NewEvent::new("test.empty", Vec::new()).partition_key(""),
    ];
    // Keys equal under a case-, accent-, width- or pad-insensitive collation
    // are still distinct keys: each is the head of its own.
    for key in ["k", "K", "k ", "ｋ", "é", "e\u{301}"] {
        events.push(NewEvent::new("test.key", key.as_bytes().to_vec()).partition_key(key));
    }
    enqueue_raw(&db, &events).await;

    let source = db.source();
    let owner = Uuid::now_v7();
    let claimed = source.claim(owner, 50, LEASE).await.unwrap();
    let mut want: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    want.sort();
    assert_eq!(
        sorted_ids(&claimed),
        want,
        "distinct keys were taken for one"
    );
    let after = SystemTime::now() + Duration::from_secs(60);
    for c in &claimed {
        let sent = events.iter().find(|e| e.id == c.event.id).unwrap();
        let got = &c.event;
        assert_eq!(got.event_type, sent.event_type);
        assert_eq!(got.version, sent.version);
        assert_eq!(got.topic, sent.topic);
        assert_eq!(got.partition_key, sent.partition_key);
        assert_eq!(got.payload, sent.payload);
        assert_eq!(got.headers, sent.headers);
        assert_eq!(got.attempt, 1);
        assert!(
            got.created_at > before && got.created_at < after,
            "created_at {:?} is not the database's now",
            got.created_at
        );
        assert!(c.delivered.is_empty() && c.dead.is_empty());
        assert_eq!(c.only, None);
    }

    // Unicode survives the dead-letter table too.
    let settlement = Settlement::finish(events[0].id).with_dead_letters(vec![Failure {
        publisher: "püblisher-✉".into(),
        error: "ошибка ❌: größer als erlaubt".into(),
    }]);
    assert!(source.settle(owner, &settlement).await.unwrap());
    let dead = source.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].publisher, "püblisher-✉");
    assert_eq!(dead[0].error, "ошибка ❌: größer als erlaubt");
    assert_eq!(dead[0].event.topic, "主题/événements 🚀");
    assert_eq!(dead[0].event.partition_key.as_deref(), Some("ключ-🔑"));
    assert_eq!(dead[0].event.headers, events[0].headers);
    let expected: BTreeMap<String, String> = [
        ("empty", ""),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("tracé-ñame 🌍", "välue ✓"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(dead[0].event.headers, expected);
    db.cleanup().await;
}

async fn claim_takes_each_key_head_and_every_keyless_event(backend: Backend) {
    let db = TestDb::new(backend, "claim_heads").await;
    let events = [
        NewEvent::new("test.e", "a1").partition_key("a"),
        NewEvent::new("test.e", "b1").partition_key("b"),
        NewEvent::new("test.e", "a2").partition_key("a"),
        NewEvent::new("test.e", "n1"),
        NewEvent::new("test.e", "n2"),
    ];
    enqueue_raw(&db, &events).await;
    let id = |i: usize| events[i].id;
    let source = db.source();
    let (one, two) = (Uuid::now_v7(), Uuid::now_v7());
    let first = source.claim(one, 10, LEASE).await.unwrap();
    assert_eq!(sorted_ids(&first), vec![id(0), id(1), id(3), id(4)]);
    assert!(
        source.claim(two, 10, LEASE).await.unwrap().is_empty(),
        "a key's second event was claimed while its head was leased"
    );
    assert_eq!(source.ack(one, &[id(0)]).await.unwrap(), 1);
    let second = source.claim(two, 10, LEASE).await.unwrap();
    assert_eq!(sorted_ids(&second), vec![id(2)]);
    // Released events are due at once and the attempt is not counted.
    assert_eq!(
        source.release(one, &[id(1), id(3), id(4)]).await.unwrap(),
        3
    );
    let third = source.claim(two, 10, LEASE).await.unwrap();
    assert_eq!(sorted_ids(&third), vec![id(1), id(3), id(4)]);
    assert!(third.iter().all(|c| c.event.attempt == 1));
    db.cleanup().await;
}

/// Who holds a key right now, and in which order each key's events were
/// acknowledged.
#[derive(Default)]
struct KeyLog {
    holder: HashMap<String, Uuid>,
    acked: HashMap<String, Vec<Uuid>>,
    violations: Vec<String>,
}

async fn concurrent_claimers_keep_per_key_order(backend: Backend) {
    let db = TestDb::new(backend, "concurrent_claims").await;
    let mut events = Vec::new();
    for i in 0..10 {
        for key in 0..6 {
            events.push(
                NewEvent::new("test.e", format!("{key}/{i}")).partition_key(format!("key-{key}")),
            );
        }
        events.push(NewEvent::new("test.e", format!("none/{i}")));
    }
    enqueue_raw(&db, &events).await;
    // Every third event of a key fails once: a retry must not let the key's
    // next event overtake it.
    let fail_once: Vec<Uuid> = events
        .iter()
        .filter(|e| e.partition_key.is_some())
        .enumerate()
        .filter(|(i, _)| i % 3 == 1)
        .map(|(_, e)| e.id)
        .collect();
    let log = Arc::new(Mutex::new(KeyLog::default()));
    let keyless_acked = Arc::new(Mutex::new(Vec::new()));

    let workers = (0..4).map(|_| {
        let (db, log, keyless_acked, fail_once) = (
            db.clone(),
            log.clone(),
            keyless_acked.clone(),
            fail_once.clone(),
        );
        tokio::spawn(async move {
            let source = db.source();
            let owner = Uuid::now_v7();
            loop {
                let claimed = source.claim(owner, 4, LEASE).await.unwrap();
                if claimed.is_empty() {
                    if source.pending().await.unwrap() == 0 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                for c in &claimed {
                    if let Some(key) = &c.event.partition_key {
                        let mut log = log.lock().unwrap();
                        if let Some(other) = log.holder.insert(key.clone(), c.event.id) {
                            let v =
                                format!("{key}: {} claimed while {other} was leased", c.event.id);
                            log.violations.push(v);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..3))).await;
                for c in &claimed {
                    let id = c.event.id;
                    let fail = c.event.attempt == 1 && fail_once.contains(&id);
                    if let Some(key) = &c.event.partition_key {
                        // Let go of the key before the database does, so that
                        // a claimer that sees it free finds it free here too.
                        let mut log = log.lock().unwrap();
                        log.holder.remove(key);
                        if !fail {
                            log.acked.entry(key.clone()).or_default().push(id);
                        }
                    } else {
                        keyless_acked.lock().unwrap().push(id);
                    }
                    if fail {
                        let retry = Settlement::new(
                            id,
                            Outcome::Retry {
                                delay: Duration::ZERO,
                                error: "once".into(),
                            },
                        );
                        assert!(source.settle(owner, &retry).await.unwrap());
                        continue;
                    }
                    assert_eq!(source.ack(owner, &[id]).await.unwrap(), 1, "lost a lease");
                }
            }
        })
    });
    let all = futures_util::future::join_all(workers);
    for worker in tokio::time::timeout(Duration::from_secs(40), all)
        .await
        .expect("the claimers stalled")
    {
        worker.unwrap();
    }

    let log = std::mem::take(&mut *log.lock().unwrap());
    assert!(log.violations.is_empty(), "{:#?}", log.violations);
    for key in 0..6 {
        let key = format!("key-{key}");
        let expected: Vec<Uuid> = events
            .iter()
            .filter(|e| e.partition_key.as_deref() == Some(key.as_str()))
            .map(|e| e.id)
            .collect();
        assert_eq!(
            log.acked[&key], expected,
            "{key} was acknowledged out of order"
        );
    }
    let mut keyless = keyless_acked.lock().unwrap().clone();
    keyless.sort();
    let expected: Vec<Uuid> = events
        .iter()
        .filter(|e| e.partition_key.is_none())
        .map(|e| e.id)
        .collect();
    assert_eq!(keyless, expected);
    assert_eq!(db.pending().await, 0);
    db.cleanup().await;
}

async fn concurrent_migrations_agree(backend: Backend) {
    let db = TestDb::new(backend, "concurrent_migrate").await;
    let tables = db.tables_with_prefix("concurrent");
    let runs = (0..4).map(|_| {
        let (db, tables) = (db.clone(), tables.clone());
        tokio::spawn(async move { db.migrate_tables(&tables).await })
    });
    for run in futures_util::future::join_all(runs).await {
        run.unwrap().unwrap();
    }
    // The tables work, and migrating again leaves their rows alone.
    let mut tx = db.begin_in(tables.clone()).await;
    tx.enqueue(&order(1)).await;
    tx.commit().await;
    db.migrate_tables(&tables).await.unwrap();
    let source = db.source_for(&tables);
    assert_eq!(source.pending().await.unwrap(), 1);
    assert!(source.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(db.pending().await, 0, "the other tables got the event");
    let owner = Uuid::now_v7();
    let claimed = source.claim(owner, 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(source.ack(owner, &[claimed[0].event.id]).await.unwrap(), 1);
    db.cleanup().await;
}

async fn retry_waits_for_its_delay(backend: Backend) {
    let db = TestDb::new(backend, "retry_delay").await;
    let events = [
        NewEvent::new("test.e", "r1").partition_key("r"),
        NewEvent::new("test.e", "s1").partition_key("s"),
        NewEvent::new("test.e", "r2").partition_key("r"),
    ];
    enqueue_raw(&db, &events).await;
    let source = db.source();
    let owner = Uuid::now_v7();
    let first = source.claim(owner, 10, LEASE).await.unwrap();
    assert_eq!(sorted_ids(&first), vec![events[0].id, events[1].id]);
    assert_eq!(source.ack(owner, &[events[1].id]).await.unwrap(), 1);

    let delay = Duration::from_millis(1500);
    let retry = Settlement::new(
        events[0].id,
        Outcome::Retry {
            delay,
            error: "try again later".into(),
        },
    )
    .with_delivered(vec!["first".into()]);
    let settled = Instant::now();
    assert!(source.settle(owner, &retry).await.unwrap());
    // Another settle by the same owner finds no lease: the retry gave it up.
    assert!(
        !source
            .settle(owner, &Settlement::finish(events[0].id))
            .await
            .unwrap()
    );

    // Not before the delay: neither the event nor its key's next event.
    let other = Uuid::now_v7();
    assert!(
        source.claim(other, 10, LEASE).await.unwrap().is_empty(),
        "claimed before its delay"
    );
    tokio::time::sleep(delay / 2).await;
    assert!(
        source.claim(other, 10, LEASE).await.unwrap().is_empty(),
        "claimed before its delay"
    );

    // After it, at once.
    let deadline = Instant::now() + Duration::from_secs(15);
    let again = loop {
        let claimed = source.claim(other, 10, LEASE).await.unwrap();
        if !claimed.is_empty() {
            break claimed;
        }
        assert!(
            Instant::now() < deadline,
            "the retried event never became due"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let waited = settled.elapsed();
    assert!(
        waited + Duration::from_millis(50) >= delay,
        "due after {waited:?}, before {delay:?}"
    );
    assert_eq!(sorted_ids(&again), vec![events[0].id]);
    assert_eq!(again[0].event.attempt, 2);
    assert_eq!(again[0].delivered, vec!["first".to_owned()]);
    assert_eq!(source.ack(other, &[events[0].id]).await.unwrap(), 1);
    let last = source.claim(other, 10, LEASE).await.unwrap();
    assert_eq!(sorted_ids(&last), vec![events[2].id]);
    db.cleanup().await;
}

// ---- MySQL/MariaDB only. ----

/// Leases and timestamps use the server's UTC clock: a session `time_zone`
/// seven hours off changes nothing, neither for the writer nor for claimers
/// in other time zones.
#[tokio::test]
async fn mysql_clock_ignores_the_session_time_zone() {
    use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};

    let db = TestDb::new(Backend::MySql, "mysql_time_zone").await;
    let TestDb::MySql { database, .. } = &db else {
        unreachable!()
    };
    let options: MySqlConnectOptions = outbox_tests::mysql_url().parse().unwrap();
    let pool = MySqlPoolOptions::new()
        .max_connections(2)
        .connect_with(
            options
                .database(database)
                .timezone(Some("-07:00".to_owned())),
        )
        .await
        .unwrap();
    let offset: String = sqlx::query_scalar("SELECT @@session.time_zone")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(offset, "-07:00");
    let tables = db.tables();
    let mut tx = pool.begin().await.unwrap();
    let id = tables.enqueue(&mut tx, &order(1)).await.unwrap();
    tx.commit().await.unwrap();

    let west = outbox::source(pool.clone(), &tables);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let claimed = west.claim(a, 10, Duration::from_millis(300)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let age = SystemTime::now()
        .duration_since(claimed[0].event.created_at)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(60), "created_at is {age:?} old");
    assert!(
        db.source().claim(b, 10, LEASE).await.unwrap().is_empty(),
        "a UTC session saw the -07:00 session's lease as expired"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let reclaimed = db.source().claim(b, 10, LEASE).await.unwrap();
    assert_eq!(sorted_ids(&reclaimed), vec![id], "the lease never expired");
    pool.close().await;
    db.cleanup().await;
}

/// Concurrent migrations queue on a server-wide named lock (the same name in
/// every process), so no two run their DDL at once.
#[tokio::test]
async fn mysql_migrations_wait_for_the_migration_lock() {
    use sqlx::Connection;

    let db = TestDb::new(Backend::MySql, "mysql_migrate_lock").await;
    let TestDb::MySql { database, .. } = &db else {
        unreachable!()
    };
    let tables = db.tables_with_prefix("locked");
    let mut holder = sqlx::MySqlConnection::connect(&outbox_tests::mysql_url())
        .await
        .unwrap();
    let name = "CONCAT('outbox.migrate:', SHA1(CONCAT(?, '.', ?)))";
    let got: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT GET_LOCK({name}, 5)")))
        .bind(database)
        .bind("locked")
        .fetch_one(&mut holder)
        .await
        .unwrap();
    assert_eq!(got, 1);

    let migration = tokio::spawn({
        let (db, tables) = (db.clone(), tables.clone());
        async move { db.migrate_tables(&tables).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !migration.is_finished(),
        "migrate did not wait for the lock"
    );
    let created = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = '{database}' AND TABLE_NAME LIKE 'locked%'"
        ))
        .await;
    assert_eq!(created, 0, "migrate ran while another held the lock");

    holder.close().await.unwrap();
    migration.await.unwrap().unwrap();
    assert_eq!(db.source_for(&tables).pending().await.unwrap(), 0);
    db.cleanup().await;
}

async fn a_blocked_key_with_a_deep_backlog_holds_up_no_other_key(backend: Backend) {
    let db = TestDb::new(backend, "deep_blocked_key").await;
    // Key 1: a head that will wait in backoff, then 300 followers: more
    // than a claim's first look at the oldest rows. Key 2 comes last.
    let mut tx = db.begin().await;
    let events: Vec<TestOrder> = (0..301)
        .map(|n| TestOrder {
            order_id: 1,
            total_cents: n,
        })
        .collect();
    tx.enqueue_all(&events).await;
    tx.commit().await;
    let late = place(&db, 2).await;
    let source = db.source();
    let owner = outbox::Uuid::now_v7();
    let head = source
        .claim(owner, 1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(head.len(), 1);
    assert_eq!(head[0].event.partition_key.as_deref(), Some("1"));
    let retry = outbox::Settlement::new(
        head[0].event.id,
        outbox::Outcome::Retry {
            delay: Duration::from_secs(60),
            error: "later".into(),
        },
    );
    assert!(source.settle(owner, &retry).await.unwrap());
    let next = source
        .claim(owner, 10, Duration::from_secs(60))
        .await
        .unwrap();
    let ids: Vec<_> = next.iter().map(|c| c.event.id).collect();
    assert_eq!(
        ids,
        vec![late],
        "key 2 was held up behind key 1's blocked backlog"
    );
    db.cleanup().await;
}
