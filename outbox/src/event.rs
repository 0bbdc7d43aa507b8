use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::{BoxError, DecodeError, Error};

/// An event type that can be stored in the outbox: the Mapper between a Rust
/// value and its [`StorageBox`].
///
/// Derive it with `#[derive(OutboxEvent)]` (see the [crate docs](crate)); a
/// hand-written impl needs only the three constants and `partition_key`.
/// Payloads are JSON by default; override [`encode`](Self::encode) and
/// [`decode`](Self::decode) to use another format or to upcast old versions.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an outbox event",
    label = "not an outbox event",
    note = "add `#[derive(Serialize, Deserialize, OutboxEvent)]` to the definition of `{Self}`"
)]
pub trait OutboxEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable type name stored with every event (`order.placed`).
    const NAME: &'static str;
    /// Where the event goes: the default subject, queue or stream of broker
    /// publishers.
    const TOPIC: &'static str;
    /// The schema version of the payload.
    const VERSION: u32;

    /// The partition key: events with the same key reach each publisher in
    /// the order they were enqueued. `None` means no order constraint.
    fn partition_key(&self) -> Option<String>;

    /// Serialize the payload (JSON by default).
    ///
    /// The default grows the stack as needed (`serde_stacker`), so a deeply
    /// nested value is encoded instead of overflowing the stack of the
    /// calling thread; decoding refuses nesting deeper than 128 levels, so
    /// such an event is dead-lettered with that reason.
    fn encode(&self) -> Result<Vec<u8>, BoxError> {
        let mut out = Vec::with_capacity(128);
        let mut json = serde_json::Serializer::new(&mut out);
        self.serialize(serde_stacker::Serializer::new(&mut json))?;
        Ok(out)
    }

    /// Deserialize a stored payload written with schema `version`.
    ///
    /// The default refuses payloads written by a newer schema version than
    /// [`VERSION`](Self::VERSION), since fields this binary does not know
    /// would be dropped silently.
    fn decode(version: u32, payload: &[u8]) -> Result<Self, DecodeError> {
        let error = |reason: String| DecodeError {
            event_type: Self::NAME.to_owned(),
            version,
            rust_type: std::any::type_name::<Self>(),
            reason,
        };
        if version > Self::VERSION {
            return Err(error(format!(
                "it was written with a newer schema version than this binary knows ({}); deploy the newer Runner, then retry the dead letter",
                Self::VERSION
            )));
        }
        serde_json::from_slice(payload).map_err(|e| error(e.to_string()))
    }
}

/// What `#[derive(OutboxEvent)]` registers about each event type, so that the
/// Runner can warn about event types without a publisher.
#[derive(Debug, Clone, Copy)]
pub struct EventTypeInfo {
    /// [`OutboxEvent::NAME`].
    pub name: &'static str,
    /// [`OutboxEvent::TOPIC`].
    pub topic: &'static str,
    /// [`OutboxEvent::VERSION`].
    pub version: u32,
    /// The Rust type's name, for messages.
    pub rust_type: &'static str,
}

/// A value that can serve as a partition key (`#[outbox(key = field)]`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as a partition key",
    label = "the field named by `key = ...`",
    note = "a partition key is an integer, a `String`/`&str`, a `char`, a `Uuid`, or an `Option` of one of them"
)]
pub trait PartitionKey {
    /// The key as stored; `None` for no key.
    fn to_partition_key(&self) -> Option<String>;
}

macro_rules! display_key {
    ($($t:ty),*) => {$(
        impl PartitionKey for $t {
            fn to_partition_key(&self) -> Option<String> {
                Some(self.to_string())
            }
        }
    )*};
}

display_key!(
    i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize, char, str, String, Uuid
);

impl<T: PartitionKey + ?Sized> PartitionKey for &T {
    fn to_partition_key(&self) -> Option<String> {
        (**self).to_partition_key()
    }
}

impl<T: PartitionKey> PartitionKey for Option<T> {
    fn to_partition_key(&self) -> Option<String> {
        self.as_ref().and_then(PartitionKey::to_partition_key)
    }
}

impl<T: PartitionKey + ?Sized> PartitionKey for Box<T> {
    fn to_partition_key(&self) -> Option<String> {
        (**self).to_partition_key()
    }
}

/// The stored form of one event, as the Runner hands it to publishers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StorageBox {
    /// The event id (UUIDv7), stable across retries: consumers deduplicate on it.
    pub id: Uuid,
    /// The event type name ([`OutboxEvent::NAME`]).
    pub event_type: String,
    /// The payload's schema version.
    pub version: u32,
    /// The topic ([`OutboxEvent::TOPIC`]).
    pub topic: String,
    /// The partition key, if any.
    pub partition_key: Option<String>,
    /// The encoded payload (JSON unless the event type says otherwise).
    pub payload: Vec<u8>,
    /// Headers given at enqueue time (for example a W3C `traceparent`).
    pub headers: BTreeMap<String, String>,
    /// When the event was enqueued (database clock).
    pub created_at: SystemTime,
    /// Which attempt this is: 1 on the first delivery.
    pub attempt: u32,
}

impl StorageBox {
    /// A stored event as a publisher receives it on its first attempt: a
    /// fresh UUIDv7 id, schema version 1, the type name as topic, no key, no
    /// headers, created now. For testing publishers and for custom Sources;
    /// set the public fields to change the rest.
    ///
    /// ```
    /// let mut event = outbox::StorageBox::new("order.placed", br#"{"order_id":7}"#.to_vec());
    /// event.partition_key = Some("7".into());
    /// let cx = outbox::Context::for_event(event);
    /// assert_eq!(cx.attempt(), 1);
    /// ```
    pub fn new(event_type: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self::from(NewEvent::new(event_type, payload))
    }

