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
//!     .header("authorization", &format!("Bearer {}", std::env::var("HOOK_TOKEN")?))?
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
//!
//! Credentials belong in a [header](WebhookPublisher::header), not in the
//! URL. Wherever a URL is shown (`Debug`, configuration and publish errors,
//! so logs and dead letters) it is [redacted](redact): its user and password
//! become `***`, and so does every query value (`?token=***`); header values
//! and the signing secret are never shown.

mod cloudevents;
mod signing;

use std::fmt;
use std::time::{Duration, SystemTime};

pub use reqwest;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use tracing::debug;

pub use self::cloudevents::{CLOUDEVENTS_JSON, Mode};
use self::signing::Secret;
use crate::brokers::{BrokerPublisher, Route, Wire, sealed};
use crate::error::PublishError;
use crate::event::StorageBox;

/// The CloudEvents `source` attribute by default.
pub const DEFAULT_SOURCE: &str = "/outbox";

/// How much of an error response's body goes into the error message.
const ERROR_BODY_LIMIT: usize = 512;
/// How much of a success response's body is read (so that the connection
/// can be reused) before it is dropped.
const SUCCESS_BODY_LIMIT: usize = 64 * 1024;

/// A webhook publisher's configuration was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The endpoint is not a usable URL.
    #[error("invalid webhook URL {url:?}: {reason}")]
    Url {
        /// The URL as given, [redacted](redact).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The signing secret is not a Standard Webhooks secret.
    #[error(
        "invalid webhook signing secret: {0}; give the receiver's secret as `whsec_` followed by the base64 key"
    )]
    Secret(String),
    /// A [header](WebhookPublisher::header) name or value is not valid HTTP.
    #[error("invalid webhook header {name:?}: {reason}")]
    Header {
        /// The header name as given.
        name: String,
        /// What is wrong with it (never the value).
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client for webhooks: {0}")]
    Client(#[source] reqwest::Error),
}

/// Delivers events as CloudEvents over HTTP `POST`.
///
/// Every request carries the event's [`metadata`](crate::brokers::metadata)
/// as headers (`outbox-event-id`, `outbox-event-type`,
/// `outbox-schema-version`, `outbox-partition-key`, `traceparent`, ...),
/// and the CloudEvent attributes: `id` = the event id (stable across
/// retries: deduplicate on it), `source` ([`source`](Self::source), default
/// `/outbox`), `type` = the event type, `subject` = the partition key,
/// `time` = when it was enqueued (RFC 3339), `datacontenttype`
/// `application/json`, and the extension attributes `schemaversion`,
/// `partitionkey`, `traceparent` and `tracestate` (a payload that is not
/// JSON is sent as `data_base64`, with `application/octet-stream`).
///
/// With a [signing secret](Self::signing_secret) each request also carries
/// the Standard Webhooks headers `webhook-id` (the event id),
/// `webhook-timestamp` (Unix seconds) and `webhook-signature`
/// (`v1,` + base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`).
///
/// All events go to one endpoint unless [`route`](BrokerPublisher::route)
/// says otherwise: the route's result is resolved against the endpoint like
/// a link: an absolute URL replaces it, `/events/{event_type}` replaces its
/// path, and a relative path such as `{topic}` replaces its last segment.
///
/// ```
/// # use outbox::brokers::Route;
/// # fn demo() -> Result<(), outbox::http::ConfigError> {
/// let hook = outbox::http::WebhookPublisher::new("https://hooks.example.com/in/")?
///     .route(Route::template("{topic}/{event_type}")); // .../in/orders/order.placed
/// # Ok(()) }
/// ```
///
/// The [timeout](BrokerPublisher::timeout) covers one delivery until the
/// whole response has arrived; a slower receiver is a transient failure.
/// Clones share one connection pool. The settings every broker shares are
/// on [`BrokerPublisher`]. From your own `#[publisher]` function:
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
pub type WebhookPublisher = BrokerPublisher<WebhookWire>;

/// The wire protocol of a [`WebhookPublisher`]: its endpoint, HTTP client,
/// CloudEvents mode and source, extra headers and signing secret.
///
/// Its `Debug` shows the endpoint [redacted](redact), the names of the
/// extra headers without their values, and whether requests are signed.
#[derive(Clone)]
pub struct WebhookWire {
    endpoint: Url,
    mode: Mode,
    source: String,
    headers: HeaderMap,
    secret: Option<Secret>,
    client: reqwest::Client,
}

impl fmt::Debug for WebhookWire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<&str> = self.headers.keys().map(HeaderName::as_str).collect();
        f.debug_struct("WebhookWire")
            .field("endpoint", &redact(self.endpoint.as_str()))
            .field("mode", &self.mode)
            .field("source", &self.source)
            .field("headers", &headers)
            .field("signed", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

/// `url` as it may be shown (in `Debug`, errors and logs): the user and
/// password replaced by `***`, and every query value too, keeping the names
/// (`http://***@host/hook?token=***`); a fragment becomes `#***`. Scheme,
/// host, port and path are kept. A string that is not a URL is redacted as
/// far as it looks like one: everything up to its last `@` goes.
pub fn redact(url: &str) -> String {
    let parsed = Url::parse(url).ok();
    let text = parsed.as_ref().map_or(url, Url::as_str);
    let start = match text.find("://") {
        Some(i)
            if text[..i]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
        {
            i + 3
        }
        _ => 0,
    };
    let (head, rest) = text.split_at(start);
    // A parsed URL's authority ends at the path, and its userinfo has no
    // other `@`; text that did not parse may hide one anywhere.
    let authority = match parsed {
        Some(_) => rest.find(['/', '?', '#']).unwrap_or(rest.len()),
        None => rest.len(),
    };
    let (userinfo, rest) = match rest[..authority].rfind('@') {
        Some(at) => ("***@", &rest[at + 1..]),
        None => ("", rest),
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((rest, _)) => (rest, "#***"),
        None => (rest, ""),
    };
    let mut out = format!("{head}{userinfo}");
    match rest.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) => format!("{name}=***"),
                    None if pair.is_empty() => String::new(),
                    // A bare item may be the token itself.
                    None => "***".to_owned(),
                })
                .collect();
            out.push_str(&pairs.join("&"));
        }
        None => out.push_str(rest),
    }
    out.push_str(fragment);
    out
}

