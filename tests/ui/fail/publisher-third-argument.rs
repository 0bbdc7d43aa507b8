use outbox::{publisher, Context, OutboxEvent, State};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
struct OrderPlaced {
    order_id: i64,
}

struct Audit;

#[publisher]
async fn notify(event: OrderPlaced, audit: State<Audit>, cx: Context) -> anyhow::Result<()> {
    let _ = (event, audit, cx);
    Ok(())
}

fn main() {}
