use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "order.placed", topic = "orders", key = order_id, version = 3)]
struct Named {
    order_id: i64,
}

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(key = 0)]
struct Tuple(String, u32);

#[derive(Serialize, Deserialize, OutboxEvent)]
struct Unit;

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "payment")]
enum Payment {
    Captured { cents: i64 },
    Refunded(i64),
    Voided,
}

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(key = customer)]
struct OptionalKey {
    customer: Option<uuid::Uuid>,
}

fn main() {
    assert_eq!(Named::NAME, "order.placed");
    assert_eq!(Named::TOPIC, "orders");
    assert_eq!(Named::VERSION, 3);
    assert_eq!(Named { order_id: 7 }.partition_key().as_deref(), Some("7"));
    assert_eq!(Tuple::NAME, "Tuple");
    assert_eq!(Tuple::TOPIC, "Tuple");
    assert_eq!(Tuple::VERSION, 1);
    assert_eq!(Tuple("k".into(), 1).partition_key().as_deref(), Some("k"));
    assert_eq!(Unit.partition_key(), None);
    assert_eq!(Payment::NAME, "payment");
    assert_eq!(Payment::Voided.partition_key(), None);
    let _ = (Payment::Captured { cents: 1 }, Payment::Refunded(1));
    assert_eq!(OptionalKey { customer: None }.partition_key(), None);
}
