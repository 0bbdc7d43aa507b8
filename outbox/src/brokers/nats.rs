//! NATS JetStream publisher (feature `nats`, with [async-nats](async_nats)).
//!
//! [`JetStreamPublisher`] publishes each event to a subject that a JetStream
//! stream stores, and reports success only once JetStream has answered with
//! a PubAck: the message is stored. The event id travels as `Nats-Msg-Id`,
//! so JetStream itself drops a re-delivery within the stream's duplicate
//! window (two minutes by default).
//!
//! ```no_run
//! use std::time::Duration;
//! use outbox::brokers::{Route, Selection};
//! use outbox::nats::{JetStreamPublisher, async_nats};
//!
//! # async fn demo(pool: sqlx::SqlitePool) -> anyhow::Result<()> {
//! let client = async_nats::connect("127.0.0.1:4222").await?;
//! let jetstream = async_nats::jetstream::new(client);
//! let nats = JetStreamPublisher::new(jetstream)
//!     .select(Selection::only(["order.placed"]))
//!     .route(Route::template("events.{topic}.{event_type}"))
//!     .timeout(Duration::from_secs(3));
//! outbox::Runner::builder(pool).publisher(nats).build()?.run().await?;
//! # Ok(()) }
//! ```
//!
//! | outcome | kind |
//! | --- | --- |
//! | PubAck | success |
//! | PubAck with `duplicate: true` (already stored) | success |
//! | no stream stores the subject ("no responders") | transient, see [`JetStreamPublisher`] |
//! | no PubAck within the timeout, connection lost | transient |
//! | message above the server's `max_payload`, or the stream's `max_msg_size` | permanent |
//! | subject that NATS cannot publish to (empty, spaces, wildcards) | permanent |
//!
//! TLS is not configured here: connect the client with the options you
//! need (`async_nats::ConnectOptions`) and hand over its JetStream context.

use std::fmt;
use std::time::Duration;

pub use async_nats;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{Context as JetStream, PublishError, PublishErrorKind};
use async_nats::jetstream::{self, ErrorCode};
use tracing::{debug, warn};

use crate::brokers::{BrokerPublisher, Route, Wire, destination, metadata, sealed};
use crate::error::PublishError as OutboxPublishError;
use crate::event::StorageBox;

/// The header that JetStream deduplicates on; it carries the event id.
pub const MSG_ID: &str = "Nats-Msg-Id";

/// Publishes events to NATS JetStream and waits for each PubAck.
///
/// Each message goes to the subject that the [`Route`] gives (the event's
/// topic by default), with the payload as body and these headers:
/// `Nats-Msg-Id` (the event id, for JetStream's deduplication) and the
/// event's [`metadata`] (`outbox-event-id`,
/// `outbox-event-type`, `outbox-schema-version`, `content-type`,
/// `outbox-partition-key`, `traceparent`, ...). Stored headers whose name
/// or value NATS cannot carry (non-ASCII or `:` in a name, a line break in
/// a value) are left out with a warning.
///
/// **A subject that no stream stores is a transient failure.** NATS answers
/// "no responders", which means the stream has not been created (yet): an
/// operator error that retrying fixes once the stream exists, so the event
/// is retried and, after the Runner's `max_attempts`, dead-lettered with a
/// message that says which subject needs a stream. Retry it from the
/// dead-letter table once the stream exists.
///
/// A publish that gets no PubAck within the
/// [timeout](BrokerPublisher::timeout) fails (transient), even if the
/// message may have been stored: the retry carries the same `Nats-Msg-Id`,
/// so JetStream stores it once and answers the retry with a duplicate
/// PubAck, which counts as success. The JetStream context's own timeout
/// (5 s unless set on its builder) also applies. The client reconnects by
/// itself after a connection loss.
///
/// The settings every broker shares are on [`BrokerPublisher`]. From your
/// own `#[publisher]` function:
///
/// ```no_run
/// # use outbox::{Context, PublishError, publisher, OutboxEvent};
/// # use outbox::nats::JetStreamPublisher;
/// # #[derive(serde::Serialize, serde::Deserialize, OutboxEvent)]
/// # struct OrderPlaced { order_id: i64 }
/// #[publisher]
/// async fn to_nats(_: OrderPlaced, cx: Context) -> Result<(), PublishError> {
///     let nats = cx.state::<JetStreamPublisher>().expect("given with .state(...)");
///     nats.publish_event(cx.event()).await
/// }
/// ```
pub type JetStreamPublisher = BrokerPublisher<JetStreamWire>;

/// The wire protocol of a [`JetStreamPublisher`]: its JetStream context.
#[derive(Clone)]
pub struct JetStreamWire {
    jetstream: JetStream,
}

impl fmt::Debug for JetStreamWire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamWire").finish_non_exhaustive()
    }
}

impl JetStreamPublisher {
    /// A publisher on a JetStream context, e.g.
    /// `async_nats::jetstream::new(client)`.
    pub fn new(jetstream: JetStream) -> Self {
        Self::with_wire(JetStreamWire { jetstream })
    }

    /// Connect to a NATS server (e.g. `"127.0.0.1:4222"` or
    /// `"nats://user:pass@host:4222"`) with default options, and publish
    /// through its JetStream context.
    pub async fn connect(
        addrs: impl async_nats::ToServerAddrs,
    ) -> Result<Self, async_nats::ConnectError> {
        let client = async_nats::connect(addrs).await?;
        Ok(Self::new(jetstream::new(client)))
    }

    /// The JetStream context it publishes through.
    pub fn jetstream(&self) -> &JetStream {
        &self.wire.jetstream
    }
}

