use outbox::{publisher, OutboxEvent};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
struct OrderPlaced {
    order_id: i64,
}

struct Billing;

impl Billing {
    #[publisher]
    async fn notify(&self, event: OrderPlaced) -> anyhow::Result<()> {
        let _ = event;
        Ok(())
    }
}

fn main() {}
