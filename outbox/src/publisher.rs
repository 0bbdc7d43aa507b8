use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use uuid::Uuid;

use crate::error::{BoxError, PublishError};
use crate::event::{OutboxEvent, StorageBox};

/// Delivers events somewhere: a broker, a webhook, another service.
///
/// `#[publisher]` functions become publishers through inventory; broker
/// publishers and hand-written ones are given to
/// [`RunnerBuilder::publisher`](crate::RunnerBuilder::publisher).
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// A stable, unique name. The outbox records it to remember which
    /// publishers of an event have succeeded, and in dead letters.
    fn name(&self) -> &str;

    /// Whether this publisher receives events of this type.
    fn accepts(&self, event_type: &str) -> bool;

    /// The [`State`] type this publisher needs, checked when the Runner is built.
    fn required_state(&self) -> Option<StateRequirement> {
        None
    }

    /// Deliver one event. Return only once the destination has it; return a
    /// [`PublishError`] otherwise (transient errors are retried).
    async fn publish(&self, cx: &Context) -> Result<(), PublishError>;
}

/// A `State<T>` that a publisher needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateRequirement {
    /// `TypeId::of::<T>()`.
    pub type_id: TypeId,
    /// `std::any::type_name::<T>()`, for messages.
    pub type_name: &'static str,
}

impl StateRequirement {
    /// The requirement for `State<T>`.
    pub fn of<T: Send + Sync + 'static>() -> Self {
        Self {
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
        }
    }
}

/// Values given to the Runner with [`RunnerBuilder::state`](crate::RunnerBuilder::state).
#[derive(Default, Clone)]
pub(crate) struct States {
    values: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl States {
    pub(crate) fn insert<T: Send + Sync + 'static>(&mut self, value: Arc<T>) {
        self.values.insert(TypeId::of::<T>(), value);
    }

    pub(crate) fn contains(&self, id: TypeId) -> bool {
        self.values.contains_key(&id)
    }

    fn get<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.values
            .get(&TypeId::of::<T>())
            .and_then(|v| v.clone().downcast::<T>().ok())
    }
}

/// Shared state handed to publishers: `async fn audit(e: OrderPlaced, log: State<AuditLog>)`.
///
/// Give the value to the Runner with
/// [`RunnerBuilder::state`](crate::RunnerBuilder::state); building a Runner whose
/// publisher needs a state that was not given fails with a clear error.
pub struct State<T: ?Sized>(pub Arc<T>);

impl<T: ?Sized> Clone for State<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: ?Sized> Deref for State<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for State<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("State").field(&&*self.0).finish()
    }
}

/// One delivery of one event to one publisher: the stored event, and the
/// Runner's shared state.
#[derive(Clone)]
pub struct Context {
    event: Arc<StorageBox>,
    states: Arc<States>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("event", &self.event)
            .finish()
    }
}

impl Context {
    pub(crate) fn new(event: Arc<StorageBox>, states: Arc<States>) -> Self {
        Self { event, states }
    }

    /// A context with no state, for testing a publisher by hand.
    pub fn for_event(event: StorageBox) -> Self {
        Self::new(Arc::new(event), Arc::default())
    }

    /// The event's id: stable across retries and re-deliveries, so consumers
    /// can drop duplicates.
    pub fn id(&self) -> Uuid {
        self.event.id
    }

    /// The stored event.
    pub fn event(&self) -> &StorageBox {
        &self.event
    }

    /// Which attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.event.attempt
    }

    /// A state given to the Runner builder.
    pub fn state<T: Send + Sync + 'static>(&self) -> Option<State<T>> {
        self.states.get::<T>().map(State)
    }

    /// Decode the payload as `E`. A payload that does not decode is a
    /// permanent error: retrying cannot fix it.
    pub fn decode<E: OutboxEvent>(&self) -> Result<E, PublishError> {
        E::decode(self.event.version, &self.event.payload).map_err(PublishError::permanent)
    }
}

