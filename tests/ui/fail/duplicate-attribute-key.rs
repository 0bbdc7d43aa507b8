use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "order.placed")]
#[outbox(topic = "orders", name = "order.created")]
struct OrderPlaced {
    order_id: i64,
}

fn main() {}
