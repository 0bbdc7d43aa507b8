//! The webhook publisher against a real HTTP server (axum on 127.0.0.1:0)
//! that checks Standard Webhooks signatures on its own and answers with
//! scripted statuses: CloudEvents in both modes, field by field, and how
//! each answer is classified.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use outbox::brokers::{Route, Selection};
use outbox::http::{Mode, WebhookPublisher};
use outbox::{FailureKind, NewEvent, OutboxEvent, Uuid};
use outbox_tests::{Backend, Recorder, Recording, TestDb};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

/// The Standard Webhooks example secret.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "test.order", topic = "orders", key = order_id, version = 3)]
struct TestOrder {
    order_id: i64,
    note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "test.invoice", topic = "invoices")]
struct TestInvoice {
    invoice: String,
}

fn order(id: i64) -> TestOrder {
    TestOrder {
        order_id: id,
        note: format!("order {id}"),
    }
}

/// How the receiver answers one request.
#[derive(Clone, Debug)]
enum Reply {
    Status(u16),
    StatusBody(u16, &'static str),
    RetryAfter(u16, &'static str),
    Slow(Duration),
}

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
struct Request {
    at: Instant,
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    /// Whether the Standard Webhooks signature checked out.
    signed: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Clone, Default)]
struct Shared {
    requests: Arc<Mutex<Vec<Request>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
}

/// A webhook receiver on a free loopback port.
struct Receiver {
    addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(script: impl IntoIterator<Item = Reply>) -> Self {
        let shared = Shared::default();
        shared.script.lock().unwrap().extend(script);
        let app = Router::new().fallback(receive).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, shared, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let signed = verify(&headers, &body);
    shared.requests.lock().unwrap().push(Request {
        at: Instant::now(),
        method,
        path: uri.path().to_owned(),
        headers,
        body,
        signed,
    });
    let reply = shared
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Reply::Status(200));
    let status = |code| StatusCode::from_u16(code).unwrap();
    match reply {
        Reply::Status(code) => status(code).into_response(),
        Reply::StatusBody(code, body) => (status(code), body).into_response(),
        Reply::RetryAfter(code, after) => {
            (status(code), [("retry-after", after)], "slow down").into_response()
        }
        Reply::Slow(delay) => {
            tokio::time::sleep(delay).await;
            StatusCode::OK.into_response()
        }
    }
}

/// Standard Webhooks verification, written from the spec: the key is the
/// base64 after `whsec_`; the signed content is `{id}.{timestamp}.{body}`;
/// `webhook-signature` holds space-separated `v1,<base64>` entries; the
/// timestamp must be within five minutes of now.
fn verify(headers: &HeaderMap, body: &[u8]) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signatures)) = (
        get("webhook-id"),
        get("webhook-timestamp"),
        get("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(ts) = timestamp.parse::<i64>() else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if (now - ts).abs() > 300 {
        return false;
    }
    let key = BASE64
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut signed_content = format!("{id}.{timestamp}.").into_bytes();
    signed_content.extend_from_slice(body);
    signatures.split(' ').any(|entry| {
        let Some(encoded) = entry.strip_prefix("v1,") else {
            return false;
        };
        let Ok(expected) = BASE64.decode(encoded) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(&signed_content);
        mac.verify_slice(&expected).is_ok()
    })
}

async fn place(db: &TestDb, id: i64) -> Uuid {
    let mut tx = db.begin().await;
    let event_id = tx.enqueue(&order(id)).await;
    tx.commit().await;
    event_id
}

