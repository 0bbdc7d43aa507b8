//! The delivery decision: from what each publisher did with one claimed
//! event, what becomes of it. The whole retry, dead-letter and key policy
//! lives here, as a pure function with no I/O and no clock, so that every
//! rule has a unit test below.

use std::time::Duration;

use crate::delivery::{ClaimedEvent, Failure, Outcome, Settlement};
use crate::error::PublishError;
use crate::event::StorageBox;
use crate::registry::Producer;
use crate::runner::KeyPolicy;
use crate::text::storable_error;

/// The settings the decision depends on.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) max_attempts: u32,
    pub(crate) key_policy: KeyPolicy,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
}

/// The longest an event waits for a publisher that is not in this Runner
/// before it is offered again (or [`Policy::backoff_max`] when shorter).
const HOLD_MAX: Duration = Duration::from_secs(30);

impl Policy {
    /// How long an event owed to absent publishers waits before it is
    /// offered again.
    pub(crate) fn hold_delay(&self) -> Duration {
        self.backoff_max.min(HOLD_MAX)
    }
}

/// Publishers the event is owed to that this Runner does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Absent {
    /// Every publisher the event is owed to is in this Runner.
    Nobody,
    /// No publisher in this Runner accepts the event's type.
    AnyPublisher,
    /// A retried dead letter is owed to these publishers, which this Runner
    /// does not have (renamed, removed, or deployed on another Runner).
    Named(Vec<String>),
}

/// What the Runner tells the log and its counters about one decision.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Deliveries that succeeded in this attempt.
    pub(crate) published: u64,
    /// Deliveries that failed and will be retried.
    pub(crate) retried: u64,
}

/// Decide what becomes of `claimed` after this attempt's `results` (one per
/// publisher called, in any order). `jitter` in `[0, 1)` spreads retries.
pub(crate) fn decide(
    claimed: &ClaimedEvent,
    results: Vec<(String, Result<(), PublishError>)>,
    absent: &Absent,
    policy: &Policy,
    jitter: f64,
) -> (Settlement, Tally) {
    let event = &claimed.event;
    let mut delivered = claimed.delivered.clone();
    let mut dead_letters = Vec::new();
    let mut transient = Vec::new();
    let mut tally = Tally::default();
    for (publisher, result) in results {
        match result {
            Ok(()) => {
                tally.published += 1;
                delivered.push(publisher);
            }
            Err(e) if e.is_permanent() => dead_letters.push(Failure {
                publisher,
                error: storable_error(&e.to_string()),
            }),
            Err(e) => transient.push((publisher, e)),
        }
    }

    let exhausted = event.attempt >= policy.max_attempts;
    let mut outcome = None;
    if !transient.is_empty() {
        if exhausted {
            for (publisher, e) in transient {
                dead_letters.push(Failure {
                    publisher,
                    error: storable_error(&format!(
                        "gave up after {} attempts: {e}",
                        event.attempt
                    )),
                });
            }
        } else {
            // A publisher may ask for a later retry (HTTP `Retry-After`), but
            // never for longer than the backoff's maximum: an answer from
            // outside must not park an event and its key for a year.
            let requested = transient
                .iter()
                .filter_map(|(_, e)| e.requested_delay())
                .max()
                .unwrap_or_default()
                .min(policy.backoff_max);
            let delay = backoff(
                event.attempt,
                policy.backoff_initial,
                policy.backoff_max,
                jitter,
            )
            .max(requested);
            let mut error = transient
                .iter()
                .map(|(name, e)| format!("{name}: {e}"))
                .collect::<Vec<_>>();
            if let Some(reason) = absent_reason(absent, &event.event_type) {
                error.push(reason);
            }
            tally.retried = transient.len() as u64;
            outcome = Some(Outcome::Retry {
                delay,
                error: storable_error(&error.join("; ")),
            });
        }
    }

    let mut settlement =
        Settlement::new(claimed.event.id, Outcome::Finish).with_delivered(delivered);
    settlement.dead = claimed.dead.clone();
    settlement = settlement.with_dead_letters(dead_letters);

    settlement.outcome = match outcome {
        Some(retry) => retry,
        None => match absent_reason(absent, &event.event_type) {
            Some(reason) => Outcome::Hold {
                delay: policy.hold_delay(),
                reason: storable_error(&reason),
            },
            None if policy.key_policy == KeyPolicy::Block
                && event.partition_key.is_some()
                && !settlement.dead.is_empty() =>
            {
                Outcome::Park {
                    error: storable_error(
                        &settlement
                            .dead_letters
                            .iter()
                            .map(|f| format!("{}: {}", f.publisher, f.error))
                            .collect::<Vec<_>>()
                            .join("; "),
                    ),
                }
            }
            None => Outcome::Finish,
        },
    };
    (settlement, tally)
}

