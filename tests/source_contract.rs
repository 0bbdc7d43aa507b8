//! The conformance suite, part two: the `Source` contract (leases, fencing,
//! per-key claims, retry scheduling, payload fidelity, migrations), run on
//! every store backend. The scenarios call the public `Source` trait
//! directly, without a Runner; part one, the Runner's contract, is
//! `tests/runner_contract.rs`, and its module docs say how to add a backend.
//!
//! Run one backend with `cargo test --test source_contract mysql::` (or
//! `postgres::`, `sqlite::`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use outbox::{ClaimLimit, Failure, NewEvent, Outcome, Settlement, Tables, Uuid};
use outbox_tests::fixtures::{LEASE, ORDER, TestOrder, order, place, sorted_ids};
use outbox_tests::{Backend, TestDb, on_backend, on_every_backend};

on_every_backend!(
    a_held_event_does_not_use_up_its_attempts,
    expired_lease_fences_the_old_holder,
    a_renewed_lease_keeps_the_event_and_only_its_holder_renews,
    migrate_is_idempotent,
    concurrent_migrations_agree,
    a_blocked_key_with_a_deep_backlog_holds_up_no_other_key,
    large_payloads_round_trip,
    a_claim_stays_within_its_byte_budget,
    unicode_and_empty_fields_round_trip,
    claim_takes_each_key_head_and_every_keyless_event,
    concurrent_claimers_keep_per_key_order,
    retry_waits_for_its_delay,
    retrying_dead_letters_leaves_waiting_events_alone,
    dead_letters_of_many_events_are_retried_at_once,
    a_late_commit_ahead_of_a_parked_event_is_pending,
    a_purge_leaves_the_dead_letters_of_a_waiting_event,
    ;
    // Not on the in-memory outbox: these alter or backdate rows with SQL.
    // The memory clock's version of the second is
    // `memory_clock::dead_letters_older_than_an_age_are_purged_on_the_memory_clock`.
    sql_only: [
        a_table_of_the_previous_release_is_upgraded_by_migrate,
        dead_letters_older_than_an_age_are_purged_on_the_database_clock,
    ],
);
on_backend!(
    memory_clock,
    Memory,
    [dead_letters_older_than_an_age_are_purged_on_the_memory_clock]
);

async fn enqueue_raw(db: &TestDb, events: &[NewEvent]) {
    let mut tx = db.begin().await;
    tx.enqueue_raw(events).await;
    tx.commit().await;
}

fn random_bytes(n: usize) -> Vec<u8> {
    std::iter::repeat_with(|| fastrand::u8(..))
        .take(n)
        .collect()
}

