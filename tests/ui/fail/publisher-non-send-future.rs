use std::rc::Rc;

use outbox::{publisher, OutboxEvent};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
struct OrderPlaced {
    order_id: i64,
}

async fn send(_: i64) {}

#[publisher]
async fn notify(event: OrderPlaced) -> anyhow::Result<()> {
    let shared = Rc::new(event.order_id);
    send(*shared).await;
    drop(shared);
    Ok(())
}

fn main() {}
