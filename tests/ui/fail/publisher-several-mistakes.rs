use outbox::publisher;

// Every mistake is reported, not only the first.
#[publisher(nmae = "billing", name = "a", name = "b")]
fn notify<T>(event: T, retries: u32, log: String) {
    let _ = (event, retries, log);
}

fn main() {
    // And no error here: the function is kept as written.
    notify(1, 2, String::new());
}
