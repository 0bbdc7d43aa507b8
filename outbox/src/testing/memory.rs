//! [`MemoryOutbox`]: the outbox in memory, a [`Source`](crate::Source) that
//! keeps the same contract as the SQL stores (their statements are in
//! `store/statements.rs`; `source.rs` here says, method by method, what
//! each does to these maps).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use uuid::Uuid;

use super::clock::{At, Clock, DEFAULT_START};
use crate::error::Error;
use crate::event::{NewEvent, OutboxEvent, StorageBox};
use crate::store::DeadLetter;
use crate::tables::Tables;

/// When an event is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// From this point on the clock.
    At(At),
    /// Never: parked by [`Outcome::Park`](crate::Outcome::Park) until an
    /// operator retries or purges its dead letters.
    Parked,
}

/// One event in the outbox: the columns of the SQL stores' events table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) event: NewEvent,
    pub(crate) created_at: At,
    pub(crate) attempts: u32,
    pub(crate) due: Due,
    /// Who holds the lease, and until when.
    pub(crate) lease: Option<(Uuid, At)>,
    pub(crate) done: Vec<String>,
    pub(crate) dead: Vec<String>,
    pub(crate) only: Option<Vec<String>>,
    pub(crate) last_error: Option<String>,
}

impl Row {
    pub(crate) fn new(event: NewEvent, now: At) -> Self {
        Self {
            event,
            created_at: now,
            attempts: 0,
            due: Due::At(now),
            lease: None,
            done: Vec::new(),
            dead: Vec::new(),
            only: None,
            last_error: None,
        }
    }

    /// Whether `owner` holds its lease (expired or not: the SQL stores fence
    /// by the holder's id, which a claim by another Runner replaces).
    pub(crate) fn held_by(&self, owner: Uuid) -> bool {
        self.lease.is_some_and(|(holder, _)| holder == owner)
    }

    pub(crate) fn is_parked(&self) -> bool {
        self.due == Due::Parked
    }

    /// Due and not leased at `now`.
    pub(crate) fn is_due(&self, now: At) -> bool {
        matches!(self.due, Due::At(at) if at <= now)
            && self.lease.is_none_or(|(_, until)| until <= now)
    }
}

/// One row of the dead-letter table.
#[derive(Debug, Clone)]
pub(crate) struct DeadRow {
    pub(crate) event: NewEvent,
    pub(crate) created_at: At,
    pub(crate) attempts: u32,
    pub(crate) error: String,
    pub(crate) failed_at: At,
}

/// Both tables and the clock.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) clock: Clock,
    /// Events by id: iterated in id order, the order claims take them in.
    pub(crate) events: BTreeMap<Uuid, Row>,
    /// Dead letters by event and publisher.
    pub(crate) dead: BTreeMap<(Uuid, String), DeadRow>,
}

impl State {
    pub(crate) fn storage_box(&self, event: &NewEvent, created_at: At, attempt: u32) -> StorageBox {
        StorageBox {
            id: event.id,
            event_type: event.event_type.clone(),
            version: event.version,
            topic: event.topic.clone(),
            partition_key: event.partition_key.clone(),
            payload: event.payload.clone(),
            headers: event.headers.clone(),
            created_at: self.clock.wall(created_at),
            attempt,
        }
    }

    /// Events that can still be published without an operator: not parked,
    /// and not behind a parked event of their key.
    pub(crate) fn pending(&self) -> u64 {
        // The first parked event of each key: an event of that key with an
        // older id (its transaction committed late) is ahead of it.
        let mut parked: std::collections::BTreeMap<&str, Uuid> = std::collections::BTreeMap::new();
        for (id, row) in &self.events {
            if row.is_parked()
                && let Some(key) = row.event.partition_key.as_deref()
            {
                parked.entry(key).or_insert(*id);
            }
        }
        self.events
            .iter()
            .filter(|(id, row)| {
                !row.is_parked()
                    && row
                        .event
                        .partition_key
                        .as_deref()
                        .and_then(|key| parked.get(key))
                        .is_none_or(|first| *id < first)
            })
            .count() as u64
    }

