use outbox::{publisher, Context, OutboxEvent, PublishError, State};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "order.placed")]
struct OrderPlaced {
    order_id: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("billing down")]
struct BillingError;

struct AuditLog;

#[publisher]
async fn plain(event: OrderPlaced) -> Result<(), BillingError> {
    let _ = event;
    Ok(())
}

#[publisher(name = "audit")]
async fn with_state(event: OrderPlaced, log: State<AuditLog>) -> anyhow::Result<()> {
    let _ = (event, log);
    Ok(())
}

#[publisher]
async fn with_context(_: OrderPlaced, cx: Context) -> Result<(), PublishError> {
    if cx.attempt() > 3 {
        return Err(PublishError::permanent("too many"));
    }
    Ok(())
}

#[publisher]
pub(crate) async fn boxed(event: OrderPlaced) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let _ = event;
    Ok(())
}

mod shadowing {
    // Generated code must not depend on these names.
    #[allow(dead_code)]
    type Result<T> = std::result::Result<T, ()>;
    #[allow(dead_code)]
    struct Box;
    #[allow(dead_code)]
    struct Option;

    #[outbox::publisher]
    async fn shadowed(event: super::OrderPlaced) -> anyhow::Result<()> {
        let _ = event;
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    // The functions stay callable as written.
    plain(OrderPlaced { order_id: 1 }).await.unwrap();
    let names: Vec<&str> = outbox::registered_publishers().map(|p| p.name).collect();
    for expected in ["plain", "audit", "with_context", "boxed", "shadowed"] {
        assert!(names.contains(&expected), "{expected} not registered: {names:?}");
    }
}
