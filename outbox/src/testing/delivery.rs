//! What a publisher receives for one event, built in one line:
//! [`delivery`].

use std::sync::Arc;

use crate::error::PublishError;
use crate::event::{OutboxEvent, StorageBox};
use crate::publisher::{Context, Publisher, States};
use crate::registry::{Registered, registered_publishers};

/// What a publisher receives for `event` on its first attempt: the stored
/// event (encoded as [`enqueue`](crate::enqueue) would, headers from the
/// header hook included) and its [`Context`]. Set the attempt and the
/// states with the builder methods, then take the [`context`](Delivery::context)
/// or [`publish`](Delivery::publish) it to a [`Publisher`].
///
/// A `#[publisher]` fn stays a plain async fn: call it with the event (and
/// its second argument), or through its registration with
/// [`registered`] to test the decoding too. A built-in or hand-written
/// [`Publisher`] takes the context.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use outbox::testing::{delivery, registered};
/// use outbox::{Context, OutboxEvent, PublishError, Publisher, State, publisher, publisher_fn};
/// # use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize, OutboxEvent)]
/// #[outbox(name = "order.placed", key = order_id)]
/// struct OrderPlaced { order_id: i64 }
///
/// #[derive(Default)]
/// struct AuditLog { entries: Mutex<Vec<String>> }
///
/// #[publisher(name = "audit")]
/// async fn audit(event: OrderPlaced, log: State<AuditLog>) -> Result<(), PublishError> {
///     log.entries.lock().unwrap().push(format!("order {}", event.order_id));
///     Ok(())
/// }
///
/// #[publisher]
/// async fn stamp(event: OrderPlaced, cx: Context) -> Result<(), PublishError> {
///     if cx.attempt() > 2 {
///         return Err(PublishError::permanent(format!("order {} keeps failing", event.order_id)));
///     }
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let event = OrderPlaced { order_id: 7 };
///
/// // A #[publisher] fn, called directly.
/// let log = Arc::new(AuditLog::default());
/// audit(OrderPlaced { order_id: 7 }, State(log.clone())).await.unwrap();
/// assert_eq!(*log.entries.lock().unwrap(), ["order 7"]);
/// let third = delivery(&event).attempt(3).context();
/// assert!(stamp(OrderPlaced { order_id: 7 }, third).await.unwrap_err().is_permanent());
///
/// // Through its registration: decoded from the stored payload, its state
/// // taken from the delivery's.
/// let audit = registered("audit").unwrap();
/// delivery(&event).state_arc(log.clone()).publish(&*audit).await.unwrap();
/// assert_eq!(log.entries.lock().unwrap().len(), 2);
///
/// // Any Publisher (a built-in broker publisher is called the same way).
/// let printer = publisher_fn::<OrderPlaced, _, _>("printer", |e, cx| async move {
///     println!("order {} (event {}, attempt {})", e.order_id, cx.id(), cx.attempt());
///     Ok::<(), PublishError>(())
/// });
/// delivery(&event).publish(&printer).await.unwrap();
/// # }
/// ```
///
/// # Panics
///
/// If the event cannot be encoded (its `Serialize` impl fails): a test
/// should know at once.
pub fn delivery<E: OutboxEvent>(event: &E) -> Delivery {
    let stored = StorageBox::from_event(event).unwrap_or_else(|e| {
        panic!(
            "outbox::testing::delivery: the event of type `{}` could not be encoded: {e}",
            E::NAME
        )
    });
    Delivery::of(stored)
}

/// One delivery of one event to a publisher, as the Runner would make it:
/// see [`delivery`].
#[derive(Clone)]
#[must_use = "take its `context()` or `publish` it"]
pub struct Delivery {
    event: StorageBox,
    states: States,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("event", &self.event)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// A delivery of an event already stored (or made by hand with
    /// [`StorageBox::new`]).
    pub fn of(event: StorageBox) -> Self {
        Self {
            event,
            states: States::default(),
        }
    }

    /// As the `n`th attempt (from 1), as a retry would be.
    pub fn attempt(mut self, n: u32) -> Self {
        self.event.attempt = n;
        self
    }

    /// With a header, as the header hook or [`NewEvent::header`](crate::NewEvent::header) adds them.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.event.headers.insert(name.into(), value.into());
        self
    }

    /// With a state, as [`RunnerBuilder::state`](crate::RunnerBuilder::state)
    /// gives it: what a publisher's `State<T>` argument receives.
    pub fn state<T: Send + Sync + 'static>(self, value: T) -> Self {
        self.state_arc(Arc::new(value))
    }

    /// [`state`](Self::state) for a value already in an `Arc` (to look at
    /// it after the call).
    pub fn state_arc<T: Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.states.insert(value);
        self
    }

    /// The stored event.
    pub fn event(&self) -> &StorageBox {
        &self.event
    }

    /// The context a publisher receives.
    pub fn context(&self) -> Context {
        Context::new(Arc::new(self.event.clone()), Arc::new(self.states.clone()))
    }

    /// Call `publisher` with this delivery, as the Runner would (without
    /// its timeout and panic catching).
    pub async fn publish<P: Publisher + ?Sized>(&self, publisher: &P) -> Result<(), PublishError> {
        publisher.publish(&self.context()).await
    }
}

/// The `#[publisher]` fn registered under `name` in this binary, as the
/// Runner calls it: it decodes the stored payload, takes its second
/// argument from the context, and maps its error. `None` when no
/// `#[publisher]` has that name.
pub fn registered(name: &str) -> Option<Arc<dyn Publisher>> {
    registered_publishers()
        .find(|r| r.name == name)
        .map(|r| Arc::new(Registered(r)) as Arc<dyn Publisher>)
}