    /// Every dead letter, oldest first (then by event and publisher).
    pub(crate) fn dead_letters(&self, limit: usize) -> Vec<DeadLetter> {
        let mut rows: Vec<(&(Uuid, String), &DeadRow)> = self.dead.iter().collect();
        rows.sort_by_key(|((id, publisher), row)| (row.failed_at, *id, publisher.clone()));
        rows.into_iter()
            .take(limit)
            .map(|((_, publisher), row)| DeadLetter {
                event: self.storage_box(&row.event, row.created_at, row.attempts),
                publisher: publisher.clone(),
                error: row.error.clone(),
                attempts: row.attempts,
                failed_at: self.clock.wall(row.failed_at),
                unreadable: None,
            })
            .collect()
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    /// Woken on every commit, for [`Source::wait_for_events`](crate::Source::wait_for_events).
    pub(crate) committed: Notify,
}

/// The outbox in memory: a [`Source`](crate::Source) with the contract of
/// the SQL stores, and the write side to fill it, for tests that need no
/// database.
///
/// Clones share the same events. Its clock is tokio's
/// ([`tokio::time::Instant`]): in a test with paused time
/// (`#[tokio::test(start_paused = true)]`) leases, retry delays and dead
/// letters' ages follow the paused clock, and [`advance`](Self::advance)
/// moves it on further. Times it shows ([`StorageBox::created_at`],
/// [`DeadLetter::failed_at`]) count from a fixed start (2025-01-01 UTC,
/// see [`clock_start`](Self::clock_start)), so a run shows the same times
/// every time.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), outbox::Error> {
/// use outbox::testing::MemoryOutbox;
/// use outbox::{OutboxEvent, Source};
/// # use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, OutboxEvent)]
/// #[outbox(name = "order.placed", key = order_id)]
/// struct OrderPlaced { order_id: i64 }
///
/// let outbox = MemoryOutbox::new();
/// let mut tx = outbox.begin();
/// tx.enqueue(&OrderPlaced { order_id: 7 })?;
/// assert_eq!(outbox.pending(), 0, "not committed yet");
/// tx.commit();
/// assert_eq!(outbox.pending(), 1);
///
/// // The Source a Runner would claim from.
/// let source = outbox.source();
/// let limit = outbox::ClaimLimit::events(10);
/// let claimed = source.claim(outbox::Uuid::now_v7(), limit, std::time::Duration::from_secs(60)).await?;
/// assert_eq!(claimed[0].event.partition_key.as_deref(), Some("7"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemoryOutbox {
    pub(crate) shared: Arc<Shared>,
    tables: Tables,
}

impl std::fmt::Debug for MemoryOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("MemoryOutbox")
            .field("events", &state.events.len())
            .field("dead_letters", &state.dead.len())
            .finish()
    }
}

impl Default for MemoryOutbox {
    fn default() -> Self {
        Self::new()
    }
}

/// An event in a [`MemoryOutbox`], as [`MemoryOutbox::events`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryEvent {
    /// The event; its [`attempt`](StorageBox::attempt) is how many times it
    /// was claimed so far (0 before its first claim).
    pub event: StorageBox,
    /// When it is due; `None` when it is parked
    /// ([`KeyPolicy::Block`](crate::KeyPolicy::Block)).
    pub due: Option<SystemTime>,
    /// Which Runner holds its lease ([`Runner::id`](crate::Runner::id)), and
    /// until when (it may have expired).
    pub lease: Option<(Uuid, SystemTime)>,
    /// Publishers that have delivered it.
    pub delivered: Vec<String>,
    /// Publishers whose delivery of it is dead-lettered.
    pub dead: Vec<String>,
    /// The only publishers still owed it (a retried dead letter), if set.
    pub only: Option<Vec<String>>,
    /// The last error recorded for it (a retry, a hold or a park).
    pub last_error: Option<String>,
}

