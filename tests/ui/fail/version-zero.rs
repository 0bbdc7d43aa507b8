use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(version = 0)]
struct OrderPlaced {
    order_id: i64,
}

fn main() {}
