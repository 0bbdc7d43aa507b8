//! Forward outbox events to NATS JetStream, on a SQLite file.
//!
//! ```text
//! cargo run --example nats --features nats
//! ```
//!
//! Needs nats-server with JetStream on 127.0.0.1:4222 (`nats-server -js`), or
//! set `NATS_URL`. Creates a stream for `shop.>`, commits two orders with
//! their events, drains the outbox through a [`JetStreamPublisher`] (the event
//! id as `Nats-Msg-Id`, success on the PubAck), reads the stream back, and
//! deletes the stream again.

use std::time::Duration;

use outbox::OutboxEvent;
use outbox::brokers::{Route, header};
use outbox::nats::async_nats::jetstream::{self, stream};
use outbox::nats::{JetStreamPublisher, MSG_ID, async_nats};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "order.placed", topic = "orders", key = order_id)]
pub struct OrderPlaced {
    pub order_id: i64,
    pub total_cents: i64,
}

const STREAM: &str = "OUTBOX_EXAMPLE";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".to_owned());
    let client = async_nats::connect(url.as_str()).await?;
    let js = jetstream::new(client);

    // The consumer side: a stream that stores every subject under `shop.`.
    let mut orders = js
        .get_or_create_stream(stream::Config {
            name: STREAM.to_owned(),
            subjects: vec!["shop.>".to_owned()],
            ..Default::default()
        })
        .await?;

    let path = std::env::temp_dir().join("outbox-example-nats.db");
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

    // Subjects `shop.orders.order.placed`: the topic and type under `shop.`.
    let nats = JetStreamPublisher::new(js.clone())
        .route(Route::template("shop.{topic}.{event_type}"))
        .timeout(Duration::from_secs(3));
    let report = outbox::Runner::builder(pool)
        .without_registered()
        .publisher(nats)
        .poll_interval(Duration::from_millis(50))
        .build()?
        .drain()
        .await?;
    println!(
        "drained: {} published, {} retried, {} dead-lettered",
        report.published, report.retried, report.dead_lettered
    );

    let state = orders.info().await?.state.clone();
    for seq in state.first_sequence..=state.last_sequence {
        let Ok(m) = orders.get_raw_message(seq).await else {
            continue;
        };
        let get = |name: &str| {
            m.headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        println!(
            "stream {STREAM} #{seq}: {} {} = {} ({} {})",
            m.subject,
            MSG_ID,
            get(MSG_ID),
            get(header::EVENT_TYPE),
            String::from_utf8_lossy(&m.payload)
        );
    }
    js.delete_stream(STREAM).await?;
    Ok(())
}
