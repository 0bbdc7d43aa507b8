//! Forward outbox events to Redis Streams, on a SQLite file.
//!
//! ```text
//! cargo run --example redis --features redis
//! ```
//!
//! Needs Redis on 127.0.0.1:6379, or set `REDIS_URL`. Commits two orders with
//! their events, drains the outbox through a [`RedisStreamPublisher`]
//! (`XADD` with the event id in the `id` field), reads the stream back with
//! `XRANGE`, and deletes it again.

use std::time::Duration;

use outbox::OutboxEvent;
use outbox::brokers::Route;
use outbox::redis::RedisStreamPublisher;
use outbox::redis::redis::{self, AsyncCommands};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "order.placed", topic = "orders", key = order_id)]
pub struct OrderPlaced {
    pub order_id: i64,
    pub total_cents: i64,
}

const KEY: &str = "outbox-example:orders";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned());

    let path = std::env::temp_dir().join("outbox-example-redis.db");
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

    // Stream key `outbox-example:orders`, trimmed to about 10,000 entries.
    let publisher = RedisStreamPublisher::connect(&url)
        .await?
        .route(Route::template("outbox-example:{topic}"))
        .max_len(10_000)
        .timeout(Duration::from_secs(3));
    let report = outbox::Runner::builder(pool)
        .without_registered()
        .publisher(publisher)
        .poll_interval(Duration::from_millis(50))
        .build()?
        .drain()
        .await?;
    println!(
        "drained: {} published, {} retried, {} dead-lettered",
        report.published, report.retried, report.dead_lettered
    );

    let mut conn = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(KEY)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await?;
    for (entry_id, fields) in entries {
        let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("{KEY} {entry_id}: {}", fields.join(" "));
    }
    let _: () = conn.del(KEY).await?;
    Ok(())
}
