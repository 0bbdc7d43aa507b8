//! RabbitMQ publisher (feature `rabbitmq`, with [lapin]).
//!
//! [`RabbitPublisher`] publishes each event to an exchange with publisher
//! confirms, as a persistent message whose `message_id` is the event id, and
//! reports success only once RabbitMQ has confirmed that a queue holds it.
//!
//! ```no_run
//! use std::time::Duration;
//! use outbox::brokers::{Route, Selection};
//! use outbox::rabbitmq::RabbitPublisher;
//!
//! # async fn demo(pool: sqlx::SqlitePool) -> anyhow::Result<()> {
//! // Connects on the first publish, and again after a connection loss.
//! let rabbit = RabbitPublisher::new("amqp://guest:guest@127.0.0.1:5672/%2f", "events")?
//!     .select(Selection::only(["order.placed", "order.cancelled"]))
//!     .route(Route::template("{topic}.{event_type}"))
//!     .timeout(Duration::from_secs(5));
//! outbox::Runner::builder(pool).publisher(rabbit).build()?.run().await?;
//! # Ok(()) }
//! ```
//!
//! | outcome | kind |
//! | --- | --- |
//! | confirmed (`basic.ack`) | success |
//! | unroutable (returned: no queue bound) | transient, see [`RabbitPublisher`] |
//! | refused (`basic.nack`, e.g. a full queue with `reject-publish`) | transient |
//! | exchange missing (the channel is closed with 404) | transient; a new channel next time |
//! | no confirm within the timeout | transient; the connection is rebuilt |
//! | connection or channel lost | transient; reconnects on the next publish |
//! | payload above [`max_message_size`](RabbitPublisher::max_message_size) | permanent |
//! | routing key or exchange name above 255 bytes | permanent |
//!
//! TLS (`amqps://`) is not compiled in by default; enable it on lapin in
//! your own `Cargo.toml`, e.g. `lapin = { version = "4", default-features =
//! false, features = ["tokio", "rustls--ring", "rustls-native-certs"] }`.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

pub use lapin;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::brokers::{
    BrokerPublisher, JSON, Route, Wire, check_payload, destination, metadata, sealed,
};
use crate::error::PublishError;
use crate::event::StorageBox;

/// RabbitMQ's default `max_message_size` (3.8 and later): 128 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 128 * 1024 * 1024;

/// AMQP `delivery_mode` of a persistent message.
const PERSISTENT: u8 = 2;

/// Publishes events to a RabbitMQ exchange, with publisher confirms.
///
/// Each message is persistent (`delivery_mode` 2), has the event id as
/// `message_id`, the event type as `type`, the creation time as `timestamp`,
/// `content_type` `application/json`, and the event's
/// [`metadata`] (`outbox-event-id`, `outbox-event-type`,
/// `outbox-schema-version`, `outbox-partition-key`, `traceparent`, ...) as
/// AMQP headers. The routing key is the event's topic unless
/// [`route`](BrokerPublisher::route) says otherwise.
///
/// Messages are published with `mandatory` set, so RabbitMQ returns a
/// message that no queue receives instead of dropping it. **An unroutable
/// message is a transient failure**: it means that no queue is bound for
/// the routing key *yet* (consumers commonly declare their queues when they
/// start, possibly after the relay), and retrying with backoff delivers the
/// event as soon as the binding exists, while a permanent failure would
/// dead-letter events that the next attempt could deliver. The error says
/// which exchange and routing key had no queue; after the Runner's
/// `max_attempts` the event is dead-lettered with that message, and can be
/// retried from the dead-letter table once the binding is fixed.
///
/// Clones share one connection. A publisher built from a URI
/// ([`new`](Self::new), [`connect`](Self::connect)) reconnects lazily on the
/// next publish after a connection loss or a timeout; one built from an
/// existing [`Channel`] or [`Connection`] uses it as is and never reconnects.
/// The [timeout](BrokerPublisher::timeout) covers connecting too, until
/// RabbitMQ confirms.
///
/// The settings every broker shares are on [`BrokerPublisher`]. From your
/// own `#[publisher]` function:
///
/// ```no_run
/// # use outbox::{Context, PublishError, State, publisher, OutboxEvent};
/// # use outbox::rabbitmq::RabbitPublisher;
/// # #[derive(serde::Serialize, serde::Deserialize, OutboxEvent)]
/// # struct OrderPlaced { order_id: i64 }
/// #[publisher]
/// async fn to_rabbit(_: OrderPlaced, cx: Context) -> Result<(), PublishError> {
///     let rabbit = cx
///         .state::<RabbitPublisher>()
///         .ok_or_else(|| PublishError::permanent("give the RabbitPublisher with .state(..)"))?;
///     rabbit.publish_event(cx.event()).await
/// }
/// ```
pub type RabbitPublisher = BrokerPublisher<RabbitWire>;

