//! What the built-in broker publishers share: one publisher type,
//! [`BrokerPublisher`], with the settings every broker has (name,
//! [selection](Selection), [route](Route), timeout), over one broker's
//! [`Wire`] protocol; and the metadata every message carries.
//!
//! The publishers themselves are in the broker modules, one per feature:
//!
//! | module | feature | publisher |
//! | --- | --- | --- |
//! | `outbox::nats` | `nats` | `JetStreamPublisher` |
//! | `outbox::rabbitmq` | `rabbitmq` | `RabbitPublisher` |
//! | `outbox::redis` | `redis` | `RedisStreamPublisher` |
//! | `outbox::mqtt` | `mqtt` | `MqttPublisher` |
//! | `outbox::http` | `http` | `WebhookPublisher` |
//!
//! Each is a `BrokerPublisher` over that module's wire, so they are set up
//! alike: a constructor in the broker's module, then
//! [`named`](BrokerPublisher::named), [`select`](BrokerPublisher::select),
//! [`route`](BrokerPublisher::route) and
//! [`timeout`](BrokerPublisher::timeout), plus the broker's own options.
//! Each module's documentation has a table of which outcomes are a success,
//! a transient failure (retried) or a permanent one (dead-lettered at once).

mod publisher;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use publisher::{BrokerPublisher, Wire};

use crate::event::StorageBox;

/// How long one publish may take by default, until the broker's answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which events a forwarding publisher receives.
#[derive(Clone, Debug, Default)]
pub enum Selection {
    /// Every event type.
    #[default]
    All,
    /// Only these event type names.
    Only(BTreeSet<String>),
}

impl Selection {
    /// Only these event types.
    pub fn only<I, S>(types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::Only(types.into_iter().map(Into::into).collect())
    }

    /// Whether an event type is selected.
    pub fn accepts(&self, event_type: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(types) => types.contains(event_type),
        }
    }
}

/// Where an event goes: a subject, queue, routing key, stream, topic or URL
/// path, derived from the event.
#[derive(Clone, Default)]
pub enum Route {
    /// The event's topic, unchanged (the default).
    #[default]
    Topic,
    /// A template with `{topic}`, `{event_type}`, `{key}` and `{version}`
    /// placeholders, e.g. `"events.{topic}.{event_type}"`. A missing key
    /// renders as `_`.
    Template(String),
    /// A function of the event.
    Fn(Arc<dyn Fn(&StorageBox) -> String + Send + Sync>),
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Topic => f.write_str("Route::Topic"),
            Self::Template(t) => f.debug_tuple("Route::Template").field(t).finish(),
            Self::Fn(_) => f.write_str("Route::Fn(..)"),
        }
    }
}

impl Route {
    /// A template route.
    pub fn template(template: impl Into<String>) -> Self {
        Self::Template(template.into())
    }

    /// A function route.
    pub fn function(f: impl Fn(&StorageBox) -> String + Send + Sync + 'static) -> Self {
        Self::Fn(Arc::new(f))
    }

    /// The destination of this event.
    pub fn resolve(&self, event: &StorageBox) -> String {
        match self {
            Self::Topic => event.topic.clone(),
            Self::Template(t) => t
                .replace("{topic}", &event.topic)
                .replace("{event_type}", &event.event_type)
                .replace("{key}", event.partition_key.as_deref().unwrap_or("_"))
                .replace("{version}", &event.version.to_string()),
            Self::Fn(f) => f(event),
        }
    }
}

/// Where `route` sends `event`; without a route, to the event's topic.
#[cfg(any(
    feature = "nats",
    feature = "rabbitmq",
    feature = "redis",
    feature = "mqtt"
))]
pub(crate) fn destination(route: Option<&Route>, event: &StorageBox) -> String {
    match route {
        Some(route) => route.resolve(event),
        None => event.topic.clone(),
    }
}

/// Fail for good when the event's payload is above the broker's `limit`
/// in bytes; `raise` says how to raise that limit.
#[cfg(any(feature = "rabbitmq", feature = "redis"))]
pub(crate) fn check_payload(
    event: &StorageBox,
    limit: usize,
    broker: &str,
    raise: &str,
) -> Result<(), crate::PublishError> {
    if event.payload.len() > limit {
        return Err(crate::PublishError::permanent(format!(
            "event payload is {} bytes, above the {broker} limit of {limit} bytes; shrink the event, or {raise}",
            event.payload.len()
        )));
    }
    Ok(())
}

/// Header names the built-in publishers use for the event's metadata (plus
/// every header stored with the event, such as `traceparent`).
pub mod header {
    /// The event id (UUIDv7): deduplicate on it.
    pub const EVENT_ID: &str = "outbox-event-id";
    /// The event type name.
    pub const EVENT_TYPE: &str = "outbox-event-type";
    /// The payload's schema version.
    pub const VERSION: &str = "outbox-schema-version";
    /// The partition key, when the event has one.
    pub const PARTITION_KEY: &str = "outbox-partition-key";
    /// The payload's content type.
    pub const CONTENT_TYPE: &str = "content-type";
}

/// The content type of stored payloads.
pub const JSON: &str = "application/json";

/// The metadata every message carries, as (name, value) pairs: the outbox
/// headers above, then the event's stored headers (W3C `traceparent`,
/// `tracestate`, ...).
pub fn metadata(event: &StorageBox) -> Vec<(String, String)> {
    let mut out = vec![
        (header::EVENT_ID.to_owned(), event.id.to_string()),
        (header::EVENT_TYPE.to_owned(), event.event_type.clone()),
        (header::VERSION.to_owned(), event.version.to_string()),
        (header::CONTENT_TYPE.to_owned(), JSON.to_owned()),
    ];
    if let Some(key) = &event.partition_key {
        out.push((header::PARTITION_KEY.to_owned(), key.clone()));
    }
    for (name, value) in &event.headers {
        if !out.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            out.push((name.clone(), value.clone()));
        }
    }
    out
}

/// A stored event as the Runner would hand it over, for unit tests.
#[cfg(test)]
pub(crate) fn stored(event: crate::NewEvent) -> StorageBox {
    StorageBox {
        id: event.id,
        event_type: event.event_type,
        version: event.version,
        topic: event.topic,
        partition_key: event.partition_key,
        payload: event.payload,
        headers: event.headers,
        created_at: std::time::SystemTime::now(),
        attempt: 1,
    }
}

/// Only the brokers of this crate have a [`Wire`].
pub(crate) mod sealed {
    /// The supertrait that seals [`Wire`](super::Wire).
    pub trait Sealed {}
}
