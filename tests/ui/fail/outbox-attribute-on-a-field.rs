use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
struct OrderPlaced {
    #[outbox(key)]
    order_id: i64,
}

fn main() {}
