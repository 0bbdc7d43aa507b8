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

mod session;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use rumqttc;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{PubAck, PubAckReason, Publish, PublishProperties};
use rumqttc::v5::{ConnectionError, MqttOptions};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use self::session::Session;
use crate::brokers::{BrokerPublisher, JSON, Route, Wire, destination, metadata, sealed};
use crate::error::PublishError;
use crate::event::StorageBox;

/// The largest packet MQTT can carry (its maximum remaining length).
pub const DEFAULT_MAX_PACKET_SIZE: usize = 268_435_455;

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
/// the [timeout](BrokerPublisher::timeout) (which covers the wait for the
/// PUBACK); the task reconnects with a short backoff (100 ms doubling to
/// 2 s). A publish that was sent but not acknowledged when the connection
/// dropped fails too, and its retry may reach subscribers a second time.
///
/// The session always starts clean (`clean_start`), since unacknowledged
/// packets are sent again by the outbox rather than by the MQTT session.
/// Give each relay process its own client id: a broker disconnects the
/// older of two clients with the same id.
///
/// Clones share one connection and its task, which stops when the last
/// clone is dropped. The settings every broker shares are on
/// [`BrokerPublisher`]. From your own `#[publisher]` function:
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
pub type MqttPublisher = BrokerPublisher<MqttWire>;

/// The wire protocol of an [`MqttPublisher`]: its session and packet
/// options.
#[derive(Clone)]
pub struct MqttWire {
    max_packet_size: usize,
    retain: bool,
    session: Arc<Session>,
}

impl fmt::Debug for MqttWire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttWire")
            .field("max_packet_size", &self.max_packet_size)
            .field("retain", &self.retain)
            .finish_non_exhaustive()
    }
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
        publisher.wire.session.start();
        match connected.await {
            Ok(Ok(())) => Ok(publisher),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ConnectionError::RequestsDone),
        }
    }

    fn build(
        options: MqttOptions,
        first: Option<oneshot::Sender<Result<(), ConnectionError>>>,
    ) -> Self {
        Self::with_wire(MqttWire {
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            retain: false,
            session: Arc::new(Session::new(options, first)),
        })
    }

    /// The largest packet it sends, in bytes, topic and properties included
    /// (default: MQTT's maximum, 268,435,455); larger events are
    /// dead-lettered at once. A smaller maximum that the broker announces
    /// in its CONNACK applies too. Set it to your broker's limit (Mosquitto:
    /// `max_packet_size`), since a broker closes the connection of a client
    /// that sends a larger packet.
    pub fn max_packet_size(mut self, bytes: usize) -> Self {
        self.wire.max_packet_size = bytes;
        self
    }

    /// Publish retained messages (default: not retained).
    pub fn retain(mut self, retain: bool) -> Self {
        self.wire.retain = retain;
        self
    }
}

impl sealed::Sealed for MqttWire {}

impl Wire for MqttWire {
    const NAME: &'static str = "mqtt";

    async fn send(
        &self,
        event: &StorageBox,
        route: Option<&Route>,
        timeout: Duration,
    ) -> Result<(), PublishError> {
        let topic = destination(route, event);
        check_topic(&topic)?;
        let mut packet = Publish::new(
            topic.as_str(),
            QoS::AtLeastOnce,
            event.payload.clone(),
            Some(properties(event)),
        );
        packet.pkid = 1;
        let size = packet.size();
        let limit = self.session.packet_limit(self.max_packet_size);
        if size > limit {
            return Err(PublishError::permanent(format!(
                "MQTT packet for topic {topic:?} is {size} bytes (payload {} bytes, plus topic and properties), above the maximum packet size of {limit} bytes; shrink the event, or raise the broker's max_packet_size and MqttPublisher::max_packet_size",
                event.payload.len()
            )));
        }
        let answer = self.session.publish(&topic, self.retain, packet)?;
        match tokio::time::timeout(timeout, answer).await {
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
                "no PUBACK from the MQTT broker for topic {topic:?} within {timeout:?} ({}); it will be sent again",
                self.session.status()
            ))),
        }
    }
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