/// The wire protocol of a [`RabbitPublisher`]: its exchange, connection and
/// size limit.
#[derive(Clone)]
pub struct RabbitWire {
    exchange: String,
    max_message_size: usize,
    link: Arc<Mutex<Link>>,
}

impl fmt::Debug for RabbitWire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitWire")
            .field("exchange", &self.exchange)
            .field("max_message_size", &self.max_message_size)
            .finish_non_exhaustive()
    }
}

/// Where the channel comes from.
enum Origin {
    /// Reconnect from this URI whenever needed.
    Uri(Box<(AMQPUri, ConnectionProperties)>),
    /// A connection given by the user: new channels on it, never a new one.
    Connection,
    /// A channel given by the user, used as is.
    Channel,
}

struct Link {
    origin: Origin,
    connection: Option<Connection>,
    channel: Option<Channel>,
    /// Bumped whenever a new channel is opened, so that a publish that failed
    /// on an old channel does not tear down a newer one.
    generation: u64,
}

/// What a failure says about the link.
enum Damage {
    /// The channel is closed; the connection may be fine.
    Channel,
    /// The connection is gone or cannot be trusted (e.g. no answer).
    Connection,
}

impl RabbitPublisher {
    /// A publisher to `exchange` that connects to `uri` on its first
    /// publish, and again after a connection loss.
    ///
    /// `uri` is an AMQP URI such as `amqp://guest:guest@127.0.0.1:5672/%2f`
    /// (the vhost is URL-encoded: `%2f` is `/`). Use `""` as the exchange for
    /// RabbitMQ's default exchange, which routes to the queue named by the
    /// routing key. Fails only on a malformed URI.
    pub fn new(uri: &str, exchange: impl Into<String>) -> Result<Self, lapin::Error> {
        let uri: AMQPUri = uri.parse().map_err(|reason: String| {
            lapin::Error::from(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "invalid AMQP URI: {reason}; expected amqp://user:password@host:port/vhost"
                ),
            ))
        })?;
        let properties = ConnectionProperties::default().with_connection_name("outbox".into());
        Ok(Self::with_link(
            exchange.into(),
            Origin::Uri(Box::new((uri, properties))),
            None,
            None,
        ))
    }

    /// Like [`new`](Self::new), but connect now, so that a wrong address or
    /// password fails at startup. Reconnects later like `new`.
    pub async fn connect(uri: &str, exchange: impl Into<String>) -> Result<Self, lapin::Error> {
        let publisher = Self::new(uri, exchange)?;
        let mut guard = publisher.wire.link.lock().await;
        let link = &mut *guard;
        if let Origin::Uri(target) = &link.origin {
            let (uri, properties) = &**target;
            let connection = Connection::connect_uri(uri.clone(), properties.clone()).await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            link.connection = Some(connection);
            link.channel = Some(channel);
            link.generation += 1;
        }
        drop(guard);
        Ok(publisher)
    }

    /// A publisher on an existing connection: it opens its own channel (in
    /// confirm mode) and opens another if that channel closes, but never
    /// reconnects: once the connection is lost, publishes fail (transient)
    /// until you build a new publisher.
    pub fn from_connection(connection: Connection, exchange: impl Into<String>) -> Self {
        Self::with_link(exchange.into(), Origin::Connection, Some(connection), None)
    }

    /// A publisher on an existing channel, which it switches to confirm mode
    /// (`confirm_select`) on its first publish. It never reconnects nor opens
    /// another channel: once the channel closes, publishes fail (transient).
    pub fn from_channel(channel: Channel, exchange: impl Into<String>) -> Self {
        Self::with_link(exchange.into(), Origin::Channel, None, Some(channel))
    }

    fn with_link(
        exchange: String,
        origin: Origin,
        connection: Option<Connection>,
        channel: Option<Channel>,
    ) -> Self {
        Self::with_wire(RabbitWire {
            exchange,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            link: Arc::new(Mutex::new(Link {
                origin,
                connection,
                channel,
                generation: 0,
            })),
        })
    }

    /// The largest payload it sends, in bytes (default 128 MiB, RabbitMQ's
    /// default `max_message_size`); larger events are dead-lettered at once.
    /// Set it to your server's `max_message_size` if you changed that.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.wire.max_message_size = bytes;
        self
    }
}

