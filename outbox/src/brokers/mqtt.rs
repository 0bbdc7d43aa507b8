//! MQTT publisher (feature `mqtt`, with [rumqttc]).
//!
//! [`MqttPublisher`] publishes each event as an MQTT v5 message with QoS 1
//! and reports success only once the broker has answered that very packet
//! with a PUBACK. The metadata travels as MQTT v5 user properties.
//!
//! ```no_run
//! use std::time::Duration;
//! use outbox::brokers::{Route, Selection};
//! use outbox::mqtt::{MqttPublisher, rumqttc::v5::MqttOptions};
//!
//! # async fn demo(pool: sqlx::SqlitePool) -> anyhow::Result<()> {
//! let options = MqttOptions::new("orders-relay", "127.0.0.1", 1883);
//! // Connects now, and reconnects by itself after a connection loss.
//! let mqtt = MqttPublisher::connect(options)
//!     .await?
//!     .select(Selection::only(["order.placed"]))
//!     .route(Route::template("shop/{topic}/{event_type}"))
//!     .timeout(Duration::from_secs(3));
//! outbox::Runner::builder(pool).publisher(mqtt).build()?.run().await?;
//! # Ok(()) }
//! ```
//!
//! | outcome | kind |
//! | --- | --- |
//! | PUBACK "success" or "no matching subscribers" | success |
//! | no PUBACK within the timeout, not connected, connection lost | transient |
//! | PUBACK "not authorized", "quota exceeded", other errors | transient |
//! | PUBACK "topic name invalid", "payload format invalid" | permanent |
//! | packet above [`max_packet_size`](MqttPublisher::max_packet_size) or the broker's maximum | permanent |
//! | topic that MQTT cannot publish to (empty, wildcards, NUL) | permanent |
//!
//! TLS is not compiled in by default; enable it on rumqttc in your own
//! `Cargo.toml` (`rumqttc = { version = "0.25", features = ["use-rustls"] }`)
//! and set the transport on the [`MqttOptions`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use rumqttc;

use async_trait::async_trait;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAck, PubAckReason, Publish, PublishProperties};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::{JSON, Route, Selection, metadata};
use crate::{Context, PublishError, Publisher, StorageBox};

/// How long a publish may wait for the broker's PUBACK.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest packet MQTT can carry (its maximum remaining length).
pub const DEFAULT_MAX_PACKET_SIZE: usize = 268_435_455;

/// How many publishes may wait in the client's queue before publishes fail.
const REQUEST_QUEUE: usize = 1024;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Publishes events to an MQTT v5 broker with QoS 1.
///
/// Each message goes to the topic that the [`Route`] gives (the event's
/// topic by default), QoS 1, not retained unless [`retain`](Self::retain)
/// says so, with the payload as body, content type `application/json`, and
/// the event's [`metadata`] as user properties
/// (`outbox-event-id`, `outbox-event-type`, `outbox-schema-version`,
/// `content-type`, `outbox-partition-key`, `traceparent`, ...). MQTT has no
/// message id of its own: consumers deduplicate on `outbox-event-id`.
///
/// A publish succeeds only when the PUBACK for its own packet arrives. The
/// publisher runs a task that polls the rumqttc event loop, matches each
/// outgoing QoS 1 packet id to the publish that sent it and each PUBACK to
/// its waiting publish. While the broker is unreachable, publishes fail
/// (transient) at once, at the next failed connection attempt, or after
/// the [timeout](Self::timeout); the task reconnects with a short backoff
/// (100 ms doubling to 2 s). A
/// publish that was sent but not acknowledged when the connection dropped
/// fails too, and its retry may reach subscribers a second time.
///
/// The session always starts clean (`clean_start`), since unacknowledged
/// packets are sent again by the outbox rather than by the MQTT session.
/// Give each relay process its own client id: a broker disconnects the
/// older of two clients with the same id.
///
/// Clones share one connection and its task, which stops when the last
/// clone is dropped. It is a [`Publisher`] (a forwarder for all or
/// [selected](Self::select) events) and can also be called from your own
/// `#[publisher]` function with [`publish_event`](Self::publish_event).
#[derive(Clone)]
pub struct MqttPublisher {
    name: String,
    selection: Selection,
    route: Route,
    timeout: Duration,
    max_packet_size: usize,
    retain: bool,
    link: Arc<Link>,
}

