//! Deliver outbox events as signed CloudEvents webhooks, on a SQLite file.
//!
//! ```text
//! cargo run --example webhook --features http
//! ```
//!
//! Starts a tiny receiver on 127.0.0.1 that prints what arrives, commits
//! two orders with their events, and drains the outbox through two
//! [`WebhookPublisher`]s: one in CloudEvents structured mode (the body is
//! the CloudEvent) and one in binary mode (the body is the payload, the
//! attributes are `ce-*` headers), both signed per Standard Webhooks.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use outbox::OutboxEvent;
use outbox::brokers::Route;
use outbox::http::{Mode, WebhookPublisher};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "order.placed", topic = "orders", key = order_id)]
pub struct OrderPlaced {
    pub order_id: i64,
    pub total_cents: i64,
}

/// Shared with the receiver, which would verify `webhook-signature` with it.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn receive(uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut lines = vec![format!("POST {uri}")];
    for (name, value) in &headers {
        let name = name.as_str();
        if name.starts_with("ce-") || name.starts_with("webhook-") || name == "content-type" {
            lines.push(format!("  {name}: {}", value.to_str().unwrap_or("?")));
        }
    }
    lines.push(format!("  body: {}", String::from_utf8_lossy(&body)));
    println!("{}\n", lines.join("\n"));
    StatusCode::NO_CONTENT
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let app = Router::new().fallback(receive);
        let _ = axum::serve(listener, app).await;
    });
    println!("receiver listening on http://{addr}\n");

    let path = std::env::temp_dir().join("outbox-webhook-example.db");
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

    for (order_id, total_cents) in [(1_i64, 1299_i64), (2, 4500)] {
        let mut tx = pool.begin().await?;
        outbox::enqueue(
            &mut tx,
            &OrderPlaced {
                order_id,
                total_cents,
            },
        )
        .await?;
        tx.commit().await?;
    }

    let structured = WebhookPublisher::new(&format!("http://{addr}/hooks/structured"))?
        .source("/examples/webhook")
        .signing_secret(SECRET)?
        .timeout(Duration::from_secs(5));
    let binary = WebhookPublisher::new(&format!("http://{addr}/hooks/"))?
        .named("webhook-binary")
        .mode(Mode::Binary)
        .route(Route::template("binary/{topic}"))
        .signing_secret(SECRET)?;
    let report = outbox::Runner::builder(pool.clone())
        .publisher(structured)
        .publisher(binary)
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