impl sealed::Sealed for RabbitWire {}

impl Wire for RabbitWire {
    const NAME: &'static str = "rabbitmq";

    async fn send(
        &self,
        event: &StorageBox,
        route: Option<&Route>,
        timeout: Duration,
    ) -> Result<(), PublishError> {
        check_payload(
            event,
            self.max_message_size,
            "RabbitMQ",
            "raise max_message_size on the server and with RabbitPublisher::max_message_size",
        )?;
        let exchange = ShortString::try_new(self.exchange.as_str()).map_err(|e| {
            PublishError::permanent(format!(
                "exchange name {:?} is too long for AMQP: {e}",
                self.exchange
            ))
        })?;
        let key = destination(route, event);
        let routing_key = ShortString::try_new(key.as_str()).map_err(|e| {
            PublishError::permanent(format!(
                "routing key {key:?} is too long for AMQP: {e}; change the Route"
            ))
        })?;
        let properties = properties(event);
        let publish = self.deliver(exchange, routing_key, &event.payload, properties);
        match tokio::time::timeout(timeout, publish).await {
            Ok(result) => result,
            Err(_) => {
                // No answer: the connection may be dead without RST (a
                // network partition). Start over on the next publish.
                self.damaged(None, Damage::Connection).await;
                Err(PublishError::transient(format!(
                    "RabbitMQ did not confirm the message within {timeout:?} (exchange {:?}, routing key {key:?}); it will be sent again",
                    self.exchange
                )))
            }
        }
    }
}

