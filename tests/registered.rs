//! Publishers registered with `#[publisher]` through inventory: wiring,
//! state, context, startup errors, and what a Runner logs about them.

use std::sync::Mutex;

use outbox::{Context, Error, OutboxEvent, State, publisher, publisher_fn};
use outbox_tests::{Backend, Recorder, TestDb};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "reg.order", topic = "orders", key = order_id)]
struct RegOrder {
    order_id: i64,
}

/// An event type that no publisher takes: the Runner warns about it.
#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "reg.orphan")]
struct Orphan {
    n: u32,
}

#[derive(Default)]
struct Seen {
    lines: Mutex<Vec<String>>,
}

#[publisher]
async fn record_order(event: RegOrder, seen: State<Seen>) -> anyhow::Result<()> {
    seen.lines
        .lock()
        .unwrap()
        .push(format!("order {}", event.order_id));
    Ok(())
}

#[publisher(name = "with_id")]
async fn record_id(event: RegOrder, cx: Context) -> anyhow::Result<()> {
    let seen = cx
        .state::<Seen>()
        .expect("state is reachable from the context");
    seen.lines.lock().unwrap().push(format!(
        "id {} for {} on attempt {}",
        cx.id(),
        event.order_id,
        cx.attempt()
    ));
    Ok(())
}

#[test]
fn the_registry_lists_both_publishers_and_event_types() {
    let publishers: Vec<_> = outbox::registered_publishers()
        .map(|p| (p.name, p.event_type))
        .collect();
    assert!(publishers.contains(&("record_order", "reg.order")));
    assert!(publishers.contains(&("with_id", "reg.order")));
    let types: Vec<_> = outbox::registered_event_types().map(|t| t.name).collect();
    assert!(types.contains(&"reg.order") && types.contains(&"reg.orphan"));
    let orphan = outbox::registered_event_types()
        .find(|t| t.name == "reg.orphan")
        .unwrap();
    assert_eq!(orphan.rust_type, "Orphan");
    assert_eq!(orphan.topic, "reg.orphan");
    let _ = Orphan { n: 1 };
}

fn registered(db: &TestDb) -> outbox::RunnerBuilder {
    let TestDb::Sqlite { pool, .. } = db else {
        unreachable!()
    };
    outbox::Runner::builder(pool.clone())
        .tables(db.tables())
        .poll_interval(std::time::Duration::from_millis(20))
        .shutdown(std::future::pending())
}

#[tokio::test]
async fn a_missing_state_is_refused_at_build_naming_publisher_and_type() {
    let db = TestDb::new(Backend::Sqlite, "missing_state").await;
    let err = registered(&db)
        .build()
        .err()
        .expect("build must fail without the state");
    match &err {
        Error::MissingState { publisher, state } => {
            assert_eq!(publisher, "record_order");
            assert!(state.ends_with("Seen"), "{state}");
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(err.to_string().contains("call `.state(value)`"), "{err}");
    db.cleanup().await;
}

#[tokio::test]
async fn a_duplicate_publisher_name_is_refused_at_build() {
    let db = TestDb::new(Backend::Sqlite, "duplicate_name").await;
    let twin =
        publisher_fn::<RegOrder, _, _>("with_id", |_, _| async { Ok::<(), std::io::Error>(()) });
    let err = registered(&db)
        .state(Seen::default())
        .publisher(twin)
        .build()
        .err()
        .expect("build must fail on a duplicate name");
    assert!(
        matches!(&err, Error::DuplicatePublisher { name, .. } if name == "with_id"),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("reg.order") && text.contains("given to the builder"),
        "{text}"
    );
    db.cleanup().await;
}

#[tokio::test]
async fn registered_publishers_receive_events_with_state_and_context() {
    let db = TestDb::new(Backend::Sqlite, "registered").await;
    let mut tx = db.begin().await;
    let id = tx.enqueue(&RegOrder { order_id: 5 }).await;
    tx.commit().await;

    let seen = std::sync::Arc::new(Seen::default());
    let report = registered(&db)
        .state_arc(seen.clone())
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(report.published, 2);
    let mut lines = seen.lines.lock().unwrap().clone();
    lines.sort();
    assert_eq!(
        lines,
        vec![format!("id {id} for 5 on attempt 1"), "order 5".to_owned()]
    );
    db.cleanup().await;
}

#[tokio::test]
async fn settings_out_of_range_are_refused() {
    let db = TestDb::new(Backend::Sqlite, "settings").await;
    let err = db.runner().batch_size(0).build().err().unwrap();
    assert!(err.to_string().contains("batch_size"), "{err}");
    let err = db.runner().batch_bytes(0).build().err().unwrap();
    assert!(err.to_string().contains("batch_bytes"), "{err}");
    let err = db
        .runner()
        .lease(std::time::Duration::from_secs(1))
        .publish_timeout(std::time::Duration::from_secs(5))
        .build()
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("longer than publish_timeout"),
        "{err}"
    );

    // Durations that no database can add to a timestamp.
    let err = db
        .runner()
        .lease(std::time::Duration::MAX)
        .build()
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("invalid Runner setting `lease`"),
        "{err}"
    );
    let err = db
        .runner()
        .backoff(
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(1),
        )
        .build()
        .err()
        .unwrap();
    assert!(err.to_string().contains("backoff"), "{err}");

    // A name no dead-letter table can store (MySQL's column is 255 long).
    for name in ["p".repeat(256), "nul\0name".to_owned(), String::new()] {
        let err = db
            .runner()
            .publisher(Recorder::new(&name, &["reg.order"]))
            .build()
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("invalid Runner setting `publisher`"),
            "{err}"
        );
    }
    db.cleanup().await;
}

#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn startup_logs_every_pair_and_warns_about_an_event_without_publisher() {
    use tracing_subscriber::util::SubscriberInitExt;
    let db = TestDb::new(Backend::Sqlite, "startup_log").await;
    let buffer = LogBuffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    {
        let _guard = subscriber.set_default();
        registered(&db).state(Seen::default()).build().unwrap();
    }
    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let wired = |publisher: &str| {
        logs.lines().any(|l| {
            l.contains("INFO")
                && l.contains("wired")
                && l.contains("event=\"reg.order\"")
                && l.contains(&format!("publisher=\"{publisher}\""))
        })
    };
    assert!(wired("record_order") && wired("with_id"), "{logs}");
    assert!(
        logs.lines().any(|l| l.contains("WARN")
            && l.contains("has no publisher")
            && l.contains("reg.orphan")),
        "{logs}"
    );
    db.cleanup().await;
}
