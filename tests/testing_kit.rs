//! Testing publishers with `outbox::testing`, the way an application would:
//! public items only, no database, paused time. The first test is the
//! README's "Testing your publishers" example, word for word.

use std::sync::Mutex;
use std::time::Duration;

use outbox::testing::{CallResult, Fault, TestOutbox, delivery, registered};
use outbox::{KeyPolicy, OutboxEvent, PublishError, State, publisher};
use serde::{Deserialize, Serialize};

// README example: start
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "order.placed", topic = "orders", key = order_id)]
pub struct OrderPlaced {
    pub order_id: i64,
    pub total_cents: i64,
}

/// The application's billing client; here, one that records what it was sent.
#[derive(Default)]
pub struct Billing {
    invoiced: Mutex<Vec<i64>>,
}

#[publisher]
async fn notify_billing(event: OrderPlaced, billing: State<Billing>) -> Result<(), PublishError> {
    if event.total_cents < 0 {
        return Err(PublishError::permanent(
            "a negative total is never billable",
        ));
    }
    billing.invoiced.lock().unwrap().push(event.order_id);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn billing_retries_transient_failures_then_gives_up() {
    let billing = std::sync::Arc::new(Billing::default());
    let outbox = TestOutbox::builder()
        .state_arc(billing.clone())
        .runner(|r| {
            r.max_attempts(4)
                .backoff(Duration::from_secs(1), Duration::from_secs(60))
        })
        .build()
        .unwrap();

    // Three transient failures, then the real publisher: delivered on the 4th attempt.
    outbox
        .enqueue(&OrderPlaced {
            order_id: 1,
            total_cents: 1299,
        })
        .unwrap();
    outbox.fail_next("notify_billing", 3);
    outbox.drain().await.unwrap();
    let attempts: Vec<u32> = outbox
        .calls_to("notify_billing")
        .iter()
        .map(|c| c.attempt)
        .collect();
    assert_eq!(attempts, [1, 2, 3, 4]);
    assert_eq!(*billing.invoiced.lock().unwrap(), [1]);

    // Four: max_attempts is used up, the delivery is dead-lettered.
    outbox.clear_calls();
    outbox
        .enqueue(&OrderPlaced {
            order_id: 2,
            total_cents: 500,
        })
        .unwrap();
    outbox.inject("notify_billing", 4, Fault::Transient);
    outbox.drain().await.unwrap();
    assert_eq!(outbox.calls_to("notify_billing").len(), 4);
    let dead = outbox.dead_letters();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].error.contains("gave up after 4 attempts"),
        "{}",
        dead[0].error
    );

    // A permanent error is not retried.
    outbox.clear_calls();
    outbox
        .enqueue(&OrderPlaced {
            order_id: 3,
            total_cents: -1,
        })
        .unwrap();
    outbox.drain().await.unwrap();
    assert_eq!(outbox.calls_to("notify_billing").len(), 1);
    assert_eq!(outbox.dead_letters().len(), 2);
}
// README example: end

