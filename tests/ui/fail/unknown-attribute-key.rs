use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(nmae = "order.placed")]
struct OrderPlaced {
    order_id: i64,
}

fn main() {}
