//! Pieces shared by the built-in broker publishers: which events a
//! forwarder takes, where each one goes, and the metadata every message
//! carries.

#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use crate::StorageBox;

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
