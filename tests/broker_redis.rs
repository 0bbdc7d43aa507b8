//! The Redis Streams publisher against the real server on 127.0.0.1:6379.
//! Each test writes to its own stream key and reads back, with the client,
//! what Redis stored.
//!
//! `cargo test --features redis --test broker_redis`

use std::time::Duration;

use outbox::brokers::{Route, header};
use outbox::redis::redis::{self, AsyncCommands};
use outbox::redis::{ID_FIELD, PAYLOAD_FIELD, RedisStreamPublisher};
use outbox::{NewEvent, OutboxEvent, publisher_fn};
use outbox_tests::proxy::FaultProxy;
use outbox_tests::{Backend, Recording, TestDb};
use serde::{Deserialize, Serialize};

const REDIS: &str = "redis://127.0.0.1:6379/";

/// One stream entry: its fields in order.
type Entry = Vec<(String, Vec<u8>)>;

async fn direct() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("cannot reach Redis on 127.0.0.1:6379")
}

fn unique_key(test: &str) -> String {
    format!("outbox:test:{test}:{:08x}", fastrand::u32(..))
}

async fn entries(key: &str) -> Vec<Entry> {
    let mut conn = direct().await;
    let reply: Vec<(String, Entry)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    reply.into_iter().map(|(_, fields)| fields).collect()
}

async fn delete(key: &str) {
    let mut conn = direct().await;
    let _: () = conn.del(key).await.unwrap();
}