impl RabbitWire {
    async fn deliver(
        &self,
        exchange: ShortString,
        routing_key: ShortString,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let (channel, generation) = self.channel().await?;
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let lost = |e: lapin::Error| {
            let damage = if e.is_amqp_soft_error() {
                Damage::Channel
            } else {
                Damage::Connection
            };
            (damage, e)
        };
        let confirmation = match channel
            .basic_publish(
                exchange.clone(),
                routing_key.clone(),
                options,
                payload,
                properties,
            )
            .await
        {
            Ok(confirm) => confirm.await.map_err(lost),
            Err(e) => Err(lost(e)),
        };
        match confirmation {
            Ok(Confirmation::Ack(None)) => {
                debug!(exchange = %exchange, routing_key = %routing_key, "outbox: RabbitMQ confirmed the message");
                Ok(())
            }
            Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned))) => {
                Err(PublishError::transient(format!(
                    "RabbitMQ returned the message as unroutable ({} {}): no queue is bound to exchange {:?} for routing key {:?}; bind a queue (or an alternate exchange) or fix the Route. The event is retried and dead-lettered after max_attempts",
                    returned.reply_code,
                    returned.reply_text,
                    exchange.as_str(),
                    routing_key.as_str()
                )))
            }
            Ok(Confirmation::Nack(None)) => Err(PublishError::transient(format!(
                "RabbitMQ refused the message (basic.nack) on exchange {:?}, routing key {:?}: a queue may be full (x-overflow reject-publish) or the broker short of resources; it will be sent again",
                exchange.as_str(),
                routing_key.as_str()
            ))),
            Ok(Confirmation::NotRequested) => {
                self.damaged(Some(generation), Damage::Channel).await;
                Err(PublishError::transient(
                    "the RabbitMQ channel is not in confirm mode, so delivery cannot be confirmed; opening a new one",
                ))
            }
            Err((damage, e)) => {
                self.damaged(Some(generation), damage).await;
                Err(PublishError::transient(format!(
                    "RabbitMQ publish to exchange {:?} failed: {e}",
                    exchange.as_str()
                )))
            }
        }
    }

    /// The channel to publish on, (re)opened if needed, with its generation.
    async fn channel(&self) -> Result<(Channel, u64), PublishError> {
        let mut link = self.link.lock().await;
        if let Some(channel) = &link.channel
            && channel.status().connected()
            && channel.status().confirm()
        {
            return Ok((channel.clone(), link.generation));
        }
        let link = &mut *link;
        let channel = match &link.origin {
            Origin::Channel => {
                let Some(channel) = link.channel.clone().filter(|c| c.status().connected()) else {
                    return Err(PublishError::transient(
                        "the RabbitMQ channel given to RabbitPublisher::from_channel is closed and cannot be reopened; build the publisher with RabbitPublisher::new(uri, ..) to reconnect automatically",
                    ));
                };
                channel
            }
            Origin::Connection => {
                let Some(connection) = link.connection.as_ref().filter(|c| c.status().connected())
                else {
                    return Err(PublishError::transient(
                        "the RabbitMQ connection given to RabbitPublisher::from_connection is closed and cannot be reopened; build the publisher with RabbitPublisher::new(uri, ..) to reconnect automatically",
                    ));
                };
                connection.create_channel().await.map_err(|e| {
                    PublishError::transient(format!("cannot open a RabbitMQ channel: {e}"))
                })?
            }
            Origin::Uri(target) => {
                let (uri, properties) = &**target;
                let connection = match &mut link.connection {
                    Some(connection) if connection.status().connected() => connection,
                    slot => {
                        *slot = None;
                        let connection = Connection::connect_uri(uri.clone(), properties.clone())
                            .await
                            .map_err(|e| {
                                PublishError::transient(format!(
                                    "cannot connect to RabbitMQ at {}:{}: {e}",
                                    uri.authority.host, uri.authority.port
                                ))
                            })?;
                        info!(host = %uri.authority.host, port = uri.authority.port, "outbox: connected to RabbitMQ");
                        slot.insert(connection)
                    }
                };
                connection.create_channel().await.map_err(|e| {
                    PublishError::transient(format!("cannot open a RabbitMQ channel: {e}"))
                })?
            }
        };
        if !channel.status().confirm() {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| {
                    PublishError::transient(format!(
                        "cannot enable publisher confirms on the RabbitMQ channel: {e}"
                    ))
                })?;
        }
        link.channel = Some(channel.clone());
        link.generation += 1;
        Ok((channel, link.generation))
    }

    /// Forget a broken channel (and connection), unless a newer one replaced
    /// it already (`generation` None: whatever is there).
    async fn damaged(&self, generation: Option<u64>, damage: Damage) {
        let mut link = self.link.lock().await;
        if generation.is_some_and(|g| g != link.generation) {
            return;
        }
        match link.origin {
            Origin::Channel => {}
            Origin::Connection => link.channel = None,
            Origin::Uri(_) => {
                link.channel = None;
                if matches!(damage, Damage::Connection) && link.connection.take().is_some() {
                    warn!(
                        "outbox: dropping the RabbitMQ connection; reconnecting on the next publish"
                    );
                }
            }
        }
    }
}

/// The AMQP properties of an event's message.
fn properties(event: &StorageBox) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in metadata(event) {
        match ShortString::try_new(name) {
            Ok(name) => {
                headers.insert(name, AMQPValue::LongString(LongString::from(value)));
            }
            Err(e) => {
                warn!(event_id = %event.id, error = %e, "outbox: header name too long for AMQP, not sent")
            }
        }
    }
    let mut properties = BasicProperties::default()
        .with_message_id(event.id.to_string().into())
        .with_content_type(JSON.into())
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers);
    if let Ok(created) = event.created_at.duration_since(UNIX_EPOCH) {
        properties = properties.with_timestamp(created.as_secs());
    }
    if let Ok(event_type) = ShortString::try_new(event.event_type.as_str()) {
        properties = properties.with_type(event_type);
    }
    properties
}
