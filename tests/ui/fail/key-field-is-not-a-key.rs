use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(key = lines)]
struct OrderPlaced {
    order_id: i64,
    lines: Vec<String>,
}

fn main() {}