impl WebhookPublisher {
    /// A publisher that posts every event to `endpoint`, in structured mode,
    /// unsigned, with a 5 s timeout.
    pub fn new(endpoint: &str) -> Result<Self, ConfigError> {
        Ok(Self::with_wire(WebhookWire {
            endpoint: parse_url(endpoint)?,
            mode: Mode::Structured,
            source: DEFAULT_SOURCE.to_owned(),
            headers: HeaderMap::new(),
            secret: None,
            client: default_client()?,
        }))
    }

    /// Structured (default) or binary CloudEvents.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.wire.mode = mode;
        self
    }

    /// The CloudEvents `source` attribute, a URI reference naming the
    /// producer (default `/outbox`).
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.wire.source = source.into();
        self
    }

    /// Sign every request per Standard Webhooks with this secret: `whsec_`
    /// followed by the base64 of the key, as receivers hand it out (a bare
    /// base64 key is accepted too).
    pub fn signing_secret(mut self, secret: &str) -> Result<Self, ConfigError> {
        self.wire.secret = Some(Secret::parse(secret)?);
        Ok(self)
    }

    /// Send this header with every request, e.g. the receiver's credentials:
    /// `.header("authorization", &format!("Bearer {token}"))?`, with the
    /// token read from the environment or a secret store rather than put
    /// in the URL. The value is marked sensitive and never shown (`Debug`
    /// lists only the names). Setting a name again replaces its value; the
    /// CloudEvents, metadata and signature headers win over one of the same
    /// name.
    pub fn header(mut self, name: &str, value: &str) -> Result<Self, ConfigError> {
        let error = |reason: &str| ConfigError::Header {
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        let name = HeaderName::try_from(name).map_err(|_| error("not a valid header name"))?;
        let mut value = HeaderValue::try_from(value).map_err(|_| {
            error("the value is not a valid header value (control characters or line breaks)")
        })?;
        value.set_sensitive(true);
        self.wire.headers.insert(name, value);
        Ok(self)
    }

    /// Use this HTTP client (for proxies, TLS roots or client certificates).
    /// Turn off its redirects (`redirect::Policy::none()`): a redirected
    /// `POST` may become a `GET` that "succeeds" without delivering.
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.wire.client = client;
        self
    }
}

impl sealed::Sealed for WebhookWire {}

impl Wire for WebhookWire {
    const NAME: &'static str = "webhook";

