use outbox::{publisher, OutboxEvent};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
struct OrderPlaced {
    order_id: i64,
}

#[publisher(nmae = "billing")]
async fn notify(event: OrderPlaced) -> anyhow::Result<()> {
    let _ = event;
    Ok(())
}

fn main() {}