impl sealed::Sealed for JetStreamWire {}

impl Wire for JetStreamWire {
    const NAME: &'static str = "nats";

    async fn send(
        &self,
        event: &StorageBox,
        route: Option<&Route>,
        timeout: Duration,
    ) -> Result<(), OutboxPublishError> {
        let subject = destination(route, event);
        check_subject(&subject)?;
        let (headers, headers_len) = headers(event);
        let max_payload = self.jetstream.client().max_payload();
        let size = event.payload.len() + headers_len;
        if max_payload > 0 && size > max_payload {
            return Err(OutboxPublishError::permanent(format!(
                "NATS message for subject {subject:?} is {size} bytes (payload and headers), above the server's max_payload of {max_payload} bytes; shrink the event or raise max_payload in the NATS server configuration"
            )));
        }
        let payload = event.payload.clone().into();
        let publish = async {
            let ack = self
                .jetstream
                .publish_with_headers(subject.clone(), headers, payload)
                .await?;
            ack.await
        };
        match tokio::time::timeout(timeout, publish).await {
            Ok(Ok(ack)) => {
                if ack.duplicate {
                    debug!(event_id = %event.id, stream = %ack.stream, seq = ack.sequence, "outbox: JetStream already had this message (duplicate PubAck)");
                } else {
                    debug!(event_id = %event.id, stream = %ack.stream, seq = ack.sequence, "outbox: JetStream stored the message");
                }
                Ok(())
            }
            Ok(Err(e)) => Err(classify(&subject, e)),
            Err(_) => Err(OutboxPublishError::transient(format!(
                "JetStream did not acknowledge the message on subject {subject:?} within {timeout:?}; it will be sent again with the same {MSG_ID}, so JetStream stores it once"
            ))),
        }
    }
}

/// Subjects that NATS refuses: reject them before sending, for good.
fn check_subject(subject: &str) -> Result<(), OutboxPublishError> {
    let bad = if subject.is_empty() {
        Some("it is empty")
    } else if subject.contains(|c: char| c.is_whitespace() || c.is_control()) {
        Some("it contains whitespace")
    } else if subject.split('.').any(|token| token.is_empty()) {
        Some("it has an empty token (a leading, trailing or double '.')")
    } else if subject.split('.').any(|token| token == "*" || token == ">") {
        Some("it contains a wildcard ('*' or '>')")
    } else {
        None
    };
    match bad {
        Some(reason) => Err(OutboxPublishError::permanent(format!(
            "cannot publish to NATS subject {subject:?}: {reason}; fix the event's topic or the Route"
        ))),
        None => Ok(()),
    }
}

/// `Nats-Msg-Id` and the event's metadata as NATS headers, with the size
/// of the header block on the wire (`NATS/1.0\r\n`, `name: value\r\n`...,
/// `\r\n`).
fn headers(event: &StorageBox) -> (HeaderMap, usize) {
    let mut headers = HeaderMap::new();
    let mut len = "NATS/1.0\r\n\r\n".len();
    let mut add = |headers: &mut HeaderMap, name: String, value: String| {
        len += name.len() + value.len() + 4;
        headers.insert(name, value);
    };
    add(&mut headers, MSG_ID.to_owned(), event.id.to_string());
    for (name, value) in metadata(event) {
        let name_ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_graphic() && c != ':');
        if !name_ok || value.contains(['\r', '\n']) || name.eq_ignore_ascii_case(MSG_ID) {
            warn!(event_id = %event.id, header = %name, "outbox: header cannot be carried by NATS, not sent");
            continue;
        }
        add(&mut headers, name, value);
    }
    (headers, len)
}

fn classify(subject: &str, e: PublishError) -> OutboxPublishError {
    match e.kind() {
        PublishErrorKind::StreamNotFound => OutboxPublishError::transient(format!(
            "no JetStream stream stores subject {subject:?} (NATS answered \"no responders\"): create a stream whose subjects include it, e.g. `nats stream add EVENTS --subjects '{subject}'`, or fix the Route; the event is retried, dead-lettered after max_attempts, and can be retried from the dead letters once the stream exists"
        )),
        PublishErrorKind::TimedOut => OutboxPublishError::transient(format!(
            "JetStream did not acknowledge the message on subject {subject:?} in time; it will be sent again"
        )),
        PublishErrorKind::BrokenPipe => OutboxPublishError::transient(format!(
            "the NATS connection was lost before JetStream acknowledged the message on subject {subject:?}; it will be sent again"
        )),
        PublishErrorKind::MaxAckPending => OutboxPublishError::transient(format!(
            "too many JetStream publishes await their PubAck on this connection: {e}"
        )),
        PublishErrorKind::MaxPayloadExceeded => OutboxPublishError::permanent(format!(
            "NATS message for subject {subject:?} is too large: {e}; shrink the event or raise max_payload in the NATS server configuration"
        )),
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
            OutboxPublishError::permanent(format!(
                "JetStream refused the message on subject {subject:?}: {e}"
            ))
        }
        _ => {
            let code = std::error::Error::source(&e)
                .and_then(|source| source.downcast_ref::<jetstream::Error>())
                .map(jetstream::Error::error_code);
            match code {
                Some(ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)
                | Some(ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM) => {
                    OutboxPublishError::permanent(format!(
                        "the JetStream stream for subject {subject:?} refused the message as too large: {e}; shrink the event or raise the stream's max_msg_size"
                    ))
                }
                _ => OutboxPublishError::transient(format!(
                    "JetStream publish to subject {subject:?} failed: {e}"
                )),
            }
        }
    }
}