impl fmt::Debug for MqttPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttPublisher")
            .field("name", &self.name)
            .field("selection", &self.selection)
            .field("route", &self.route)
            .field("timeout", &self.timeout)
            .field("max_packet_size", &self.max_packet_size)
            .field("retain", &self.retain)
            .finish_non_exhaustive()
    }
}

/// The connection shared by clones.
struct Link {
    client: AsyncClient,
    book: Arc<Book>,
    /// The event loop, until its task is started.
    driver: Mutex<Option<Driver>>,
    /// Dropped with the last clone: stops the task.
    _stop: oneshot::Sender<()>,
}

/// What the publishers and the event loop task share.
struct Book {
    ledger: Mutex<Ledger>,
    status: Mutex<Status>,
    /// The broker's Maximum Packet Size from its CONNACK; 0 when it set none.
    broker_max_packet: AtomicU32,
}

#[derive(Clone)]
enum Status {
    Connecting,
    Connected,
    Down(String),
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connecting => f.write_str("connecting to the broker"),
            Self::Connected => f.write_str("connected to the broker"),
            Self::Down(error) => write!(f, "not connected to the broker: {error}"),
        }
    }
}

type Waiter = oneshot::Sender<Result<(), PublishError>>;

/// Which publish waits for which packet.
///
/// rumqttc takes publishes from its queue in order and assigns their packet
/// ids inside the event loop, announcing each with
/// `Event::Outgoing(Outgoing::Publish(pkid))` (or `AwaitAck(pkid)` when the
/// id is still taken, then `Publish(pkid)` once it is free). A publish is put
/// in `queued` while holding the ledger's lock together with the queue push,
/// so the order of `queued` is the order of the queue.
#[derive(Default)]
struct Ledger {
    queued: VecDeque<Waiter>,
    collided: Option<(u16, Waiter)>,
    sent: HashMap<u16, Waiter>,
}

impl Ledger {
    fn on_publish(&mut self, pkid: u16) {
        let waiter = match self.collided.take() {
            Some((id, waiter)) if id == pkid => Some(waiter),
            other => {
                self.collided = other;
                self.queued.pop_front()
            }
        };
        match waiter {
            Some(waiter) => {
                if let Some(stale) = self.sent.insert(pkid, waiter) {
                    let _ = stale.send(Err(PublishError::transient(format!(
                        "MQTT packet id {pkid} was reused before its PUBACK arrived; the event will be sent again"
                    ))));
                }
            }
            None => warn!(pkid, "outbox: MQTT publish without a waiting event"),
        }
    }

    fn on_await_ack(&mut self, pkid: u16) {
        if let Some(waiter) = self.queued.pop_front()
            && let Some((_, older)) = self.collided.replace((pkid, waiter))
        {
            let _ = older.send(Err(PublishError::transient(
                "MQTT packet ids collided; the event will be sent again",
            )));
        }
    }

    fn on_puback(&mut self, ack: &PubAck) {
        match self.sent.remove(&ack.pkid) {
            Some(waiter) => {
                let _ = waiter.send(outcome(ack));
            }
            None => debug!(
                pkid = ack.pkid,
                "outbox: PUBACK for a publish nobody waits for"
            ),
        }
    }

    fn fail_all(&mut self, reason: &str) {
        let waiters = self
            .queued
            .drain(..)
            .chain(self.collided.take().map(|(_, w)| w))
            .chain(self.sent.drain().map(|(_, w)| w));
        for waiter in waiters {
            let _ = waiter.send(Err(PublishError::transient(format!(
                "the MQTT broker did not acknowledge the message: {reason}; it will be sent again"
            ))));
        }
    }

