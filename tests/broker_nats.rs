//! The NATS JetStream publisher against the real server on 127.0.0.1:4222
//! (JetStream on). Each test makes its own stream on its own subject and
//! reads back, with the client, what JetStream stored.
//!
//! `cargo test --features nats --test broker_nats`

use std::net::SocketAddr;
use std::time::Duration;

use outbox::brokers::{Route, header};
use outbox::nats::async_nats::jetstream::{self, stream::Stream};
use outbox::nats::{JetStreamPublisher, MSG_ID, async_nats};
use outbox::{NewEvent, OutboxEvent, PublishError, Publisher, publisher_fn};
use outbox_tests::proxy::FaultProxy;
use outbox_tests::{Backend, Recording, TestDb};
use serde::{Deserialize, Serialize};

const NATS: &str = "127.0.0.1:4222";

fn nats_addr() -> SocketAddr {
    NATS.parse().unwrap()
}

async fn jetstream_at(addr: &str) -> jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(addr)
        .await
        .expect("cannot reach NATS on 127.0.0.1:4222; start nats-server with JetStream (-js)");
    jetstream::new(client)
}

/// A stream of its own that stores `subject`, on the real server.
struct TestStream {
    js: jetstream::Context,
    name: String,
    subject: String,
    stream: Stream,
}

impl TestStream {
    async fn new(test: &str) -> Self {
        let js = jetstream_at(NATS).await;
        let suffix = format!("{:08x}", fastrand::u32(..));
        let name = format!("OUTBOX_{}_{suffix}", test.to_uppercase());
        let subject = format!("outbox.test.{test}.{suffix}");
        let stream = js
            .create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                ..Default::default()
            })
            .await
            .unwrap();
        Self {
            js,
            name,
            subject,
            stream,
        }
    }

    async fn count(&mut self) -> u64 {
        self.stream.info().await.unwrap().state.messages
    }

    async fn messages(&mut self) -> Vec<jetstream::message::StreamMessage> {
        let state = self.stream.info().await.unwrap().state.clone();
        let mut out = Vec::new();
        for seq in state.first_sequence..=state.last_sequence {
            if let Ok(m) = self.stream.get_raw_message(seq).await {
                out.push(m);
            }
        }
        out
    }

    async fn delete(self) {
        self.js.delete_stream(&self.name).await.unwrap();
    }
}

