//! The Runner: claims due events, hands them to their publishers, records
//! the outcome, and shuts down gracefully.

use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{BoxFuture, join_all};
use futures_util::{FutureExt, StreamExt, stream};
use tokio::sync::watch;
use tracing::{Instrument, debug, error, info, info_span, warn};
use uuid::Uuid;

use crate::error::PublishError;
use crate::event::registered_event_types;
use crate::publisher::{Context, Publisher, Registered, States, registered_publishers};
use crate::store::{Backend, ClaimedEvent, Failure, Settlement, Source};
use crate::{Error, Tables};

/// What a Runner did before it returned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunReport {
    /// Successful deliveries (one per event and publisher).
    pub published: u64,
    /// Failed attempts that will be retried.
    pub retried: u64,
    /// Deliveries moved to the dead-letter table.
    pub dead_lettered: u64,
}

#[derive(Default)]
struct Stats {
    published: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
}

impl Stats {
    fn report(&self) -> RunReport {
        RunReport {
            published: self.published.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone)]
struct Settings {
    batch_size: usize,
    concurrency: usize,
    max_attempts: u32,
    lease: Duration,
    poll_interval: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    publish_timeout: Duration,
    grace_period: Duration,
    listen: bool,
    key_policy: KeyPolicy,
    dead_letter_retention: Option<Duration>,
}

/// What happens to a partition key when one of its events is dead-lettered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyPolicy {
    /// The dead-lettered event leaves the outbox and the key's next event
    /// goes on (the default): one poisoned event does not stop a key for
    /// good, at the price of a gap in that key's order, which the dead
    /// letter records.
    #[default]
    Skip,
    /// The key stops: the event stays in the outbox, never due, and no later
    /// event of its key is published until an operator retries its dead
    /// letter (it goes first, in its original place) or purges it (the key
    /// moves on). For consumers that must never see a gap.
    Block,
}

/// Marks, in an event's `done` list, that a delivery of it was dead-lettered.
const DEAD_MARK: &str = "\u{1}dead-lettered";

impl Default for Settings {
    fn default() -> Self {
        Self {
            batch_size: 100,
            concurrency: 64,
            max_attempts: 10,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_millis(250),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(600),
            publish_timeout: Duration::from_secs(10),
            grace_period: Duration::from_secs(10),
            listen: true,
            key_policy: KeyPolicy::Skip,
            dead_letter_retention: None,
        }
    }
}

type SourceFactory = Box<dyn FnOnce(&Tables) -> Arc<dyn Source> + Send>;

/// Configures a [`Runner`]. Start with [`Runner::builder`].
///
/// ```no_run
/// # async fn demo(pool: sqlx::SqlitePool) -> Result<(), outbox::Error> {
/// use std::time::Duration;
/// outbox::Runner::builder(pool)
///     .batch_size(100)
///     .max_attempts(10)
///     .backoff(Duration::from_millis(500), Duration::from_secs(300))
///     .build()?
///     .run()
///     .await?;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `.build()?.run()` is called"]
pub struct RunnerBuilder {
    source: SourceFactory,
    tables: Tables,
    settings: Settings,
    states: States,
    publishers: Vec<(Arc<dyn Publisher>, String)>,
    use_registered: bool,
    shutdown: Option<BoxFuture<'static, ()>>,
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.settings.$name = value;
            self
        }
    };
}

