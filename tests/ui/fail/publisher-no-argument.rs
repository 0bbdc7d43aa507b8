use outbox::publisher;

#[publisher]
async fn notify() -> anyhow::Result<()> {
    Ok(())
}

fn main() {}
