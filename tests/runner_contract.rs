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

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox::{Failure, NewEvent, OutboxEvent, PublishError, Settlement, Uuid};
use outbox_tests::fixtures::{LEASE, ORDER, TestOrder, order, place};
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
    an_event_without_publisher_waits_for_one,
    two_runners_with_slow_publishers_publish_each_event_once,
    an_error_text_with_a_nul_byte_is_dead_lettered_once,
    fields_that_do_not_fit_are_refused_before_any_statement,
    a_no_publisher_dead_letter_of_an_older_release_reaches_every_publisher,
    a_retried_dead_letter_waits_for_its_publisher,
    ;
    // Not on the in-memory outbox: its claims fail because the tables were
    // never migrated, and memory has no tables to be missing.
    sql_only: [a_drain_whose_claims_keep_failing_returns_the_error],
);

async fn commit_publishes_and_rollback_never_does(backend: Backend) {
    let db = TestDb::new(backend, "commit_rollback").await;
    place(&db, 1).await;

    let mut tx = db.begin().await;
    tx.insert_order(2, 200).await;
    tx.enqueue(&order(2)).await;
    tx.rollback().await;

    let rec = Recorder::new("rec", &[ORDER]);
    let report = db.drain_with(rec.clone()).await;
    assert_eq!(report.published, 1);
    let keys: Vec<_> = rec.calls().into_iter().map(|c| c.key).collect();
    assert_eq!(keys, vec![Some("1".to_owned())]);
    assert_eq!(db.orders().await, 1);
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
        let report = db.drain_with(rec.clone()).await;
        assert_eq!(report.published, 0, "an uncommitted event was published");
    }
    tx.commit().await;

    let rec = Recorder::new("rec", &[ORDER]);
    let report = db.drain_with(rec.clone()).await;
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
    db.drain_with(rec.clone()).await;
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
    let report = db.drain_with(typed).await;
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
    let report = db.drain_with(rec.clone()).await;
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
        .batch_size(10)
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
    db.drain_with(rec.clone()).await;
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

/// Claim the one event in the outbox, record `settlement` for it (its dead
/// letters), then retry every dead letter, as an operator would.
async fn settle_then_retry(db: &TestDb, settlement: Settlement) {
    let source = db.source();
    let owner = Uuid::now_v7();
    assert_eq!(source.claim(owner, 10, LEASE).await.unwrap().len(), 1);
    assert!(source.settle(owner, &settlement).await.unwrap());
    assert_eq!(source.retry_dead_letters(None).await.unwrap(), 1);
}

/// Dead letters an older release wrote under the pseudo-publisher `(none)`
/// (no publisher accepted the event) go, once retried, to every publisher
/// that accepts the event now.
async fn a_no_publisher_dead_letter_of_an_older_release_reaches_every_publisher(backend: Backend) {
    let db = TestDb::new(backend, "legacy_none").await;
    let id = place(&db, 1).await;
    let legacy = Settlement::finish(id).with_dead_letters(vec![Failure {
        publisher: "(none)".into(),
        error: "no publisher for event type `test.order` is registered in this Runner".into(),
    }]);
    settle_then_retry(&db, legacy).await;

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
    let dead = Settlement::finish(id)
        .with_delivered(vec!["billing".into()])
        .with_dead_letters(vec![Failure {
            publisher: "audit".into(),
            error: "refused".into(),
        }]);
    settle_then_retry(&db, dead).await;

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

/// Two Runners, a publisher slow enough that a batch (10 events one at a
/// time, 3 s) outlasts its lease (1.5 s), and no fault: each event is
/// published once, because the Runner renews the leases of the batch's
/// unsettled events while it publishes. Without that, the leases expired
/// mid-batch and the other Runner (or the same one) published the events
/// again: 40 publishes for 10 events.
async fn two_runners_with_slow_publishers_publish_each_event_once(backend: Backend) {
    let db = TestDb::new(backend, "slow_batches").await;
    let mut tx = db.begin().await;
    for key in 0..10 {
        tx.enqueue(&order(key)).await;
    }
    tx.commit().await;
    let slow = Recorder::new("slow", &[ORDER]).always(Answer::Sleep(Duration::from_millis(300)));
    let runner = || {
        db.runner()
            .publisher(slow.clone())
            .batch_size(10)
            .concurrency(1)
            .publish_timeout(Duration::from_millis(400))
            .lease(Duration::from_millis(1500))
            .build()
            .unwrap()
            .drain()
    };
    let (a, b) = tokio::join!(runner(), runner());
    assert_eq!(a.unwrap().published + b.unwrap().published, 10);
    let mut ids: Vec<Uuid> = slow.calls().iter().map(|c| c.id).collect();
    assert_eq!(ids.len(), 10, "published more than once");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10);
    db.cleanup().await;
}

