//! The MQTT publisher against the real Mosquitto on 127.0.0.1:1883 (MQTT
//! v5). Each test publishes to its own topic, and a subscriber of its own,
//! connected straight to the broker, checks what arrives.
//!
//! `cargo test --features mqtt --test broker_mqtt`

use std::collections::BTreeSet;
use std::time::Duration;

use outbox::brokers::{Route, header};
use outbox::mqtt::MqttPublisher;
use outbox::mqtt::rumqttc::v5::mqttbytes::QoS;
use outbox::mqtt::rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use outbox::mqtt::rumqttc::v5::{AsyncClient, Event, MqttOptions};
use outbox::{NewEvent, OutboxEvent, publisher_fn};
use outbox_tests::proxy::FaultProxy;
use outbox_tests::{Backend, Recording, TestDb};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

fn suffix() -> String {
    format!("{:08x}", fastrand::u32(..))
}

fn unique_topic(test: &str) -> String {
    format!("outbox/test/{test}/{}", suffix())
}

fn options(port: u16) -> MqttOptions {
    MqttOptions::new(format!("outbox-test-{}", suffix()), "127.0.0.1", port)
}

/// A client subscribed (QoS 1) to `filter` on the real broker.
struct Subscriber {
    messages: mpsc::UnboundedReceiver<Publish>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    async fn new(filter: &str) -> Self {
        let (client, mut eventloop) = AsyncClient::new(options(1883), 100);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let (tx, messages) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let _client = client;
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(s) = subscribed_tx.take() {
                            let _ = s.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(p);
                    }
                    Ok(_) => {}
                    Err(e) => panic!("test subscriber lost Mosquitto on 127.0.0.1:1883: {e}"),
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed)
            .await
            .expect("cannot subscribe on Mosquitto at 127.0.0.1:1883")
            .unwrap();
        Self { messages, task }
    }

    async fn next(&mut self) -> Publish {
        tokio::time::timeout(Duration::from_secs(10), self.messages.recv())
            .await
            .expect("a message arrives")
            .unwrap()
    }

    /// Everything that arrives within `quiet`.
    async fn drain(&mut self, quiet: Duration) -> Vec<Publish> {
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout(quiet, self.messages.recv()).await {
            out.push(m);
        }
        out
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn user_property(p: &Publish, name: &str) -> Option<String> {
    p.properties
        .as_ref()?
        .user_properties
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

fn raw_event(topic: &str, payload: &[u8]) -> NewEvent {
    let mut event = NewEvent::new("test.mqtt.order", payload.to_vec());
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
async fn message_carries_id_metadata_and_payload() {
    let topic = unique_topic("meta");
    let mut subscriber = Subscriber::new(&topic).await;
    let db = TestDb::new(Backend::Sqlite, "mqtt_meta").await;
    let payload = br#"{"order_id":7,"total_cents":1299}"#;
    let event = raw_event(&topic, payload);
    enqueue(&db, std::slice::from_ref(&event)).await;

    let mqtt = MqttPublisher::connect(options(1883)).await.unwrap();
    let report = db.drain_with(mqtt).await;
    assert_eq!((report.published, report.dead_lettered), (1, 0));

    let m = subscriber.next().await;
    assert_eq!(&m.topic[..], topic.as_bytes(), "default route: the topic");
    assert_eq!(&m.payload[..], payload);
    let id = event.id.to_string();
    assert_eq!(user_property(&m, header::EVENT_ID), Some(id));
    assert_eq!(
        user_property(&m, header::EVENT_TYPE).as_deref(),
        Some("test.mqtt.order")
    );
    assert_eq!(user_property(&m, header::VERSION).as_deref(), Some("1"));
    assert_eq!(
        user_property(&m, header::CONTENT_TYPE).as_deref(),
        Some("application/json")
    );
    assert_eq!(
        user_property(&m, header::PARTITION_KEY).as_deref(),
        Some("order-7")
    );
    assert_eq!(
        user_property(&m, "traceparent").as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    let content_type = m.properties.as_ref().and_then(|p| p.content_type.clone());
    assert_eq!(content_type.as_deref(), Some("application/json"));
    assert!(
        subscriber
            .drain(Duration::from_millis(200))
            .await
            .is_empty(),
        "delivered once"
    );
    db.cleanup().await;
}

/// Many publishes in flight at once (more than Mosquitto's 20 unacknowledged
/// messages): each one is matched to its own PUBACK, and every event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_each_wait_for_their_puback() {
    let topic = unique_topic("many");
    let mut subscriber = Subscriber::new(&topic).await;
    let db = TestDb::new(Backend::Sqlite, "mqtt_many").await;
    let events: Vec<NewEvent> = (0..120)
        .map(|i| {
            let mut e = raw_event(&topic, format!("{{\"i\":{i}}}").as_bytes());
            e.partition_key = None;
            e
        })
        .collect();
    enqueue(&db, &events).await;

    let mqtt = MqttPublisher::connect(options(1883)).await.unwrap();
    let report = db
        .runner()
        .publisher(mqtt)
        .concurrency(64)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(
        (report.published, report.retried, report.dead_lettered),
        (120, 0, 0)
    );

    let mut received = BTreeSet::new();
    while received.len() < events.len() {
        let m = subscriber.next().await;
        received.insert(user_property(&m, header::EVENT_ID).unwrap());
    }
    let sent: BTreeSet<String> = events.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(received, sent);
    db.cleanup().await;
}

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "test.mqtt.ping", topic = "pings")]
struct Ping {
    n: u32,
}

/// `publish_event` from a user's publisher, with a template route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_event_from_own_publisher() {
    let prefix = unique_topic("own");
    let mut subscriber = Subscriber::new(&format!("{prefix}/#")).await;
    let db = TestDb::new(Backend::Sqlite, "mqtt_own").await;
    let mut tx = db.begin().await;
    let id = tx.enqueue(&Ping { n: 5 }).await;
    tx.commit().await;

    let mqtt = MqttPublisher::new(options(1883)).route(Route::template(format!(
        "{prefix}/{{topic}}/{{event_type}}"
    )));
    let own = publisher_fn::<Ping, _, _>("own", move |_, cx| {
        let mqtt = mqtt.clone();
        async move { mqtt.publish_event(cx.event()).await }
    });
    let report = db.drain_with(own).await;
    assert_eq!(report.published, 1);
    let m = subscriber.next().await;
    assert_eq!(
        &m.topic[..],
        format!("{prefix}/pings/test.mqtt.ping").as_bytes()
    );
    assert_eq!(user_property(&m, header::EVENT_ID), Some(id.to_string()));
    assert_eq!(&m.payload[..], br#"{"n":5}"#);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_packet_is_dead_lettered_at_once() {
    let topic = unique_topic("big");
    let mut subscriber = Subscriber::new(&topic).await;
    let db = TestDb::new(Backend::Sqlite, "mqtt_big").await;
    let big = raw_event(&topic, format!("\"{}\"", "x".repeat(100 * 1024)).as_bytes());
    let small = raw_event(&topic, br#"{"small":true}"#);
    enqueue(&db, std::slice::from_ref(&big)).await;
    enqueue(&db, std::slice::from_ref(&small)).await;

    let mqtt = MqttPublisher::connect(options(1883))
        .await
        .unwrap()
        .max_packet_size(64 * 1024);
    let report = db
        .runner()
        .publisher(mqtt)
        .max_attempts(5)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!((report.published, report.dead_lettered), (1, 1));
    let dead = db.source().dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].publisher, "mqtt");
    assert_eq!(dead[0].event.id, big.id);
    assert_eq!(dead[0].attempts, 1, "permanent: not retried");
    assert!(
        dead[0].error.contains("maximum packet size"),
        "{}",
        dead[0].error
    );

    let m = subscriber.next().await;
    assert_eq!(
        user_property(&m, header::EVENT_ID),
        Some(small.id.to_string())
    );
    assert!(
        subscriber
            .drain(Duration::from_millis(300))
            .await
            .is_empty()
    );
    db.cleanup().await;
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Down,
    Blackhole,
}

