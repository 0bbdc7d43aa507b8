//! [`TestOutbox`]: a Runner over a [`MemoryOutbox`] whose publishers are
//! watched (every call recorded, in order, with its attempt and result) and
//! can be made to fail on purpose.

use std::collections::{BTreeMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use futures_util::FutureExt;
use uuid::Uuid;

use super::memory::{MemoryOutbox, MemoryTransaction};
use crate::error::{Error, FailureKind, PublishError};
use crate::event::{OutboxEvent, StorageBox};
use crate::publisher::{Context, Publisher, StateRequirement};
use crate::registry::{Registered, registered_publishers};
use crate::runner::{RunReport, Runner, RunnerBuilder};
use crate::store::DeadLetter;

/// A fault to inject into a publisher's next calls with
/// [`TestOutbox::inject`]: the publisher itself is not called for them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Fail with a transient error: retried with the Runner's backoff,
    /// dead-lettered after `max_attempts`.
    Transient,
    /// Fail with a permanent error: dead-lettered at once.
    Permanent,
    /// Panic: the Runner counts a failed (transient) attempt.
    Panic,
    /// Never answer: the Runner's `publish_timeout` cuts the call short, a
    /// transient failure. With paused time (`#[tokio::test(start_paused =
    /// true)]`) the wait costs nothing.
    Hang,
}

/// What became of one call of a publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallResult {
    /// The publisher delivered the event.
    Delivered,
    /// It returned an error of this kind, with this message.
    Failed(FailureKind, String),
    /// It panicked, with this message.
    Panicked(String),
    /// It never answered: cut short by the publish timeout, or by a
    /// shutdown.
    Unfinished,
}

/// One call of one publisher, as [`TestOutbox::calls`] lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Call {
    /// The publisher's name.
    pub publisher: String,
    /// The event as the publisher received it.
    pub event: Arc<StorageBox>,
    /// Which attempt, from 1.
    pub attempt: u32,
    /// When it started, on the outbox's clock
    /// ([`MemoryOutbox::now`]): the gaps between attempts are the backoff.
    pub at: SystemTime,
    /// What became of it.
    pub result: CallResult,
    /// The fault injected instead of calling the publisher, if one was.
    pub injected: Option<Fault>,
}

impl Call {
    /// Whether the publisher delivered the event.
    pub fn delivered(&self) -> bool {
        self.result == CallResult::Delivered
    }

    /// The event decoded as `E`, if it is one.
    pub fn decode<E: OutboxEvent>(&self) -> Option<E> {
        (self.event.event_type == E::NAME)
            .then(|| E::decode(self.event.version, &self.event.payload).ok())
            .flatten()
    }
}

#[derive(Default)]
struct Watch {
    calls: Vec<Call>,
    faults: BTreeMap<String, VecDeque<Fault>>,
}

type Configure = Arc<dyn Fn(RunnerBuilder) -> RunnerBuilder + Send + Sync>;

/// A Runner over an in-memory outbox, for testing publishers and retry
/// policies in a plain `#[tokio::test]`: enqueue events, [`drain`](Self::drain)
/// them through the publishers, look at what each publisher got
/// ([`calls`](Self::calls), [`received`](Self::received)) and at the dead
/// letters, and [`inject`](Self::inject) failures.
///
/// The Runner is configured as in production, with a
/// [`RunnerBuilder`] ([`TestOutboxBuilder::runner`]): `max_attempts`,
/// `backoff`, `publish_timeout` and `key_policy` act as they will there.
/// Under paused time (`#[tokio::test(start_paused = true)]`) backoffs and
/// timeouts take no real time.
///
/// ```
/// use std::time::Duration;
/// use outbox::testing::{CallResult, Fault, TestOutbox};
/// use outbox::{OutboxEvent, PublishError, publisher_fn};
/// # use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize, OutboxEvent)]
/// #[outbox(name = "order.placed", key = order_id)]
/// struct OrderPlaced { order_id: i64 }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), outbox::Error> {
/// let billing = publisher_fn::<OrderPlaced, _, _>("billing", |_, _| async {
///     Ok::<(), PublishError>(())
/// });
/// let outbox = TestOutbox::builder()
///     .without_registered()
///     .publisher(billing)
///     .runner(|r| r.max_attempts(3).backoff(Duration::from_secs(1), Duration::from_secs(60)))
///     .build()?;
/// outbox.enqueue(&OrderPlaced { order_id: 7 })?;
/// outbox.inject("billing", 2, Fault::Transient);
/// outbox.drain().await?;
/// let attempts: Vec<u32> = outbox.calls_to("billing").iter().map(|c| c.attempt).collect();
/// assert_eq!(attempts, [1, 2, 3]);
/// assert!(outbox.dead_letters().is_empty());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TestOutbox {
    outbox: MemoryOutbox,
    publishers: Vec<Arc<Watched>>,
    configure: Vec<Configure>,
    watch: Arc<Mutex<Watch>>,
}

