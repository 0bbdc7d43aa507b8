use outbox::{publisher, OutboxEvent};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
struct OrderPlaced {
    order_id: i64,
}

#[publisher]
async fn notify(event: OrderPlaced) -> Option<()> {
    let _ = event;
    Some(())
}

fn main() {}
