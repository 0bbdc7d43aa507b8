use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
struct Wrapped<T> {
    inner: T,
}

fn main() {}
