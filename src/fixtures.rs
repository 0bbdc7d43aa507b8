//! What the conformance suites share: an order event and its business row,
//! and helpers for scenarios that drive a `Source` directly.

use std::time::Duration;

use outbox::{ClaimedEvent, OutboxEvent, Uuid};
use serde::{Deserialize, Serialize};

use crate::TestDb;

/// An order placed: keyed by its id, on the `orders` topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "test.order", topic = "orders", key = order_id)]
pub struct TestOrder {
    /// The order, and the partition key.
    pub order_id: i64,
    /// Its total.
    pub total_cents: i64,
}

/// The event type of [`TestOrder`].
pub const ORDER: &str = "test.order";

/// The lease the store-level scenarios claim with: longer than any of them.
pub const LEASE: Duration = Duration::from_secs(30);

/// Order `id`, of `id * 100` cents.
pub fn order(id: i64) -> TestOrder {
    TestOrder {
        order_id: id,
        total_cents: id * 100,
    }
}

/// Insert order `id` and enqueue its event in one committed transaction.
pub async fn place(db: &TestDb, id: i64) -> Uuid {
    let mut tx = db.begin().await;
    tx.insert_order(id, id * 100).await;
    let event_id = tx.enqueue(&order(id)).await;
    tx.commit().await;
    event_id
}

/// The ids of claimed events, sorted.
pub fn sorted_ids(claimed: &[ClaimedEvent]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = claimed.iter().map(|c| c.event.id).collect();
    ids.sort();
    ids
}
