//! Forward outbox events to RabbitMQ, on a SQLite file.
//!
//! ```text
//! cargo run --example rabbitmq --features rabbitmq
//! ```
//!
//! Needs RabbitMQ on 127.0.0.1:5672 (guest/guest), or set `AMQP_URL`.
//! Declares an exchange and a queue, commits two orders with their events,
//! drains the outbox through a [`RabbitPublisher`] (publisher confirms,
//! persistent messages, the event id as `message_id`), reads the queue back,
//! and deletes the exchange and queue again.

use std::time::Duration;

use outbox::OutboxEvent;
use outbox::rabbitmq::RabbitPublisher;
use outbox::rabbitmq::lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use outbox::rabbitmq::lapin::types::{AMQPValue, FieldTable};
use outbox::rabbitmq::lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "order.placed", topic = "orders", key = order_id)]
pub struct OrderPlaced {
    pub order_id: i64,
    pub total_cents: i64,
}

const EXCHANGE: &str = "outbox-example";
const QUEUE: &str = "outbox-example-orders";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());

    // The consumer side: an exchange, and a queue bound for routing key
    // "orders" (the events' topic, the publisher's default routing key).
    let admin = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = admin.create_channel().await?;
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(QUEUE.into(), durable, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            QUEUE.into(),
            EXCHANGE.into(),
            "orders".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let path = std::env::temp_dir().join("outbox-rabbitmq-example.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new().connect_with(options).await?;
    outbox::migrate(&pool).await?;

    // Write side: each event commits with the business transaction.
    for (order_id, total_cents) in [(1_i64, 1299_i64), (2, 4500)] {
        let mut tx = pool.begin().await?;
        let id = outbox::enqueue(
            &mut tx,
            &OrderPlaced {
                order_id,
                total_cents,
            },
        )
        .await?;
        tx.commit().await?;
        println!("enqueued order {order_id} as event {id}");
    }

    // Relay side: connects now (fails fast on a wrong URL or password) and
    // reconnects by itself after a connection loss.
    let rabbit = RabbitPublisher::connect(&url, EXCHANGE)
        .await?
        .timeout(Duration::from_secs(5));
    let report = outbox::Runner::builder(pool.clone())
        .publisher(rabbit)
        .poll_interval(Duration::from_millis(50))
        .build()?
        .drain()
        .await?;
    println!(
        "drained: {} published, {} retried, {} dead-lettered",
        report.published, report.retried, report.dead_lettered
    );

    while let Some(message) = channel
        .basic_get(QUEUE.into(), BasicGetOptions { no_ack: true })
        .await?
    {
        let props = &message.delivery.properties;
        let header = |name: &str| match props.headers().as_ref().and_then(|h| h.inner().get(name)) {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            _ => "-".to_owned(),
        };
        println!(
            "received message_id={} type={} key={} persistent={} body={}",
            props.message_id().as_ref().map_or("-", |id| id.as_str()),
            header("outbox-event-type"),
            header("outbox-partition-key"),
            *props.delivery_mode() == Some(2),
            String::from_utf8_lossy(&message.delivery.data)
        );
    }

    channel
        .queue_delete(QUEUE.into(), QueueDeleteOptions::default())
        .await?;
    channel
        .exchange_delete(EXCHANGE.into(), ExchangeDeleteOptions::default())
        .await?;
    Ok(())
}
