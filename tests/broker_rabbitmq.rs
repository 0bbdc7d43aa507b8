//! The RabbitMQ publisher against the real RabbitMQ on 127.0.0.1:5672
//! (guest/guest): what a message carries, confirms, unroutable and refused
//! messages, size limits, and connection loss through a fault proxy.
//!
//! Each test declares its own exchange and queue (random names) and deletes
//! them at the end.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::brokers::{Route, Selection, header};
use outbox::rabbitmq::RabbitPublisher;
use outbox::rabbitmq::lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use outbox::rabbitmq::lapin::types::{AMQPValue, FieldTable, LongString};
use outbox::rabbitmq::lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
};
use outbox::{FailureKind, NewEvent, OutboxEvent, Uuid, publisher_fn};
use outbox_tests::proxy::FaultProxy;
use outbox_tests::{Backend, Outcome, Recorder, Recording, TestDb, unique_name};
use serde::{Deserialize, Serialize};

const RABBIT: &str = "127.0.0.1:5672";
const KEY: &str = "orders";

fn amqp_uri(addr: &str) -> String {
    format!("amqp://guest:guest@{addr}/%2f")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "test.order", topic = "orders", key = order_id, version = 3)]
struct TestOrder {
    order_id: i64,
    note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "test.invoice", topic = "orders")]
struct TestInvoice {
    invoice: String,
}

fn order(id: i64) -> TestOrder {
    TestOrder {
        order_id: id,
        note: format!("order {id}"),
    }
}

/// A message read back from a queue.
struct Received {
    properties: BasicProperties,
    payload: Vec<u8>,
}

impl Received {
    fn message_id(&self) -> String {
        self.properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default()
    }

    fn header(&self, name: &str) -> Option<String> {
        let headers = self.properties.headers().as_ref()?;
        match headers.inner().get(name)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            other => Some(format!("{other:?}")),
        }
    }
}

/// One test's exchange and queue, declared on a direct connection.
struct Broker {
    _connection: Connection,
    channel: Channel,
    exchange: String,
    queue: String,
}

impl Broker {
    /// A direct exchange, and a queue bound to it with routing key `orders`
    /// unless `bind` is false.
    async fn new(test: &str, bind: bool, queue_args: FieldTable) -> Self {
        let connection = Connection::connect(&amqp_uri(RABBIT), ConnectionProperties::default())
            .await
            .expect("cannot reach RabbitMQ on 127.0.0.1:5672 (guest/guest); start it");
        let channel = connection.create_channel().await.unwrap();
        let exchange = unique_name(&format!("x_{test}"));
        let queue = unique_name(&format!("q_{test}"));
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                queue_args,
            )
            .await
            .unwrap();
        let broker = Self {
            _connection: connection,
            channel,
            exchange,
            queue,
        };
        if bind {
            broker.bind().await;
        }
        broker
    }

    async fn bind(&self) {
        self.channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    /// Take every message in the queue.
    async fn take(&self) -> Vec<Received> {
        let mut out = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            out.push(Received {
                properties: message.delivery.properties.clone(),
                payload: message.delivery.data.clone(),
            });
        }
        out
    }

    async fn take_ids(&self) -> Vec<String> {
        self.take().await.iter().map(Received::message_id).collect()
    }

    async fn cleanup(self) {
        self.channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        self.channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
            .unwrap();
    }
}

async fn place(db: &TestDb, id: i64) -> Uuid {
    let mut tx = db.begin().await;
    let event_id = tx.enqueue(&order(id)).await;
    tx.commit().await;
    event_id
}