impl std::fmt::Debug for TestOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestOutbox")
            .field("outbox", &self.outbox)
            .field("publishers", &self.publisher_names())
            .finish_non_exhaustive()
    }
}

/// Configures a [`TestOutbox`]: start with [`TestOutbox::builder`].
#[must_use = "a builder does nothing until `.build()`"]
pub struct TestOutboxBuilder {
    outbox: MemoryOutbox,
    registered: bool,
    given: Vec<Arc<dyn Publisher>>,
    configure: Vec<Configure>,
}

impl std::fmt::Debug for TestOutboxBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestOutboxBuilder")
            .field("registered", &self.registered)
            .finish_non_exhaustive()
    }
}

impl TestOutboxBuilder {
    /// Use this in-memory outbox (to share it with the code under test)
    /// instead of a new one.
    pub fn outbox(mut self, outbox: MemoryOutbox) -> Self {
        self.outbox = outbox;
        self
    }

    /// Add a publisher: a broker publisher, a [`publisher_fn`](crate::publisher_fn)
    /// or your own [`Publisher`].
    pub fn publisher(mut self, publisher: impl Publisher) -> Self {
        self.given.push(Arc::new(publisher));
        self
    }

    /// Leave out the `#[publisher]` fns of this binary (by default they
    /// all run, as with [`Runner::builder`]).
    pub fn without_registered(mut self) -> Self {
        self.registered = false;
        self
    }

    /// Give publishers a shared value, received as `State<T>`.
    pub fn state<T: Send + Sync + 'static>(self, value: T) -> Self {
        self.state_arc(Arc::new(value))
    }

    /// [`state`](Self::state) for a value already in an `Arc` (to look at
    /// it after a drain).
    pub fn state_arc<T: Send + Sync + 'static>(self, value: Arc<T>) -> Self {
        self.runner(move |r| r.state_arc(value.clone()))
    }

    /// Configure the Runner as in production: `max_attempts`, `backoff`,
    /// `publish_timeout`, `key_policy`, `batch_size`… Called for every
    /// drain; several calls add up.
    pub fn runner(
        mut self,
        configure: impl Fn(RunnerBuilder) -> RunnerBuilder + Send + Sync + 'static,
    ) -> Self {
        self.configure.push(Arc::new(configure));
        self
    }

    /// Check the configuration as [`RunnerBuilder::build`] does (publisher
    /// names, states, settings).
    pub fn build(self) -> Result<TestOutbox, Error> {
        let watch = Arc::new(Mutex::new(Watch::default()));
        let mut publishers: Vec<Arc<dyn Publisher>> = Vec::new();
        if self.registered {
            publishers.extend(
                registered_publishers().map(|r| Arc::new(Registered(r)) as Arc<dyn Publisher>),
            );
        }
        publishers.extend(self.given);
        let outbox = self.outbox;
        let publishers = publishers
            .into_iter()
            .map(|inner| {
                Arc::new(Watched {
                    inner,
                    watch: watch.clone(),
                    clock: outbox.clone(),
                })
            })
            .collect();
        let kit = TestOutbox {
            outbox,
            publishers,
            configure: self.configure,
            watch,
        };
        kit.runner()?;
        Ok(kit)
    }
}

impl TestOutbox {
    /// A builder: a new [`MemoryOutbox`] and every `#[publisher]` fn of this
    /// binary, with the Runner's default settings.
    pub fn builder() -> TestOutboxBuilder {
        TestOutboxBuilder {
            outbox: MemoryOutbox::new(),
            registered: true,
            given: Vec::new(),
            configure: Vec::new(),
        }
    }

    /// The in-memory outbox: its events, dead letters, clock and Source.
    pub fn outbox(&self) -> &MemoryOutbox {
        &self.outbox
    }

    /// Enqueue an event, committed at once.
    pub fn enqueue<E: OutboxEvent>(&self, event: &E) -> Result<Uuid, Error> {
        self.outbox.enqueue(event)
    }

    /// Start a transaction (see [`MemoryOutbox::begin`]).
    pub fn begin(&self) -> MemoryTransaction {
        self.outbox.begin()
    }

    /// Make `publisher`'s next `times` calls end with `fault`, instead of
    /// calling it. Faults queue up in the order they are injected.
    ///
    /// # Panics
    ///
    /// If this outbox has no publisher of that name: the message lists the
    /// names it has.
    pub fn inject(&self, publisher: &str, times: usize, fault: Fault) {
        if !self.publishers.iter().any(|p| p.name() == publisher) {
            panic!(
                "outbox::testing: no publisher named `{publisher}` in this TestOutbox; it has {:?}",
                self.publisher_names()
            );
        }
        self.watch()
            .faults
            .entry(publisher.to_owned())
            .or_default()
            .extend(std::iter::repeat_n(fault, times));
    }

    /// [`inject`](Self::inject) `times` transient failures.
    pub fn fail_next(&self, publisher: &str, times: usize) {
        self.inject(publisher, times, Fault::Transient);
    }

