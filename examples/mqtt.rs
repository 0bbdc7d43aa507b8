//! Forward outbox events to an MQTT v5 broker, on a SQLite file.
//!
//! ```text
//! cargo run --example mqtt --features mqtt
//! ```
//!
//! Needs an MQTT broker such as Mosquitto on 127.0.0.1:1883 (or set
//! `MQTT_HOST` and `MQTT_PORT`). Subscribes to `outbox-example/#`, commits two
//! orders with their events, drains the outbox through an [`MqttPublisher`]
//! (QoS 1, success on the PUBACK, metadata as user properties), and prints
//! what the subscriber received.

use std::time::Duration;

use outbox::OutboxEvent;
use outbox::brokers::{Route, header};
use outbox::mqtt::MqttPublisher;
use outbox::mqtt::rumqttc::v5::mqttbytes::QoS;
use outbox::mqtt::rumqttc::v5::mqttbytes::v5::Packet;
use outbox::mqtt::rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "order.placed", topic = "orders", key = order_id)]
pub struct OrderPlaced {
    pub order_id: i64,
    pub total_cents: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let host = std::env::var("MQTT_HOST").unwrap_or_else(|_| "127.0.0.1".to_owned());
    let port: u16 = std::env::var("MQTT_PORT").map_or(Ok(1883), |p| p.parse())?;

    // The consumer side: a subscriber that prints what arrives.
    let (subscriber, mut eventloop) = AsyncClient::new(
        MqttOptions::new("outbox-example-subscriber", &host, port),
        10,
    );
    subscriber
        .subscribe("outbox-example/#", QoS::AtLeastOnce)
        .await?;
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let id = p.properties.as_ref().and_then(|props| {
                        props
                            .user_properties
                            .iter()
                            .find(|(name, _)| name == header::EVENT_ID)
                            .map(|(_, value)| value.clone())
                    });
                    println!(
                        "subscriber: {} {} = {} {}",
                        String::from_utf8_lossy(&p.topic),
                        header::EVENT_ID,
                        id.unwrap_or_default(),
                        String::from_utf8_lossy(&p.payload)
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("subscriber: {e}");
                    return;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(5), subscribed).await??;

    let path = std::env::temp_dir().join("outbox-example-mqtt.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let pool = SqlitePoolOptions::new().connect_with(options).await?;
    outbox::migrate(&pool).await?;

    for (order_id, total_cents) in [(1, 1299), (2, 4500)] {
        let mut tx = pool.begin().await?;
        // ...the business rows would be written here, in the same transaction.
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

    // Topics `outbox-example/orders/<order id>`.
    let mqtt = MqttPublisher::connect(MqttOptions::new("outbox-example-relay", &host, port))
        .await?
        .route(Route::template("outbox-example/{topic}/{key}"))
        .timeout(Duration::from_secs(3));
    let report = outbox::Runner::builder(pool)
        .without_registered()
        .publisher(mqtt)
        .poll_interval(Duration::from_millis(50))
        .build()?
        .drain()
        .await?;
    println!(
        "drained: {} published, {} retried, {} dead-lettered",
        report.published, report.retried, report.dead_lettered
    );
    // Give the subscriber a moment to print what the broker forwards.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}
