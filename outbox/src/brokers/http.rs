//! HTTP webhook publisher (feature `http`, with [reqwest]): each event is a
//! [CloudEvents 1.0](https://github.com/cloudevents/spec) `POST`, optionally
//! signed per [Standard Webhooks](https://www.standardwebhooks.com/).
//!
//! ```no_run
//! use std::time::Duration;
//! use outbox::brokers::Selection;
//! use outbox::http::{Mode, WebhookPublisher};
//!
//! # async fn demo(pool: sqlx::SqlitePool) -> anyhow::Result<()> {
//! let hook = WebhookPublisher::new("http://127.0.0.1:8080/hooks/orders")?
//!     .select(Selection::only(["order.placed"]))
//!     .mode(Mode::Structured)
//!     .source("/shop/orders")
//!     .signing_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?
//!     .timeout(Duration::from_secs(5));
//! outbox::Runner::builder(pool).publisher(hook).build()?.run().await?;
//! # Ok(()) }
//! ```
//!
//! | answer | kind |
//! | --- | --- |
//! | 2xx | success |
//! | 408, 429, 5xx | transient; `Retry-After` (seconds or HTTP date) is honoured |
//! | other 4xx, 3xx (redirects are not followed) | permanent: dead-lettered at once |
//! | no answer within the timeout, connection refused or reset | transient |
//!
//! Plain `http://` always works. `https://` needs the `http-rustls` feature:
//! rustls with the `ring` crypto provider (no aws-lc-sys to compile) and the
//! platform's certificate store. If no process-wide rustls provider is
//! installed when a publisher is built, that feature installs `ring`'s. To
//! use other TLS settings, give your own client with
//! [`WebhookPublisher::client`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use reqwest;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use sha2::Sha256;
use tracing::{debug, warn};

use super::{JSON, Route, Selection, header, metadata};
use crate::{Context, PublishError, Publisher, StorageBox};

/// How long a delivery may take by default, until the response headers.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The CloudEvents `source` attribute by default.
pub const DEFAULT_SOURCE: &str = "/outbox";

/// `Content-Type` of a structured-mode CloudEvent.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json; charset=utf-8";

/// How much of an error response's body goes into the error message.
const ERROR_BODY_LIMIT: usize = 512;
/// How much of a success response's body is read (so that the connection
/// can be reused) before it is dropped.
const SUCCESS_BODY_LIMIT: usize = 64 * 1024;

/// The [CloudEvents HTTP binding](https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/bindings/http-protocol-binding.md)
/// mode of a webhook request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// The body is the whole CloudEvent as JSON (`application/cloudevents+json`),
    /// with the payload in `data`. Self-contained, and the signature covers
    /// every attribute.
    #[default]
    Structured,
    /// The body is the payload itself (`Content-Type: application/json`) and
    /// the attributes travel as `ce-*` headers.
    Binary,
}