impl RunnerBuilder {
    /// Give publishers a shared value, received as `State<T>`.
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(Arc::new(value));
        self
    }

    /// Like [`state`](Self::state), for a value already in an `Arc`.
    pub fn state_arc<T: Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.states.insert(value);
        self
    }

    /// Add a publisher that is not registered through `#[publisher]`: a
    /// broker publisher, or one from [`publisher_fn`](crate::publisher_fn).
    pub fn publisher(mut self, publisher: impl Publisher) -> Self {
        let description = format!("publisher `{}` given to the builder", publisher.name());
        self.publishers.push((Arc::new(publisher), description));
        self
    }

    /// Leave out the publishers registered with `#[publisher]` in this
    /// binary; only those given with [`publisher`](Self::publisher) run.
    pub fn without_registered(mut self) -> Self {
        self.use_registered = false;
        self
    }

    /// Use these tables instead of the default `outbox_*`.
    pub fn tables(mut self, tables: Tables) -> Self {
        self.tables = tables;
        self
    }

    /// Stop when this future completes, instead of on Ctrl-C or SIGTERM.
    pub fn shutdown(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        self.shutdown = Some(Box::pin(signal));
        self
    }

    setter!(
        /// Most events claimed at once (default 100).
        batch_size: usize
    );
    setter!(
        /// Most events of a batch published at the same time (default 64).
        concurrency: usize
    );
    setter!(
        /// Attempts before a transiently failing delivery is dead-lettered (default 10).
        max_attempts: u32
    );
    setter!(
        /// How long a claim is held before another Runner may take the event
        /// (default 60 s). Must exceed [`publish_timeout`](Self::publish_timeout).
        lease: Duration
    );
    setter!(
        /// How often an idle Runner looks for due events (default 250 ms),
        /// also when it listens for wake-ups.
        poll_interval: Duration
    );
    setter!(
        /// Wake up on the database's notifications (default true; PostgreSQL
        /// LISTEN/NOTIFY). Set false for poll-only mode, for example behind a
        /// connection pooler in transaction mode, where LISTEN does not work.
        listen: bool
    );
    setter!(
        /// How long one publisher call may take before it counts as a
        /// transient failure (default 10 s).
        publish_timeout: Duration
    );
    setter!(
        /// On shutdown, how long in-flight events may still finish before
        /// they are released for another Runner (default 10 s).
        grace_period: Duration
    );

    /// What a dead letter does to its partition key (default
    /// [`KeyPolicy::Skip`]).
    pub fn key_policy(mut self, policy: KeyPolicy) -> Self {
        self.settings.key_policy = policy;
        self
    }

    /// Delete dead letters older than this (checked every minute). By
    /// default they are kept until purged.
    pub fn dead_letter_retention(mut self, retention: Duration) -> Self {
        self.settings.dead_letter_retention = Some(retention);
        self
    }

    /// Retry delays: `initial` after the first failure, doubling up to
    /// `max`, each with jitter (defaults 1 s and 10 min).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.settings.backoff_initial = initial;
        self.settings.backoff_max = max;
        self
    }

    /// Check the configuration and wire every (event type, publisher) pair.
    ///
    /// Fails on duplicate publisher names, on a `State<T>` that no
    /// [`state`](Self::state) provides, and on settings out of range.
    pub fn build(self) -> Result<Runner, Error> {
        let s = &self.settings;
        let invalid = |setting: &'static str, reason: &str| {
            Err(Error::InvalidSetting {
                setting,
                reason: reason.to_owned(),
            })
        };
        if s.batch_size == 0 {
            return invalid("batch_size", "must be at least 1");
        }
        if s.concurrency == 0 {
            return invalid("concurrency", "must be at least 1");
        }
        if s.max_attempts == 0 {
            return invalid("max_attempts", "must be at least 1");
        }
        if s.publish_timeout >= s.lease {
            return invalid(
                "lease",
                "must be longer than publish_timeout, or a slow publisher would outlive its claim",
            );
        }
        if s.poll_interval.is_zero() {
            return invalid("poll_interval", "must be above zero");
        }

        let mut publishers = Vec::new();
        if self.use_registered {
            for reg in registered_publishers() {
                let description = format!(
                    "`{}` in {} (event `{}`)",
                    reg.name, reg.module, reg.event_type
                );
                publishers.push((Arc::new(Registered(reg)) as Arc<dyn Publisher>, description));
            }
        }
        publishers.extend(self.publishers);

        let mut names: Vec<(&str, &str)> = Vec::new();
        for (publisher, description) in &publishers {
            if let Some((_, first)) = names.iter().find(|(n, _)| *n == publisher.name()) {
                return Err(Error::DuplicatePublisher {
                    name: publisher.name().to_owned(),
                    first: (*first).to_owned(),
                    second: description.clone(),
                });
            }
            names.push((publisher.name(), description));
            if let Some(req) = publisher.required_state()
                && !self.states.contains(req.type_id)
            {
                return Err(Error::MissingState {
                    publisher: publisher.name().to_owned(),
                    state: req.type_name,
                });
            }
        }

        let mut wired = HashSet::new();
        for info in registered_event_types() {
            let mut any = false;
            for (publisher, _) in &publishers {
                if publisher.accepts(info.name) {
                    any = true;
                    wired.insert(publisher.name().to_owned());
                    info!(
                        event = info.name,
                        publisher = publisher.name(),
                        "outbox: wired"
                    );
                }
            }
            if !any {
                warn!(
                    event = info.name,
                    rust_type = info.rust_type,
                    "outbox: event type has no publisher in this Runner; its events will be retried and then dead-lettered"
                );
            }
        }
        for (publisher, _) in &publishers {
            if !wired.contains(publisher.name()) {
                info!(publisher = publisher.name(), "outbox: publisher registered");
            }
        }

        Ok(Runner {
            core: Core {
                source: (self.source)(&self.tables),
                publishers: publishers.into_iter().map(|(p, _)| p).collect(),
                settings: self.settings,
                states: Arc::new(self.states),
                owner: Uuid::now_v7(),
                stats: Stats::default(),
            },
            shutdown: self.shutdown,
        })
    }
}