fn raw_event(topic: &str, payload: &[u8]) -> NewEvent {
    let mut event = NewEvent::new("test.nats.order", payload.to_vec());
    event.topic = topic.to_owned();
    event.partition_key = Some("order-7".to_owned());
    event.headers.insert(
        "traceparent".to_owned(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
    );
    event
}

async fn enqueue(db: &TestDb, event: &NewEvent) {
    let mut tx = db.begin().await;
    tx.enqueue_raw(std::slice::from_ref(event)).await;
    tx.commit().await;
}

fn header_value(m: &jetstream::message::StreamMessage, name: &str) -> Option<String> {
    m.headers.get(name).map(|v| v.as_str().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_carries_id_metadata_and_payload() {
    let mut stream = TestStream::new("meta").await;
    let db = TestDb::new(Backend::Sqlite, "nats_meta").await;
    let payload = br#"{"order_id":7,"total_cents":1299}"#;
    let event = raw_event(&stream.subject, payload);
    enqueue(&db, &event).await;

    let nats = JetStreamPublisher::new(stream.js.clone());
    let report = db.drain_with(nats).await;
    assert_eq!((report.published, report.dead_lettered), (1, 0));

    let messages = stream.messages().await;
    assert_eq!(messages.len(), 1, "exactly one message is stored");
    let m = &messages[0];
    assert_eq!(
        m.subject.as_str(),
        stream.subject,
        "default route: the topic"
    );
    assert_eq!(&m.payload[..], payload);
    let id = event.id.to_string();
    assert_eq!(header_value(m, MSG_ID).as_deref(), Some(id.as_str()));
    assert_eq!(
        header_value(m, header::EVENT_ID).as_deref(),
        Some(id.as_str())
    );
    assert_eq!(
        header_value(m, header::EVENT_TYPE).as_deref(),
        Some("test.nats.order")
    );
    assert_eq!(header_value(m, header::VERSION).as_deref(), Some("1"));
    assert_eq!(
        header_value(m, header::CONTENT_TYPE).as_deref(),
        Some("application/json")
    );
    assert_eq!(
        header_value(m, header::PARTITION_KEY).as_deref(),
        Some("order-7")
    );
    assert_eq!(
        header_value(m, "traceparent").as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    stream.delete().await;
    db.cleanup().await;
}

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "test.nats.ping", topic = "unused-topic")]
struct Ping {
    n: u32,
}

/// `publish_event` from a user's publisher, twice for one event: JetStream
/// stores it once and the second publish is still a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_event_id_twice_is_stored_once_and_both_succeed() {
    let mut stream = TestStream::new("dedup").await;
    let db = TestDb::new(Backend::Sqlite, "nats_dedup").await;
    let mut tx = db.begin().await;
    let id = tx.enqueue(&Ping { n: 3 }).await;
    tx.commit().await;

    let subject = stream.subject.clone();
    let nats =
        JetStreamPublisher::new(stream.js.clone()).route(Route::function(move |_| subject.clone()));
    let own = publisher_fn::<Ping, _, _>("twice", move |ping, cx| {
        let nats = nats.clone();
        async move {
            assert_eq!(ping.n, 3);
            nats.publish_event(cx.event()).await?;
            nats.publish_event(cx.event()).await?;
            Ok::<(), PublishError>(())
        }
    });
    let report = db.drain_with(own).await;
    assert_eq!(
        (report.published, report.retried, report.dead_lettered),
        (1, 0, 0)
    );

    assert_eq!(stream.count().await, 1, "JetStream dropped the duplicate");
    let messages = stream.messages().await;
    assert_eq!(header_value(&messages[0], MSG_ID), Some(id.to_string()));
    assert_eq!(&messages[0].payload[..], br#"{"n":3}"#);
    stream.delete().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payload_is_dead_lettered_at_once() {
    let mut stream = TestStream::new("big").await;
    let db = TestDb::new(Backend::Sqlite, "nats_big").await;
    let max = stream.js.client().max_payload();
    assert!(max > 0, "the server announced its max_payload");
    let payload = format!("\"{}\"", "x".repeat(max));
    let event = raw_event(&stream.subject, payload.as_bytes());
    enqueue(&db, &event).await;

    let nats = JetStreamPublisher::new(stream.js.clone());
    let report = db
        .runner()
        .publisher(nats)
        .max_attempts(5)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!((report.published, report.dead_lettered), (0, 1));
    let dead = db.source().dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].publisher, "nats");
    assert_eq!(dead[0].attempts, 1, "permanent: not retried");
    assert!(dead[0].error.contains("max_payload"), "{}", dead[0].error);
    assert_eq!(dead[0].event.id, event.id);
    assert_eq!(stream.count().await, 0);
    stream.delete().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_without_stream_is_retried_then_dead_lettered_with_advice() {
    let js = jetstream_at(NATS).await;
    let db = TestDb::new(Backend::Sqlite, "nats_nostream").await;
    let subject = format!("outbox.test.nostream.{:08x}", fastrand::u32(..));
    enqueue(&db, &raw_event(&subject, b"{}")).await;

    let nats = JetStreamPublisher::new(js).named("nats-orders");
    assert_eq!(nats.name(), "nats-orders", "Publisher::name reads it back");
    let report = db
        .runner()
        .publisher(nats)
        .max_attempts(2)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(
        (report.published, report.retried, report.dead_lettered),
        (0, 1, 1)
    );
    let dead = db.source().dead_letters(10).await.unwrap();
    assert_eq!(dead[0].publisher, "nats-orders");
    assert_eq!(dead[0].attempts, 2, "transient: retried");
    assert!(
        dead[0].error.contains("create a stream"),
        "{}",
        dead[0].error
    );
    assert!(dead[0].error.contains(&subject), "{}", dead[0].error);
    db.cleanup().await;
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Down,
    Blackhole,
}

/// While the path to the server is broken, publishes fail and the event
/// stays in the outbox; afterwards it is stored exactly once.
async fn outage(fault: Fault, test: &str) {
    let mut stream = TestStream::new(test).await;
    let db = TestDb::new(Backend::Sqlite, &format!("nats_{test}")).await;
    let proxy = FaultProxy::start(nats_addr()).await;
    let js = jetstream_at(&proxy.addr().to_string()).await;
    let nats = Recording::new(JetStreamPublisher::new(js).timeout(Duration::from_millis(400)));

    match fault {
        Fault::Down => proxy.down(),
        Fault::Blackhole => proxy.blackhole(true),
    }
    let event = raw_event(&stream.subject, br#"{"during":"outage"}"#);
    enqueue(&db, &event).await;
    let runner = db
        .runner()
        .publisher(nats.clone())
        .max_attempts(1_000)
        .build()
        .unwrap();
    let drain = tokio::spawn(runner.drain());

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        db.pending().await,
        1,
        "no success without the server's PubAck"
    );
    assert_eq!(stream.count().await, 0, "nothing reached the server");
    proxy.up();

    let report = tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .expect("the event is delivered once the server is reachable")
        .unwrap()
        .unwrap();
    assert_eq!((report.published, report.dead_lettered), (1, 0));
    assert!(report.retried >= 1, "attempts failed during the outage");
    nats.assert_transient_failures_then_success();
    let messages = stream.messages().await;
    assert_eq!(
        messages.len(),
        1,
        "stored once, duplicates dropped by Nats-Msg-Id"
    );
    assert_eq!(
        header_value(&messages[0], MSG_ID),
        Some(event.id.to_string())
    );
    assert_eq!(&messages[0].payload[..], br#"{"during":"outage"}"#);
    assert_eq!(db.pending().await, 0);
    stream.delete().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_fails_then_delivers_after_up() {
    outage(Fault::Down, "down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_publish_times_out_then_is_stored_once() {
    outage(Fault::Blackhole, "blackhole").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_selected_types_are_forwarded() {
    let mut stream = TestStream::new("select").await;
    let db = TestDb::new(Backend::Sqlite, "nats_select").await;
    let mut wanted = raw_event(&stream.subject, br#"{"wanted":true}"#);
    wanted.event_type = "test.nats.wanted".to_owned();
    let mut other = raw_event(&stream.subject, br#"{"wanted":false}"#);
    other.event_type = "test.nats.other".to_owned();
    let mut tx = db.begin().await;
    tx.enqueue_raw(&[wanted.clone(), other]).await;
    tx.commit().await;

    let nats = JetStreamPublisher::new(stream.js.clone())
        .select(outbox::brokers::Selection::only(["test.nats.wanted"]));
    let forwarded = outbox_tests::Recorder::new("all", &["test.nats.wanted", "test.nats.other"]);
    let report = db
        .runner()
        .publisher(nats)
        .publisher(forwarded.clone())
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.published, 3);
    let messages = stream.messages().await;
    assert_eq!(messages.len(), 1);
    assert_eq!(
        header_value(&messages[0], MSG_ID),
        Some(wanted.id.to_string())
    );
    assert_eq!(forwarded.calls().len(), 2);
    stream.delete().await;
    db.cleanup().await;
}
