//! Configuring a Runner: the builder, its settings and their validation.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use uuid::Uuid;

use super::decide::Policy;
use super::{Core, Runner, Stats};
use crate::error::Error;
use crate::publisher::{Publisher, States};
use crate::registry::{Candidates, Registry};
use crate::store::Source;
use crate::tables::Tables;

#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) batch_size: usize,
    pub(super) batch_bytes: usize,
    pub(super) concurrency: usize,
    pub(super) max_attempts: u32,
    pub(super) lease: Duration,
    pub(super) poll_interval: Duration,
    pub(super) backoff_initial: Duration,
    pub(super) backoff_max: Duration,
    pub(super) publish_timeout: Duration,
    pub(super) grace_period: Duration,
    /// `None`: listen unless behind a transaction pooler.
    pub(super) listen: Option<bool>,
    pub(super) transaction_pooler: bool,
    pub(super) key_policy: KeyPolicy,
    pub(super) dead_letter_retention: Option<Duration>,
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

impl Default for Settings {
    fn default() -> Self {
        Self {
            batch_size: 100,
            batch_bytes: 32 << 20,
            concurrency: 64,
            max_attempts: 10,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_millis(250),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(600),
            publish_timeout: Duration::from_secs(10),
            grace_period: Duration::from_secs(10),
            listen: None,
            transaction_pooler: false,
            key_policy: KeyPolicy::Skip,
            dead_letter_retention: None,
        }
    }
}

/// The longest duration any setting accepts.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Makes the Source of a pool for the builder's tables, behind a transaction
/// pooler or not.
type MakeSource = Box<dyn FnOnce(&Tables, bool) -> Arc<dyn Source> + Send>;