/// A claim takes the oldest events while their payloads fit its byte
/// budget, so a Runner's memory per claim is bounded whatever the events'
/// sizes; an event larger than the whole budget is still claimed, alone.
async fn a_claim_stays_within_its_byte_budget(backend: Backend) {
    let db = TestDb::new(backend, "byte_budget").await;
    let sizes = [400_000, 400_000, 400_000, 1_500_000, 100];
    let events: Vec<NewEvent> = sizes
        .iter()
        .map(|&n| NewEvent::new("test.blob", random_bytes(n)))
        .collect();
    enqueue_raw(&db, &events).await;
    let source = db.source();
    let limit = ClaimLimit::events(10).bytes(1_000_000);
    let mut claims = Vec::new();
    for _ in 0..sizes.len() {
        let claimed = source.claim(Uuid::now_v7(), limit, LEASE).await.unwrap();
        if claimed.is_empty() {
            break;
        }
        let total: usize = claimed.iter().map(|c| c.event.payload.len()).sum();
        assert!(
            claimed.len() == 1 || total <= limit.bytes,
            "a claim of {} events loaded {total} bytes, over its budget of {}",
            claimed.len(),
            limit.bytes
        );
        claims.push(claimed.iter().map(|c| c.event.id).collect::<Vec<_>>());
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    assert_eq!(
        claims,
        vec![
            vec![ids[0], ids[1]],
            vec![ids[2]],
            vec![ids[3]],
            vec![ids[4]]
        ],
        "the claims took the oldest events that fit, and the large one alone"
    );
    db.cleanup().await;
}

/// Tables made by the previous release (no `dead_publishers` column, and
/// no schema version recorded) are upgraded by `migrate`, twice in a row as
/// a fleet would, and an event already half-delivered in them goes on: only
/// its remaining publisher gets it.
async fn a_table_of_the_previous_release_is_upgraded_by_migrate(backend: Backend) {
    let db = TestDb::new(backend, "upgrade").await;
    db.exec("ALTER TABLE outbox_events DROP COLUMN dead_publishers")
        .await;
    db.exec("DROP TABLE outbox_schema_version").await;
    let id = place(&db, 1).await;
    let delivered = match backend {
        Backend::Postgres => "'{billing}'",
        Backend::Sqlite | Backend::MySql => "'[\"billing\"]'",
        Backend::Memory => unreachable!("a scenario about SQL tables"),
    };
    db.exec(&format!("UPDATE outbox_events SET done = {delivered}"))
        .await;
    db.migrate().await;
    db.migrate().await;
    let (billing, audit) = (
        outbox_tests::Recorder::new("billing", &[ORDER]),
        outbox_tests::Recorder::new("audit", &[ORDER]),
    );
    db.runner()
        .publisher(billing.clone())
        .publisher(audit.clone())
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert!(billing.calls().is_empty(), "billing had it already");
    assert_eq!(
        audit.calls().iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![id]
    );
    db.cleanup().await;
}

/// An event held for want of a publisher is offered again and again, for as
/// long as that publisher is missing: a hold gives back the attempt its
/// claim counted, so the event never nears `max_attempts` (past which it
/// would be dead-lettered as "outcomes not recorded") while it waits.
async fn a_held_event_does_not_use_up_its_attempts(backend: Backend) {
    let db = TestDb::new(backend, "hold_attempts").await;
    let id = place(&db, 1).await;
    let source = db.source();
    let owner = outbox::Uuid::now_v7();
    for _ in 0..5 {
        let claimed = source
            .claim(owner, ClaimLimit::events(10), LEASE)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].event.attempt, 1, "a hold counted an attempt");
        let hold = outbox::Settlement::new(
            id,
            Outcome::Hold {
                delay: Duration::ZERO,
                reason: "no publisher".into(),
            },
        );
        assert!(source.settle(owner, &hold).await.unwrap());
    }
    assert_eq!(db.pending().await, 1);
    db.cleanup().await;
}

/// `renew` extends a lease from now on the database clock, only for its
/// holder: a renewed event is not claimed by another Runner after its first
/// lease ran out, and a Runner that does not hold the lease renews nothing.
async fn a_renewed_lease_keeps_the_event_and_only_its_holder_renews(backend: Backend) {
    let db = TestDb::new(backend, "renew").await;
    let id = place(&db, 1).await;
    let source = db.source();
    let (a, b) = (outbox::Uuid::now_v7(), outbox::Uuid::now_v7());
    let short = Duration::from_millis(300);
    assert_eq!(
        source
            .claim(a, ClaimLimit::events(10), short)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        source.renew(b, &[id], LEASE).await.unwrap(),
        0,
        "a stranger renewed"
    );
    assert_eq!(source.renew(a, &[id], LEASE).await.unwrap(), 1);
    tokio::time::sleep(short * 2).await;
    assert!(
        source
            .claim(b, ClaimLimit::events(10), LEASE)
            .await
            .unwrap()
            .is_empty(),
        "a renewed lease ran out at its first end"
    );
    assert_eq!(source.ack(a, &[id]).await.unwrap(), 1);
    db.cleanup().await;
}

