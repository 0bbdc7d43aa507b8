use std::fmt;
use std::time::Duration;

/// A boxed error, the form in which the Runner carries a publisher's failure.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in the outbox itself (not in a publisher).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database refused or failed a statement.
    #[error("outbox database error: {0}")]
    Database(#[from] sqlx::Error),

    /// A schema or table name from the configuration is not a plain identifier.
    #[error(
        "invalid {what} {name:?}: {reason}; use 1 to {max} ASCII letters, digits or '_', starting with a letter or '_'",
        max = crate::tables::MAX_IDENT_LEN
    )]
    InvalidIdentifier {
        /// Which setting held the name (`schema`, `table prefix`).
        what: &'static str,
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// An event could not be serialized for storage.
    #[error("cannot encode event `{event_type}`: {source}")]
    Encode {
        /// The event type name.
        event_type: &'static str,
        /// The serializer's error.
        #[source]
        source: BoxError,
    },

    /// [`Runner::drain`](crate::Runner::drain) cannot empty the outbox: the
    /// events left are owed to publishers this Runner does not have.
    #[error(
        "events of type {event_types:?} are owed to publishers that this Runner does not have, so the outbox cannot be drained; they wait there for a Runner that has them (register a #[publisher] for the type, or give one with `.publisher(..)`)"
    )]
    NoPublisher {
        /// The event types of the events that wait.
        event_types: Vec<String>,
    },

    /// Two publishers were registered under one name.
    #[error(
        "two publishers are named `{name}` (for {first} and {second}); publisher names must be unique, rename one with #[publisher(name = \"...\")]"
    )]
    DuplicatePublisher {
        /// The shared name.
        name: String,
        /// What the first one publishes.
        first: String,
        /// What the second one publishes.
        second: String,
    },

    /// A publisher asks for `State<T>` and the builder was given no `T`.
    #[error(
        "publisher `{publisher}` takes `State<{state}>`, but no value of type `{state}` was given; call `.state(value)` on the Runner builder"
    )]
    MissingState {
        /// The publisher's name.
        publisher: String,
        /// The Rust type of the missing state.
        state: &'static str,
    },

    /// The database server is too old for the outbox store: it lacks
    /// `SELECT … FOR UPDATE SKIP LOCKED`.
    #[error(
        "unsupported database server version {found:?}: the outbox needs {required} (for `SELECT ... FOR UPDATE SKIP LOCKED`); upgrade the server"
    )]
    UnsupportedServer {
        /// The version the server reported (`SELECT VERSION()`).
        found: String,
        /// The versions that work.
        required: &'static str,
    },

    /// An event cannot be stored as it is; nothing was written and the
    /// caller's transaction is still usable.
    #[error("cannot enqueue event `{event_type}`: its {field} {reason}")]
    InvalidEvent {
        /// The event's type name (cut short when it is itself the problem).
        event_type: String,
        /// Which field: `event type`, `topic`, `partition key`, `header name`,
        /// `header value`, `payload`.
        field: &'static str,
        /// What is wrong and what fits.
        reason: String,
    },

    /// A Runner setting is out of range.
    #[error("invalid Runner setting `{setting}`: {reason}")]
    InvalidSetting {
        /// The builder method.
        setting: &'static str,
        /// What is wrong with the value.
        reason: String,
    },

    /// A migration gave up waiting for a lock, so that the application's
    /// writes would not queue behind it. On PostgreSQL and SQLite it changed
    /// nothing; on MySQL/MariaDB (where DDL commits at once) the steps before
    /// it are kept, and the next run goes on from there.
    #[error(
        "migrating the outbox tables {table} waited {waited:?} for a lock held by {reason} and gave up, so that the application's writes do not queue behind it. Run the migration again once that transaction has ended, give it longer with Migrator::lock_timeout, or apply the migrations in your deploy step (outbox::migrations exports them)"
    )]
    MigrationLocked {
        /// The tables, as `schema.prefix_*`.
        table: String,
        /// How long it waited.
        waited: Duration,
        /// Who held the lock, as far as is known, and the database's words.
        reason: String,
    },

    /// The outbox tables are at a schema version newer than this release
    /// knows: a newer release migrated them.
    #[error(
        "the outbox tables {table} are at schema version {found}, newer than version {known}, the latest that this release of outbox knows; it does not downgrade a schema: run a release that knows version {found}"
    )]
    SchemaTooNew {
        /// The tables, as `schema.prefix_*`.
        table: String,
        /// The version recorded in the database.
        found: u32,
        /// The latest version this release knows.
        known: u32,
    },

    /// The outbox tables are at a schema version older than this release's
    /// Source needs: their migrations were not all applied.
    #[error(
        "the outbox tables {table} are at schema version {found}, older than version {required} that this release needs: run outbox::migrate (or Migrator::run) once, or apply the outbox migrations after version {found} with your migration tool (outbox::migrations exports them)"
    )]
    SchemaTooOld {
        /// The tables, as `schema.prefix_*`.
        table: String,
        /// The version recorded in the database.
        found: u32,
        /// The oldest version this release works on.
        required: u32,
    },
}

