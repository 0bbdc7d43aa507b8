//! The conformance suite, part one: the Runner's contract (atomicity,
//! fan-out, retries, dead letters, bad input, panics, shutdown, order per
//! key), run on every store backend. Part two, the `Source` contract, is
//! `tests/source_contract.rs`; tests that apply to one backend only are in
//! `tests/backend_specific.rs`.
//!
//! Each test gets its own database: a PostgreSQL schema, a SQLite file or a
//! MySQL/MariaDB database, dropped at the end. Run one backend with
//! `cargo test --test runner_contract --test source_contract mysql::` (or
//! `postgres::`, `sqlite::`).
//!
//! # Adding a backend
//!
//! 1. Implement `outbox::Backend` for the sqlx database: its `Source`,
//!    enqueue and migrate, in `outbox/src/store/`.
//! 2. Let the test support make a fresh database of it: a variant of
//!    `outbox_tests::{Backend, TestDb, Tx}` in `src/lib.rs` (create, drop,
//!    and one arm per `match`; the compiler lists them).
//! 3. Add one line to `on_every_backend!` in `src/macros.rs`:
//!    `$crate::on_backend!(module, Variant, [$($name),*]);`.
//!
//! Every scenario of both contracts then runs on it. Scenarios take only a
//! [`Backend`] and go through `TestDb`, the Runner and the public `Source`
//! trait, never through a backend's SQL, so nothing else needs to change; a
//! scenario that a backend cannot run asks `Backend` about the capability
//! (see `runs_beside_open_writes`), never for the backend by name. What a
//! backend does beyond the contracts (its clock, its locks) is tested in
//! `tests/backend_specific.rs`.

use std::time::{Duration, Instant};

use outbox::{NewEvent, OutboxEvent, PublishError};
use outbox_tests::fixtures::{ORDER, TestOrder, order, place};
use outbox_tests::{Answer, Backend, Recorder, TestDb, on_every_backend};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "test.invoice", topic = "orders", version = 2)]
struct TestInvoice {
    invoice: String,
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
    event_without_publisher_is_retried_then_dead_lettered,
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

async fn event_without_publisher_is_retried_then_dead_lettered(backend: Backend) {
    let db = TestDb::new(backend, "no_publisher").await;
    place(&db, 1).await;
    let report = db
        .runner()
        .publisher(Recorder::new("invoices", &["test.invoice"]))
        .max_attempts(2)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.retried, 1);
    assert_eq!(report.dead_lettered, 1);
    let dead = db.source().dead_letters(10).await.unwrap();
    assert!(
        dead[0]
            .error
            .contains("no publisher for event type `test.order`"),
        "{}",
        dead[0].error
    );
    db.cleanup().await;
}
