use outbox::{publisher, OutboxEvent};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
struct OrderPlaced {
    order_id: i64,
}

#[publisher]
fn notify(event: OrderPlaced) -> anyhow::Result<()> {
    let _ = event;
    Ok(())
}

fn main() {}