/// `YYYY-MM-DDTHH:MM:SS.fffZ` (or more fraction digits), UTC.
fn assert_rfc3339(time: &str) {
    let b = time.as_bytes();
    assert!(time.len() >= 24, "{time}");
    for (i, c) in b.iter().enumerate() {
        let want_digit = !matches!(i, 4 | 7 | 10 | 13 | 16 | 19) && i != b.len() - 1;
        assert_eq!(c.is_ascii_digit(), want_digit, "{time} at {i}");
    }
    assert_eq!(&time[4..5], "-");
    assert_eq!(&time[10..11], "T");
    assert_eq!(&time[19..20], ".");
    assert!(time.ends_with('Z'));
    let year: i32 = time[..4].parse().unwrap();
    assert!((2024..2200).contains(&year), "{time}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_mode_carries_every_attribute_and_a_valid_signature() {
    let receiver = Receiver::start([]).await;
    let db = TestDb::new(Backend::Sqlite, "http_structured").await;
    let event = NewEvent::from_event(&order(7))
        .unwrap()
        .header("traceparent", TRACEPARENT);
    let mut tx = db.begin().await;
    tx.enqueue_raw(std::slice::from_ref(&event)).await;
    tx.commit().await;

    let hook = WebhookPublisher::new(&receiver.url("/hooks/orders"))
        .unwrap()
        .source("/shop/orders")
        .signing_secret(SECRET)
        .unwrap();
    let report = db.drain_with(hook).await;
    assert_eq!(report.published, 1);

    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.path, "/hooks/orders");
    assert!(r.signed, "signature did not verify");
    assert_eq!(r.header("webhook-id"), Some(event.id.to_string()));
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/cloudevents+json; charset=utf-8")
    );
    assert_eq!(r.header("outbox-event-id"), Some(event.id.to_string()));
    assert_eq!(r.header("outbox-event-type").as_deref(), Some("test.order"));
    assert_eq!(r.header("outbox-schema-version").as_deref(), Some("3"));
    assert_eq!(r.header("outbox-partition-key").as_deref(), Some("7"));
    assert_eq!(r.header("traceparent").as_deref(), Some(TRACEPARENT));

    let ce = r.json();
    let object = ce.as_object().unwrap();
    assert_eq!(ce["specversion"], "1.0");
    assert_eq!(ce["id"], event.id.to_string());
    assert_eq!(ce["source"], "/shop/orders");
    assert_eq!(ce["type"], "test.order");
    assert_eq!(ce["subject"], "7");
    assert_rfc3339(ce["time"].as_str().unwrap());
    assert_eq!(ce["datacontenttype"], "application/json");
    assert_eq!(ce["data"], json!({"order_id": 7, "note": "order 7"}));
    assert_eq!(ce["schemaversion"], 3);
    assert_eq!(ce["partitionkey"], "7");
    assert_eq!(ce["traceparent"], TRACEPARENT);
    let mut names: Vec<&str> = object.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "data",
            "datacontenttype",
            "id",
            "partitionkey",
            "schemaversion",
            "source",
            "specversion",
            "subject",
            "time",
            "traceparent",
            "type"
        ]
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_sends_the_payload_and_ce_headers() {
    let receiver = Receiver::start([]).await;
    let db = TestDb::new(Backend::Sqlite, "http_binary").await;
    let payload = br#"{"order_id":8,"note":"caf\u00e9"}"#.to_vec();
    let event = NewEvent::new("test.raw", payload.clone())
        .topic("raw")
        .version(2)
        .partition_key("key é")
        .header("traceparent", TRACEPARENT);
    let mut tx = db.begin().await;
    tx.enqueue_raw(std::slice::from_ref(&event)).await;
    tx.commit().await;

    let hook = WebhookPublisher::new(&receiver.url("/in"))
        .unwrap()
        .mode(Mode::Binary)
        .signing_secret(SECRET)
        .unwrap();
    let report = db.drain_with(hook).await;
    assert_eq!(report.published, 1);

    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(
        r.body.as_ref(),
        payload.as_slice(),
        "the body is the payload"
    );
    assert!(r.signed, "signature did not verify");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(r.header("ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(r.header("ce-id"), Some(event.id.to_string()));
    assert_eq!(r.header("ce-source").as_deref(), Some("/outbox"));
    assert_eq!(r.header("ce-type").as_deref(), Some("test.raw"));
    assert_eq!(r.header("ce-subject").as_deref(), Some("key%20%C3%A9"));
    assert_eq!(r.header("ce-partitionkey").as_deref(), Some("key%20%C3%A9"));
    assert_eq!(r.header("ce-schemaversion").as_deref(), Some("2"));
    assert_eq!(r.header("ce-traceparent").as_deref(), Some(TRACEPARENT));
    assert_rfc3339(&r.header("ce-time").unwrap());
    assert_eq!(r.header("ce-datacontenttype"), None);
    assert_eq!(r.header("webhook-id"), Some(event.id.to_string()));
    assert_eq!(r.header("outbox-event-id"), Some(event.id.to_string()));
    assert_eq!(r.header("outbox-schema-version").as_deref(), Some("2"));
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_error_is_dead_lettered_after_one_attempt() {
    let receiver = Receiver::start([Reply::StatusBody(400, "order 1 is malformed")]).await;
    let db = TestDb::new(Backend::Sqlite, "http_400").await;
    let id = place(&db, 1).await;
    let hook = WebhookPublisher::new(&receiver.url("/in")).unwrap();
    let report = db
        .runner()
        .publisher(hook)
        .max_attempts(5)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.published, 0);
    assert_eq!(receiver.requests().len(), 1);
    let dead = db.source().dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event.id, id);
    assert_eq!(dead[0].publisher, "webhook");
    assert_eq!(dead[0].attempts, 1);
    assert!(dead[0].error.contains("400"), "{}", dead[0].error);
    assert!(
        dead[0].error.contains("order 1 is malformed"),
        "{}",
        dead[0].error
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_request_timeout_are_retried_then_delivered() {
    let receiver = Receiver::start([Reply::Status(503), Reply::Status(408)]).await;
    let db = TestDb::new(Backend::Sqlite, "http_503").await;
    let id = place(&db, 1).await;
    let hook = WebhookPublisher::new(&receiver.url("/in"))
        .unwrap()
        .signing_secret(SECRET)
        .unwrap();
    let report = db
        .runner()
        .publisher(hook)
        .max_attempts(5)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.published, 1);
    assert_eq!(report.retried, 2);
    assert!(db.source().dead_letters(10).await.unwrap().is_empty());
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3);
    for r in &requests {
        assert_eq!(
            r.header("webhook-id"),
            Some(id.to_string()),
            "same id on retries"
        );
        assert_eq!(r.json()["id"], id.to_string());
        assert!(r.signed);
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_honours_retry_after() {
    let receiver = Receiver::start([Reply::RetryAfter(429, "1")]).await;
    let db = TestDb::new(Backend::Sqlite, "http_429").await;
    place(&db, 1).await;
    let hook = WebhookPublisher::new(&receiver.url("/in")).unwrap();
    let report = db
        .runner()
        .publisher(hook)
        .max_attempts(5)
        // Retry-After is capped at the backoff maximum: let it reach 1 s.
        .backoff(Duration::from_millis(10), Duration::from_secs(5))
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.published, 1);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    let waited = requests[1].at - requests[0].at;
    // The first backoff here is 5-10 ms: only Retry-After explains a wait
    // of about a second.
    assert!(
        waited >= Duration::from_millis(900),
        "retried after {waited:?}, before Retry-After: 1"
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_receiver_times_out_as_transient() {
    let receiver = Receiver::start([Reply::Slow(Duration::from_secs(3))]).await;
    let db = TestDb::new(Backend::Sqlite, "http_slow").await;
    place(&db, 1).await;
    let hook = WebhookPublisher::new(&receiver.url("/in"))
        .unwrap()
        .timeout(Duration::from_millis(800));
    let hook = Recording::new(hook);
    let report = db
        .runner()
        .publisher(hook.clone())
        .max_attempts(5)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.published, 1);
    let outcomes = hook.outcomes();
    let (kind, message) = outcomes[0].error.clone().expect("the slow attempt failed");
    assert_eq!(kind, FailureKind::Transient);
    assert!(message.contains("did not answer"), "{message}");
    assert_eq!(
        outcomes.last().unwrap().error,
        None,
        "the last attempt succeeded"
    );
    assert_eq!(receiver.requests().len(), outcomes.len());
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap();
    drop(listener);
    let db = TestDb::new(Backend::Sqlite, "http_refused").await;
    place(&db, 1).await;
    let hook = WebhookPublisher::new(&format!("http://{closed}/in")).unwrap();
    let report = db
        .runner()
        .publisher(hook)
        .max_attempts(2)
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.published, 0);
    assert_eq!(report.retried, 1, "refused is transient");
    let dead = db.source().dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 2);
    assert!(
        dead[0].error.contains("cannot connect"),
        "{}",
        dead[0].error
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_and_selection_choose_url_and_events() {
    let receiver = Receiver::start([]).await;
    let db = TestDb::new(Backend::Sqlite, "http_route").await;
    let id = place(&db, 1).await;
    let mut tx = db.begin().await;
    tx.enqueue(&TestInvoice {
        invoice: "inv-1".into(),
    })
    .await;
    tx.commit().await;

    let hook = WebhookPublisher::new(&receiver.url("/hooks/"))
        .unwrap()
        .named("order_hook")
        .select(Selection::only(["test.order"]))
        .route(Route::template("{topic}/{event_type}"));
    let invoices = Recorder::new("invoices", &["test.invoice"]);
    let report = db
        .runner()
        .publisher(hook)
        .publisher(invoices.clone())
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.published, 2);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/hooks/orders/test.order");
    assert_eq!(requests[0].json()["id"], id.to_string());
    assert_eq!(invoices.calls().len(), 1);
    db.cleanup().await;
}

/// Collects what a tracing subscriber writes.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// One thread: the subscriber set below is the thread's default, so every
// task of the Runner logs into the buffer.
#[tokio::test(flavor = "current_thread")]
async fn credentials_in_the_url_reach_no_log_dead_letter_debug_or_error() {
    use tracing_subscriber::util::SubscriberInitExt;
    const PASSWORD: &str = "s3cret";
    const TOKEN: &str = "t0ken";
    const API_KEY: &str = "k3y-in-a-header";
    let basic = BASE64.encode(format!("user:{PASSWORD}"));
    let key = SECRET.strip_prefix("whsec_").unwrap();
    let hidden = [PASSWORD, TOKEN, API_KEY, basic.as_str(), key];
    let assert_clean = |what: &str, text: &str| {
        for secret in hidden {
            assert!(!text.contains(secret), "{secret:?} in the {what}: {text}");
        }
    };

    let err = WebhookPublisher::new(&format!(
        "http://user:{PASSWORD}@127.0.0.1:port/hook?token={TOKEN}"
    ))
    .unwrap_err();
    assert_clean("build error", &format!("{err} {err:?}"));

    let failing = Receiver::start(vec![Reply::Status(500); 10]).await;
    let ok = Receiver::start([]).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap();
    drop(listener);
    let hook = |name: &str, addr: SocketAddr| {
        WebhookPublisher::new(&format!("http://user:{PASSWORD}@{addr}/hook?token={TOKEN}"))
            .unwrap()
            .named(name)
            .signing_secret(SECRET)
            .unwrap()
            .header("x-api-key", API_KEY)
            .unwrap()
            .timeout(Duration::from_secs(2))
    };
    let publishers = [
        hook("answers_500", failing.addr),
        hook("refuses", closed),
        hook("delivers", ok.addr),
    ];
    for publisher in &publishers {
        let debug = format!("{publisher:?}");
        assert_clean("Debug", &debug);
        assert!(debug.contains("/hook?token=***"), "{debug}");
    }

    let db = TestDb::new(Backend::Sqlite, "http_redacted").await;
    place(&db, 1).await;
    // While it is the only Dispatch in the process, a callsite that another
    // test's thread reaches first caches "never" and the capture below
    // misses it (tokio-rs/tracing#3611); a second one avoids that path.
    let _pin = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let buffer = LogBuffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let report = {
        let _guard = subscriber.set_default();
        let [answers_500, refuses, delivers] = publishers;
        db.runner()
            .publisher(answers_500)
            .publisher(refuses)
            .publisher(delivers)
            .max_attempts(2)
            .build()
            .unwrap()
            .drain()
            .await
            .unwrap()
    };
    assert_eq!(report.published, 1, "{report:?}");

    // The credentials did travel, as headers.
    let request = &ok.requests()[0];
    assert_eq!(
        request.header("authorization"),
        Some(format!("Basic {basic}"))
    );
    assert_eq!(request.header("x-api-key").as_deref(), Some(API_KEY));
    assert!(request.signed);
    assert_eq!(failing.requests().len(), 2);

    let dead = db.source().dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    for letter in &dead {
        assert_clean("dead letter", &letter.error);
        assert!(letter.error.contains("/hook?token=***"), "{}", letter.error);
    }
    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert_clean("logs", &logs);
    for expected in ["answered 500", "cannot connect", "webhook delivered"] {
        assert!(
            logs.contains(expected),
            "no {expected:?} in the logs: {logs}"
        );
    }
    assert!(logs.contains("http://***@127.0.0.1:"), "{logs}");
    db.cleanup().await;
}