    /// The stored form of a typed event, as a publisher receives it on its
    /// first attempt (headers from the header hook included).
    pub fn from_event<E: OutboxEvent>(event: &E) -> Result<Self, Error> {
        NewEvent::from_event(event).map(Self::from)
    }
}

impl From<NewEvent> for StorageBox {
    fn from(e: NewEvent) -> Self {
        Self {
            id: e.id,
            event_type: e.event_type,
            version: e.version,
            topic: e.topic,
            partition_key: e.partition_key,
            payload: e.payload,
            headers: e.headers,
            created_at: SystemTime::now(),
            attempt: 1,
        }
    }
}

/// The longest event type name or header name, in bytes.
pub(crate) const MAX_TYPE_LEN: usize = 255;
/// The longest topic, in bytes.
pub(crate) const MAX_TOPIC_LEN: usize = 1024;
/// The longest partition key, in bytes (the MySQL column is `VARBINARY(1024)`).
pub(crate) const MAX_KEY_LEN: usize = 1024;

/// An event to insert: a [`StorageBox`] before it has been stored.
///
/// Build one from a typed event with [`NewEvent::from_event`], or by hand to
/// enqueue a payload that no Rust type describes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewEvent {
    /// The event id; [`NewEvent::new`] makes a UUIDv7.
    pub id: Uuid,
    /// The event type name.
    pub event_type: String,
    /// The schema version.
    pub version: u32,
    /// The topic.
    pub topic: String,
    /// The partition key.
    pub partition_key: Option<String>,
    /// The encoded payload.
    pub payload: Vec<u8>,
    /// Headers for publishers to pass on.
    pub headers: BTreeMap<String, String>,
}

impl NewEvent {
    /// A raw event with a fresh UUIDv7 id, schema version 1, the type name as
    /// topic, no key and no headers.
    pub fn new(event_type: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        let event_type = event_type.into();
        Self {
            id: Uuid::now_v7(),
            topic: event_type.clone(),
            event_type,
            version: 1,
            partition_key: None,
            payload: payload.into(),
            headers: BTreeMap::new(),
        }
    }

    /// Encode a typed event.
    pub fn from_event<E: OutboxEvent>(event: &E) -> Result<Self, Error> {
        let payload = event.encode().map_err(|source| Error::Encode {
            event_type: E::NAME,
            source,
        })?;
        let mut headers = BTreeMap::new();
        if let Some(hook) = HEADER_HOOK.get() {
            hook(&mut headers);
        }
        Ok(Self {
            id: Uuid::now_v7(),
            event_type: E::NAME.to_owned(),
            version: E::VERSION,
            topic: E::TOPIC.to_owned(),
            partition_key: event.partition_key(),
            payload,
            headers,
        })
    }

    /// Set the topic.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }

    /// Set the partition key.
    pub fn partition_key(mut self, key: impl Into<String>) -> Self {
        self.partition_key = Some(key.into());
        self
    }

    /// Set the schema version.
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Add a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Check that every field fits the columns of every backend, before any
    /// statement runs: a statement that fails leaves the caller's
    /// transaction aborted (PostgreSQL), and a value cut to its column
    /// (MySQL without strict mode) would be an event no claim can read.
    pub(crate) fn validate(&self, max_payload: Option<usize>) -> Result<(), Error> {
        let invalid = |field: &'static str, reason: String| {
            let mut event_type = self.event_type.clone();
            if event_type.len() > MAX_TYPE_LEN {
                event_type = crate::text::cut(&event_type, MAX_TYPE_LEN);
            }
            Err(Error::InvalidEvent {
                event_type,
                field,
                reason,
            })
        };
        let text = |field: &'static str, value: &str, max: usize| {
            if value.contains('\0') {
                return invalid(
                    field,
                    "contains a NUL character, which databases cannot store in text".to_owned(),
                );
            }
            if value.len() > max {
                return invalid(
                    field,
                    format!("is {} bytes long; at most {max} fit", value.len()),
                );
            }
            Ok(())
        };
        text("event type", &self.event_type, MAX_TYPE_LEN)?;
        if self.event_type.is_empty() {
            return invalid("event type", "is empty".to_owned());
        }
        text("topic", &self.topic, MAX_TOPIC_LEN)?;
        if let Some(key) = &self.partition_key {
            text("partition key", key, MAX_KEY_LEN)?;
        }
        for (name, value) in &self.headers {
            text("header name", name, MAX_TYPE_LEN)?;
            text("header value", value, usize::MAX)?;
        }
        if let Some(max) = max_payload
            && self.payload.len() > max
        {
            return invalid(
                "payload",
                format!(
                    "is {} bytes long; these tables take at most {max} (Tables::max_payload)",
                    self.payload.len()
                ),
            );
        }
        Ok(())
    }

    pub(crate) fn headers_json(&self) -> String {
        serde_json::to_string(&self.headers).unwrap_or_else(|_| "{}".to_owned())
    }
}

static HEADER_HOOK: std::sync::OnceLock<fn(&mut BTreeMap<String, String>)> =
    std::sync::OnceLock::new();

/// Install a function that adds headers to every typed event at enqueue
/// time, such as the W3C `traceparent` of the current trace (for example
/// with an OpenTelemetry propagator). Broker publishers pass stored headers
/// on. Returns false when a hook was installed already.
pub fn set_header_hook(hook: fn(&mut BTreeMap<String, String>)) -> bool {
    HEADER_HOOK.set(hook).is_ok()
}

/// Stored headers, a JSON object of strings.
pub(crate) fn parse_headers(json: &str) -> Result<BTreeMap<String, String>, serde_json::Error> {
    serde_json::from_str(json)
}
