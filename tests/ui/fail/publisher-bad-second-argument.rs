use outbox::{publisher, OutboxEvent};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
struct OrderPlaced {
    order_id: i64,
}

#[publisher]
async fn notify(event: OrderPlaced, retries: u32) -> anyhow::Result<()> {
    let _ = (event, retries);
    Ok(())
}

fn main() {}
