use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(key = customer_id)]
struct OrderPlaced {
    order_id: i64,
    total_cents: i64,
}

fn main() {}