#[tokio::test(start_paused = true)]
async fn backoffs_follow_the_runner_settings_and_take_no_real_time() {
    let started = std::time::Instant::now();
    let outbox = TestOutbox::builder()
        .state(Billing::default())
        .runner(|r| {
            r.max_attempts(6)
                .backoff(Duration::from_secs(60), Duration::from_secs(600))
        })
        .build()
        .unwrap();
    outbox
        .enqueue(&OrderPlaced {
            order_id: 1,
            total_cents: 1,
        })
        .unwrap();
    outbox.fail_next("notify_billing", 5);
    outbox.drain().await.unwrap();
    let calls = outbox.calls_to("notify_billing");
    assert_eq!(calls.len(), 6);
    assert!(calls.last().unwrap().delivered());
    // Each retry waits at least half its backoff (60 s doubling, with
    // jitter), at most all of it, capped at 600 s: on the outbox's clock.
    for (n, pair) in calls.windows(2).enumerate() {
        let waited = pair[1].at.duration_since(pair[0].at).unwrap();
        let full = (Duration::from_secs(60) * (1 << n)).min(Duration::from_secs(600));
        assert!(
            waited >= full / 2 && waited <= full + Duration::from_secs(1),
            "retry {} waited {waited:?}; its backoff is {full:?}",
            n + 1
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a drain with 15 minutes of backoff took {:?} of real time",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn panics_and_hangs_are_failed_attempts() {
    let outbox = TestOutbox::builder()
        .state(Billing::default())
        .runner(|r| {
            r.max_attempts(3)
                .publish_timeout(Duration::from_secs(10))
                .backoff(Duration::from_millis(100), Duration::from_secs(1))
        })
        .build()
        .unwrap();
    outbox
        .enqueue(&OrderPlaced {
            order_id: 1,
            total_cents: 1,
        })
        .unwrap();
    outbox.inject("notify_billing", 1, Fault::Panic);
    outbox.inject("notify_billing", 1, Fault::Hang);
    let report = outbox.drain().await.unwrap();
    assert_eq!((report.published, report.retried), (1, 2));
    let results: Vec<CallResult> = outbox
        .calls_to("notify_billing")
        .into_iter()
        .map(|c| c.result)
        .collect();
    assert!(
        matches!(&results[0], CallResult::Panicked(m) if m.contains("injected panic")),
        "{results:?}"
    );
    assert_eq!(results[1], CallResult::Unfinished);
    assert_eq!(results[2], CallResult::Delivered);
    let hung = &outbox.calls_to("notify_billing")[1..];
    let waited = hung[1].at.duration_since(hung[0].at).unwrap();
    assert!(
        waited >= Duration::from_secs(10),
        "the hang was cut at {waited:?}, before the publish timeout"
    );
}

/// A key whose head is dead-lettered under `KeyPolicy::Block` stops until
/// an operator retries the dead letter; then its events go on, in order.
#[tokio::test(start_paused = true)]
async fn a_blocked_key_waits_for_its_dead_letter_to_be_retried() {
    let outbox = TestOutbox::builder()
        .state(Billing::default())
        .runner(|r| r.key_policy(KeyPolicy::Block))
        .build()
        .unwrap();
    for total_cents in [1, 2, 3] {
        outbox
            .enqueue(&OrderPlaced {
                order_id: 9,
                total_cents,
            })
            .unwrap();
    }
    outbox.inject("notify_billing", 1, Fault::Permanent);
    outbox.drain().await.unwrap();
    assert!(outbox.received::<OrderPlaced>("notify_billing").is_empty());
    assert_eq!(outbox.outbox().events().len(), 3, "the key's events waited");
    assert_eq!(outbox.outbox().events()[0].due, None, "the head is parked");

    let source = outbox.outbox().source();
    assert_eq!(source.retry_dead_letters(None).await.unwrap(), 1);
    outbox.drain().await.unwrap();
    let totals: Vec<i64> = outbox
        .received::<OrderPlaced>("notify_billing")
        .iter()
        .map(|o| o.total_cents)
        .collect();
    assert_eq!(totals, [1, 2, 3]);
}

/// What a publisher receives, built in one line: a `#[publisher]` fn called
/// directly, and through its registration (payload decoding included).
#[tokio::test]
async fn a_publisher_is_called_with_a_delivery_built_in_one_line() {
    let billing = std::sync::Arc::new(Billing::default());
    let event = OrderPlaced {
        order_id: 4,
        total_cents: 10,
    };
    notify_billing(event.clone(), State(billing.clone()))
        .await
        .unwrap();

    let registered = registered("notify_billing").expect("registered by #[publisher]");
    let third = delivery(&event).attempt(3).state_arc(billing.clone());
    assert_eq!(third.context().attempt(), 3);
    assert_eq!(third.event().partition_key.as_deref(), Some("4"));
    third.publish(&*registered).await.unwrap();
    assert_eq!(*billing.invoiced.lock().unwrap(), [4, 4]);

    let refused = delivery(&OrderPlaced {
        order_id: 5,
        total_cents: -1,
    })
    .state_arc(billing.clone());
    assert!(
        refused
            .publish(&*registered)
            .await
            .unwrap_err()
            .is_permanent()
    );
    let without_state = delivery(&event).publish(&*registered).await.unwrap_err();
    assert!(
        without_state.to_string().contains("no state of type"),
        "{without_state}"
    );
}

#[test]
fn an_injected_fault_names_a_publisher_it_has() {
    let outbox = TestOutbox::builder()
        .state(Billing::default())
        .build()
        .unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        outbox.fail_next("notify_bilING", 1)
    }))
    .unwrap_err();
    let message = caught.downcast_ref::<String>().unwrap();
    assert!(message.contains("[\"notify_billing\"]"), "{message}");
}

#[test]
fn a_missing_state_is_refused_at_build() {
    let err = TestOutbox::builder().build().unwrap_err();
    assert!(matches!(err, outbox::Error::MissingState { .. }), "{err}");
}

/// The README shows the example above as it is here.
#[test]
fn the_readme_shows_this_example() {
    let this = include_str!("testing_kit.rs");
    let start = "// README example: start\n";
    let from = this.find(start).unwrap() + start.len();
    let to = this.find("// README example: end").unwrap();
    let example = this[from..to].trim_end();
    let readme = include_str!("../README.md");
    assert!(
        readme.contains(&format!("```rust\n{example}\n```")),
        "README.md's \"Testing your publishers\" example differs from tests/testing_kit.rs: \
         copy it over"
    );
}
