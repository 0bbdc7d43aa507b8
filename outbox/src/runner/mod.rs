//! The Runner: claims due events, hands them to their publishers, records
//! the outcome, and shuts down gracefully.
//!
//! - [`builder`]: the settings and their validation;
//! - `relay`: the claim, publish and acknowledge loop;
//! - [`decide`]: what becomes of an event after its publishers answered;
//! - `shutdown`: the signals that stop it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tracing::{Instrument, info_span};
use uuid::Uuid;

use crate::error::Error;
use crate::publisher::States;
use crate::registry::Registry;
use crate::store::{Backend, Source};
use crate::tables::Tables;

pub(crate) mod builder;
pub(crate) mod decide;
mod relay;
mod shutdown;

pub use builder::{KeyPolicy, RunnerBuilder};
use builder::{Settings, SourceFactory};

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
    /// Times an event was put back to wait because a publisher it is owed
    /// to is not in this Runner.
    pub held: u64,
}

#[derive(Default)]
struct Stats {
    published: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    held: AtomicU64,
}

impl Stats {
    fn report(&self) -> RunReport {
        RunReport {
            published: self.published.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            held: self.held.load(Ordering::Relaxed),
        }
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
    registry: Registry,
    settings: Settings,
    states: Arc<States>,
    owner: Uuid,
    stats: Stats,
    /// Events this Runner held for want of a publisher, with their types:
    /// what keeps [`Runner::drain`] from emptying the outbox.
    held: Mutex<BTreeMap<Uuid, String>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forever,
    Drain,
}

impl Runner {
    /// A builder for a Runner over this pool (PostgreSQL, MySQL/MariaDB or
    /// SQLite).
    pub fn builder<DB: Backend>(pool: sqlx::Pool<DB>) -> RunnerBuilder {
        Self::builder_with(SourceFactory::Pool(Box::new(
            move |tables: &Tables, pooled: bool| crate::store::runner_source(pool, tables, pooled),
        )))
    }

    /// A builder for a Runner over any [`Source`], such as a custom backend.
    /// The Source brings its own tables.
    pub fn with_source(source: Arc<dyn Source>) -> RunnerBuilder {
        Self::builder_with(SourceFactory::Given(source))
    }

    fn builder_with(source: SourceFactory) -> RunnerBuilder {
        RunnerBuilder {
            source,
            tables: None,
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
    ///
    /// Fails with [`Error::NoPublisher`] as soon as it meets an event owed to
    /// a publisher this Runner does not have (after finishing the batch it is
    /// in): such events stay in the outbox, waiting for a Runner that has
    /// the publisher, so this one cannot empty it.
    pub async fn drain(self) -> Result<RunReport, Error> {
        self.run_mode(Mode::Drain).await
    }

    async fn run_mode(mut self, mode: Mode) -> Result<RunReport, Error> {
        let signal = self
            .shutdown
            .take()
            .unwrap_or_else(|| Box::pin(shutdown::default_signal()));
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

/// Run a Runner with every `#[publisher]` of this binary and the default
/// settings until Ctrl-C or SIGTERM.
///
/// Use [`Runner::builder`] to give state, tune batches and retries, or add
/// broker publishers.
pub async fn run<DB: Backend>(pool: sqlx::Pool<DB>) -> Result<RunReport, Error> {
    Runner::builder(pool).build()?.run().await
}
