use outbox::publisher;

#[publisher]
async fn notify(event: String) -> anyhow::Result<()> {
    let _ = event;
    Ok(())
}

fn main() {}