/// The relay: publishes committed events to every registered publisher.
///
/// Build one with [`Runner::builder`], or use [`run`](crate::run) for the
/// defaults. [`Runner::run`] works until shutdown; [`Runner::drain`] returns
/// once the outbox is empty.
pub struct Runner {
    core: Core,
    shutdown: Option<BoxFuture<'static, ()>>,
}

struct Core {
    source: Arc<dyn Source>,
    publishers: Vec<Arc<dyn Publisher>>,
    settings: Settings,
    states: Arc<States>,
    owner: Uuid,
    stats: Stats,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forever,
    Drain,
}

impl Runner {
    /// A builder for a Runner over this pool (PostgreSQL or SQLite).
    pub fn builder<DB: Backend>(pool: sqlx::Pool<DB>) -> RunnerBuilder {
        Self::builder_with(Box::new(move |tables: &Tables| DB::__source(pool, tables)))
    }

    /// A builder for a Runner over any [`Source`], such as a custom backend.
    pub fn with_source(source: Arc<dyn Source>) -> RunnerBuilder {
        Self::builder_with(Box::new(move |_: &Tables| source))
    }

    fn builder_with(source: SourceFactory) -> RunnerBuilder {
        RunnerBuilder {
            source,
            tables: Tables::default(),
            settings: Settings::default(),
            states: States::default(),
            publishers: Vec::new(),
            use_registered: true,
            shutdown: None,
        }
    }

    /// This Runner's lease-holder id, as recorded on the events it claims.
    pub fn id(&self) -> Uuid {
        self.core.owner
    }

    /// Publish until shutdown (Ctrl-C, SIGTERM, or the future given to
    /// [`RunnerBuilder::shutdown`]); then finish or release in-flight events
    /// within the grace period and return.
    pub async fn run(self) -> Result<RunReport, Error> {
        self.run_mode(Mode::Forever).await
    }

    /// Publish until the outbox is empty: every event published or
    /// dead-lettered (events waiting for a retry are waited for). Also stops
    /// on shutdown. Meant for tests, scripts and the quickstart.
    pub async fn drain(self) -> Result<RunReport, Error> {
        self.run_mode(Mode::Drain).await
    }

    async fn run_mode(mut self, mode: Mode) -> Result<RunReport, Error> {
        let signal = self
            .shutdown
            .take()
            .unwrap_or_else(|| Box::pin(default_signal()));
        let (stop_tx, mut stop) = watch::channel(false);
        let watcher = tokio::spawn(async move {
            signal.await;
            let _ = stop_tx.send(true);
        });
        let core = self.core;
        let span = info_span!("outbox.runner", runner = %core.owner);
        let result = core.main_loop(mode, &mut stop).instrument(span).await;
        watcher.abort();
        result.map(|()| core.stats.report())
    }
}