impl MemoryOutbox {
    /// An empty outbox, whose clock starts now (tokio's clock) at
    /// 2025-01-01T00:00:00Z.
    pub fn new() -> Self {
        let start = SystemTime::UNIX_EPOCH + DEFAULT_START;
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    clock: Clock::new(start),
                    events: BTreeMap::new(),
                    dead: BTreeMap::new(),
                }),
                committed: Notify::new(),
            }),
            tables: Tables::default(),
        }
    }

    /// Make the outbox's clock show `start` now (say `SystemTime::now()`,
    /// to compare its times with the host's), for every clone. It goes on
    /// from there at tokio's pace.
    pub fn clock_start(self, start: SystemTime) -> Self {
        self.state().clock.show_now(start);
        self
    }

    /// Enqueue through this handle with the limits of these tables
    /// ([`Tables::max_payload`]), as [`Tables::enqueue`] would: the names
    /// play no part in memory. Other clones keep theirs.
    pub fn with_tables(mut self, tables: Tables) -> Self {
        self.tables = tables;
        self
    }

    /// Move the outbox's clock on by `by`, beyond tokio's: leases expire,
    /// retries fall due and dead letters age as if that time had passed.
    pub fn advance(&self, by: Duration) {
        self.state().clock.advance(by);
        self.shared.committed.notify_waiters();
    }

    /// The outbox's clock, as a wall-clock time.
    pub fn now(&self) -> SystemTime {
        let state = self.state();
        state.clock.wall(state.clock.now())
    }

    /// The [`Source`](crate::Source) over these events, for
    /// [`Runner::with_source`](crate::Runner::with_source) and for tests of
    /// the Source contract.
    pub fn source(&self) -> Arc<dyn crate::Source> {
        Arc::new(self.clone())
    }

    /// Start a transaction: its events are committed together by
    /// [`MemoryTransaction::commit`], or dropped.
    pub fn begin(&self) -> MemoryTransaction {
        MemoryTransaction {
            outbox: self.clone(),
            events: Vec::new(),
        }
    }

    /// Enqueue one event, committed at once. Validated like
    /// [`enqueue`](crate::enqueue); returns its id (a UUIDv7).
    pub fn enqueue<E: OutboxEvent>(&self, event: &E) -> Result<Uuid, Error> {
        let mut tx = self.begin();
        let id = tx.enqueue(event)?;
        tx.commit();
        Ok(id)
    }

    /// Enqueue raw events, committed at once, like
    /// [`enqueue_raw`](crate::enqueue_raw).
    pub fn enqueue_raw(&self, events: &[NewEvent]) -> Result<(), Error> {
        let mut tx = self.begin();
        tx.enqueue_raw(events)?;
        tx.commit();
        Ok(())
    }

    /// The events in the outbox, in id order.
    pub fn events(&self) -> Vec<MemoryEvent> {
        let state = self.state();
        state
            .events
            .values()
            .map(|row| MemoryEvent {
                event: state.storage_box(&row.event, row.created_at, row.attempts),
                due: match row.due {
                    Due::At(at) => Some(state.clock.wall(at)),
                    Due::Parked => None,
                },
                lease: row
                    .lease
                    .map(|(owner, until)| (owner, state.clock.wall(until))),
                delivered: row.done.clone(),
                dead: row.dead.clone(),
                only: row.only.clone(),
                last_error: row.last_error.clone(),
            })
            .collect()
    }

    /// Every dead letter, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.state().dead_letters(usize::MAX)
    }

    /// How many events can still be published without an operator, as
    /// [`Source::pending`](crate::Source::pending) counts them.
    pub fn pending(&self) -> u64 {
        self.state().pending()
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn validate(&self, event: &NewEvent) -> Result<(), Error> {
        event.validate(self.tables.payload_limit())
    }
}

/// Events enqueued together into a [`MemoryOutbox`]: visible to claims only
/// once [`commit`](Self::commit)ted; dropped (rolled back) otherwise.
///
/// Each event's id is taken when it is enqueued, as in a database: a
/// transaction that commits late has older ids than events committed before
/// it, and they are still published.
#[must_use = "a transaction's events are dropped unless it is committed"]
#[derive(Debug)]
pub struct MemoryTransaction {
    outbox: MemoryOutbox,
    events: Vec<(NewEvent, At)>,
}

impl MemoryTransaction {
    /// Enqueue one event in this transaction, like
    /// [`enqueue`](crate::enqueue). Returns its id (a UUIDv7).
    pub fn enqueue<E: OutboxEvent>(&mut self, event: &E) -> Result<Uuid, Error> {
        let event = NewEvent::from_event(event)?;
        self.push(vec![event]).map(|ids| ids[0])
    }

    /// Enqueue several events of one type, like
    /// [`enqueue_all`](crate::enqueue_all). Returns their ids in order.
    pub fn enqueue_all<'e, E: OutboxEvent>(
        &mut self,
        events: impl IntoIterator<Item = &'e E>,
    ) -> Result<Vec<Uuid>, Error> {
        let events = events
            .into_iter()
            .map(NewEvent::from_event)
            .collect::<Result<Vec<_>, _>>()?;
        self.push(events)
    }

    /// Enqueue raw events, like [`enqueue_raw`](crate::enqueue_raw).
    pub fn enqueue_raw(&mut self, events: &[NewEvent]) -> Result<(), Error> {
        self.push(events.to_vec()).map(drop)
    }

    fn push(&mut self, events: Vec<NewEvent>) -> Result<Vec<Uuid>, Error> {
        events.iter().try_for_each(|e| self.outbox.validate(e))?;
        let now = self.outbox.state().clock.now();
        let ids = events.iter().map(|e| e.id).collect();
        self.events.extend(events.into_iter().map(|e| (e, now)));
        Ok(ids)
    }

    /// Make the events visible to claims, all at once.
    pub fn commit(self) {
        if self.events.is_empty() {
            return;
        }
        {
            let mut state = self.outbox.state();
            for (event, at) in self.events {
                state.events.insert(event.id, Row::new(event, at));
            }
        }
        self.outbox.shared.committed.notify_waiters();
    }

    /// Drop the events (as dropping the transaction does).
    pub fn rollback(self) {}
}