impl Error {
    /// Whether the database refused the statement for its data (a constraint,
    /// a value out of range or too long), so that running it again cannot
    /// help; connection failures, timeouts and deadlocks are not refusals.
    pub fn is_refusal(&self) -> bool {
        let Error::Database(sqlx::Error::Database(db)) = self else {
            return false;
        };
        if !matches!(db.kind(), sqlx::error::ErrorKind::Other) {
            return true;
        }
        // SQLSTATE class 22: data exception (PostgreSQL, MySQL, MariaDB).
        db.code()
            .is_some_and(|code| code.len() == 5 && code.starts_with("22"))
    }
}

/// Whether a failed publish should be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Worth retrying later: network, timeouts, broker unavailable, 5xx.
    Transient,
    /// Retrying cannot help: the event goes to the dead-letter table at once.
    Permanent,
}

/// The error a publisher returns.
///
/// Any error converts into a *transient* `PublishError` (retried with backoff);
/// wrap it with [`PublishError::permanent`] to dead-letter the event at once.
///
/// ```
/// use outbox::PublishError;
/// # fn check(status: u16) -> Result<(), PublishError> {
/// if status == 400 {
///     return Err(PublishError::permanent(format!("rejected with {status}")));
/// }
/// # Ok(()) }
/// ```
pub struct PublishError {
    kind: FailureKind,
    retry_after: Option<Duration>,
    source: BoxError,
}

impl PublishError {
    /// A failure that may succeed later; the event is retried with backoff.
    pub fn transient(error: impl Into<BoxError>) -> Self {
        Self::new(FailureKind::Transient, error.into())
    }

    /// A failure that retrying cannot fix; the event is dead-lettered at once.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self::new(FailureKind::Permanent, error.into())
    }

    fn new(kind: FailureKind, source: BoxError) -> Self {
        Self {
            kind,
            retry_after: None,
            source,
        }
    }

    /// Ask for the next attempt no sooner than `delay` (for example from an
    /// HTTP `Retry-After` header). Only meaningful for transient failures.
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// The requested delay before the next attempt, if any.
    pub fn requested_delay(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Transient or permanent.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// True when the event must not be retried.
    pub fn is_permanent(&self) -> bool {
        self.kind == FailureKind::Permanent
    }

    /// Turn any publisher error into a `PublishError`, keeping the kind of a
    /// `PublishError` found in it (also behind `anyhow` or a source chain).
    pub fn from_boxed(error: BoxError) -> Self {
        match error.downcast::<PublishError>() {
            Ok(publish_error) => *publish_error,
            Err(other) => {
                let mut kind = FailureKind::Transient;
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*other);
                while let Some(err) = cause {
                    if let Some(found) = err.downcast_ref::<PublishError>() {
                        kind = found.kind;
                        break;
                    }
                    cause = err.source();
                }
                Self::new(kind, other)
            }
        }
    }
}

impl fmt::Debug for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishError")
            .field("kind", &self.kind)
            .field("retry_after", &self.retry_after)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)?;
        let mut cause = self.source.source();
        while let Some(err) = cause {
            write!(f, ": {err}")?;
            cause = err.source();
        }
        Ok(())
    }
}

impl std::error::Error for PublishError {}

/// An event payload that could not be turned back into its Rust type.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode event `{event_type}` (schema version {version}) as `{rust_type}`: {reason}")]
pub struct DecodeError {
    /// The stored type name.
    pub event_type: String,
    /// The stored schema version.
    pub version: u32,
    /// The Rust type it was decoded into.
    pub rust_type: &'static str,
    /// What the decoder said.
    pub reason: String,
}