/// A webhook publisher's configuration was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The endpoint is not a usable URL.
    #[error("invalid webhook URL {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The signing secret is not a Standard Webhooks secret.
    #[error(
        "invalid webhook signing secret: {0}; give the receiver's secret as `whsec_` followed by the base64 key"
    )]
    Secret(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client for webhooks: {0}")]
    Client(#[source] reqwest::Error),
}

/// Delivers events as CloudEvents over HTTP `POST`.
///
/// Every request carries the event's [`metadata`] as
/// headers (`outbox-event-id`, `outbox-event-type`, `outbox-schema-version`,
/// `outbox-partition-key`, `traceparent`, ...), and the CloudEvent
/// attributes: `id` = the event id (stable across retries: deduplicate on
/// it), `source` ([`source`](Self::source), default `/outbox`), `type` =
/// the event type, `subject` = the partition key, `time` = when it was
/// enqueued (RFC 3339), `datacontenttype` `application/json`, and the
/// extension attributes `schemaversion`, `partitionkey`, `traceparent` and
/// `tracestate` (a payload that is not JSON is sent as `data_base64`, with
/// `application/octet-stream`).
///
/// With a [signing secret](Self::signing_secret) each request also carries
/// the Standard Webhooks headers `webhook-id` (the event id),
/// `webhook-timestamp` (Unix seconds) and `webhook-signature`
/// (`v1,` + base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`).
///
/// All events go to one endpoint unless [`route`](Self::route) says
/// otherwise. It is a [`Publisher`] (a forwarder for all or
/// [selected](Self::select) events) and can also be called from your own
/// `#[publisher]` function with [`publish_event`](Self::publish_event).
/// Clones share one connection pool.
#[derive(Clone)]
pub struct WebhookPublisher {
    name: String,
    endpoint: Url,
    route: Option<Route>,
    selection: Selection,
    timeout: Duration,
    mode: Mode,
    source: String,
    secret: Option<Arc<[u8]>>,
    client: reqwest::Client,
}

impl fmt::Debug for WebhookPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookPublisher")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint.as_str())
            .field("route", &self.route)
            .field("selection", &self.selection)
            .field("timeout", &self.timeout)
            .field("mode", &self.mode)
            .field("source", &self.source)
            .field("signed", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

impl WebhookPublisher {
    /// A publisher that posts every event to `endpoint`, in structured mode,
    /// unsigned, with a 5 s timeout.
    pub fn new(endpoint: &str) -> Result<Self, ConfigError> {
        let endpoint = parse_url(endpoint)?;
        Ok(Self {
            name: "webhook".to_owned(),
            endpoint,
            route: None,
            selection: Selection::All,
            timeout: DEFAULT_TIMEOUT,
            mode: Mode::Structured,
            source: DEFAULT_SOURCE.to_owned(),
            secret: None,
            client: default_client()?,
        })
    }

    /// The publisher's name (default `"webhook"`); give each webhook
    /// publisher of one Runner its own.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Which event types it forwards (default: all).
    pub fn select(mut self, selection: Selection) -> Self {
        self.selection = selection;
        self
    }

    /// The URL of each event, instead of the fixed endpoint. The route's
    /// result is resolved against the endpoint like a link: an absolute URL
    /// replaces it, `/events/{event_type}` replaces its path, and a relative
    /// path such as `{topic}` replaces its last segment.
    ///
    /// ```
    /// # use outbox::brokers::Route;
    /// # fn demo() -> Result<(), outbox::http::ConfigError> {
    /// let hook = outbox::http::WebhookPublisher::new("https://hooks.example.com/in/")?
    ///     .route(Route::template("{topic}/{event_type}")); // .../in/orders/order.placed
    /// # Ok(()) }
    /// ```
    pub fn route(mut self, route: Route) -> Self {
        self.route = Some(route);
        self
    }

    /// How long one delivery may take, until the whole response has arrived
    /// (default 5 s); a slower receiver is a transient failure. Keep it below
    /// the Runner's `publish_timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Structured (default) or binary CloudEvents.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The CloudEvents `source` attribute, a URI reference naming the
    /// producer (default `/outbox`).
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Sign every request per Standard Webhooks with this secret: `whsec_`
    /// followed by the base64 of the key, as receivers hand it out (a bare
    /// base64 key is accepted too).
    pub fn signing_secret(mut self, secret: &str) -> Result<Self, ConfigError> {
        let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
        let key = BASE64
            .decode(encoded.trim())
            .map_err(|e| ConfigError::Secret(format!("the key is not base64 ({e})")))?;
        if key.is_empty() {
            return Err(ConfigError::Secret("the key is empty".to_owned()));
        }
        self.secret = Some(key.into());
        Ok(self)
    }

    /// Use this HTTP client (for proxies, TLS roots or client certificates).
    /// Turn off its redirects (`redirect::Policy::none()`): a redirected
    /// `POST` may become a `GET` that "succeeds" without delivering.
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = client;
        self
    }

    /// Deliver one event and classify the answer: what the [`Publisher`]
    /// impl does, for use in your own `#[publisher]` function.
    ///
    /// ```no_run
    /// # use outbox::{Context, PublishError, State, publisher, OutboxEvent};
    /// # use outbox::http::WebhookPublisher;
    /// # #[derive(serde::Serialize, serde::Deserialize, OutboxEvent)]
    /// # struct OrderPlaced { order_id: i64 }
    /// #[publisher]
    /// async fn to_partner(_: OrderPlaced, cx: Context) -> Result<(), PublishError> {
    ///     let hook = cx
    ///         .state::<WebhookPublisher>()
    ///         .ok_or_else(|| PublishError::permanent("give the WebhookPublisher with .state(..)"))?;
    ///     hook.publish_event(cx.event()).await
    /// }
    /// ```
    pub async fn publish_event(&self, event: &StorageBox) -> Result<(), PublishError> {
        let url = self.url_for(event)?;
        let json = serde_json::from_slice::<serde_json::Value>(&event.payload).ok();
        let mut headers = HeaderMap::new();
        for (name, value) in metadata(event) {
            if name.eq_ignore_ascii_case(header::CONTENT_TYPE) {
                continue;
            }
            insert(&mut headers, &name, &value, false, event);
        }
        let body = match self.mode {
            Mode::Structured => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static(CLOUDEVENTS_JSON));
                structured(event, &self.source, json).map_err(|e| {
                    PublishError::permanent(format!("cannot encode the CloudEvent: {e}"))
                })?
            }
            Mode::Binary => {
                let content_type = if json.is_some() { JSON } else { OCTET_STREAM };
                headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
                for (name, value) in attributes(event, &self.source) {
                    insert(&mut headers, &format!("ce-{name}"), &value, true, event);
                }
                event.payload.clone()
            }
        };
        if let Some(key) = &self.secret {
            let id = event.id.to_string();
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let signature = sign(key, &id, timestamp, &body);
            insert(&mut headers, "webhook-id", &id, false, event);
            insert(
                &mut headers,
                "webhook-timestamp",
                &timestamp.to_string(),
                false,
                event,
            );
            insert(&mut headers, "webhook-signature", &signature, false, event);
        }

        let response = self
            .client
            .post(url.clone())
            .headers(headers)
            .body(body)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| self.request_error(&url, e))?;
        let status = response.status();
        if status.is_success() {
            let _ = read_body(response, SUCCESS_BODY_LIMIT).await;
            debug!(event_id = %event.id, %url, %status, "outbox: webhook delivered");
            return Ok(());
        }
        let delay = retry_after(response.headers());
        let body = read_body(response, ERROR_BODY_LIMIT).await;
        let mut message = format!("webhook {url} answered {status}");
        if !body.is_empty() {
            message.push_str(": ");
            message.push_str(&body);
        }
        if status.is_redirection() {
            return Err(PublishError::permanent(format!(
                "{message}; redirects are not followed: configure the final URL"
            )));
        }
        let transient = status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS;
        if !transient {
            return Err(PublishError::permanent(format!(
                "{message}; the receiver rejected the event, so it is not retried"
            )));
        }
        let error = PublishError::transient(message);
        Err(match delay {
            Some(delay) => error.retry_after(delay),
            None => error,
        })
    }

    fn url_for(&self, event: &StorageBox) -> Result<Url, PublishError> {
        let Some(route) = &self.route else {
            return Ok(self.endpoint.clone());
        };
        let target = route.resolve(event);
        let url = self.endpoint.join(&target).map_err(|e| {
            PublishError::permanent(format!(
                "the webhook route gave {target:?}, which is not a URL ({e}); fix the Route"
            ))
        })?;
        check_scheme(&url).map_err(|reason| {
            PublishError::permanent(format!("the webhook route gave {url}: {reason}"))
        })?;
        Ok(url)
    }

    fn request_error(&self, url: &Url, e: reqwest::Error) -> PublishError {
        let e = e.without_url();
        if e.is_timeout() {
            PublishError::transient(format!(
                "webhook {url} did not answer within {:?}: {e}",
                self.timeout
            ))
        } else if e.is_builder() {
            PublishError::permanent(format!("cannot build the request to {url}: {e}"))
        } else if e.is_connect() {
            PublishError::transient(format!("cannot connect to webhook {url}: {e}"))
        } else {
            PublishError::transient(format!("webhook request to {url} failed: {e}"))
        }
    }
}