impl Core {
    async fn main_loop(&self, mode: Mode, stop: &mut watch::Receiver<bool>) -> Result<(), Error> {
        info!(publishers = self.publishers.len(), "outbox: runner started");
        let mut failures = 0u32;
        let mut to_ack: Vec<Uuid> = Vec::new();
        let mut housekeeping = tokio::time::Instant::now();
        self.housekeeping().await;
        loop {
            if stop_requested(stop) {
                break;
            }
            if housekeeping.elapsed() >= Duration::from_secs(60) {
                housekeeping = tokio::time::Instant::now();
                self.housekeeping().await;
            }
            // The previous batch's ack runs beside the next claim: its events
            // are still leased and still head their keys until the ack
            // commits, so the claim cannot take them or their successors.
            let acking = std::mem::take(&mut to_ack);
            let claim = self
                .source
                .claim(self.owner, self.settings.batch_size, self.settings.lease)
                .instrument(info_span!("outbox.claim", limit = self.settings.batch_size));
            // A shutdown does not wait for a claim (which can hang as long as
            // the pool's acquire timeout while the database is unreachable),
            // but it lets the ack finish.
            let claim = async {
                tokio::select! {
                    biased;
                    () = stopped(stop) => None,
                    claimed = claim => Some(claimed),
                }
            };
            let (claimed, ()) = tokio::join!(claim, self.ack(&acking));
            let Some(claimed) = claimed else {
                break;
            };
            match claimed {
                Err(e) => {
                    failures += 1;
                    let delay = backoff(
                        failures,
                        Duration::from_millis(100),
                        Duration::from_secs(30),
                    );
                    warn!(error = %e, retry_in = ?delay, "outbox: claim failed");
                    if sleep_or_stop(delay, stop).await {
                        break;
                    }
                }
                // The ack just made the next events of its keys claimable.
                Ok(batch) if batch.is_empty() && !acking.is_empty() => failures = 0,
                Ok(batch) if batch.is_empty() => {
                    failures = 0;
                    if mode == Mode::Drain {
                        match self.source.pending().await {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e) => warn!(error = %e, "outbox: counting pending events failed"),
                        }
                    }
                    if self.idle(stop).await {
                        break;
                    }
                }
                Ok(batch) => {
                    failures = 0;
                    debug!(claimed = batch.len(), "outbox: claimed");
                    to_ack = self.process_batch(batch, stop).await;
                }
            }
        }
        self.ack(&to_ack).await;
        info!("outbox: runner stopped");
        Ok(())
    }

    async fn housekeeping(&self) {
        let Some(retention) = self.settings.dead_letter_retention else {
            return;
        };
        let before = std::time::SystemTime::now()
            .checked_sub(retention)
            .unwrap_or(std::time::UNIX_EPOCH);
        match self.source.purge_dead_letters(before).await {
            Ok(0) => {}
            Ok(n) => info!(
                purged = n,
                "outbox: purged dead letters past their retention"
            ),
            Err(e) => warn!(error = %e, "outbox: purging old dead letters failed"),
        }
    }

    /// Wait for a wake-up or the poll interval; true when shutdown was asked.
    async fn idle(&self, stop: &mut watch::Receiver<bool>) -> bool {
        if !self.settings.listen {
            return sleep_or_stop(self.settings.poll_interval, stop).await;
        }
        tokio::select! {
            biased;
            () = stopped(stop) => true,
            () = self.source.wait_for_events(self.settings.poll_interval) => false,
        }
    }

    /// Publish a batch; returns the events that every publisher received,
    /// for the caller to acknowledge.
    async fn process_batch(
        &self,
        batch: Vec<ClaimedEvent>,
        stop: &mut watch::Receiver<bool>,
    ) -> Vec<Uuid> {
        let unfinished: Mutex<HashSet<Uuid>> =
            Mutex::new(batch.iter().map(|e| e.event.id).collect());
        let delivered: Mutex<Vec<Uuid>> = Mutex::new(Vec::with_capacity(batch.len()));
        let mut work = Box::pin(async {
            stream::iter(batch)
                .map(|event| self.deliver(event, &unfinished, &delivered))
                .buffer_unordered(self.settings.concurrency)
                .for_each(|()| async {})
                .await;
        });
        let finished = tokio::select! {
            () = &mut work => true,
            () = stopped(stop) => {
                info!(grace = ?self.settings.grace_period, "outbox: shutting down, finishing in-flight events");
                tokio::time::timeout(self.settings.grace_period, &mut work).await.is_ok()
            }
        };
        // Cancels what is still running: the publishers' futures are dropped.
        drop(work);
        let delivered = std::mem::take(&mut *lock(&delivered));
        if !finished {
            let left: Vec<Uuid> = lock(&unfinished)
                .iter()
                .copied()
                .filter(|id| !delivered.contains(id))
                .collect();
            if !left.is_empty() {
                warn!(
                    events = left.len(),
                    "outbox: grace period over, releasing unfinished events"
                );
                let released = persist("release", || self.source.release(self.owner, &left)).await;
                if released.is_none() {
                    warn!(
                        "outbox: could not release events; they become due again when their lease expires"
                    );
                }
            }
        }
        delivered
    }

    async fn ack(&self, ids: &[Uuid]) {
        if ids.is_empty() {
            return;
        }
        let span = info_span!("outbox.ack", events = ids.len());
        let acked = persist("ack", || self.source.ack(self.owner, ids))
            .instrument(span)
            .await;
        match acked {
            Some(n) if n as usize == ids.len() => {}
            Some(n) => warn!(
                acked = n,
                expected = ids.len(),
                "outbox: some leases expired before the ack; those events will be published again"
            ),
            None => error!(
                events = ids.len(),
                "outbox: ack failed; the events will be published again when their lease expires"
            ),
        }
    }

    async fn deliver(
        &self,
        claimed: ClaimedEvent,
        unfinished: &Mutex<HashSet<Uuid>>,
        delivered: &Mutex<Vec<Uuid>>,
    ) {
        let event = &claimed.event;
        let accepting: Vec<&Arc<dyn Publisher>> = self
            .publishers
            .iter()
            .filter(|p| p.accepts(&event.event_type))
            .collect();
        let targets: Vec<&Arc<dyn Publisher>> = accepting
            .iter()
            .copied()
            .filter(|p| !claimed.done.iter().any(|d| d == p.name()))
            .filter(|p| {
                claimed
                    .only
                    .as_ref()
                    .is_none_or(|only| only.iter().any(|o| o == p.name()))
            })
            .collect();

        let mut done = claimed.done.clone();
        let mut dead = Vec::new();
        let mut transient: Vec<(String, PublishError)> = Vec::new();

        if accepting.is_empty() {
            transient.push((
                "(none)".to_owned(),
                PublishError::transient(format!(
                    "no publisher for event type `{}` is registered in this Runner",
                    event.event_type
                )),
            ));
        }

        let results = join_all(targets.iter().map(|p| self.call(p, event))).await;
        for (publisher, result) in targets.iter().zip(results) {
            let name = publisher.name().to_owned();
            match result {
                Ok(()) => {
                    self.stats.published.fetch_add(1, Ordering::Relaxed);
                    done.push(name);
                }
                Err(e) if e.is_permanent() => {
                    error!(event_id = %event.id, event_type = %event.event_type, publisher = %name, error = %e, "outbox: permanent failure, dead-lettering");
                    dead.push(Failure {
                        publisher: name.clone(),
                        error: e.to_string(),
                    });
                    done.push(name);
                    mark_dead(&mut done);
                }
                Err(e) => transient.push((name, e)),
            }
        }

        let exhausted = event.attempt >= self.settings.max_attempts;
        let mut retry = None;
        if !transient.is_empty() {
            if exhausted {
                for (name, e) in transient.drain(..) {
                    error!(event_id = %event.id, event_type = %event.event_type, publisher = %name, attempts = event.attempt, error = %e, "outbox: giving up, dead-lettering");
                    dead.push(Failure {
                        publisher: name.clone(),
                        error: format!("gave up after {} attempts: {e}", event.attempt),
                    });
                    done.push(name);
                    mark_dead(&mut done);
                }
            } else {
                let requested = transient
                    .iter()
                    .filter_map(|(_, e)| e.requested_delay())
                    .max();
                let delay = backoff(
                    event.attempt,
                    self.settings.backoff_initial,
                    self.settings.backoff_max,
                )
                .max(requested.unwrap_or_default());
                let message = transient
                    .iter()
                    .map(|(name, e)| format!("{name}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                for (name, e) in &transient {
                    warn!(event_id = %event.id, event_type = %event.event_type, publisher = %name, attempt = event.attempt, retry_in = ?delay, error = %e, "outbox: publish failed, will retry");
                }
                self.stats
                    .retried
                    .fetch_add(transient.len() as u64, Ordering::Relaxed);
                retry = Some((delay, message));
            }
        }

        let park = self.settings.key_policy == KeyPolicy::Block
            && event.partition_key.is_some()
            && retry.is_none()
            && done.iter().any(|d| d == DEAD_MARK);
        if dead.is_empty() && retry.is_none() && !park {
            lock(delivered).push(event.id);
            return;
        }
        let dead_count = dead.len() as u64;
        let settlement = Settlement {
            id: event.id,
            done,
            dead,
            retry,
            park,
        };
        let span =
            info_span!("outbox.settle", event_id = %event.id, event_type = %event.event_type);
        match persist("settle", || self.source.settle(self.owner, &settlement))
            .instrument(span)
            .await
        {
            Some(true) => {
                self.stats
                    .dead_lettered
                    .fetch_add(dead_count, Ordering::Relaxed);
            }
            Some(false) => {
                warn!(event_id = %event.id, "outbox: lease lost before the outcome was recorded; another Runner owns the event now")
            }
            None => {
                error!(event_id = %event.id, "outbox: could not record the outcome; the event becomes due again when its lease expires")
            }
        }
        lock(unfinished).remove(&event.id);
    }

    async fn call(
        &self,
        publisher: &Arc<dyn Publisher>,
        event: &Arc<crate::StorageBox>,
    ) -> Result<(), PublishError> {
        let span = info_span!(
            "outbox.publish",
            event_id = %event.id,
            event_type = %event.event_type,
            publisher = publisher.name(),
            attempt = event.attempt,
        );
        let cx = Context::new(event.clone(), self.states.clone());
        let publish = AssertUnwindSafe(publisher.publish(&cx)).catch_unwind();
        let outcome = tokio::time::timeout(self.settings.publish_timeout, publish)
            .instrument(span)
            .await;
        match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => Err(PublishError::transient(format!(
                "publisher panicked: {}",
                panic_message(&*panic)
            ))),
            Err(_) => Err(PublishError::transient(format!(
                "publisher did not finish within {:?}",
                self.settings.publish_timeout
            ))),
        }
    }
}