    fn handle(&mut self, event: &Event) {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => self.on_publish(*pkid),
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => self.on_await_ack(*pkid),
            Event::Incoming(Packet::PubAck(ack)) => self.on_puback(ack),
            _ => {}
        }
    }
}

impl Book {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_status(&self, status: Status) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }
}

/// The event loop and what its task needs.
struct Driver {
    eventloop: EventLoop,
    stop: oneshot::Receiver<()>,
    first: Option<oneshot::Sender<Result<(), ConnectionError>>>,
}

impl MqttPublisher {
    /// A publisher that connects with `options` on its first publish, and
    /// again after a connection loss. Set the broker address, client id,
    /// credentials and keep-alive on the options; `clean_start` is forced on.
    pub fn new(options: MqttOptions) -> Self {
        Self::build(options, None)
    }

    /// Like [`new`](Self::new), but connect now and wait for the broker's
    /// CONNACK, so that a wrong address or credentials fail at startup.
    /// Reconnects later like `new`.
    pub async fn connect(options: MqttOptions) -> Result<Self, ConnectionError> {
        let (first, connected) = oneshot::channel();
        let publisher = Self::build(options, Some(first));
        publisher.start();
        match connected.await {
            Ok(Ok(())) => Ok(publisher),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ConnectionError::RequestsDone),
        }
    }

    fn build(
        mut options: MqttOptions,
        first: Option<oneshot::Sender<Result<(), ConnectionError>>>,
    ) -> Self {
        options.set_clean_start(true);
        let (client, eventloop) = AsyncClient::new(options, REQUEST_QUEUE);
        let (stop_tx, stop) = oneshot::channel();
        let link = Link {
            client,
            book: Arc::new(Book {
                ledger: Mutex::default(),
                status: Mutex::new(Status::Connecting),
                broker_max_packet: AtomicU32::new(0),
            }),
            driver: Mutex::new(Some(Driver {
                eventloop,
                stop,
                first,
            })),
            _stop: stop_tx,
        };
        Self {
            name: "mqtt".to_owned(),
            selection: Selection::All,
            route: Route::Topic,
            timeout: DEFAULT_TIMEOUT,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            retain: false,
            link: Arc::new(link),
        }
    }

    /// The publisher's name (default `"mqtt"`); give each MQTT publisher of
    /// one Runner its own.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Which event types it forwards (default: all).
    pub fn select(mut self, selection: Selection) -> Self {
        self.selection = selection;
        self
    }

    /// The topic of each event (default: its topic).
    pub fn route(mut self, route: Route) -> Self {
        self.route = route;
        self
    }

    /// How long one publish may wait for its PUBACK (default 5 s). Keep it
    /// below the Runner's `publish_timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The largest packet it sends, in bytes, topic and properties included
    /// (default: MQTT's maximum, 268,435,455); larger events are
    /// dead-lettered at once. A smaller maximum that the broker announces
    /// in its CONNACK applies too. Set it to your broker's limit (Mosquitto:
    /// `max_packet_size`), since a broker closes the connection of a client
    /// that sends a larger packet.
    pub fn max_packet_size(mut self, bytes: usize) -> Self {
        self.max_packet_size = bytes;
        self
    }

    /// Publish retained messages (default: not retained).
    pub fn retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    /// Publish one event and wait for its PUBACK: what the [`Publisher`]
    /// impl does, for use in your own `#[publisher]` function.
    ///
    /// ```no_run
    /// # use outbox::{Context, PublishError, publisher, OutboxEvent};
    /// # use outbox::mqtt::MqttPublisher;
    /// # #[derive(serde::Serialize, serde::Deserialize, OutboxEvent)]
    /// # struct OrderPlaced { order_id: i64 }
    /// #[publisher]
    /// async fn to_mqtt(_: OrderPlaced, cx: Context) -> Result<(), PublishError> {
    ///     let mqtt = cx.state::<MqttPublisher>().expect("given with .state(...)");
    ///     mqtt.publish_event(cx.event()).await
    /// }
    /// ```
    pub async fn publish_event(&self, event: &StorageBox) -> Result<(), PublishError> {
        let topic = self.route.resolve(event);
        check_topic(&topic)?;
        let properties = properties(event);
        let mut packet = Publish::new(
            topic.as_str(),
            QoS::AtLeastOnce,
            event.payload.clone(),
            Some(properties.clone()),
        );
        packet.pkid = 1;
        let size = packet.size();
        let limit = self.packet_limit();
        if size > limit {
            return Err(PublishError::permanent(format!(
                "MQTT packet for topic {topic:?} is {size} bytes (payload {} bytes, plus topic and properties), above the maximum packet size of {limit} bytes; shrink the event, or raise the broker's max_packet_size and MqttPublisher::max_packet_size",
                event.payload.len()
            )));
        }
        self.start();
        let (waiter, answer) = oneshot::channel();
        {
            let mut ledger = self.link.book.ledger();
            // While the task waits to reconnect, fail at once: a publish
            // queued now would only be sent after its caller gave up.
            if let Status::Down(error) = self.link.book.status() {
                return Err(PublishError::transient(format!(
                    "not connected to the MQTT broker ({error}); reconnecting, the event will be sent again"
                )));
            }
            self.link
                .client
                .try_publish_with_properties(
                    topic.as_str(),
                    QoS::AtLeastOnce,
                    self.retain,
                    packet.payload,
                    properties,
                )
                .map_err(|e| {
                    PublishError::transient(format!(
                        "cannot queue the MQTT publish to topic {topic:?}: {e} (the queue of {REQUEST_QUEUE} publishes is full or the connection task stopped)"
                    ))
                })?;
            ledger.queued.push_back(waiter);
        }
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(result)) => {
                if result.is_ok() {
                    debug!(event_id = %event.id, topic = %topic, "outbox: MQTT broker acknowledged the message");
                }
                result
            }
            Ok(Err(_)) => Err(PublishError::transient(
                "the MQTT connection task stopped before the broker acknowledged the message",
            )),
            Err(_) => Err(PublishError::transient(format!(
                "no PUBACK from the MQTT broker for topic {topic:?} within {:?} ({}); it will be sent again",
                self.timeout,
                self.link.book.status()
            ))),
        }
    }

    fn packet_limit(&self) -> usize {
        match self.link.book.broker_max_packet.load(Ordering::Relaxed) {
            0 => self.max_packet_size,
            broker => self.max_packet_size.min(broker as usize),
        }
    }

    /// Spawn the event loop task, once.
    fn start(&self) {
        let driver = self
            .link
            .driver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(driver) = driver {
            tokio::spawn(drive(driver, self.link.book.clone()));
        }
    }
}

