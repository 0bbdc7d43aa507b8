//! Deterministic simulation of the Runner over the in-memory outbox.
//!
//! Each schedule runs on a current-thread tokio runtime with paused time:
//! 1-3 Runners with random small settings over a Source that injects store
//! faults (calls failing before or after they took effect, calls delayed
//! past the lease), 1-3 publishers per event type that succeed, fail
//! transiently or permanently, hang past the publish timeout, are slow
//! within it, or panic; producers enqueuing over many keys, with
//! transactions that commit late or roll back; Runners killed (their task
//! aborted) or stopped mid-batch and started again; an operator retrying
//! and purging dead letters. Then the chaos stops, the Runners drain the
//! outbox, and the journal is checked: no committed event lost, nothing
//! published that did not commit, per-key order per publisher, a publisher
//! called again for an event only after a fault touched it (lost lease,
//! killed or stopped Runner, failed store call while it was in flight),
//! never after its dead letter or its purge, no lease lost without a fault,
//! nothing parked that an operator cannot release.
//!
//! Every decision comes from the seed: `OUTBOX_SIM_SEED=<n>` replays one
//! schedule with a log on paused time (`OUTBOX_SIM_LOG` sets its filter);
//! `OUTBOX_SIM_SCHEDULES=<n>` (default 1000) and `OUTBOX_SIM_FIRST=<n>`
//! (default 0) choose which seeds a run covers.

mod check;
mod faulty;
mod journal;
mod plan;
mod schedule;
mod sim;

use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use journal::Tally;

const REPLAY: &str = "cargo test -p outbox-tests --test simulation -- --nocapture";

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not {v:?}")),
        Err(_) => default,
    }
}

/// The injected publisher panics are expected: keep them out of the output.
fn quiet_injected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
            if !message.is_some_and(|m| m.starts_with("sim: ")) {
                default(info);
            }
        }));
    });
}

/// Timestamps on the schedule's paused clock.
struct PausedTime;

impl tracing_subscriber::fmt::time::FormatTime for PausedTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match schedule::STARTED.with(std::cell::Cell::get) {
            Some(start) => write!(w, "{:>9.3}s", start.elapsed().as_secs_f64()),
            None => write!(w, "{:>10}", "-"),
        }
    }
}

fn replay(seed: u64) {
    let filter =
        std::env::var("OUTBOX_SIM_LOG").unwrap_or_else(|_| "sim=debug,outbox=debug".to_owned());
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_timer(PausedTime)
        .with_ansi(false)
        .with_test_writer()
        .finish();
    let outcome = tracing::subscriber::with_default(subscriber, || schedule::run(seed));
    eprintln!(
        "seed {seed}: {:?}, {:.1?} of paused time, fingerprint {:016x}",
        outcome.tally, outcome.took, outcome.fingerprint
    );
    assert!(
        outcome.violations.is_empty(),
        "seed {seed} broke the guarantees:\n  {}",
        outcome.violations.join("\n  ")
    );
}

fn add(total: &mut Tally, t: &Tally) {
    total.committed += t.committed;
    total.rolled_back += t.rolled_back;
    total.calls += t.calls;
    total.deliveries += t.deliveries;
    total.duplicates += t.duplicates;
    total.store_faults += t.store_faults;
    total.kills += t.kills;
    total.stops += t.stops;
    total.lease_losses += t.lease_losses;
    total.dead_letters += t.dead_letters;
    total.retried += t.retried;
    total.purged += t.purged;
    total.late_commits += t.late_commits;
    total.releases += t.releases;
}

#[test]
fn random_schedules_keep_the_guarantees() {
    quiet_injected_panics();
    if let Ok(seed) = std::env::var("OUTBOX_SIM_SEED") {
        let seed = seed
            .parse()
            .unwrap_or_else(|_| panic!("OUTBOX_SIM_SEED must be a whole number, not {seed:?}"));
        replay(seed);
        return;
    }
    let count = env_u64("OUTBOX_SIM_SCHEDULES", 1000);
    let first = env_u64("OUTBOX_SIM_FIRST", 0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = AtomicU64::new(0);
    let failures: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());
    let total = Mutex::new(Tally::default());
    let paused = Mutex::new(0f64);
    let wall = Instant::now();
    // OUTBOX_SIM_TWICE=1 runs every schedule twice and counts those whose
    // two runs went differently (see the README on what replays exactly).
    let twice = std::env::var_os("OUTBOX_SIM_TWICE").is_some();
    let diverged: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= count {
                        break;
                    }
                    let seed = first + i;
                    match std::panic::catch_unwind(AssertUnwindSafe(|| schedule::run(seed))) {
                        Ok(outcome) => {
                            if twice {
                                let again = schedule::run(seed);
                                if again.fingerprint != outcome.fingerprint {
                                    diverged.lock().unwrap().push(seed);
                                }
                            }
                            add(&mut total.lock().unwrap(), &outcome.tally);
                            *paused.lock().unwrap() += outcome.took.as_secs_f64();
                            if !outcome.violations.is_empty() {
                                let mut shown: Vec<String> =
                                    outcome.violations.iter().take(5).cloned().collect();
                                if outcome.violations.len() > 5 {
                                    shown.push(format!("... {} in all", outcome.violations.len()));
                                }
                                failures.lock().unwrap().push((seed, shown.join("\n    ")));
                            }
                        }
                        Err(panic) => {
                            let message = panic
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                                .unwrap_or_default();
                            failures
                                .lock()
                                .unwrap()
                                .push((seed, format!("the harness panicked: {message}")));
                        }
                    }
                }
            });
        }
    });
    let total = total.into_inner().unwrap();
    eprintln!(
        "{count} schedules (seeds {first}..{}) in {:.1?} on {threads} threads, {:.0} s of paused time: {total:?}",
        first + count,
        wall.elapsed(),
        paused.into_inner().unwrap(),
    );
    let diverged = diverged.into_inner().unwrap();
    if twice {
        eprintln!(
            "{} of {count} schedules went differently the second time: {diverged:?}",
            diverged.len()
        );
    }
    let mut failures = failures.into_inner().unwrap();
    failures.sort();
    if !failures.is_empty() {
        let report: Vec<String> = failures
            .iter()
            .take(10)
            .map(|(seed, v)| {
                format!("seed {seed}:\n    {v}\n  replay: OUTBOX_SIM_SEED={seed} {REPLAY}")
            })
            .collect();
        panic!(
            "{} of {count} schedules broke the guarantees:\n  {}",
            failures.len(),
            report.join("\n  ")
        );
    }
}