fn field(entry: &Entry, name: &str) -> Option<String> {
    entry
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

fn raw_event(topic: &str, payload: &[u8]) -> NewEvent {
    let mut event = NewEvent::new("test.redis.order", payload.to_vec());
    event.topic = topic.to_owned();
    event.partition_key = Some("order-7".to_owned());
    event.headers.insert(
        "traceparent".to_owned(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
    );
    event
}

async fn enqueue(db: &TestDb, events: &[NewEvent]) {
    let mut tx = db.begin().await;
    tx.enqueue_raw(events).await;
    tx.commit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_carries_id_metadata_and_payload() {
    let key = unique_key("meta");
    let db = TestDb::new(Backend::Sqlite, "redis_meta").await;
    let payload = br#"{"order_id":7,"total_cents":1299}"#;
    let event = raw_event(&key, payload);
    enqueue(&db, std::slice::from_ref(&event)).await;

    let redis = RedisStreamPublisher::connect(REDIS).await.unwrap();
    let report = db.drain_with(redis).await;
    assert_eq!((report.published, report.dead_lettered), (1, 0));

    let stored = entries(&key).await;
    assert_eq!(
        stored.len(),
        1,
        "one entry, in the stream named by the topic"
    );
    let entry = &stored[0];
    let id = event.id.to_string();
    assert_eq!(
        entry[0],
        (ID_FIELD.to_owned(), id.clone().into_bytes()),
        "id comes first"
    );
    assert_eq!(entry[1], (PAYLOAD_FIELD.to_owned(), payload.to_vec()));
    assert_eq!(field(entry, header::EVENT_ID), Some(id));
    assert_eq!(
        field(entry, header::EVENT_TYPE).as_deref(),
        Some("test.redis.order")
    );
    assert_eq!(field(entry, header::VERSION).as_deref(), Some("1"));
    assert_eq!(
        field(entry, header::CONTENT_TYPE).as_deref(),
        Some("application/json")
    );
    assert_eq!(
        field(entry, header::PARTITION_KEY).as_deref(),
        Some("order-7")
    );
    assert_eq!(
        field(entry, "traceparent").as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    delete(&key).await;
    db.cleanup().await;
}

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "test.redis.ping", topic = "pings", key = n)]
struct Ping {
    n: u32,
}

/// `publish_event` from a user's publisher, with a template route and an
/// existing ConnectionManager; events of one key keep their order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_event_from_own_publisher_in_key_order() {
    let prefix = unique_key("own");
    let key = format!("{prefix}:pings:1");
    let db = TestDb::new(Backend::Sqlite, "redis_own").await;
    let mut tx = db.begin().await;
    let ids = tx
        .enqueue_all(&[Ping { n: 1 }, Ping { n: 1 }, Ping { n: 1 }])
        .await;
    tx.commit().await;

    let manager = redis::aio::ConnectionManager::new(redis::Client::open(REDIS).unwrap())
        .await
        .unwrap();
    let redis = RedisStreamPublisher::new(manager)
        .route(Route::template(format!("{prefix}:{{topic}}:{{key}}")));
    let own = publisher_fn::<Ping, _, _>("own", move |_, cx| {
        let redis = redis.clone();
        async move { redis.publish_event(cx.event()).await }
    });
    let report = db.drain_with(own).await;
    assert_eq!(report.published, 3);

    let stored: Vec<String> = entries(&key)
        .await
        .iter()
        .map(|e| field(e, ID_FIELD).unwrap())
        .collect();
    let expected: Vec<String> = ids.iter().map(ToString::to_string).collect();
    assert_eq!(stored, expected);
    delete(&key).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_len_trims_the_stream() {
    let key = unique_key("trim");
    let db = TestDb::new(Backend::Sqlite, "redis_trim").await;
    let events: Vec<NewEvent> = (0..300)
        .map(|i| {
            let mut e = raw_event(&key, format!("{{\"i\":{i}}}").as_bytes());
            e.partition_key = None;
            e
        })
        .collect();
    enqueue(&db, &events).await;

    let redis = RedisStreamPublisher::connect(REDIS)
        .await
        .unwrap()
        .max_len(10);
    let report = db.drain_with(redis).await;
    assert_eq!(report.published, 300);
    let mut conn = direct().await;
    let len: usize = conn.xlen(&key).await.unwrap();
    assert!(
        (10..300).contains(&len),
        "MAXLEN ~ 10 trimmed the stream (approximately): {len} entries"
    );
    delete(&key).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_of_another_type_is_dead_lettered_at_once() {
    let key = unique_key("wrongtype");
    let mut conn = direct().await;
    let _: () = conn.set(&key, "not a stream").await.unwrap();
    let db = TestDb::new(Backend::Sqlite, "redis_wrongtype").await;
    let event = raw_event(&key, b"{}");
    enqueue(&db, std::slice::from_ref(&event)).await;

    let redis = RedisStreamPublisher::connect(REDIS).await.unwrap();
    let report = db
        .runner()
        .publisher(redis)
        .max_attempts(5)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!((report.published, report.dead_lettered), (0, 1));
    let dead = db.source().dead_letters(10).await.unwrap();
    assert_eq!(dead[0].publisher, "redis");
    assert_eq!(dead[0].attempts, 1, "permanent: not retried");
    assert!(dead[0].error.contains("not a stream"), "{}", dead[0].error);
    let value: String = conn.get(&key).await.unwrap();
    assert_eq!(value, "not a stream", "the key was left alone");
    delete(&key).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payload_is_dead_lettered_at_once() {
    let key = unique_key("big");
    let db = TestDb::new(Backend::Sqlite, "redis_big").await;
    enqueue(
        &db,
        &[raw_event(
            &key,
            format!("\"{}\"", "x".repeat(2048)).as_bytes(),
        )],
    )
    .await;

    let redis = RedisStreamPublisher::connect(REDIS)
        .await
        .unwrap()
        .max_payload(1024);
    let report = db.drain_with(redis).await;
    assert_eq!(report.dead_lettered, 1);
    let dead = db.source().dead_letters(10).await.unwrap();
    assert_eq!(dead[0].attempts, 1);
    assert!(
        dead[0].error.contains("above the Redis limit"),
        "{}",
        dead[0].error
    );
    assert!(entries(&key).await.is_empty());
    db.cleanup().await;
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Down,
    Blackhole,
}

/// While the path to Redis is broken, publishes fail and the event stays in
/// the outbox; afterwards Redis has it.
async fn outage(fault: Fault, test: &str) {
    let key = unique_key(test);
    let db = TestDb::new(Backend::Sqlite, &format!("redis_{test}")).await;
    let proxy = FaultProxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let redis = Recording::new(
        RedisStreamPublisher::connect(&format!("redis://{}/", proxy.addr()))
            .await
            .unwrap()
            .timeout(Duration::from_millis(400)),
    );

    match fault {
        Fault::Down => proxy.down(),
        Fault::Blackhole => proxy.blackhole(true),
    }
    let event = raw_event(&key, br#"{"during":"outage"}"#);
    enqueue(&db, std::slice::from_ref(&event)).await;
    let runner = db
        .runner()
        .publisher(redis.clone())
        .max_attempts(1_000)
        .build()
        .unwrap();
    let drain = tokio::spawn(runner.drain());

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(db.pending().await, 1, "no success without Redis's answer");
    assert!(entries(&key).await.is_empty(), "nothing reached Redis");
    proxy.up();

    let report = tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .expect("the event is delivered once Redis is reachable")
        .unwrap()
        .unwrap();
    assert_eq!((report.published, report.dead_lettered), (1, 0));
    assert!(report.retried >= 1, "attempts failed during the outage");
    redis.assert_transient_failures_then_success();
    // Requests held by the blackhole reach Redis once it lifts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored = entries(&key).await;
    match fault {
        Fault::Down => assert_eq!(stored.len(), 1, "refused attempts never reached Redis"),
        Fault::Blackhole => assert!(!stored.is_empty()),
    }
    for entry in &stored {
        assert_eq!(field(entry, ID_FIELD), Some(event.id.to_string()));
        assert_eq!(
            field(entry, PAYLOAD_FIELD).as_deref(),
            Some(r#"{"during":"outage"}"#)
        );
    }
    delete(&key).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_fails_then_delivers_after_up() {
    outage(Fault::Down, "down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_xadd_times_out_then_is_delivered() {
    outage(Fault::Blackhole, "blackhole").await;
}
