//! One schedule: a current-thread runtime on paused time, Runners over the
//! faulty Sources, producers, a chaos script that kills and stops Runners,
//! an operator that retries and purges dead letters; then the chaos stops,
//! the Runners drain the outbox, and the checks run.

use std::sync::Arc;
use std::time::Duration;

use fastrand::Rng;
use outbox::{NewEvent, RunReport, Runner, Source};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::info;

use crate::faulty::FaultySource;
use crate::journal::{RunnerTrack, Tally};
use crate::plan::{Finally, Plan, RunnerCfg, mix};
use crate::sim::{Sim, SimPublisher};

/// How long the Runners get to drain the outbox once the chaos is over.
const DRAIN_LIMIT: Duration = Duration::from_secs(3600);

/// What one schedule found.
pub struct Outcome {
    pub violations: Vec<String>,
    pub tally: Tally,
    /// Paused time the schedule took.
    pub took: Duration,
    /// A hash of every publisher call, in order, with its ticks: two runs
    /// of a seed that agree on it went the same way.
    pub fingerprint: u64,
}

thread_local! {
    /// When the running schedule started, for the replay log's timestamps.
    pub static STARTED: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// Run schedule `seed` to the end, on this thread.
pub fn run(seed: u64) -> Outcome {
    // The Runner draws its backoff jitter from fastrand's thread-local
    // generator: seed it, so a replay retries at the same times.
    fastrand::seed(mix(seed, &[7]));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    rt.block_on(schedule(seed))
}

struct Slot {
    track: usize,
    handle: JoinHandle<Result<RunReport, outbox::Error>>,
    stop: Option<oneshot::Sender<()>>,
}

fn start_runner(sim: &Arc<Sim>, publishers: &[SimPublisher]) -> Slot {
    let track = {
        let mut journal = sim.journal();
        journal.runners.push(RunnerTrack {
            alive: true,
            ..RunnerTrack::default()
        });
        journal.runners.len() - 1
    };
    let cfg = RunnerCfg::new(sim.seed, track, &sim.plan);
    let source: Arc<dyn Source> = Arc::new(FaultySource::new(sim.clone(), track));
    let mut builder = Runner::with_source(source)
        .without_registered()
        .batch_size(cfg.batch_size)
        .concurrency(cfg.concurrency)
        .max_attempts(cfg.max_attempts)
        .lease(cfg.lease)
        .publish_timeout(cfg.publish_timeout)
        .poll_interval(cfg.poll_interval)
        .backoff(cfg.backoff.0, cfg.backoff.1)
        .grace_period(cfg.grace_period)
        .listen(cfg.listen)
        .key_policy(sim.plan.key_policy);
    if let Some(retention) = sim.plan.retention {
        builder = builder.dead_letter_retention(retention);
    }
    for p in publishers {
        builder = builder.publisher(p.clone());
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let runner = builder
        .shutdown(async move {
            let _ = stopped.await;
        })
        .build()
        .expect("the plan draws valid settings");
    sim.journal().runners[track].owner = Some(runner.id());
    info!(target: "sim", "runner {track} starts: {cfg:?}");
    Slot {
        track,
        handle: tokio::spawn(runner.run()),
        stop: Some(stop),
    }
}

/// Abort a Runner's task wherever it is, as a crash would.
async fn kill(sim: &Sim, slot: &mut Slot) {
    info!(target: "sim", "runner {}: killed", slot.track);
    slot.handle.abort();
    if let Err(e) = (&mut slot.handle).await
        && e.is_panic()
    {
        sim.journal()
            .violation(format!("runner {} panicked: {e}", slot.track));
    }
    let mut journal = sim.journal();
    journal.tally.kills += 1;
    journal.runner_gone(slot.track, "killed");
}

/// Ask a Runner to shut down and wait for it.
async fn stop(sim: &Sim, slot: &mut Slot) {
    info!(target: "sim", "runner {}: asked to stop", slot.track);
    if let Some(stop) = slot.stop.take() {
        let _ = stop.send(());
    }
    match tokio::time::timeout(Duration::from_secs(600), &mut slot.handle).await {
        Ok(Ok(Ok(_))) => {}
        Ok(Ok(Err(e))) => sim
            .journal()
            .violation(format!("runner {} failed: {e}", slot.track)),
        Ok(Err(e)) => sim
            .journal()
            .violation(format!("runner {} panicked: {e}", slot.track)),
        Err(_) => {
            sim.journal().violation(format!(
                "runner {} did not stop within 10 minutes of being asked",
                slot.track
            ));
            slot.handle.abort();
        }
    }
    let mut journal = sim.journal();
    journal.tally.stops += 1;
    let track = &journal.runners[slot.track];
    if !track.inflight.is_empty() && !track.window_open {
        let left = track.inflight.len();
        journal.violation(format!(
            "runner {} stopped with {left} claimed event(s) neither finished nor released, and no fault explains it",
            slot.track
        ));
    }
    journal.runner_gone(slot.track, "stopped");
}

async fn produce(sim: Arc<Sim>, index: usize) {
    let mut rng = Rng::with_seed(mix(sim.seed, &[2, index as u64]));
    let plan = &sim.plan;
    let end = Instant::now() + plan.produce_for;
    let mut late = Vec::new();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(rng.u64(1..=plan.max_gap))).await;
        let mut tx = sim.store.begin();
        let mut seqs = Vec::new();
        for _ in 0..rng.usize(1..=3) {
            let event_type = rng.usize(..plan.event_types);
            let key = (rng.f64() < 0.9).then(|| format!("k{}", rng.u32(..plan.keys)));
            let mut event = NewEvent::new(Plan::event_type_name(event_type), b"{}".to_vec());
            if let Some(key) = &key {
                event = event.partition_key(key.clone());
            }
            seqs.push(sim.journal().enqueued(event.id, key, event_type));
            tx.enqueue_raw(&[event]).expect("a valid event");
        }
        let fate = rng.f64();
        if fate < 0.8 {
            tx.commit();
            sim.journal().committed(&seqs, false);
        } else if fate < 0.88 {
            drop(tx);
            sim.journal().rolled_back(&seqs);
        } else {
            let open_for = Duration::from_millis(rng.u64(50..=8_000));
            let commit = rng.f64() < 0.75;
            let sim = sim.clone();
            late.push(tokio::spawn(async move {
                tokio::time::sleep(open_for).await;
                if commit {
                    tx.commit();
                    sim.journal().committed(&seqs, true);
                } else {
                    drop(tx);
                    sim.journal().rolled_back(&seqs);
                }
            }));
        }
    }
    for task in late {
        task.await.expect("a late transaction");
    }
}