fn mark_dead(done: &mut Vec<String>) {
    if !done.iter().any(|d| d == DEAD_MARK) {
        done.push(DEAD_MARK.to_owned());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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

/// Exponential backoff with jitter: `initial * 2^(attempt-1)`, capped at
/// `max`, then a random value between half of it and all of it.
pub(crate) fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(31);
    let full = initial.saturating_mul(1u32 << exp).min(max);
    let half = full / 2;
    half + full.saturating_sub(half).mul_f64(fastrand::f64())
}

/// Run a store operation, retrying database failures for a few seconds: the
/// outcome of a publish is worth keeping through a short outage.
async fn persist<T, F, Fut>(what: &'static str, mut op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    const TRIES: u32 = 8;
    for attempt in 1..=TRIES {
        match op().await {
            Ok(value) => return Some(value),
            Err(e) if attempt < TRIES => {
                let delay = backoff(attempt, Duration::from_millis(50), Duration::from_secs(2));
                warn!(error = %e, retry_in = ?delay, "outbox: {what} failed");
                tokio::time::sleep(delay).await;
            }
            Err(e) => error!(error = %e, "outbox: {what} failed, giving up"),
        }
    }
    None
}

fn stop_requested(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

/// Completes once shutdown is requested (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Returns true when shutdown was requested before `delay` passed.
async fn sleep_or_stop(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        biased;
        () = stopped(stop) => true,
        () = tokio::time::sleep(delay) => false,
    }
}

async fn default_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "outbox: cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "outbox: cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("outbox: Ctrl-C received"),
        () = term => info!("outbox: SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for _ in 0..100 {
            let first = backoff(1, initial, max);
            assert!(first >= initial / 2 && first <= initial, "{first:?}");
            let third = backoff(3, initial, max);
            assert!(third >= initial * 2 && third <= initial * 4, "{third:?}");
            let late = backoff(40, initial, max);
            assert!(late >= max / 2 && late <= max, "{late:?}");
        }
    }
}
