use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

mod reexport {}

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(crate = reexport::outbox)]
struct OrderPlaced {
    order_id: i64,
}

fn main() {}
