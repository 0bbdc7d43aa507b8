use outbox::{publisher, OutboxEvent};

#[publisher]
async fn notify<E: OutboxEvent>(event: E) -> anyhow::Result<()> {
    let _ = event;
    Ok(())
}

fn main() {}