async fn expired_lease_fences_the_old_holder(backend: Backend) {
    let db = TestDb::new(backend, "lease").await;
    let id = place(&db, 1).await;
    let source = db.source();
    let (a, b) = (outbox::Uuid::now_v7(), outbox::Uuid::now_v7());
    let claimed = source
        .claim(a, ClaimLimit::events(10), Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(
        source
            .claim(b, ClaimLimit::events(10), Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty(),
        "a leased event was claimed twice"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let reclaimed = source
        .claim(b, ClaimLimit::events(10), Duration::from_secs(60))
        .await
        .unwrap();
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

async fn migrate_is_idempotent(backend: Backend) {
    let db = TestDb::new(backend, "migrate").await;
    place(&db, 1).await;
    db.migrate().await;
    db.migrate().await;
    assert_eq!(db.pending().await, 1, "migrate touched existing events");
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
    let claimed = source
        .claim(owner, ClaimLimit::events(10), LEASE)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(source.ack(owner, &[claimed[0].event.id]).await.unwrap(), 1);
    db.cleanup().await;
}

/// Names from configuration never reach SQL unchecked. The unit tests in
/// `outbox/src/tables.rs` check which names are refused; this checks what
/// the error says: the offending name, quoted and escaped.
#[test]
fn identifiers_from_configuration_are_validated() {
    let evil = "x\"; DROP TABLE orders; --";
    let err = Tables::new(evil).unwrap_err();
    assert!(
        err.to_string()
            .contains("invalid table prefix \"x\\\"; DROP TABLE orders; --\""),
        "{err}"
    );
    assert!(Tables::default().schema(evil).is_err());
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
        .claim(owner, ClaimLimit::events(1), Duration::from_secs(60))
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
        .claim(owner, ClaimLimit::events(10), Duration::from_secs(60))
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
    let claimed = source
        .claim(owner, ClaimLimit::events(10), LEASE)
        .await
        .unwrap();
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
    let again = source
        .claim(owner, ClaimLimit::events(10), LEASE)
        .await
        .unwrap();
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
    let claimed = source
        .claim(owner, ClaimLimit::events(50), LEASE)
        .await
        .unwrap();
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
    let first = source
        .claim(one, ClaimLimit::events(10), LEASE)
        .await
        .unwrap();
    assert_eq!(sorted_ids(&first), vec![id(0), id(1), id(3), id(4)]);
    assert!(
        source
            .claim(two, ClaimLimit::events(10), LEASE)
            .await
            .unwrap()
            .is_empty(),
        "a key's second event was claimed while its head was leased"
    );
    assert_eq!(source.ack(one, &[id(0)]).await.unwrap(), 1);
    let second = source
        .claim(two, ClaimLimit::events(10), LEASE)
        .await
        .unwrap();
    assert_eq!(sorted_ids(&second), vec![id(2)]);
    // Released events are due at once and the attempt is not counted.
    assert_eq!(
        source.release(one, &[id(1), id(3), id(4)]).await.unwrap(),
        3
    );
    let third = source
        .claim(two, ClaimLimit::events(10), LEASE)
        .await
        .unwrap();
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
                let claimed = source
                    .claim(owner, ClaimLimit::events(4), LEASE)
                    .await
                    .unwrap();
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
    let first = source
        .claim(owner, ClaimLimit::events(10), LEASE)
        .await
        .unwrap();
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
        source
            .claim(other, ClaimLimit::events(10), LEASE)
            .await
            .unwrap()
            .is_empty(),
        "claimed before its delay"
    );
    tokio::time::sleep(delay / 2).await;
    assert!(
        source
            .claim(other, ClaimLimit::events(10), LEASE)
            .await
            .unwrap()
            .is_empty(),
        "claimed before its delay"
    );

    // After it, at once.
    let deadline = Instant::now() + Duration::from_secs(15);
    let again = loop {
        let claimed = source
            .claim(other, ClaimLimit::events(10), LEASE)
            .await
            .unwrap();
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
    let last = source
        .claim(other, ClaimLimit::events(10), LEASE)
        .await
        .unwrap();
    assert_eq!(sorted_ids(&last), vec![events[2].id]);
    db.cleanup().await;
}

/// Dead letters are retried for events that are gone (finished) or parked;
/// an event still waiting in the outbox keeps its dead letters and is not
/// put back a second time.
async fn retrying_dead_letters_leaves_waiting_events_alone(backend: Backend) {
    let db = TestDb::new(backend, "retry_dead_waiting").await;
    let events: Vec<NewEvent> = ["waiting", "parked", "finished"]
        .into_iter()
        .map(|payload| NewEvent::new("test.e", payload))
        .collect();
    enqueue_raw(&db, &events).await;
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let source = db.source();
    let owner = Uuid::now_v7();
    assert_eq!(
        source
            .claim(owner, ClaimLimit::events(10), LEASE)
            .await
            .unwrap()
            .len(),
        3
    );
    let audit = || {
        vec![Failure {
            publisher: "audit".into(),
            error: "refused".into(),
        }]
    };
    let outcomes = [
        Outcome::Retry {
            delay: Duration::from_secs(600),
            error: "billing: later".into(),
        },
        Outcome::Park {
            error: "audit: refused".into(),
        },
        Outcome::Finish,
    ];
    for (id, outcome) in ids.iter().zip(outcomes) {
        let settlement = Settlement::new(*id, outcome).with_dead_letters(audit());
        assert!(source.settle(owner, &settlement).await.unwrap());
    }
    assert_eq!(source.dead_letters(10).await.unwrap().len(), 3);

    let unknown = Uuid::now_v7();
    let filter = [ids[0], ids[1], ids[2], unknown, ids[1]];
    assert_eq!(source.retry_dead_letters(Some(&filter)).await.unwrap(), 2);
    let left = source.dead_letters(10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0].event.id, ids[0],
        "the waiting event keeps its dead letter"
    );
    assert_eq!(source.retry_dead_letters(None).await.unwrap(), 0);
    assert_eq!(source.dead_letters(10).await.unwrap().len(), 1);

    let again = source
        .claim(owner, ClaimLimit::events(10), LEASE)
        .await
        .unwrap();
    assert_eq!(sorted_ids(&again), vec![ids[1], ids[2]]);
    for claimed in &again {
        assert_eq!(claimed.only, Some(vec!["audit".to_owned()]));
        assert_eq!(claimed.event.attempt, 1);
    }
    db.cleanup().await;
}

/// More dead-lettered events than one statement takes on some backends,
/// retried and then acked in one call each.
async fn dead_letters_of_many_events_are_retried_at_once(backend: Backend) {
    const EVENTS: usize = 520;
    let db = TestDb::new(backend, "retry_dead_many").await;
    let events: Vec<NewEvent> = (0..EVENTS)
        .map(|n| NewEvent::new("test.e", n.to_string()))
        .collect();
    enqueue_raw(&db, &events).await;
    let source = db.source();
    let owner = Uuid::now_v7();
    let mut claimed = Vec::new();
    while claimed.len() < EVENTS {
        let batch = source
            .claim(owner, ClaimLimit::events(EVENTS), LEASE)
            .await
            .unwrap();
        assert!(!batch.is_empty(), "{} of {EVENTS} claimed", claimed.len());
        claimed.extend(batch);
    }
    for c in &claimed {
        let dead = Settlement::finish(c.event.id).with_dead_letters(vec![Failure {
            publisher: "sink".into(),
            error: "refused".into(),
        }]);
        assert!(source.settle(owner, &dead).await.unwrap());
    }
    assert_eq!(db.pending().await, 0);

    let mut ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    ids.reverse();
    assert_eq!(
        source.retry_dead_letters(Some(&ids)).await.unwrap(),
        EVENTS as u64
    );
    assert!(source.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(db.pending().await, EVENTS as u64);
    let mut again = Vec::new();
    while again.len() < EVENTS {
        let batch = source
            .claim(owner, ClaimLimit::events(EVENTS), LEASE)
            .await
            .unwrap();
        assert!(
            !batch.is_empty(),
            "{} of {EVENTS} claimed again",
            again.len()
        );
        again.extend(batch.into_iter().map(|c| c.event.id));
    }
    assert_eq!(source.ack(owner, &again).await.unwrap(), EVENTS as u64);
    assert_eq!(db.pending().await, 0);
    db.cleanup().await;
}

/// Set when a dead letter failed to `ago` before now, on the database's
/// clock.
async fn failed_ago(db: &TestDb, backend: Backend, id: Uuid, ago: Duration) {
    let (secs, ms) = (ago.as_secs(), ago.as_millis());
    let (failed_at, event) = match backend {
        Backend::Postgres => (
            format!("now() - interval '{secs} seconds'"),
            format!("'{id}'"),
        ),
        Backend::Sqlite => (
            format!("CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) - {ms}"),
            format!("'{id}'"),
        ),
        Backend::MySql => (
            format!("UTC_TIMESTAMP(3) - INTERVAL {secs} SECOND"),
            format!("UNHEX('{}')", id.simple()),
        ),
        Backend::Memory => unreachable!("the in-memory outbox runs no SQL"),
    };
    let sql =
        format!("UPDATE outbox_dead_letters SET failed_at = {failed_at} WHERE event_id = {event}");
    assert_eq!(db.exec(&sql).await, 1);
}

/// The Runner's retention purges the dead letters that failed longer than
/// an age ago on the database's clock (every other time of the outbox is on
/// it), and the parked events they held back, so their keys move on.
async fn dead_letters_older_than_an_age_are_purged_on_the_database_clock(backend: Backend) {
    let db = TestDb::new(backend, "purge_older").await;
    let (owner, events, settlements) = purge_setup(&db).await;
    let source = db.source();
    for settlement in &settlements {
        assert!(source.settle(owner, settlement).await.unwrap());
    }
    failed_ago(&db, backend, events[0].id, Duration::from_secs(2 * 3600)).await;
    failed_ago(&db, backend, events[1].id, Duration::from_secs(30 * 60)).await;
    purged_by_age(&db, owner, &events).await;
    db.cleanup().await;
}

/// [`dead_letters_older_than_an_age_are_purged_on_the_database_clock`] on
/// the in-memory outbox, whose clock is moved on instead of its rows
/// backdated.
async fn dead_letters_older_than_an_age_are_purged_on_the_memory_clock(backend: Backend) {
    let db = TestDb::new(backend, "purge_older_memory").await;
    let outbox = db.memory_outbox().expect("the in-memory backend");
    let (owner, events, settlements) = purge_setup(&db).await;
    let source = db.source();
    // Fencing is by the holder's id: a lease that expired but that nobody
    // claimed since still lets its holder settle (as in SQL).
    assert!(source.settle(owner, &settlements[0]).await.unwrap());
    outbox.advance(Duration::from_secs(90 * 60));
    assert!(source.settle(owner, &settlements[1]).await.unwrap());
    outbox.advance(Duration::from_secs(30 * 60));
    purged_by_age(&db, owner, &events).await;
}

/// Three events, `old` and `behind old` on one key: the first two claimed
/// by the returned owner, and how to settle each with a dead letter (the
/// first parked).
async fn purge_setup(db: &TestDb) -> (Uuid, [NewEvent; 3], [Settlement; 2]) {
    let events = [
        NewEvent::new("test.e", "old").partition_key("k"),
        NewEvent::new("test.e", "recent"),
        NewEvent::new("test.e", "behind old").partition_key("k"),
    ];
    enqueue_raw(db, &events).await;
    let owner = Uuid::now_v7();
    let claimed = db
        .source()
        .claim(owner, ClaimLimit::events(10), LEASE)
        .await
        .unwrap();
    assert_eq!(sorted_ids(&claimed), vec![events[0].id, events[1].id]);
    let dead = || {
        vec![Failure {
            publisher: "sink".into(),
            error: "refused".into(),
        }]
    };
    let park = Outcome::Park {
        error: "sink: refused".into(),
    };
    let settlements = [
        Settlement::new(events[0].id, park).with_dead_letters(dead()),
        Settlement::finish(events[1].id).with_dead_letters(dead()),
    ];
    (owner, events, settlements)
}

/// What the purge scenarios check, once the first event's dead letter
/// failed two hours ago and the second's half an hour ago.
async fn purged_by_age(db: &TestDb, owner: Uuid, events: &[NewEvent]) {
    let source = db.source();
    let hour = Duration::from_secs(3600);
    assert_eq!(source.purge_dead_letters_older_than(hour).await.unwrap(), 1);
    let left = source.dead_letters(10).await.unwrap();
    let left: Vec<Uuid> = left.iter().map(|d| d.event.id).collect();
    assert_eq!(
        left,
        vec![events[1].id],
        "not exactly the old one was purged"
    );
    let next = source
        .claim(owner, ClaimLimit::events(10), LEASE)
        .await
        .unwrap();
    assert_eq!(
        sorted_ids(&next),
        vec![events[2].id],
        "the purged dead letter's parked event still holds its key"
    );
    assert_eq!(source.purge_dead_letters_older_than(hour).await.unwrap(), 0);
    assert_eq!(
        source
            .purge_dead_letters_older_than(Duration::MAX)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        source
            .purge_dead_letters_older_than(Duration::ZERO)
            .await
            .unwrap(),
        1
    );
}

/// An event whose transaction commits late, with an older id than a parked
/// event of its key, is ahead of that event, not behind it: claimable, and
/// counted as pending (else `drain()` returns with it in the outbox). Found
/// by the simulation (`tests/simulation`, seed 128).
async fn a_late_commit_ahead_of_a_parked_event_is_pending(backend: Backend) {
    let db = TestDb::new(backend, "late_ahead_of_parked").await;
    let late = NewEvent::new("test.e", "late").partition_key("k");
    let parked = NewEvent::new("test.e", "parked").partition_key("k");
    let source = db.source();
    let owner = Uuid::now_v7();
    enqueue_raw(&db, std::slice::from_ref(&parked)).await;
    let claimed = source
        .claim(owner, ClaimLimit::events(10), LEASE)
        .await
        .unwrap();
    assert_eq!(sorted_ids(&claimed), vec![parked.id]);
    let park = Settlement::new(
        parked.id,
        Outcome::Park {
            error: "sink: refused".into(),
        },
    )
    .with_dead_letters(vec![Failure {
        publisher: "sink".into(),
        error: "refused".into(),
    }]);
    assert!(source.settle(owner, &park).await.unwrap());
    assert_eq!(
        source.pending().await.unwrap(),
        0,
        "a parked event is pending"
    );

    enqueue_raw(&db, std::slice::from_ref(&late)).await;
    assert_eq!(
        source.pending().await.unwrap(),
        1,
        "the late event was counted as behind the parked one"
    );
    let next = source
        .claim(owner, ClaimLimit::events(10), LEASE)
        .await
        .unwrap();
    assert_eq!(
        sorted_ids(&next),
        vec![late.id],
        "the late event heads its key"
    );
    db.cleanup().await;
}

/// A purge leaves alone the dead letter of an event still waiting in the
/// outbox for another publisher, as a retry does: under `KeyPolicy::Block`
/// that event is parked once the other publisher is done, and must then
/// still have a dead letter for an operator to retry or purge; purged
/// earlier, it held its key for good. Found by the simulation
/// (`tests/simulation`, seed 262).
async fn a_purge_leaves_the_dead_letters_of_a_waiting_event(backend: Backend) {
    let db = TestDb::new(backend, "purge_waiting").await;
    let first = NewEvent::new("test.e", "first").partition_key("k");
    let behind = NewEvent::new("test.e", "behind").partition_key("k");
    enqueue_raw(&db, &[first.clone(), behind.clone()]).await;
    let source = db.source();
    let owner = Uuid::now_v7();
    let everything = SystemTime::now() + Duration::from_secs(365 * 24 * 3600);
    let refused = || {
        vec![Failure {
            publisher: "a".into(),
            error: "refused".into(),
        }]
    };

    // `a` refuses for good; `b` fails for now.
    let claimed = source
        .claim(owner, ClaimLimit::events(10), LEASE)
        .await
        .unwrap();
    assert_eq!(sorted_ids(&claimed), vec![first.id]);
    let retry = Outcome::Retry {
        delay: Duration::ZERO,
        error: "b: unavailable".into(),
    };
    let settlement = Settlement::new(first.id, retry).with_dead_letters(refused());
    assert!(source.settle(owner, &settlement).await.unwrap());
    assert_eq!(
        source.purge_dead_letters(everything).await.unwrap(),
        0,
        "purged the dead letter of an event still waiting for `b`"
    );

    // `b` delivers: the event is parked for its dead letter, which a purge
    // then removes with it, and the key moves on.
    let claimed = source
        .claim(owner, ClaimLimit::events(10), LEASE)
        .await
        .unwrap();
    assert_eq!(sorted_ids(&claimed), vec![first.id]);
    assert_eq!(claimed[0].dead, vec!["a".to_owned()]);
    let mut park = Settlement::new(
        first.id,
        Outcome::Park {
            error: "a: refused".into(),
        },
    )
    .with_delivered(vec!["b".into()]);
    park.dead = vec!["a".into()];
    assert!(source.settle(owner, &park).await.unwrap());
    let letters = source.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1, "the parked event has no dead letter");
    assert_eq!(source.purge_dead_letters(everything).await.unwrap(), 1);
    let next = source
        .claim(owner, ClaimLimit::events(10), LEASE)
        .await
        .unwrap();
    assert_eq!(
        sorted_ids(&next),
        vec![behind.id],
        "the key did not move on"
    );
    db.cleanup().await;
}