/// While the path to the broker is broken, publishes fail and the event
/// stays in the outbox; afterwards it arrives.
async fn outage(fault: Fault, test: &str) {
    let topic = unique_topic(test);
    let mut subscriber = Subscriber::new(&topic).await;
    let db = TestDb::new(Backend::Sqlite, &format!("mqtt_{test}")).await;
    let proxy = FaultProxy::start("127.0.0.1:1883".parse().unwrap()).await;
    let mqtt = Recording::new(
        MqttPublisher::connect(options(proxy.port()))
            .await
            .unwrap()
            .timeout(Duration::from_millis(400)),
    );

    match fault {
        Fault::Down => proxy.down(),
        Fault::Blackhole => proxy.blackhole(true),
    }
    let event = raw_event(&topic, br#"{"during":"outage"}"#);
    enqueue(&db, std::slice::from_ref(&event)).await;
    let runner = db
        .runner()
        .publisher(mqtt.clone())
        .max_attempts(1_000)
        .build()
        .unwrap();
    let drain = tokio::spawn(runner.drain());

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        db.pending().await,
        1,
        "no success without the broker's PUBACK"
    );
    assert!(
        subscriber
            .drain(Duration::from_millis(100))
            .await
            .is_empty(),
        "nothing reached the broker"
    );
    proxy.up();

    let report = tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .expect("the event is delivered once the broker is reachable")
        .unwrap()
        .unwrap();
    assert_eq!((report.published, report.dead_lettered), (1, 0));
    assert!(report.retried >= 1, "attempts failed during the outage");
    mqtt.assert_transient_failures_then_success();
    let mut arrived = vec![subscriber.next().await];
    arrived.extend(subscriber.drain(Duration::from_millis(300)).await);
    if let Fault::Down = fault {
        assert_eq!(
            arrived.len(),
            1,
            "refused attempts never reached the broker"
        );
    }
    for m in &arrived {
        assert_eq!(
            user_property(m, header::EVENT_ID),
            Some(event.id.to_string())
        );
        assert_eq!(&m.payload[..], br#"{"during":"outage"}"#);
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_fails_then_delivers_after_up() {
    outage(Fault::Down, "down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_publish_times_out_then_is_delivered() {
    outage(Fault::Blackhole, "blackhole").await;
}
