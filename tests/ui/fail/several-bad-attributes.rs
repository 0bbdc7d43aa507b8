use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

// Every bad key is reported, not only the first.
#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(nmae = "order.placed", version = 0)]
#[outbox(key = customer_id, topic = "", crate = "outbox")]
struct OrderPlaced {
    order_id: i64,
}

fn main() {
    // And no error here: the derive still implements the trait.
    let _ = <OrderPlaced as OutboxEvent>::NAME;
}
