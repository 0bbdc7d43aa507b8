//! The outbox in one file, on a SQLite file: no server needed.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Places three orders, each in a transaction that writes the order row and
//! its `OrderPlaced` event together; a fourth transaction is rolled back, so
//! its event is never published. Then a Runner drains the outbox and the two
//! publishers print what they receive.

use std::sync::Mutex;
use std::time::Duration;

use outbox::{Context, OutboxEvent, State, publisher};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "order.placed", topic = "orders", key = order_id, version = 1)]
pub struct OrderPlaced {
    pub order_id: i64,
    pub total_cents: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("billing is unavailable")]
pub struct BillingError;

/// A publisher: called once per event, retried with backoff if it fails.
#[publisher]
async fn notify_billing(event: OrderPlaced) -> Result<(), BillingError> {
    println!(
        "billing: order {} for {}.{:02}",
        event.order_id,
        event.total_cents / 100,
        event.total_cents % 100
    );
    Ok(())
}

/// Shared state for publishers, given to the Runner with `.state(...)`.
#[derive(Default)]
pub struct AuditLog {
    lines: Mutex<Vec<String>>,
}

/// A second publisher of the same event, with state.
#[publisher(name = "audit")]
async fn audit(event: OrderPlaced, log: State<AuditLog>) -> anyhow::Result<()> {
    let line = format!("order {} placed", event.order_id);
    println!("audit:   {line}");
    log.lines
        .lock()
        .map_err(|_| anyhow::anyhow!("audit log poisoned"))?
        .push(line);
    Ok(())
}

/// The Context form, when a publisher needs the event id (to deduplicate).
#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "order.cancelled", topic = "orders", key = order_id)]
pub struct OrderCancelled {
    pub order_id: i64,
}

#[publisher]
async fn log_cancellation(event: OrderCancelled, cx: Context) -> anyhow::Result<()> {
    println!("cancel:  order {} (event {})", event.order_id, cx.id());
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::temp_dir().join("outbox-quickstart.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new().connect_with(options).await?;
    println!("database: {}", path.display());

    outbox::migrate(&pool).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, total_cents INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await?;

    // Write side: the order row and its event commit together, or not at all.
    for (id, total) in [(1_i64, 1299_i64), (2, 4500), (3, 99)] {
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO orders (id, total_cents) VALUES (?, ?)")
            .bind(id)
            .bind(total)
            .execute(&mut *tx)
            .await?;
        outbox::enqueue(
            &mut tx,
            &OrderPlaced {
                order_id: id,
                total_cents: total,
            },
        )
        .await?;
        tx.commit().await?;
    }

    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO orders (id, total_cents) VALUES (4, 100)")
        .execute(&mut *tx)
        .await?;
    outbox::enqueue(
        &mut tx,
        &OrderPlaced {
            order_id: 4,
            total_cents: 100,
        },
    )
    .await?;
    tx.rollback().await?;
    println!("order 4 rolled back: its event will never be published");

    let mut tx = pool.begin().await?;
    outbox::enqueue(&mut tx, &OrderCancelled { order_id: 3 }).await?;
    tx.commit().await?;

    // Relay side: publish everything, then return (`run` would keep going
    // until Ctrl-C).
    let report = outbox::Runner::builder(pool.clone())
        .state(AuditLog::default())
        .poll_interval(Duration::from_millis(50))
        .build()?
        .drain()
        .await?;
    println!(
        "drained: {} deliveries, {} retried, {} dead-lettered",
        report.published, report.retried, report.dead_lettered
    );
    Ok(())
}