    async fn send(
        &self,
        event: &StorageBox,
        route: Option<&Route>,
        timeout: Duration,
    ) -> Result<(), PublishError> {
        let url = self.url_for(event, route)?;
        let (encoded, body) = cloudevents::encode(event, self.mode, &self.source)?;
        let mut headers = self.headers.clone();
        headers.extend(encoded);
        if let Some(secret) = &self.secret {
            secret.sign(&mut headers, event, &body);
        }
        let response = self
            .client
            .post(url.clone())
            .headers(headers)
            .body(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| request_error(&url, timeout, e))?;
        let status = response.status();
        if status.is_success() {
            let _ = read_body(response, SUCCESS_BODY_LIMIT).await;
            debug!(event_id = %event.id, url = %redact(url.as_str()), %status, "outbox: webhook delivered");
            return Ok(());
        }
        let delay = retry_after(response.headers());
        let body = read_body(response, ERROR_BODY_LIMIT).await;
        let mut message = format!("webhook {} answered {status}", redact(url.as_str()));
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
}

impl WebhookWire {
    /// The endpoint, or the route's result resolved against it.
    fn url_for(&self, event: &StorageBox, route: Option<&Route>) -> Result<Url, PublishError> {
        let Some(route) = route else {
            return Ok(self.endpoint.clone());
        };
        let target = route.resolve(event);
        let url = self.endpoint.join(&target).map_err(|e| {
            PublishError::permanent(format!(
                "the webhook route gave {:?}, which is not a URL ({e}); fix the Route",
                redact(&target)
            ))
        })?;
        check_scheme(&url).map_err(|reason| {
            PublishError::permanent(format!(
                "the webhook route gave {}: {reason}",
                redact(url.as_str())
            ))
        })?;
        Ok(url)
    }
}

/// The error of a request that got no answer. Neither the URL as sent nor
/// reqwest's own text of it (which may carry credentials) is shown.
fn request_error(url: &Url, timeout: Duration, e: reqwest::Error) -> PublishError {
    let e = e.without_url();
    let url = redact(url.as_str());
    if e.is_timeout() {
        PublishError::transient(format!(
            "webhook {url} did not answer within {timeout:?}: {e}"
        ))
    } else if e.is_builder() {
        PublishError::permanent(format!("cannot build the request to {url}: {e}"))
    } else if e.is_connect() {
        PublishError::transient(format!("cannot connect to webhook {url}: {e}"))
    } else {
        PublishError::transient(format!("webhook request to {url} failed: {e}"))
    }
}

fn parse_url(endpoint: &str) -> Result<Url, ConfigError> {
    let error = |reason: String| ConfigError::Url {
        url: redact(endpoint),
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

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

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

    #[test]
    fn redact_hides_userinfo_and_query_values() {
        for (url, shown) in [
            ("http://127.0.0.1:9/in/", "http://127.0.0.1:9/in/"),
            (
                "http://user:s3cret@127.0.0.1:9/hook?token=t0ken&x=1",
                "http://***@127.0.0.1:9/hook?token=***&x=***",
            ),
            ("http://user@host/", "http://***@host/"),
            ("http://:s3cret@host/a", "http://***@host/a"),
            ("http://host/a?t0ken&b=&&c", "http://host/a?***&b=***&&***"),
            ("http://host/a#s3cret", "http://host/a#***"),
            ("http://host/a/@me?q=s3cret", "http://host/a/@me?q=***"),
            // Not URLs: everything up to the last `@` goes.
            (
                "http://user:s3cret@host:port/hook?token=t0ken",
                "http://***@host:port/hook?token=***",
            ),
            ("http://user:s3/cr?et@host:x/", "http://***@host:x/"),
            ("user:s3cret@host/hook", "***@host/hook"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    #[test]
    fn debug_and_config_errors_show_no_secret() {
        let hook = WebhookPublisher::new("http://user:s3cret@127.0.0.1:9/in?token=t0ken")
            .unwrap()
            .signing_secret("whsec_c2VjcmV0")
            .unwrap()
            .header("Authorization", "Bearer b3arer")
            .unwrap();
        let debug = format!("{hook:?}");
        for secret in ["s3cret", "t0ken", "c2VjcmV0", "b3arer", "user"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(
            debug.contains("http://***@127.0.0.1:9/in?token=***"),
            "{debug}"
        );
        assert!(debug.contains("\"authorization\""), "{debug}");

        for bad in [
            "http://user:s3cret@127.0.0.1:port/in?token=t0ken",
            "ftp://user:s3cret@127.0.0.1/in?token=t0ken",
        ] {
            let err = WebhookPublisher::new(bad).unwrap_err();
            for text in [err.to_string(), format!("{err:?}")] {
                assert!(
                    !text.contains("s3cret") && !text.contains("t0ken"),
                    "{text}"
                );
                assert!(text.contains("127.0.0.1"), "{text}");
            }
        }
        let err = hook.header("x-token", "b3arer\n").unwrap_err();
        assert!(!format!("{err} {err:?}").contains("b3arer"), "{err:?}");
        assert!(matches!(err, ConfigError::Header { .. }), "{err:?}");
    }

    #[test]
    fn routes_resolve_against_the_endpoint() {
        let hook = WebhookPublisher::new("http://127.0.0.1:9/in/").unwrap();
        let event =
            crate::brokers::stored(crate::NewEvent::new("t", b"{}".to_vec()).topic("orders"));
        let url = |route: Option<Route>| {
            hook.wire
                .url_for(&event, route.as_ref())
                .map(|u| u.to_string())
                .map_err(|e| e.kind())
        };
        assert_eq!(url(None).unwrap(), "http://127.0.0.1:9/in/");
        assert_eq!(
            url(Some(Route::template("{topic}/{event_type}"))).unwrap(),
            "http://127.0.0.1:9/in/orders/t"
        );
        assert_eq!(
            url(Some(Route::template("/events/{topic}"))).unwrap(),
            "http://127.0.0.1:9/events/orders"
        );
        assert_eq!(
            url(Some(Route::template("ftp://elsewhere/{topic}"))),
            Err(crate::FailureKind::Permanent)
        );
    }
}