/// A type that a `#[publisher]` function can take as its second argument.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the second argument of a publisher",
    label = "expected `State<T>` or `outbox::Context`",
    note = "a #[publisher] fn takes the event, then optionally `State<T>` (a value given with `.state(value)`) or `outbox::Context`"
)]
pub trait FromContext: Sized + Send + 'static {
    /// Extract the value.
    fn from_context(cx: &Context) -> Result<Self, PublishError>;

    /// The state that must be given to the Runner for this to succeed.
    fn requirement() -> Option<StateRequirement> {
        None
    }
}

impl FromContext for Context {
    fn from_context(cx: &Context) -> Result<Self, PublishError> {
        Ok(cx.clone())
    }
}

impl<T: Send + Sync + 'static> FromContext for State<T> {
    fn from_context(cx: &Context) -> Result<Self, PublishError> {
        cx.state::<T>().ok_or_else(|| {
            PublishError::transient(format!(
                "no state of type `{}` was given to the Runner",
                std::any::type_name::<T>()
            ))
        })
    }

    fn requirement() -> Option<StateRequirement> {
        Some(StateRequirement::of::<T>())
    }
}

/// What a `#[publisher]` function may return: `Result<(), E>` for any error
/// that converts into `Box<dyn Error + Send + Sync>` (so `anyhow::Result<()>`).
#[diagnostic::on_unimplemented(
    message = "a publisher must return `Result<(), E>`, not `{Self}`",
    label = "expected `Result<(), E>` where `E: Into<Box<dyn Error + Send + Sync>>`",
    note = "for example `anyhow::Result<()>`, `Result<(), MyError>` or `Result<(), outbox::PublishError>`"
)]
pub trait PublisherOutput {
    /// Convert into the Runner's view of the outcome.
    fn into_outcome(self) -> Result<(), PublishError>;
}

impl<E: Into<BoxError>> PublisherOutput for Result<(), E> {
    fn into_outcome(self) -> Result<(), PublishError> {
        self.map_err(|e| PublishError::from_boxed(e.into()))
    }
}

/// A publisher registered by `#[publisher]`, collected through inventory.
///
/// Generated code builds these; a program that wires publishers by hand uses
/// [`publisher_fn`] instead.
#[derive(Debug)]
pub struct PublisherRegistration {
    /// The publisher's name.
    pub name: &'static str,
    /// The event type name it receives.
    pub event_type: &'static str,
    /// The Rust event type, for messages.
    pub rust_type: &'static str,
    /// The module that defined it, for messages.
    pub module: &'static str,
    /// What its second argument needs.
    pub requires: fn() -> Option<StateRequirement>,
    /// Decode and call the function.
    pub call: fn(Context) -> BoxFuture<'static, Result<(), PublishError>>,
}

/// A publisher for events of type `E` from a closure, for wiring by hand
/// (without `#[publisher]` and inventory).
///
/// ```
/// use outbox::{OutboxEvent, publisher_fn};
/// # use serde::{Deserialize, Serialize};
/// #[derive(Serialize, Deserialize, OutboxEvent)]
/// struct Ping { n: u32 }
///
/// let p = publisher_fn::<Ping, _, _>("log_ping", |ping, cx| async move {
///     println!("ping {} (event {})", ping.n, cx.id());
///     Ok::<(), std::io::Error>(())
/// });
/// # let _ = p;
/// ```
pub fn publisher_fn<E, F, Fut>(name: impl Into<String>, f: F) -> impl Publisher
where
    E: OutboxEvent,
    F: Fn(E, Context) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: PublisherOutput,
{
    FnPublisher {
        name: name.into(),
        f,
        _event: PhantomData::<fn() -> E>,
    }
}

struct FnPublisher<E, F> {
    name: String,
    f: F,
    _event: PhantomData<fn() -> E>,
}

#[async_trait]
impl<E, F, Fut> Publisher for FnPublisher<E, F>
where
    E: OutboxEvent,
    F: Fn(E, Context) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: PublisherOutput,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn accepts(&self, event_type: &str) -> bool {
        event_type == E::NAME
    }

    async fn publish(&self, cx: &Context) -> Result<(), PublishError> {
        let event = cx.decode::<E>()?;
        (self.f)(event, cx.clone()).await.into_outcome()
    }
}
