//! The write side: enqueue events inside the caller's own transaction.

use uuid::Uuid;

use crate::error::Error;
use crate::event::{NewEvent, OutboxEvent};
use crate::store::{Backend, sealed::Sealed};
use crate::tables::Tables;

/// Enqueue one event in the caller's transaction, in the default tables.
///
/// The event becomes visible to the Runner when, and only when, the
/// transaction commits. Returns the event's id (a UUIDv7).
///
/// ```no_run
/// # use outbox::OutboxEvent;
/// # #[derive(serde::Serialize, serde::Deserialize, OutboxEvent)]
/// # struct OrderPlaced { order_id: i64 }
/// # async fn demo(pool: sqlx::SqlitePool) -> anyhow::Result<()> {
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO orders (id) VALUES (?)").bind(7).execute(&mut *tx).await?;
/// let id = outbox::enqueue(&mut tx, &OrderPlaced { order_id: 7 }).await?;
/// tx.commit().await?;
/// # let _ = id; Ok(()) }
/// ```
pub async fn enqueue<DB: Backend, E: OutboxEvent>(
    tx: &mut sqlx::Transaction<'_, DB>,
    event: &E,
) -> Result<Uuid, Error> {
    Tables::default().enqueue(tx, event).await
}

/// Enqueue several events of one type in the caller's transaction, in one
/// statement where the database allows. Returns their ids in order.
pub async fn enqueue_all<'e, DB: Backend, E: OutboxEvent>(
    tx: &mut sqlx::Transaction<'_, DB>,
    events: impl IntoIterator<Item = &'e E>,
) -> Result<Vec<Uuid>, Error> {
    Tables::default().enqueue_all(tx, events).await
}

/// Enqueue events that no Rust type describes (or of several types at
/// once), in the caller's transaction.
pub async fn enqueue_raw<DB: Backend>(
    tx: &mut sqlx::Transaction<'_, DB>,
    events: &[NewEvent],
) -> Result<(), Error> {
    Tables::default().enqueue_raw(tx, events).await
}

impl Tables {
    /// [`enqueue`](crate::enqueue) into these tables.
    pub async fn enqueue<DB: Backend, E: OutboxEvent>(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        event: &E,
    ) -> Result<Uuid, Error> {
        let event = NewEvent::from_event(event)?;
        event.validate(self.payload_limit())?;
        let id = event.id;
        <DB as Sealed>::enqueue(&mut **tx, self, std::slice::from_ref(&event)).await?;
        Ok(id)
    }

    /// [`enqueue_all`](crate::enqueue_all) into these tables.
    pub async fn enqueue_all<'e, DB: Backend, E: OutboxEvent>(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        events: impl IntoIterator<Item = &'e E>,
    ) -> Result<Vec<Uuid>, Error> {
        let events = events
            .into_iter()
            .map(NewEvent::from_event)
            .collect::<Result<Vec<_>, _>>()?;
        events
            .iter()
            .try_for_each(|e| e.validate(self.payload_limit()))?;
        <DB as Sealed>::enqueue(&mut **tx, self, &events).await?;
        Ok(events.iter().map(|e| e.id).collect())
    }

    /// [`enqueue_raw`](crate::enqueue_raw) into these tables.
    pub async fn enqueue_raw<DB: Backend>(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        events: &[NewEvent],
    ) -> Result<(), Error> {
        events
            .iter()
            .try_for_each(|e| e.validate(self.payload_limit()))?;
        <DB as Sealed>::enqueue(&mut **tx, self, events).await
    }
}