/// Retry and purge dead letters at random times, as an operator would.
async fn operate(sim: Arc<Sim>) {
    let mut rng = Rng::with_seed(mix(sim.seed, &[8]));
    let window = sim.plan.produce_for.as_millis() as u64 + 5_000;
    for _ in 0..sim.plan.operator_actions {
        tokio::time::sleep(Duration::from_millis(rng.u64(0..=window / 2))).await;
        operator_action(&sim, rng.u8(0..4), &mut rng).await;
    }
}

async fn operator_action(sim: &Sim, action: u8, rng: &mut Rng) {
    let source = sim.store.source();
    let before = sim.dead_letter_keys();
    let result = match action {
        0 => {
            info!(target: "sim", "operator: retry every dead letter");
            source.retry_dead_letters(None).await
        }
        1 => {
            let ids: Vec<outbox::Uuid> = before
                .iter()
                .map(|(id, _)| *id)
                .filter(|_| rng.bool())
                .collect();
            info!(target: "sim", "operator: retry the dead letters of {} event(s)", ids.len());
            source.retry_dead_letters(Some(&ids)).await
        }
        2 => {
            info!(target: "sim", "operator: purge every dead letter");
            source.purge_dead_letters(sim.store.now()).await
        }
        _ => {
            let age = Duration::from_millis(rng.u64(0..=10_000));
            info!(target: "sim", "operator: purge dead letters older than {age:?}");
            source.purge_dead_letters_older_than(age).await
        }
    };
    result.expect("the in-memory store does not fail");
    sim.removed_since(&before, action < 2);
}

async fn schedule(seed: u64) -> Outcome {
    let started = Instant::now();
    STARTED.with(|s| s.set(Some(started)));
    let plan = Plan::new(seed);
    info!(target: "sim", "seed {seed}: {plan:#?}");
    let sim = Arc::new(Sim::new(seed, plan.clone()));
    let publishers = SimPublisher::all(&sim);
    let mut slots: Vec<Slot> = (0..plan.runners)
        .map(|_| start_runner(&sim, &publishers))
        .collect();
    let producers: Vec<_> = (0..plan.producers)
        .map(|i| tokio::spawn(produce(sim.clone(), i)))
        .collect();
    let operator = tokio::spawn(operate(sim.clone()));

    // The chaos script: kill or stop a Runner (one with events in flight,
    // mostly), and start it again after a while.
    let mut rng = Rng::with_seed(mix(seed, &[6]));
    let window = plan.produce_for.as_millis() as u64 + 2_000;
    for _ in 0..plan.kills {
        tokio::time::sleep(Duration::from_millis(rng.u64(0..=window / 2))).await;
        let busy: Vec<usize> = {
            let journal = sim.journal();
            (0..slots.len())
                .filter(|&i| !journal.runners[slots[i].track].inflight.is_empty())
                .collect()
        };
        let victim = if !busy.is_empty() && rng.f64() < 0.7 {
            busy[rng.usize(..busy.len())]
        } else {
            rng.usize(..slots.len())
        };
        if rng.f64() < 0.7 {
            kill(&sim, &mut slots[victim]).await;
        } else {
            stop(&sim, &mut slots[victim]).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(0..=3_000))).await;
        slots[victim] = start_runner(&sim, &publishers);
    }
    for producer in producers {
        producer.await.expect("a producer");
    }
    operator.await.expect("the operator");

    // The chaos is over: the store and the publishers heal, the operator
    // takes a last look, and the Runners must drain what is left.
    sim.heal();
    info!(target: "sim", "healed; finally: {:?}", plan.finally);
    match plan.finally {
        Finally::RetryAll => operator_action(&sim, 0, &mut rng).await,
        Finally::PurgeAll => operator_action(&sim, 2, &mut rng).await,
        Finally::Nothing => {}
    }
    let deadline = Instant::now() + DRAIN_LIMIT;
    let mut undercounted = false;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let idle = sim.journal().runners.iter().all(|r| r.inflight.is_empty());
        let publishable = crate::check::publishable(&sim.store);
        let pending = sim.store.pending();
        if pending < publishable && !undercounted {
            undercounted = true;
            sim.journal().violation(format!(
                "Source::pending() says {pending} while {publishable} event(s) can still be published without an operator"
            ));
        }
        if idle && publishable == 0 {
            break;
        }
        if Instant::now() >= deadline {
            sim.journal().violation(format!(
                "the Runners did not drain the outbox within {DRAIN_LIMIT:?} of the chaos ending: {publishable} event(s) can still be published"
            ));
            break;
        }
    }
    for slot in &mut slots {
        stop(&sim, slot).await;
    }
    crate::check::at_end(&sim);
    let journal = sim.journal();
    Outcome {
        violations: journal.violations.clone(),
        tally: journal.tally,
        took: started.elapsed(),
        fingerprint: journal.fingerprint(),
    }
}
