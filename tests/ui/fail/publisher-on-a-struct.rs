use outbox::publisher;

#[publisher]
struct Billing {
    url: String,
}

fn main() {
    let _ = Billing { url: String::new() }.url;
}