fn absent_reason(absent: &Absent, event_type: &str) -> Option<String> {
    match absent {
        Absent::Nobody => None,
        Absent::AnyPublisher => Some(format!(
            "no publisher for event type `{event_type}` is registered in this Runner"
        )),
        Absent::Named(names) => Some(format!(
            "publisher(s) {} owed this event are not registered in this Runner",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The Producers `claimed` is still owed to in this Runner, and who else it
/// is owed to that this Runner does not have. A retried dead letter is owed
/// only to the publishers it names; any other event to every Producer of its
/// type. Publishers that are finished with it are never called again.
pub(crate) fn route<'p>(
    claimed: &ClaimedEvent,
    producers: &'p [Producer],
) -> (Vec<&'p Producer>, Absent) {
    let owed = |name: &str| {
        claimed
            .only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o == name))
    };
    let targets = producers
        .iter()
        .filter(|p| owed(p.name()) && !claimed.is_finished_for(p.name()))
        .collect();
    let absent = match &claimed.only {
        Some(only) => {
            let missing: Vec<String> = only
                .iter()
                .filter(|o| {
                    !claimed.is_finished_for(o) && !producers.iter().any(|p| p.name() == o.as_str())
                })
                .cloned()
                .collect();
            if missing.is_empty() {
                Absent::Nobody
            } else {
                Absent::Named(missing)
            }
        }
        None if producers.is_empty() => Absent::AnyPublisher,
        None => Absent::Nobody,
    };
    (targets, absent)
}

/// Claims beyond `max_attempts` that an event may still get. A recorded
/// outcome never lets an event past `max_attempts` (it is dead-lettered
/// there, and a hold does not count), so an event claimed this often has
/// had its outcomes lost: the database refused to record them, or Runners
/// died or lost their leases mid-publish again and again.
const LOST_OUTCOMES_GRACE: u32 = 3;

/// Whether `event` was claimed so often beyond `max_attempts` that its
/// earlier outcomes must have been lost; then the reason to dead-letter what
/// is still owed instead of publishing again, so that no fault loops an
/// event (and its siblings' publishers) forever.
pub(crate) fn outcomes_lost(event: &StorageBox, policy: &Policy) -> Option<String> {
    (event.attempt > policy.max_attempts.saturating_add(LOST_OUTCOMES_GRACE)).then(|| {
        format!(
            "gave up after {} claims: the outcomes of earlier attempts were not recorded (max_attempts is {})",
            event.attempt, policy.max_attempts
        )
    })
}

/// Exponential backoff with jitter: `initial * 2^(attempt-1)`, capped at
/// `max`, then a value between half of it and all of it (`jitter` in
/// `[0, 1)` picks where).
pub(crate) fn backoff(attempt: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(31);
    let full = initial.saturating_mul(1u32 << exp).min(max);
    let half = full / 2;
    half + full.saturating_sub(half).mul_f64(jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn policy(key_policy: KeyPolicy) -> Policy {
        Policy {
            max_attempts: 3,
            key_policy,
            backoff_initial: SEC,
            backoff_max: Duration::from_secs(60),
        }
    }

    fn claimed(attempt: u32, key: Option<&str>) -> ClaimedEvent {
        let mut event = StorageBox::new("order.placed", b"{}".to_vec());
        event.attempt = attempt;
        event.partition_key = key.map(str::to_owned);
        ClaimedEvent::new(event)
    }

    fn ok(name: &str) -> (String, Result<(), PublishError>) {
        (name.to_owned(), Ok(()))
    }
    fn transient(name: &str) -> (String, Result<(), PublishError>) {
        (name.to_owned(), Err(PublishError::transient("down")))
    }
    fn permanent(name: &str) -> (String, Result<(), PublishError>) {
        (name.to_owned(), Err(PublishError::permanent("rejected")))
    }
    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    /// One row of the decision table.
    struct Case {
        what: &'static str,
        attempt: u32,
        key_policy: KeyPolicy,
        earlier_dead: &'static [&'static str],
        results: Vec<(String, Result<(), PublishError>)>,
        absent: Absent,
        outcome: &'static str,
        delivered: &'static [&'static str],
        dead_now: &'static [&'static str],
    }

    fn kind(outcome: &Outcome) -> &'static str {
        match outcome {
            Outcome::Finish => "finish",
            Outcome::Retry { .. } => "retry",
            Outcome::Hold { .. } => "hold",
            Outcome::Park { .. } => "park",
        }
    }

    #[test]
    fn the_decision_table() {
        use KeyPolicy::{Block, Skip};
        let cases = vec![
            Case {
                what: "all succeed",
                attempt: 1,
                key_policy: Skip,
                earlier_dead: &[],
                results: vec![ok("a"), ok("b")],
                absent: Absent::Nobody,
                outcome: "finish",
                delivered: &["a", "b"],
                dead_now: &[],
            },
            Case {
                what: "one transient, retried",
                attempt: 1,
                key_policy: Skip,
                earlier_dead: &[],
                results: vec![ok("a"), transient("b")],
                absent: Absent::Nobody,
                outcome: "retry",
                delivered: &["a"],
                dead_now: &[],
            },
            Case {
                what: "transient on the last attempt is dead-lettered",
                attempt: 3,
                key_policy: Skip,
                earlier_dead: &[],
                results: vec![ok("a"), transient("b")],
                absent: Absent::Nobody,
                outcome: "finish",
                delivered: &["a"],
                dead_now: &["b"],
            },
            Case {
                what: "permanent is dead-lettered at once",
                attempt: 1,
                key_policy: Skip,
                earlier_dead: &[],
                results: vec![permanent("a"), ok("b")],
                absent: Absent::Nobody,
                outcome: "finish",
                delivered: &["b"],
                dead_now: &["a"],
            },
            Case {
                what: "permanent beside a transient: dead letter now, retry the other",
                attempt: 1,
                key_policy: Skip,
                earlier_dead: &[],
                results: vec![permanent("a"), transient("b")],
                absent: Absent::Nobody,
                outcome: "retry",
                delivered: &[],
                dead_now: &["a"],
            },
            Case {
                what: "block: a dead letter on a keyed event parks it",
                attempt: 1,
                key_policy: Block,
                earlier_dead: &[],
                results: vec![permanent("a")],
                absent: Absent::Nobody,
                outcome: "park",
                delivered: &[],
                dead_now: &["a"],
            },
            Case {
                what: "block: an earlier dead letter parks it once the rest finish",
                attempt: 2,
                key_policy: Block,
                earlier_dead: &["a"],
                results: vec![ok("b")],
                absent: Absent::Nobody,
                outcome: "park",
                delivered: &["b"],
                dead_now: &[],
            },
            Case {
                what: "block: still retrying another publisher, not parked yet",
                attempt: 1,
                key_policy: Block,
                earlier_dead: &[],
                results: vec![permanent("a"), transient("b")],
                absent: Absent::Nobody,
                outcome: "retry",
                delivered: &[],
                dead_now: &["a"],
            },
            Case {
                what: "no publisher in this Runner: held, not finished",
                attempt: 1,
                key_policy: Skip,
                earlier_dead: &[],
                results: vec![],
                absent: Absent::AnyPublisher,
                outcome: "hold",
                delivered: &[],
                dead_now: &[],
            },
            Case {
                what: "no publisher, even past max attempts: held, never dead-lettered",
                attempt: 9,
                key_policy: Skip,
                earlier_dead: &[],
                results: vec![],
                absent: Absent::AnyPublisher,
                outcome: "hold",
                delivered: &[],
                dead_now: &[],
            },
            Case {
                what: "retried dead letter owed to an absent publisher: held",
                attempt: 1,
                key_policy: Skip,
                earlier_dead: &[],
                results: vec![ok("a")],
                absent: Absent::Named(names(&["gone"])),
                outcome: "hold",
                delivered: &["a"],
                dead_now: &[],
            },
            Case {
                what: "absent publisher beside a transient failure: retry covers both",
                attempt: 1,
                key_policy: Skip,
                earlier_dead: &[],
                results: vec![transient("a")],
                absent: Absent::Named(names(&["gone"])),
                outcome: "retry",
                delivered: &[],
                dead_now: &[],
            },
        ];
        for case in cases {
            let mut c = claimed(case.attempt, Some("k"));
            c.dead = names(case.earlier_dead);
            let (s, _) = decide(
                &c,
                case.results,
                &case.absent,
                &policy(case.key_policy),
                0.5,
            );
            assert_eq!(kind(&s.outcome), case.outcome, "{}", case.what);
            assert_eq!(s.delivered, names(case.delivered), "{}", case.what);
            let dead_now: Vec<&str> = s
                .dead_letters
                .iter()
                .map(|f| f.publisher.as_str())
                .collect();
            assert_eq!(dead_now, case.dead_now, "{}", case.what);
            for p in case.earlier_dead.iter().chain(case.dead_now) {
                assert!(
                    s.dead.iter().any(|d| d == p),
                    "{}: {p} not in dead",
                    case.what
                );
            }
        }
    }

    #[test]
    fn a_keyless_event_is_never_parked() {
        let c = claimed(1, None);
        let (s, _) = decide(
            &c,
            vec![permanent("a")],
            &Absent::Nobody,
            &policy(KeyPolicy::Block),
            0.5,
        );
        assert_eq!(s.outcome, Outcome::Finish);
    }

    #[test]
    fn a_requested_retry_delay_is_capped_at_the_backoff_maximum() {
        let c = claimed(1, Some("k"));
        let year = Duration::from_secs(365 * 24 * 3600);
        let results = vec![(
            "a".to_owned(),
            Err(PublishError::transient("429").retry_after(year)),
        )];
        let (s, _) = decide(&c, results, &Absent::Nobody, &policy(KeyPolicy::Skip), 0.5);
        assert_eq!(
            s.outcome,
            Outcome::Retry {
                delay: Duration::from_secs(60),
                error: "a: 429".to_owned()
            }
        );
        let results = vec![(
            "a".to_owned(),
            Err(PublishError::transient("429").retry_after(5 * SEC)),
        )];
        let (s, _) = decide(&c, results, &Absent::Nobody, &policy(KeyPolicy::Skip), 0.5);
        assert!(matches!(s.outcome, Outcome::Retry { delay, .. } if delay == 5 * SEC));
    }

    #[test]
    fn exhausted_errors_say_how_many_attempts() {
        let c = claimed(3, None);
        let (s, t) = decide(
            &c,
            vec![transient("a")],
            &Absent::Nobody,
            &policy(KeyPolicy::Skip),
            0.5,
        );
        assert_eq!(s.dead_letters[0].error, "gave up after 3 attempts: down");
        assert_eq!(
            t,
            Tally {
                published: 0,
                retried: 0
            }
        );
    }

    #[test]
    fn the_hold_reason_names_what_is_missing() {
        let c = claimed(1, None);
        let (s, _) = decide(
            &c,
            vec![],
            &Absent::AnyPublisher,
            &policy(KeyPolicy::Skip),
            0.5,
        );
        let Outcome::Hold { delay, reason } = s.outcome else {
            panic!()
        };
        assert_eq!(delay, Duration::from_secs(30));
        assert!(
            reason.contains("no publisher for event type `order.placed`"),
            "{reason}"
        );
        let (s, _) = decide(
            &c,
            vec![],
            &Absent::Named(names(&["audit"])),
            &policy(KeyPolicy::Skip),
            0.5,
        );
        assert!(
            matches!(s.outcome, Outcome::Hold { ref reason, .. } if reason.contains("`audit`"))
        );
    }

    #[test]
    fn error_texts_are_storable() {
        let c = claimed(1, None);
        let results = vec![("a".to_owned(), Err(PublishError::permanent("bad\0byte")))];
        let (s, _) = decide(&c, results, &Absent::Nobody, &policy(KeyPolicy::Skip), 0.5);
        assert_eq!(s.dead_letters[0].error, "bad\\0byte");
        let huge = "e".repeat(1 << 20);
        let results = vec![("a".to_owned(), Err(PublishError::transient(huge)))];
        let (s, _) = decide(&c, results, &Absent::Nobody, &policy(KeyPolicy::Skip), 0.5);
        let Outcome::Retry { error, .. } = s.outcome else {
            panic!()
        };
        assert!(error.len() <= crate::text::MAX_ERROR_LEN, "{}", error.len());
    }

    #[test]
    fn an_event_whose_outcomes_were_lost_is_given_up_on() {
        let p = policy(KeyPolicy::Skip);
        for attempt in 1..=6 {
            assert!(
                outcomes_lost(&claimed(attempt, None).event, &p).is_none(),
                "{attempt}"
            );
        }
        let reason = outcomes_lost(&claimed(7, None).event, &p).unwrap();
        assert!(reason.contains("gave up after 7 claims"), "{reason}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for jitter in [0.0, 0.25, 0.5, 0.99] {
            let first = backoff(1, initial, max, jitter);
            assert!(first >= initial / 2 && first <= initial, "{first:?}");
            let third = backoff(3, initial, max, jitter);
            assert!(third >= initial * 2 && third <= initial * 4, "{third:?}");
            let late = backoff(40, initial, max, jitter);
            assert!(late >= max / 2 && late <= max, "{late:?}");
        }
    }
}