fn strings(ids: &[Uuid]) -> Vec<String> {
    ids.iter().map(Uuid::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_carries_id_headers_and_persistence() {
    let broker = Broker::new("carries", true, FieldTable::default()).await;
    let db = TestDb::new(Backend::Sqlite, "rabbit_carries").await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let first = NewEvent::from_event(&order(1))
        .unwrap()
        .header("traceparent", traceparent);
    let second = NewEvent::from_event(&order(2)).unwrap();
    let mut tx = db.begin().await;
    tx.enqueue_raw(&[first.clone(), second.clone()]).await;
    tx.commit().await;

    let rabbit = RabbitPublisher::new(&amqp_uri(RABBIT), broker.exchange.as_str()).unwrap();
    let report = db.drain_with(rabbit).await;
    assert_eq!(report.published, 2);
    assert_eq!(report.retried, 0);

    let messages = broker.take().await;
    assert_eq!(messages.len(), 2, "both events are in the queue, once");
    let m = &messages[0];
    assert_eq!(m.message_id(), first.id.to_string());
    assert_eq!(*m.properties.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        m.properties.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        m.properties.kind().as_ref().map(|s| s.as_str()),
        Some("test.order")
    );
    assert!(m.properties.timestamp().is_some());
    assert_eq!(m.payload, first.payload);
    assert_eq!(
        serde_json::from_slice::<TestOrder>(&m.payload).unwrap(),
        order(1)
    );
    assert_eq!(m.header(header::EVENT_ID), Some(first.id.to_string()));
    assert_eq!(m.header(header::EVENT_TYPE).as_deref(), Some("test.order"));
    assert_eq!(m.header(header::VERSION).as_deref(), Some("3"));
    assert_eq!(m.header(header::PARTITION_KEY).as_deref(), Some("1"));
    assert_eq!(
        m.header(header::CONTENT_TYPE).as_deref(),
        Some("application/json")
    );
    assert_eq!(m.header("traceparent").as_deref(), Some(traceparent));

    let m = &messages[1];
    assert_eq!(m.message_id(), second.id.to_string());
    assert_eq!(m.header(header::PARTITION_KEY).as_deref(), Some("2"));
    assert_eq!(m.header("traceparent"), None);
    assert_eq!(db.pending().await, 0);
    broker.cleanup().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_publisher_calls_publish_event_on_a_given_channel() {
    let broker = Broker::new("user_fn", false, FieldTable::default()).await;
    // Route by event type: bind the queue for that routing key only.
    broker
        .channel
        .queue_bind(
            broker.queue.as_str().into(),
            broker.exchange.as_str().into(),
            "orders.test.order".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let db = TestDb::new(Backend::Sqlite, "rabbit_user_fn").await;
    let a = place(&db, 1).await;
    let mut tx = db.begin().await;
    tx.enqueue(&TestInvoice {
        invoice: "inv-1".into(),
    })
    .await;
    tx.commit().await;

    let connection = Connection::connect(&amqp_uri(RABBIT), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let rabbit = RabbitPublisher::from_channel(channel, broker.exchange.as_str())
        .route(Route::template("{topic}.{event_type}"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let forward = publisher_fn::<TestOrder, _, _>("orders_to_rabbit", move |order, cx| {
        let rabbit = rabbit.clone();
        let log = log.clone();
        async move {
            log.lock().unwrap().push(order.order_id);
            rabbit.publish_event(cx.event()).await
        }
    });
    let invoices = Recorder::new("invoices", &["test.invoice"]);
    let report = db
        .runner()
        .publisher(forward)
        .publisher(invoices.clone())
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.published, 2);
    assert_eq!(*seen.lock().unwrap(), vec![1]);
    assert_eq!(invoices.calls().len(), 1);
    assert_eq!(broker.take_ids().await, strings(&[a]));
    broker.cleanup().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selection_forwards_only_chosen_types() {
    let broker = Broker::new("select", true, FieldTable::default()).await;
    let db = TestDb::new(Backend::Sqlite, "rabbit_select").await;
    let a = place(&db, 1).await;
    let mut tx = db.begin().await;
    tx.enqueue(&TestInvoice {
        invoice: "inv-1".into(),
    })
    .await;
    tx.commit().await;

    let rabbit = RabbitPublisher::connect(&amqp_uri(RABBIT), broker.exchange.as_str())
        .await
        .unwrap()
        .named("orders_rabbit")
        .select(Selection::only(["test.order"]));
    let invoices = Recorder::new("invoices", &["test.invoice"]);
    let report = db
        .runner()
        .publisher(rabbit)
        .publisher(invoices.clone())
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.published, 2);
    assert_eq!(broker.take_ids().await, strings(&[a]));
    assert_eq!(invoices.calls().len(), 1);
    broker.cleanup().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_message_is_retried_never_acked_and_delivered_once_bound() {
    let broker = Broker::new("unroutable", false, FieldTable::default()).await;
    let db = TestDb::new(Backend::Sqlite, "rabbit_unroutable").await;
    let id = place(&db, 1).await;
    let rabbit = RabbitPublisher::new(&amqp_uri(RABBIT), broker.exchange.as_str()).unwrap();

    let report = db
        .runner()
        .publisher(rabbit.clone())
        .max_attempts(2)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(
        report.published, 0,
        "an unroutable message counted as delivered"
    );
    assert_eq!(report.retried, 1, "unroutable is transient: retried");
    let dead = db.source().dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event.id, id);
    assert_eq!(dead[0].publisher, "rabbitmq");
    assert_eq!(dead[0].attempts, 2);
    assert!(dead[0].error.contains("unroutable"), "{}", dead[0].error);
    assert!(dead[0].error.contains("NO_ROUTE"), "{}", dead[0].error);
    assert!(
        dead[0].error.contains(&broker.exchange),
        "{}",
        dead[0].error
    );

    // Once a queue is bound, the dead letter can be retried and arrives.
    broker.bind().await;
    assert!(broker.take().await.is_empty());
    db.source().retry_dead_letters(Some(&[id])).await.unwrap();
    let report = db.drain_with(rabbit).await;
    assert_eq!(report.published, 1);
    assert_eq!(broker.take_ids().await, strings(&[id]));
    broker.cleanup().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_exchange_is_transient_and_the_channel_recovers() {
    let broker = Broker::new("no_exchange", false, FieldTable::default()).await;
    let db = TestDb::new(Backend::Sqlite, "rabbit_no_exchange").await;
    let id = place(&db, 1).await;
    let missing = format!("{}_missing", broker.exchange);
    let rabbit = RabbitPublisher::new(&amqp_uri(RABBIT), missing.as_str()).unwrap();

    // RabbitMQ closes the channel (404): retried, then dead-lettered.
    let report = db
        .runner()
        .publisher(rabbit.clone())
        .max_attempts(2)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.published, 0);
    assert_eq!(report.retried, 1);
    let dead = db.source().dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 2);
    assert!(dead[0].error.contains("NOT_FOUND"), "{}", dead[0].error);

    // Once the exchange exists, the same publisher delivers on a new channel.
    broker
        .channel
        .exchange_declare(
            missing.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    broker
        .channel
        .queue_bind(
            broker.queue.as_str().into(),
            missing.as_str().into(),
            KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    db.source().retry_dead_letters(Some(&[id])).await.unwrap();
    let report = db.drain_with(rabbit).await;
    assert_eq!(report.published, 1);
    assert_eq!(broker.take_ids().await, strings(&[id]));
    broker
        .channel
        .exchange_delete(missing.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    broker.cleanup().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_is_transient() {
    // A queue that holds one message and refuses more: RabbitMQ nacks.
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    let broker = Broker::new("nack", true, args).await;
    let db = TestDb::new(Backend::Sqlite, "rabbit_nack").await;
    let first = place(&db, 1).await;
    let second = place(&db, 2).await;

    let rabbit =
        Recording::new(RabbitPublisher::new(&amqp_uri(RABBIT), broker.exchange.as_str()).unwrap());
    let report = db
        .runner()
        .publisher(rabbit.clone())
        .max_attempts(2)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.published, 1);
    let in_queue = broker.take_ids().await;
    assert_eq!(in_queue.len(), 1);
    let refused = if in_queue[0] == first.to_string() {
        second
    } else {
        first
    };
    let dead = db.source().dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event.id, refused);
    assert_eq!(dead[0].attempts, 2, "a nack is retried");
    assert!(dead[0].error.contains("basic.nack"), "{}", dead[0].error);
    let kinds: Vec<_> = rabbit
        .outcomes()
        .iter()
        .filter(|o| o.id == refused)
        .map(Outcome::kind)
        .collect();
    assert_eq!(
        kinds,
        vec![Some(FailureKind::Transient), Some(FailureKind::Transient)]
    );
    broker.cleanup().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payload_is_dead_lettered_at_once() {
    let broker = Broker::new("oversized", true, FieldTable::default()).await;
    let db = TestDb::new(Backend::Sqlite, "rabbit_oversized").await;
    let mut tx = db.begin().await;
    let big = tx
        .enqueue(&TestOrder {
            order_id: 1,
            note: "x".repeat(4096),
        })
        .await;
    let small = tx.enqueue(&order(2)).await;
    tx.commit().await;

    let rabbit = RabbitPublisher::new(&amqp_uri(RABBIT), broker.exchange.as_str())
        .unwrap()
        .max_message_size(1024);
    let report = db
        .runner()
        .publisher(rabbit)
        .max_attempts(5)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.published, 1);
    let dead = db.source().dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event.id, big);
    assert_eq!(dead[0].attempts, 1, "too large is permanent");
    assert!(dead[0].error.contains("1024"), "{}", dead[0].error);
    assert_eq!(broker.take_ids().await, strings(&[small]));
    broker.cleanup().await;
    db.cleanup().await;
}

async fn proxy() -> FaultProxy {
    FaultProxy::start(RABBIT.parse::<SocketAddr>().unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_is_retried_and_delivered_after_up() {
    let broker = Broker::new("outage", true, FieldTable::default()).await;
    let db = TestDb::new(Backend::Sqlite, "rabbit_outage").await;
    let proxy = proxy().await;
    let rabbit = RabbitPublisher::new(
        &amqp_uri(&proxy.addr().to_string()),
        broker.exchange.as_str(),
    )
    .unwrap()
    .timeout(Duration::from_secs(2));

    // Connected and delivering.
    let first = place(&db, 1).await;
    let report = db.drain_with(rabbit.clone()).await;
    assert_eq!(report.published, 1);
    assert_eq!(broker.take_ids().await, strings(&[first]));

    // The broker goes away: the open connection is cut, new ones refused.
    proxy.down();
    let mut ids = Vec::new();
    for id in 2..=6 {
        ids.push(place(&db, id).await);
    }
    let runner = db
        .runner()
        .publisher(rabbit)
        .max_attempts(1000)
        .build()
        .unwrap();
    let drain = tokio::spawn(runner.drain());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        broker.take().await.is_empty(),
        "nothing can arrive while the broker is unreachable"
    );
    assert_eq!(
        db.pending().await,
        5,
        "an event was acked while the broker was down"
    );

    proxy.up();
    let report = drain.await.unwrap().unwrap();
    assert_eq!(report.published, 5);
    assert!(report.retried > 0, "the outage caused no retry");
    assert!(db.source().dead_letters(10).await.unwrap().is_empty());
    let got: BTreeSet<String> = broker.take_ids().await.into_iter().collect();
    let want: BTreeSet<String> = strings(&ids).into_iter().collect();
    assert_eq!(got, want);
    broker.cleanup().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_with_a_publish_in_flight_retries_and_delivers() {
    let broker = Broker::new("in_flight", true, FieldTable::default()).await;
    let db = TestDb::new(Backend::Sqlite, "rabbit_in_flight").await;
    let proxy = proxy().await;
    let rabbit = RabbitPublisher::connect(
        &amqp_uri(&proxy.addr().to_string()),
        broker.exchange.as_str(),
    )
    .await
    .unwrap()
    .timeout(Duration::from_secs(8));

    // The message leaves the client but is held in the proxy; then the
    // connection is cut, so RabbitMQ never sees it and no confirm comes.
    proxy.blackhole(true);
    let id = place(&db, 1).await;
    let rabbit = Recording::new(rabbit);
    let runner = db
        .runner()
        .publisher(rabbit.clone())
        .max_attempts(1000)
        .build()
        .unwrap();
    let drain = tokio::spawn(runner.drain());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rabbit.outcomes().is_empty(), "the publish is in flight");
    assert_eq!(db.pending().await, 1);
    proxy.cut();
    proxy.up();
    let report = drain.await.unwrap().unwrap();
    assert_eq!(report.published, 1);
    let outcomes = rabbit.outcomes();
    let (kind, message) = outcomes[0].error.clone().expect("the cut attempt failed");
    assert_eq!(kind, FailureKind::Transient);
    assert!(
        !message.contains("did not confirm"),
        "the cut was noticed only by the timeout: {message}"
    );
    assert_eq!(
        outcomes.last().unwrap().error,
        None,
        "the last attempt succeeded"
    );
    assert_eq!(broker.take_ids().await, strings(&[id]));
    broker.cleanup().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cuts_mid_stream_never_ack_a_missing_message() {
    let broker = Broker::new("cut", true, FieldTable::default()).await;
    let db = TestDb::new(Backend::Sqlite, "rabbit_cut").await;
    let proxy = Arc::new(proxy().await);
    let rabbit = RabbitPublisher::new(
        &amqp_uri(&proxy.addr().to_string()),
        broker.exchange.as_str(),
    )
    .unwrap()
    .timeout(Duration::from_secs(2));
    let mut ids = Vec::new();
    let mut tx = db.begin().await;
    for id in 1..=60 {
        ids.push(tx.enqueue(&order(id)).await);
    }
    tx.commit().await;

    // Cut every connection after the 10th, 25th and 40th publish, while
    // publishes of other keys are in flight.
    let cutter = proxy.clone();
    let cutting = Recording::new(rabbit).after_each(move |calls| {
        if [10, 25, 40].contains(&calls) {
            cutter.cut();
        }
    });
    let report = db
        .runner()
        .publisher(cutting)
        .max_attempts(1000)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.published, 60);
    assert!(db.source().dead_letters(10).await.unwrap().is_empty());
    assert_eq!(db.pending().await, 0);
    // Every acked event is in the queue (duplicates are allowed: a confirm
    // lost in a cut makes its event go again).
    let got: BTreeSet<String> = broker.take_ids().await.into_iter().collect();
    let want: BTreeSet<String> = strings(&ids).into_iter().collect();
    assert_eq!(got, want);
    broker.cleanup().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_confirm_times_out_as_transient_then_reconnects() {
    let broker = Broker::new("blackhole", true, FieldTable::default()).await;
    let db = TestDb::new(Backend::Sqlite, "rabbit_blackhole").await;
    let proxy = proxy().await;
    let rabbit = RabbitPublisher::connect(
        &amqp_uri(&proxy.addr().to_string()),
        broker.exchange.as_str(),
    )
    .await
    .unwrap()
    .timeout(Duration::from_millis(300));

    // The connection stays open but nothing gets through: no confirm comes.
    proxy.blackhole(true);
    let id = place(&db, 1).await;
    let rabbit = Recording::new(rabbit);
    let runner = db
        .runner()
        .publisher(rabbit.clone())
        .max_attempts(1000)
        .build()
        .unwrap();
    let drain = tokio::spawn(runner.drain());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    proxy.blackhole(false);
    let report = drain.await.unwrap().unwrap();
    assert_eq!(report.published, 1);
    let outcomes = rabbit.outcomes();
    let (kind, message) = outcomes[0].error.clone().expect("the first attempt failed");
    assert_eq!(kind, FailureKind::Transient);
    assert!(message.contains("did not confirm"), "{message}");
    assert_eq!(
        outcomes.last().unwrap().error,
        None,
        "the last attempt succeeded"
    );
    let got: BTreeSet<String> = broker.take_ids().await.into_iter().collect();
    assert_eq!(got, strings(&[id]).into_iter().collect());
    broker.cleanup().await;
    db.cleanup().await;
}
