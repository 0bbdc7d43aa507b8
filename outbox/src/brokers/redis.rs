//! Redis Streams publisher (feature `redis`, with the [redis] crate).
//!
//! [`RedisStreamPublisher`] appends each event to a stream with `XADD` and
//! reports success once Redis has answered with the new entry's id.
//!
//! ```no_run
//! use std::time::Duration;
//! use outbox::brokers::{Route, Selection};
//! use outbox::redis::RedisStreamPublisher;
//!
//! # async fn demo(pool: sqlx::SqlitePool) -> anyhow::Result<()> {
//! // Connects now, and reconnects by itself after a connection loss.
//! let redis = RedisStreamPublisher::connect("redis://127.0.0.1:6379/")
//!     .await?
//!     .select(Selection::only(["order.placed"]))
//!     .route(Route::template("events:{topic}"))
//!     .max_len(100_000)
//!     .timeout(Duration::from_secs(3));
//! outbox::Runner::builder(pool).publisher(redis).build()?.run().await?;
//! # Ok(()) }
//! ```
//!
//! | outcome | kind |
//! | --- | --- |
//! | `XADD` answered with an entry id | success |
//! | connection refused or lost, no answer within the timeout | transient |
//! | Redis busy loading, read-only replica, out of memory, no ACL permission | transient |
//! | the key holds another type (`WRONGTYPE`) | permanent |
//! | payload above [`max_payload`](RedisStreamPublisher::max_payload) | permanent |

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use ::redis;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, ErrorKind, RedisError, ServerErrorKind};
use tracing::{debug, warn};

use crate::brokers::{BrokerPublisher, Route, Wire, check_payload, destination, metadata, sealed};
use crate::error::PublishError;
use crate::event::StorageBox;

/// Redis's default `proto-max-bulk-len`: 512 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 512 * 1024 * 1024;

/// The stream entry field that holds the event id.
pub const ID_FIELD: &str = "id";

/// The stream entry field that holds the payload.
pub const PAYLOAD_FIELD: &str = "payload";

/// Appends events to Redis Streams with `XADD`.
///
/// Each entry goes to the stream (key) that the [`Route`] gives (the
/// event's topic by default), with an auto-generated entry id (`*`) and
/// these fields: `id` (the event id: consumers deduplicate on it, since
/// Redis Streams have no deduplication of their own), `payload` (the JSON
/// payload), then the event's [`metadata`] as fields
/// (`outbox-event-id`, `outbox-event-type`, `outbox-schema-version`,
/// `content-type`, `outbox-partition-key`, `traceparent`, ...). With
/// [`max_len`](Self::max_len) it trims the stream with `MAXLEN ~ n`.
///
/// A publish whose answer does not come within the
/// [timeout](BrokerPublisher::timeout) fails (transient); Redis may still
/// have appended it, so the retry can add a second entry with the same `id`.
/// A publisher built with [`connect`](Self::connect) or
/// [`from_client`](Self::from_client) replaces its connection after such a
/// timeout (a connection that answers nothing may be dead without a reset);
/// one built from a [`ConnectionManager`] keeps it. The
/// [`ConnectionManager`] reconnects by itself after a connection loss.
///
/// The settings every broker shares are on [`BrokerPublisher`]. From your
/// own `#[publisher]` function:
///
/// ```no_run
/// # use outbox::{Context, PublishError, publisher, OutboxEvent};
/// # use outbox::redis::RedisStreamPublisher;
/// # #[derive(serde::Serialize, serde::Deserialize, OutboxEvent)]
/// # struct OrderPlaced { order_id: i64 }
/// #[publisher]
/// async fn to_redis(_: OrderPlaced, cx: Context) -> Result<(), PublishError> {
///     let redis = cx.state::<RedisStreamPublisher>().expect("given with .state(...)");
///     redis.publish_event(cx.event()).await
/// }
/// ```
pub type RedisStreamPublisher = BrokerPublisher<RedisStreamWire>;

/// The wire protocol of a [`RedisStreamPublisher`]: its connection and
/// stream options.
#[derive(Clone)]
pub struct RedisStreamWire {
    max_len: Option<usize>,
    max_payload: usize,
    link: Arc<Link>,
}

struct Link {
    /// Present when the publisher may build a new connection itself.
    client: Option<(Client, ConnectionManagerConfig)>,
    manager: Mutex<ConnectionManager>,
}

impl fmt::Debug for RedisStreamWire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStreamWire")
            .field("max_len", &self.max_len)
            .field("max_payload", &self.max_payload)
            .finish_non_exhaustive()
    }
}

impl RedisStreamPublisher {
    /// A publisher on an existing [`ConnectionManager`]. It uses that
    /// connection as it is (the manager reconnects after a connection loss).
    pub fn new(manager: ConnectionManager) -> Self {
        Self::with_link(Link {
            client: None,
            manager: Mutex::new(manager),
        })
    }