/// Poll the event loop until the publisher is dropped: route packet ids and
/// PUBACKs to the waiting publishes, reconnect after errors.
async fn drive(driver: Driver, book: Arc<Book>) {
    let Driver {
        mut eventloop,
        mut stop,
        mut first,
    } = driver;
    let mut backoff = MIN_BACKOFF;
    loop {
        // Cancelling `poll` is only done to stop for good.
        let polled = tokio::select! {
            biased;
            _ = &mut stop => break,
            polled = eventloop.poll() => polled,
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                let broker_max = connack
                    .properties
                    .as_ref()
                    .and_then(|p| p.max_packet_size)
                    .unwrap_or(0);
                book.broker_max_packet.store(broker_max, Ordering::Relaxed);
                book.set_status(Status::Connected);
                backoff = MIN_BACKOFF;
                let (host, port) = eventloop.options.broker_address();
                info!(%host, port, "outbox: connected to the MQTT broker");
                if let Some(first) = first.take() {
                    let _ = first.send(Ok(()));
                }
            }
            Ok(event) => book.ledger().handle(&event),
            Err(e) => {
                let reason = e.to_string();
                {
                    let mut ledger = book.ledger();
                    // Acks read before the error still count.
                    for event in eventloop.state.events.drain(..) {
                        ledger.handle(&event);
                    }
                    // The session starts clean: whatever was queued or in
                    // flight is gone. Take what is still in the queue out too,
                    // under the lock, so that `queued` and the queue agree.
                    eventloop.clean();
                    eventloop.pending.clear();
                    eventloop.state.events.clear();
                    ledger.fail_all(&reason);
                    book.set_status(Status::Down(reason.clone()));
                }
                warn!(error = %reason, retry_in = ?backoff, "outbox: MQTT connection failed");
                if let Some(first) = first.take() {
                    let _ = first.send(Err(e));
                    // `connect` gave up: nobody else holds this publisher.
                }
                tokio::select! {
                    biased;
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    book.ledger().fail_all("the MQTT publisher was dropped");
}

/// Topics that MQTT refuses for a PUBLISH: reject them before sending.
fn check_topic(topic: &str) -> Result<(), PublishError> {
    let bad = if topic.is_empty() {
        Some("it is empty")
    } else if topic.contains(['+', '#']) {
        Some("it contains a wildcard ('+' or '#')")
    } else if topic.contains('\0') {
        Some("it contains a NUL character")
    } else if topic.len() > usize::from(u16::MAX) {
        Some("it is longer than 65,535 bytes")
    } else {
        None
    };
    match bad {
        Some(reason) => Err(PublishError::permanent(format!(
            "cannot publish to MQTT topic {topic:?}: {reason}; fix the event's topic or the Route"
        ))),
        None => Ok(()),
    }
}

/// Content type and the event's metadata as user properties.
fn properties(event: &StorageBox) -> PublishProperties {
    let fits = |s: &str| s.len() <= usize::from(u16::MAX) && !s.contains('\0');
    let user_properties = metadata(event)
        .into_iter()
        .filter(|(name, value)| {
            let ok = fits(name) && fits(value);
            if !ok {
                warn!(event_id = %event.id, header = %name, "outbox: header cannot be carried as an MQTT user property, not sent");
            }
            ok
        })
        .collect();
    PublishProperties {
        content_type: Some(JSON.to_owned()),
        user_properties,
        ..PublishProperties::default()
    }
}

/// What a PUBACK's reason code means for the event.
fn outcome(ack: &PubAck) -> Result<(), PublishError> {
    let detail = ack
        .properties
        .as_ref()
        .and_then(|p| p.reason_string.as_deref())
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    match ack.reason {
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
        PubAckReason::TopicNameInvalid => Err(PublishError::permanent(format!(
            "the MQTT broker refused the topic name (PUBACK \"topic name invalid\"{detail}); fix the event's topic or the Route"
        ))),
        PubAckReason::PayloadFormatInvalid => Err(PublishError::permanent(format!(
            "the MQTT broker refused the payload (PUBACK \"payload format invalid\"{detail})"
        ))),
        PubAckReason::NotAuthorized => Err(PublishError::transient(format!(
            "the MQTT broker did not authorize this client to publish to the topic (PUBACK \"not authorized\"{detail}); grant it in the broker's ACL, the event is retried and dead-lettered after max_attempts"
        ))),
        PubAckReason::QuotaExceeded => Err(PublishError::transient(format!(
            "the MQTT broker's quota is exceeded (PUBACK \"quota exceeded\"{detail}); it will be sent again"
        ))),
        other => Err(PublishError::transient(format!(
            "the MQTT broker refused the message (PUBACK {other:?}{detail}); it will be sent again"
        ))),
    }
}

#[async_trait]
impl Publisher for MqttPublisher {
    fn name(&self) -> &str {
        &self.name
    }

    fn accepts(&self, event_type: &str) -> bool {
        self.selection.accepts(event_type)
    }

    async fn publish(&self, cx: &Context) -> Result<(), PublishError> {
        self.publish_event(cx.event()).await
    }
}