    /// Run the Runner until the outbox is empty: every event delivered or
    /// dead-lettered, retries waited for (see [`Runner::drain`]).
    pub async fn drain(&self) -> Result<RunReport, Error> {
        self.runner()?.drain().await
    }

    /// Every call of every publisher so far, in the order they started.
    pub fn calls(&self) -> Vec<Call> {
        self.watch().calls.clone()
    }

    /// The calls of one publisher, in order.
    pub fn calls_to(&self, publisher: &str) -> Vec<Call> {
        self.watch()
            .calls
            .iter()
            .filter(|c| c.publisher == publisher)
            .cloned()
            .collect()
    }

    /// The events of type `E` that `publisher` delivered, in order.
    pub fn received<E: OutboxEvent>(&self, publisher: &str) -> Vec<E> {
        self.calls_to(publisher)
            .iter()
            .filter(|c| c.delivered())
            .filter_map(Call::decode)
            .collect()
    }

    /// Every dead letter, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.outbox.dead_letters()
    }

    /// How many events are still in the outbox (parked ones aside).
    pub fn pending(&self) -> u64 {
        self.outbox.pending()
    }

    /// Forget the calls recorded so far (injected faults stay).
    pub fn clear_calls(&self) {
        self.watch().calls.clear();
    }

    fn publisher_names(&self) -> Vec<&str> {
        self.publishers.iter().map(|p| p.name()).collect()
    }

    fn runner(&self) -> Result<Runner, Error> {
        let mut builder = Runner::with_source(self.outbox.source())
            .without_registered()
            .shutdown(std::future::pending());
        for publisher in &self.publishers {
            builder = builder.publisher(WatchedRef(publisher.clone()));
        }
        for configure in &self.configure {
            builder = configure(builder);
        }
        builder.build()
    }

    fn watch(&self) -> MutexGuard<'_, Watch> {
        lock(&self.watch)
    }
}

fn lock(watch: &Mutex<Watch>) -> MutexGuard<'_, Watch> {
    watch
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A publisher whose calls are recorded and whose faults are injected.
struct Watched {
    inner: Arc<dyn Publisher>,
    watch: Arc<Mutex<Watch>>,
    clock: MemoryOutbox,
}

/// Marks its call unfinished unless it is disarmed: a call whose future is
/// dropped (timed out, shut down) stays `Unfinished`.
struct Pending<'a> {
    watch: &'a Mutex<Watch>,
    index: usize,
}

impl Pending<'_> {
    fn finish(self, result: CallResult) {
        lock(self.watch).calls[self.index].result = result;
        std::mem::forget(self);
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        lock(self.watch).calls[self.index].result = CallResult::Unfinished;
    }
}

impl Watched {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn publish(&self, cx: &Context) -> Result<(), PublishError> {
        let at = self.clock.now();
        let (index, fault) = {
            let mut watch = lock(&self.watch);
            let fault = watch
                .faults
                .get_mut(self.name())
                .and_then(VecDeque::pop_front);
            watch.calls.push(Call {
                publisher: self.name().to_owned(),
                event: Arc::new(cx.event().clone()),
                attempt: cx.attempt(),
                at,
                result: CallResult::Unfinished,
                injected: fault.clone(),
            });
            (watch.calls.len() - 1, fault)
        };
        let pending = Pending {
            watch: &self.watch,
            index,
        };
        let result = match fault {
            None => {
                AssertUnwindSafe(self.inner.publish(cx))
                    .catch_unwind()
                    .await
            }
            Some(Fault::Transient) => Ok(Err(PublishError::transient(
                "injected transient failure (outbox::testing)",
            ))),
            Some(Fault::Permanent) => Ok(Err(PublishError::permanent(
                "injected permanent failure (outbox::testing)",
            ))),
            Some(Fault::Panic) => {
                Err(Box::new("injected panic (outbox::testing)") as Box<dyn std::any::Any + Send>)
            }
            Some(Fault::Hang) => std::future::pending().await,
        };
        match result {
            Ok(Ok(())) => {
                pending.finish(CallResult::Delivered);
                Ok(())
            }
            Ok(Err(e)) => {
                pending.finish(CallResult::Failed(e.kind(), e.to_string()));
                Err(e)
            }
            Err(panic) => {
                pending.finish(CallResult::Panicked(panic_message(&*panic)));
                std::panic::resume_unwind(panic)
            }
        }
    }
}

/// A watched publisher as the Runner holds it.
struct WatchedRef(Arc<Watched>);

#[async_trait]
impl Publisher for WatchedRef {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn accepts(&self, event_type: &str) -> bool {
        self.0.inner.accepts(event_type)
    }

    fn required_state(&self) -> Option<StateRequirement> {
        self.0.inner.required_state()
    }

    async fn publish(&self, cx: &Context) -> Result<(), PublishError> {
        self.0.publish(cx).await
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}