/// Where the Runner's Source comes from.
pub(super) enum SourceFactory {
    /// A pool: the Source is made for the builder's tables.
    Pool(MakeSource),
    /// A Source made by the caller, with its own tables.
    Given(Arc<dyn Source>),
}

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
    pub(super) source: SourceFactory,
    pub(super) tables: Option<Tables>,
    pub(super) settings: Settings,
    pub(super) states: States,
    pub(super) publishers: Candidates,
    pub(super) use_registered: bool,
    pub(super) shutdown: Option<BoxFuture<'static, ()>>,
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

    /// Use these tables instead of the default `outbox_*`. Only for a
    /// Runner built from a pool: one built with
    /// [`Runner::with_source`](super::Runner::with_source) uses its Source's
    /// tables, and [`build`](Self::build) refuses this setting there.
    pub fn tables(mut self, tables: Tables) -> Self {
        self.tables = Some(tables);
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
        /// Most payload bytes claimed at once (default 32 MiB): a claim stops
        /// short of [`batch_size`](Self::batch_size) events when their
        /// payloads would exceed this, which bounds the Runner's memory
        /// whatever the events' sizes. An event larger than this alone is
        /// still claimed, alone. To refuse such events at enqueue, set a
        /// maximum payload size on the [`Tables`](crate::Tables::max_payload).
        batch_bytes: usize
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
        /// While a batch is published the Runner renews the leases of its
        /// unsettled events every third of this, so a batch may take longer.
        lease: Duration
    );
    setter!(
        /// How often an idle Runner looks for due events (default 250 ms),
        /// also when it listens for wake-ups.
        poll_interval: Duration
    );
    /// Wake up on the database's notifications (PostgreSQL LISTEN/NOTIFY;
    /// default true, false behind a [`transaction_pooler`](Self::transaction_pooler)).
    /// Set false for poll-only mode: an idle Runner then looks for events
    /// every [`poll_interval`](Self::poll_interval).
    pub fn listen(mut self, listen: bool) -> Self {
        self.settings.listen = Some(listen);
        self
    }

    /// The Runner's database connections go through a connection pooler in
    /// transaction mode, such as PgBouncer with `pool_mode = transaction`
    /// (default false). The pooler lends a server connection to a client
    /// for one transaction only, so:
    ///
    /// - every statement of the Runner runs unprepared inside a transaction
    ///   of its own, which keeps it on one server connection whatever the
    ///   pool's statement cache (the claim and the ack cost three round
    ///   trips more each; on a direct connection that is slower, hence
    ///   not the default);
    /// - the Runner does not LISTEN: a LISTEN through such a pooler lands on
    ///   a server connection that goes back to the pool, and its
    ///   notifications are lost without an error. The Runner polls: an
    ///   event waits up to [`poll_interval`](Self::poll_interval) while the
    ///   Runner is idle. [`build`](Self::build) refuses `listen(true)` with
    ///   this setting.
    ///
    /// Without it, a Runner behind such a pooler fails now and then
    /// (`prepared statement "sqlx_s_3" does not exist`, `bind message
    /// supplies 4 parameters, but prepared statement "" requires 7`) and,
    /// unless [`listen(false)`](Self::listen), listens in vain. Only for a
    /// Runner built from a pool: [`build`](Self::build) refuses it on one
    /// built with [`Runner::with_source`](super::Runner::with_source), whose
    /// Source is the caller's. See the README's "Behind a connection
    /// pooler" for what the application's own pool needs.
    pub fn transaction_pooler(mut self, behind: bool) -> Self {
        self.settings.transaction_pooler = behind;
        self
    }
    setter!(
        /// How long one publisher call may take before it counts as a
        /// transient failure (default 10 s). The timeout can only cut a
        /// publisher short at an `.await`: one that blocks its thread (a
        /// synchronous client, `std::thread::sleep`, a long computation)
        /// runs on past it and holds a worker thread; run such work with
        /// `tokio::task::spawn_blocking` and await that.
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
        if s.batch_bytes == 0 {
            return invalid("batch_bytes", "must be at least 1");
        }
        if s.concurrency == 0 {
            return invalid("concurrency", "must be at least 1");
        }
        if s.max_attempts == 0 {
            return invalid("max_attempts", "must be at least 1");
        }
        // Every duration ends up in SQL arithmetic on timestamps: a year is
        // far beyond any sensible value and far within every backend's range.
        for (setting, value) in [
            ("lease", s.lease),
            ("poll_interval", s.poll_interval),
            ("publish_timeout", s.publish_timeout),
            ("grace_period", s.grace_period),
            ("backoff", s.backoff_max),
            (
                "dead_letter_retention",
                s.dead_letter_retention.unwrap_or_default(),
            ),
        ] {
            if value > MAX_DURATION {
                return Err(Error::InvalidSetting {
                    setting,
                    reason: format!(
                        "is {value:?}; at most {MAX_DURATION:?} (365 days) is accepted"
                    ),
                });
            }
        }
        if s.backoff_initial > s.backoff_max {
            return invalid("backoff", "the initial delay must not exceed the maximum");
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

        if s.transaction_pooler && s.listen == Some(true) {
            return invalid(
                "listen",
                "cannot be true behind a transaction pooler: a LISTEN there lands on a server connection that goes back to the pool, and its notifications are lost; leave `listen` unset (the Runner polls every `poll_interval`), or connect the Runner to the database directly without `transaction_pooler`",
            );
        }

        let source = match (self.source, self.tables) {
            (SourceFactory::Pool(make), tables) => {
                make(&tables.unwrap_or_default(), s.transaction_pooler)
            }
            (SourceFactory::Given(_), Some(_)) => {
                return invalid(
                    "tables",
                    "has no effect on a Runner built with `Runner::with_source`: make that Source for the tables instead, e.g. `outbox::source(pool, &tables)`",
                );
            }
            (SourceFactory::Given(_), None) if s.transaction_pooler => {
                return invalid(
                    "transaction_pooler",
                    "has no effect on a Runner built with `Runner::with_source`: the Source is yours; build the Runner with `Runner::builder(pool)` instead",
                );
            }
            (SourceFactory::Given(source), None) => source,
        };
        let registry = Registry::new(self.use_registered, self.publishers, &self.states)?;
        Ok(Runner {
            core: Core {
                source,
                registry,
                settings: self.settings,
                states: Arc::new(self.states),
                owner: Uuid::now_v7(),
                stats: Stats::default(),
                held: Mutex::default(),
            },
            shutdown: self.shutdown,
        })
    }
}

impl Settings {
    /// Whether the Runner waits for the database's notifications.
    pub(super) fn listens(&self) -> bool {
        self.listen.unwrap_or(!self.transaction_pooler)
    }

    pub(super) fn policy(&self) -> Policy {
        Policy {
            max_attempts: self.max_attempts,
            key_policy: self.key_policy,
            backoff_initial: self.backoff_initial,
            backoff_max: self.backoff_max,
        }
    }
}
