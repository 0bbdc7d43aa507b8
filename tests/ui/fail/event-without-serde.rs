use outbox::OutboxEvent;

#[derive(Debug, OutboxEvent)]
#[outbox(name = "order.placed")]
struct OrderPlaced {
    order_id: i64,
}

fn main() {}
