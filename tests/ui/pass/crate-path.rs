//! `crate = path`: code that reaches outbox through a re-export.

mod reexport {
    pub use ::outbox as ob;
}

use reexport::ob::OutboxEvent as _;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, reexport::ob::OutboxEvent)]
#[outbox(crate = reexport::ob, name = "order.placed", key = order_id)]
struct OrderPlaced {
    order_id: i64,
}

#[reexport::ob::publisher(crate = reexport::ob)]
async fn notify(placed: OrderPlaced) -> anyhow::Result<()> {
    let _ = placed;
    Ok(())
}

mod nested {
    // `crate::...` and `::...` paths name the same crate from any module.
    #[derive(serde::Serialize, serde::Deserialize, crate::reexport::ob::OutboxEvent)]
    #[outbox(crate = crate::reexport::ob)]
    pub struct Shipped;

    #[crate::reexport::ob::publisher(name = "ship", crate = ::outbox)]
    async fn ship(_: Shipped, cx: crate::reexport::ob::Context) -> anyhow::Result<()> {
        let _ = cx;
        Ok(())
    }
}

fn main() {
    assert_eq!(OrderPlaced::NAME, "order.placed");
    assert_eq!(OrderPlaced { order_id: 3 }.partition_key().as_deref(), Some("3"));
    let events: Vec<&str> = reexport::ob::registered_event_types().map(|e| e.name).collect();
    for expected in ["order.placed", "Shipped"] {
        assert!(events.contains(&expected), "{expected} not registered: {events:?}");
    }
    let publishers: Vec<&str> = reexport::ob::registered_publishers().map(|p| p.name).collect();
    for expected in ["notify", "ship"] {
        assert!(publishers.contains(&expected), "{expected} not registered: {publishers:?}");
    }
}