#[async_trait]
impl Publisher for WebhookPublisher {
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

const OCTET_STREAM: &str = "application/octet-stream";

fn parse_url(endpoint: &str) -> Result<Url, ConfigError> {
    let error = |reason: String| ConfigError::Url {
        url: endpoint.to_owned(),
        reason,
    };
    let url = Url::parse(endpoint).map_err(|e| error(e.to_string()))?;
    check_scheme(&url).map_err(error)?;
    Ok(url)
}

fn check_scheme(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "http" => Ok(()),
        "https" if cfg!(feature = "http-rustls") => Ok(()),
        "https" => Err(
            "https needs the `http-rustls` feature of the outbox crate (or use http://)".to_owned(),
        ),
        other => Err(format!(
            "the scheme is {other:?}; use an http:// or https:// URL"
        )),
    }
}

fn default_client() -> Result<reqwest::Client, ConfigError> {
    #[cfg(feature = "http-rustls")]
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may win the race; either way one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("outbox/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(ConfigError::Client)
}

/// The CloudEvents context attributes of an event, except `datacontenttype`
/// (which binary mode carries as `Content-Type`): (name, value).
fn attributes(event: &StorageBox, source: &str) -> Vec<(String, String)> {
    let mut out = vec![
        ("specversion".to_owned(), "1.0".to_owned()),
        ("id".to_owned(), event.id.to_string()),
        ("source".to_owned(), source.to_owned()),
        ("type".to_owned(), event.event_type.clone()),
        ("time".to_owned(), rfc3339(event.created_at)),
        ("schemaversion".to_owned(), event.version.to_string()),
    ];
    if let Some(key) = &event.partition_key {
        out.push(("subject".to_owned(), key.clone()));
        out.push(("partitionkey".to_owned(), key.clone()));
    }
    for (name, value) in &event.headers {
        let name = name.to_ascii_lowercase();
        if is_extension_name(&name) && !out.iter().any(|(n, _)| *n == name) {
            out.push((name, value.clone()));
        }
    }
    out
}

/// Stored headers that can be CloudEvents extension attributes: lower-case
/// letters and digits, at most 20, not a reserved name.
fn is_extension_name(name: &str) -> bool {
    const RESERVED: &[&str] = &[
        "data",
        "data_base64",
        "datacontenttype",
        "dataschema",
        "id",
        "source",
        "specversion",
        "subject",
        "time",
        "type",
    ];
    !name.is_empty()
        && name.len() <= 20
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !RESERVED.contains(&name)
}

/// The structured-mode body: the CloudEvent as JSON.
fn structured(
    event: &StorageBox,
    source: &str,
    json: Option<serde_json::Value>,
) -> Result<Vec<u8>, serde_json::Error> {
    use serde_json::Value;
    let mut object = serde_json::Map::new();
    for (name, value) in attributes(event, source) {
        let value = if name == "schemaversion" {
            Value::from(event.version)
        } else {
            Value::String(value)
        };
        object.insert(name, value);
    }
    match json {
        Some(data) => {
            object.insert("datacontenttype".to_owned(), JSON.into());
            object.insert("data".to_owned(), data);
        }
        None => {
            object.insert("datacontenttype".to_owned(), OCTET_STREAM.into());
            object.insert(
                "data_base64".to_owned(),
                BASE64.encode(&event.payload).into(),
            );
        }
    }
    serde_json::to_vec(&Value::Object(object))
}

/// Add a header; `ce` values are percent-encoded per the CloudEvents HTTP
/// binding, others only when they are not valid header values.
fn insert(headers: &mut HeaderMap, name: &str, value: &str, ce: bool, event: &StorageBox) {
    let Ok(header_name) = HeaderName::from_bytes(name.as_bytes()) else {
        warn!(event_id = %event.id, header = name, "outbox: not a valid HTTP header name, not sent");
        return;
    };
    let value = if ce {
        percent_encode(value)
    } else {
        match HeaderValue::from_str(value) {
            Ok(v) => {
                headers.insert(header_name, v);
                return;
            }
            Err(_) => percent_encode(value),
        }
    };
    match HeaderValue::from_str(&value) {
        Ok(v) => {
            headers.insert(header_name, v);
        }
        Err(_) => {
            warn!(event_id = %event.id, header = name, "outbox: header value cannot be sent, skipped")
        }
    }
}

/// Percent-encode space, `"`, `%` and everything outside printable ASCII
/// (UTF-8 bytes), as the CloudEvents HTTP binding asks for `ce-*` headers.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b <= b' ' || b >= 0x7f || b == b'"' || b == b'%' {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(char::from(b));
        }
    }
    out
}