/// PostgreSQL refuses a NUL byte in text: an error text carrying one could
/// not be recorded, so the event was claimed again and again, never
/// dead-lettered, and held up its key for good. Error texts are made
/// storable before they reach SQL.
async fn an_error_text_with_a_nul_byte_is_dead_lettered_once(backend: Backend) {
    let db = TestDb::new(backend, "nul_error").await;
    let first = place(&db, 1).await;
    let mut tx = db.begin().await;
    let second = tx.enqueue(&order(1)).await;
    tx.commit().await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let nul = outbox::publisher_fn::<TestOrder, _, _>("nul", move |_, cx| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(cx.id());
            if seen.lock().unwrap().len() == 1 {
                return Err(PublishError::permanent("bad\0byte"));
            }
            Ok(())
        }
    });
    let report = db
        .runner()
        .publisher(nul)
        .max_attempts(2)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(*calls.lock().unwrap(), vec![first, second]);
    assert_eq!((report.published, report.dead_lettered), (1, 1));
    let dead = db.source().dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error, "bad\\0byte");
    db.cleanup().await;
}

/// A NUL byte, or a value longer than its column, is refused by enqueue
/// with the field named, before any statement: the caller's transaction
/// stays usable (PostgreSQL aborts a transaction whose statement failed).
async fn fields_that_do_not_fit_are_refused_before_any_statement(backend: Backend) {
    let db = TestDb::new(backend, "bad_fields").await;
    let bad = [
        (NewEvent::new("t\0ype", "{}"), "event type"),
        (NewEvent::new("test.raw", "{}").topic("to\0pic"), "topic"),
        (
            NewEvent::new("test.raw", "{}").partition_key("k\0"),
            "partition key",
        ),
        (
            NewEvent::new("test.raw", "{}").partition_key("é".repeat(513)),
            "partition key",
        ),
        (
            NewEvent::new("test.raw", "{}").header("trace\0", "x"),
            "header name",
        ),
        (
            NewEvent::new("test.raw", "{}").header("traceparent", "x\0"),
            "header value",
        ),
        (NewEvent::new("t".repeat(256), "{}"), "event type"),
    ];
    let mut tx = db.begin().await;
    for (event, field) in bad {
        let err = tx.try_enqueue_raw(&[event]).await.unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, outbox::Error::InvalidEvent { field: f, .. } if f == field),
            "{field}: {message}"
        );
    }
    drop(tx);
    let mut tx = db.begin_in(db.tables().max_payload(1000)).await;
    let err = tx
        .try_enqueue_raw(&[NewEvent::new("test.raw", vec![b'x'; 1001])])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            outbox::Error::InvalidEvent {
                field: "payload",
                ..
            }
        ),
        "{err}"
    );
    tx.try_enqueue_raw(&[NewEvent::new("test.raw", vec![b'x'; 1000])])
        .await
        .unwrap();
    let fits = NewEvent::new("test.raw", "{}").partition_key("é".repeat(512));
    tx.try_enqueue_raw(&[fits]).await.unwrap();
    tx.commit().await;
    assert_eq!(db.pending().await, 2);
    db.cleanup().await;
}

/// A drain over an outbox whose table is gone (or whose privileges were
/// revoked) returned never; it returns the database's error after a bounded
/// time (20 s of failing claims).
async fn a_drain_whose_claims_keep_failing_returns_the_error(backend: Backend) {
    let db = TestDb::new(backend, "claims_fail").await;
    place(&db, 1).await;
    let gone = db.tables_with_prefix("never_migrated");
    let drain = db
        .runner()
        .tables(gone)
        .publisher(Recorder::new("rec", &[ORDER]))
        .build()
        .unwrap()
        .drain();
    let result = tokio::time::timeout(Duration::from_secs(35), drain)
        .await
        .expect("the drain did not give up on claims that fail for good");
    assert!(
        matches!(result, Err(outbox::Error::Database(_))),
        "{result:?}"
    );
    db.cleanup().await;
}