    /// Connect to `url` (e.g. `redis://127.0.0.1:6379/`, `redis://:password@host/0`)
    /// now, so that a wrong address fails at startup.
    pub async fn connect(url: &str) -> Result<Self, RedisError> {
        Self::from_client(Client::open(url)?).await
    }

    /// Connect with a [`Client`] now (use this for options that a URL cannot
    /// say).
    pub async fn from_client(client: Client) -> Result<Self, RedisError> {
        let config = manager_config();
        let manager = ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
        Ok(Self::with_link(Link {
            client: Some((client, config)),
            manager: Mutex::new(manager),
        }))
    }

    fn with_link(link: Link) -> Self {
        Self::with_wire(RedisStreamWire {
            max_len: None,
            max_payload: DEFAULT_MAX_PAYLOAD,
            link: Arc::new(link),
        })
    }

    /// Trim each stream to about `n` entries (`XADD key MAXLEN ~ n`); the
    /// default keeps every entry.
    pub fn max_len(mut self, n: usize) -> Self {
        self.wire.max_len = Some(n);
        self
    }

    /// The largest payload it sends, in bytes (default 512 MiB, Redis's
    /// default `proto-max-bulk-len`); larger events are dead-lettered at once.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.wire.max_payload = bytes;
        self
    }
}

impl sealed::Sealed for RedisStreamWire {}

impl Wire for RedisStreamWire {
    const NAME: &'static str = "redis";

    async fn send(
        &self,
        event: &StorageBox,
        route: Option<&Route>,
        timeout: Duration,
    ) -> Result<(), PublishError> {
        check_payload(
            event,
            self.max_payload,
            "Redis",
            "raise proto-max-bulk-len on the server and RedisStreamPublisher::max_payload",
        )?;
        let key = destination(route, event);
        let mut cmd = ::redis::cmd("XADD");
        cmd.arg(&key);
        if let Some(n) = self.max_len {
            cmd.arg("MAXLEN").arg("~").arg(n);
        }
        cmd.arg("*")
            .arg(ID_FIELD)
            .arg(event.id.to_string())
            .arg(PAYLOAD_FIELD)
            .arg(&event.payload[..]);
        for (name, value) in metadata(event) {
            cmd.arg(name).arg(value);
        }
        let mut connection = self.connection();
        let xadd = cmd.query_async::<String>(&mut connection);
        match tokio::time::timeout(timeout, xadd).await {
            Ok(Ok(entry)) => {
                debug!(event_id = %event.id, stream = %key, entry = %entry, "outbox: Redis appended the entry");
                Ok(())
            }
            Ok(Err(e)) => Err(classify(&key, e)),
            Err(_) => {
                self.replace_connection();
                Err(PublishError::transient(format!(
                    "Redis did not answer XADD to stream {key:?} within {timeout:?}; it will be sent again (consumers deduplicate on the `{ID_FIELD}` field)"
                )))
            }
        }
    }
}

impl RedisStreamWire {
    fn connection(&self) -> ConnectionManager {
        match self.link.manager.lock() {
            Ok(manager) => manager.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Start over with a fresh connection, when this publisher made its own.
    fn replace_connection(&self) {
        let Some((client, config)) = &self.link.client else {
            return;
        };
        match ConnectionManager::new_lazy_with_config(client.clone(), config.clone()) {
            Ok(fresh) => {
                warn!("outbox: Redis did not answer in time; replacing the connection");
                let mut manager = match self.link.manager.lock() {
                    Ok(manager) => manager,
                    Err(poisoned) => poisoned.into_inner(),
                };
                *manager = fresh;
            }
            Err(e) => warn!(error = %e, "outbox: cannot make a new Redis connection"),
        }
    }
}

/// Reconnect quickly and leave time limits to the publisher's own timeout.
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_number_of_retries(3)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1))
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(None)
}

fn classify(key: &str, e: RedisError) -> PublishError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        return PublishError::transient(format!(
            "cannot reach Redis for XADD to stream {key:?}: {e}; it will be sent again"
        ));
    }
    match (e.kind(), e.code()) {
        (_, Some("WRONGTYPE")) => PublishError::permanent(format!(
            "Redis key {key:?} holds a value that is not a stream ({e}); delete or rename that key, or change the Route, then retry the dead letter"
        )),
        (ErrorKind::Server(ServerErrorKind::NoPerm), _) | (_, Some("NOPERM")) => {
            PublishError::transient(format!(
                "the Redis user may not XADD to stream {key:?} ({e}); grant it with ACL SETUSER, the event is retried and dead-lettered after max_attempts"
            ))
        }
        _ => PublishError::transient(format!("Redis XADD to stream {key:?} failed: {e}")),
    }
}