/// The Standard Webhooks signature header value.
fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        // HMAC takes keys of any length.
        Err(_) => return String::new(),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// `Retry-After`: delay-seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// Up to `limit` bytes of the body, as one line of text.
async fn read_body(mut response: reqwest::Response, limit: usize) -> String {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(limit);
    String::from_utf8_lossy(&body)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// RFC 3339 in UTC, with milliseconds (microseconds when there are some).
fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let nanos = since.subsec_nanos();
    let fraction = if nanos.is_multiple_of(1_000_000) {
        format!("{:03}", nanos / 1_000_000)
    } else {
        format!("{:06}", nanos / 1_000)
    };
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{fraction}Z")
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc_with_fraction() {
        let at = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(at(951_782_400, 5_000_000)),
            "2000-02-29T00:00:00.005Z"
        );
        assert_eq!(
            rfc3339(at(1_709_251_199, 123_456_000)),
            "2024-02-29T23:59:59.123456Z"
        );
        assert_eq!(rfc3339(at(4_107_542_400, 0)), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn percent_encoding_follows_the_http_binding() {
        assert_eq!(percent_encode("order.placed"), "order.placed");
        assert_eq!(percent_encode("a b\"%é"), "a%20b%22%25%C3%A9");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let delay = retry_after(&headers).unwrap();
        assert!(delay > Duration::from_secs(100) && delay <= Duration::from_secs(120));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn signature_matches_the_standard_webhooks_test_vector() {
        let key = BASE64.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            sign(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn urls_and_secrets_are_checked() {
        assert!(WebhookPublisher::new("not a url").is_err());
        assert!(WebhookPublisher::new("ftp://example.com/").is_err());
        assert_eq!(
            WebhookPublisher::new("https://example.com/hook").is_ok(),
            cfg!(feature = "http-rustls"),
            "https works exactly when TLS is compiled in"
        );
        let hook = WebhookPublisher::new("http://127.0.0.1:9/in/").unwrap();
        assert!(hook.clone().signing_secret("whsec_%%%").is_err());
        assert!(hook.clone().signing_secret("whsec_").is_err());
        assert!(hook.signing_secret("whsec_c2VjcmV0").is_ok());
    }
}
