//! The Runner's loop: claim a batch, publish each event to its Producers,
//! settle what did not simply succeed, acknowledge the rest beside the next
//! claim, and stop cleanly.

use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::{FutureExt, StreamExt, stream};
use tokio::sync::watch;
use tracing::{Instrument, debug, error, info, info_span, warn};
use uuid::Uuid;

use super::decide::{backoff, decide, outcomes_lost, route};
use super::shutdown::{sleep_or_stop, stop_requested, stopped};
use super::{Core, Mode};
use crate::delivery::{ClaimedEvent, Outcome};
use crate::error::{Error, PublishError};
use crate::event::StorageBox;
use crate::publisher::Context;
use crate::registry::Producer;
use crate::store::ClaimLimit;

/// How long a drain goes on while every claim fails (the table is gone, a
/// privilege was revoked, the database is down) before it returns the error.
const DRAIN_PATIENCE: Duration = Duration::from_secs(20);
/// Consecutive failed claims after which each one is logged as an error, not
/// a warning: a database that does not answer for that long needs a person.
const ESCALATE_AFTER: u32 = 5;

impl Core {
    pub(super) async fn main_loop(
        &self,
        mode: Mode,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Error> {
        info!(publishers = self.registry.len(), "outbox: runner started");
        let mut failures = 0u32;
        let mut failing_since = None;
        let mut to_ack: Vec<Uuid> = Vec::new();
        let mut housekeeping = tokio::time::Instant::now();
        self.housekeeping().await;
        loop {
            if stop_requested(stop) {
                break;
            }
            if housekeeping.elapsed() >= Duration::from_secs(60) {
                housekeeping = tokio::time::Instant::now();
                self.housekeeping().await;
            }
            // The previous batch's ack runs beside the next claim: its events
            // are still leased and still head their keys until the ack
            // commits, so the claim cannot take them or their successors.
            let acking = std::mem::take(&mut to_ack);
            let limit =
                ClaimLimit::events(self.settings.batch_size).bytes(self.settings.batch_bytes);
            let claim = self
                .source
                .claim(self.owner, limit, self.settings.lease)
                .instrument(info_span!("outbox.claim", limit = self.settings.batch_size));
            // A shutdown does not wait for a claim (which can hang as long as
            // the pool's acquire timeout while the database is unreachable),
            // but it lets the ack finish.
            let claim = async {
                tokio::select! {
                    biased;
                    () = stopped(stop) => None,
                    claimed = claim => Some(claimed),
                }
            };
            let (claimed, ()) = tokio::join!(claim, self.ack(&acking));
            let Some(claimed) = claimed else {
                break;
            };
            match claimed {
                Err(e) => {
                    failures += 1;
                    let failing = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    if mode == Mode::Drain && failing.elapsed() >= DRAIN_PATIENCE {
                        error!(error = %e, failures, "outbox: claims keep failing, the drain gives up");
                        return Err(e);
                    }
                    let mut delay = backoff(
                        failures,
                        Duration::from_millis(100),
                        Duration::from_secs(30),
                        fastrand::f64(),
                    );
                    if mode == Mode::Drain {
                        delay = delay.min(DRAIN_PATIENCE.saturating_sub(failing.elapsed()));
                    }
                    if failures < ESCALATE_AFTER {
                        warn!(error = %e, retry_in = ?delay, "outbox: claim failed");
                    } else {
                        error!(error = %e, failures, failing_for = ?failing.elapsed(), retry_in = ?delay, "outbox: claims keep failing; nothing is published until the database answers");
                    }
                    if sleep_or_stop(delay, stop).await {
                        break;
                    }
                }
                // The ack just made the next events of its keys claimable.
                Ok(batch) if batch.is_empty() && !acking.is_empty() => {
                    (failures, failing_since) = (0, None);
                }
                Ok(batch) if batch.is_empty() => {
                    (failures, failing_since) = (0, None);
                    if mode == Mode::Drain {
                        match self.source.pending().await {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e) => warn!(error = %e, "outbox: counting pending events failed"),
                        }
                    }
                    if self.idle(stop).await {
                        break;
                    }
                }
                Ok(batch) => {
                    (failures, failing_since) = (0, None);
                    debug!(claimed = batch.len(), "outbox: claimed");
                    to_ack = self.process_batch(batch, stop).await;
                    if mode == Mode::Drain
                        && let Some(held_up) = self.held_up_drain()
                    {
                        self.ack(&to_ack).await;
                        return Err(held_up);
                    }
                }
            }
        }
        self.ack(&to_ack).await;
        info!("outbox: runner stopped");
        Ok(())
    }

    /// A drain fails as soon as it held an event for want of a publisher:
    /// this Runner's publishers do not change, so it cannot empty the outbox.
    fn held_up_drain(&self) -> Option<Error> {
        let held = lock(&self.held);
        if held.is_empty() {
            return None;
        }
        let mut event_types: Vec<String> = held.values().cloned().collect();
        event_types.sort();
        event_types.dedup();
        Some(Error::NoPublisher { event_types })
    }

    async fn housekeeping(&self) {
        let Some(retention) = self.settings.dead_letter_retention else {
            return;
        };
        match self.source.purge_dead_letters_older_than(retention).await {
            Ok(0) => {}
            Ok(n) => info!(
                purged = n,
                "outbox: purged dead letters past their retention"
            ),
            Err(e) => warn!(error = %e, "outbox: purging old dead letters failed"),
        }
    }

    /// Wait for a wake-up or the poll interval; true when shutdown was asked.
    async fn idle(&self, stop: &mut watch::Receiver<bool>) -> bool {
        if !self.settings.listens() {
            return sleep_or_stop(self.settings.poll_interval, stop).await;
        }
        tokio::select! {
            biased;
            () = stopped(stop) => true,
            () = self.source.wait_for_events(self.settings.poll_interval) => false,
        }
    }

    /// Publish a batch; returns the events that every publisher received,
    /// for the caller to acknowledge.
    async fn process_batch(
        &self,
        batch: Vec<ClaimedEvent>,
        stop: &mut watch::Receiver<bool>,
    ) -> Vec<Uuid> {
        let unfinished: Mutex<HashSet<Uuid>> =
            Mutex::new(batch.iter().map(|e| e.event.id).collect());
        let delivered: Mutex<Vec<Uuid>> = Mutex::new(Vec::with_capacity(batch.len()));
        let mut work = Box::pin(async {
            let publish = stream::iter(batch)
                .map(|event| self.deliver(event, &unfinished, &delivered))
                .buffer_unordered(self.settings.concurrency)
                .for_each(|()| async {});
            tokio::select! {
                () = publish => {}
                () = self.renew_leases(&unfinished) => {}
            }
        });
        let finished = tokio::select! {
            () = &mut work => true,
            () = stopped(stop) => {
                info!(grace = ?self.settings.grace_period, "outbox: shutting down, finishing in-flight events");
                tokio::time::timeout(self.settings.grace_period, &mut work).await.is_ok()
            }
        };
        // Cancels what is still running: the publishers' futures are dropped.
        drop(work);
        let delivered = std::mem::take(&mut *lock(&delivered));
        if !finished {
            let left: Vec<Uuid> = lock(&unfinished)
                .iter()
                .copied()
                .filter(|id| !delivered.contains(id))
                .collect();
            if !left.is_empty() {
                warn!(
                    events = left.len(),
                    "outbox: grace period over, releasing unfinished events"
                );
                let released = persist("release", || self.source.release(self.owner, &left)).await;
                if released.is_err() {
                    warn!(
                        "outbox: could not release events; they become due again when their lease expires"
                    );
                }
            }
        }
        delivered
    }

    /// While a batch is published, extend the leases of its events that are
    /// not settled yet every third of a lease, so that a batch slower than
    /// one lease is never claimed again meanwhile (by another Runner, or by
    /// this one after it). Never returns; dropped with the batch.
    async fn renew_leases(&self, unfinished: &Mutex<HashSet<Uuid>>) {
        let lease = self.settings.lease;
        loop {
            tokio::time::sleep(lease / 3).await;
            let ids: Vec<Uuid> = lock(unfinished).iter().copied().collect();
            if ids.is_empty() {
                continue;
            }
            match self.source.renew(self.owner, &ids, lease).await {
                Ok(n) if n as usize == ids.len() => {
                    debug!(events = n, "outbox: leases renewed");
                }
                Ok(n) => warn!(
                    renewed = n,
                    expected = ids.len(),
                    "outbox: some leases expired before they were renewed; those events may be published again"
                ),
                Err(e) => {
                    warn!(error = %e, "outbox: renewing leases failed; retrying in a third of a lease")
                }
            }
        }
    }

    async fn ack(&self, ids: &[Uuid]) {
        if ids.is_empty() {
            return;
        }
        let span = info_span!("outbox.ack", events = ids.len());
        let acked = persist("ack", || self.source.ack(self.owner, ids))
            .instrument(span)
            .await;
        match acked {
            Ok(n) if n as usize == ids.len() => {}
            Ok(n) => warn!(
                acked = n,
                expected = ids.len(),
                "outbox: some leases expired before the ack; those events will be published again"
            ),
            Err(_) => error!(
                events = ids.len(),
                "outbox: ack failed; the events will be published again when their lease expires"
            ),
        }
    }

    /// Publish one event to the Producers it is still owed to, decide, and
    /// either queue it for the batch's ack or settle it now.
    async fn deliver(
        &self,
        claimed: ClaimedEvent,
        unfinished: &Mutex<HashSet<Uuid>>,
        delivered: &Mutex<Vec<Uuid>>,
    ) {
        let event = &claimed.event;
        let producers = self.registry.producers(&event.event_type);
        let (targets, absent) = route(&claimed, &producers);
        let policy = self.settings.policy();
        let refused = claimed
            .unreadable
            .as_ref()
            .map(|reason| format!("the stored event could not be read: {reason}"))
            .or_else(|| outcomes_lost(event, &policy));
        let results = if let Some(given_up) = refused {
            // An unreadable row is not published as read; and publishing again
            // would repeat what earlier attempts did without their outcome
            // being recorded. Either way, dead-letter what is still owed.
            error!(event_id = %event.id, event_type = %event.event_type, attempt = event.attempt, "outbox: {given_up}");
            let lost = || PublishError::permanent(given_up.clone());
            targets
                .iter()
                .map(|p| (p.name().to_owned(), Err(lost())))
                .collect()
        } else {
            join_all(targets.iter().map(|producer| async move {
                (producer.name().to_owned(), self.call(producer, event).await)
            }))
            .await
        };
        for (publisher, result) in &results {
            if let Err(e) = result {
                let attempt = event.attempt;
                if e.is_permanent() {
                    error!(event_id = %event.id, event_type = %event.event_type, %publisher, attempt, error = %e, "outbox: permanent failure, dead-lettering");
                } else if attempt >= self.settings.max_attempts {
                    error!(event_id = %event.id, event_type = %event.event_type, %publisher, attempt, error = %e, "outbox: giving up, dead-lettering");
                } else {
                    warn!(event_id = %event.id, event_type = %event.event_type, %publisher, attempt, error = %e, "outbox: publish failed, will retry");
                }
            }
        }

        let (settlement, tally) = decide(&claimed, results, &absent, &policy, fastrand::f64());
        let stats = &self.stats;
        stats
            .published
            .fetch_add(tally.published, Ordering::Relaxed);
        stats.retried.fetch_add(tally.retried, Ordering::Relaxed);
        if settlement.outcome == Outcome::Finish && settlement.dead_letters.is_empty() {
            lock(delivered).push(event.id);
            return;
        }
        if let Outcome::Hold { delay, reason } = &settlement.outcome {
            stats.held.fetch_add(1, Ordering::Relaxed);
            let first = lock(&self.held)
                .insert(event.id, event.event_type.clone())
                .is_none();
            if first {
                warn!(event_id = %event.id, event_type = %event.event_type, retry_in = ?delay, "outbox: {reason}; the event waits in the outbox");
            }
        }
        let span =
            info_span!("outbox.settle", event_id = %event.id, event_type = %event.event_type);
        let mut recorded = persist("settle", || self.source.settle(self.owner, &settlement))
            .instrument(span.clone())
            .await;
        if recorded.as_ref().is_err_and(Error::is_refusal) {
            // Keep what the database will take: which publishers delivered,
            // which are dead-lettered, when to retry; the refused text is in
            // the log above.
            let plain = settlement.clone().without_error_texts();
            if plain != settlement {
                recorded = persist("settle", || self.source.settle(self.owner, &plain))
                    .instrument(span)
                    .await;
            }
        }
        match recorded {
            Ok(true) => {
                stats
                    .dead_lettered
                    .fetch_add(settlement.dead_letters.len() as u64, Ordering::Relaxed);
            }
            Ok(false) => {
                warn!(event_id = %event.id, "outbox: lease lost before the outcome was recorded; another Runner owns the event now")
            }
            Err(_) => {
                error!(event_id = %event.id, "outbox: could not record the outcome; the event becomes due again when its lease expires")
            }
        }
        lock(unfinished).remove(&event.id);
    }

    /// Call one publisher, with the publish timeout, catching a panic.
    async fn call(&self, producer: &Producer, event: &Arc<StorageBox>) -> Result<(), PublishError> {
        let span = info_span!(
            "outbox.publish",
            event_id = %event.id,
            event_type = %event.event_type,
            publisher = producer.name(),
            attempt = event.attempt,
        );
        let cx = Context::new(event.clone(), self.states.clone());
        let publish = AssertUnwindSafe(producer.publisher.publish(&cx)).catch_unwind();
        let outcome = tokio::time::timeout(self.settings.publish_timeout, publish)
            .instrument(span)
            .await;
        match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => Err(PublishError::transient(format!(
                "publisher panicked: {}",
                panic_message(&*panic)
            ))),
            Err(_) => Err(PublishError::transient(format!(
                "publisher did not finish within {:?}",
                self.settings.publish_timeout
            ))),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// Run a store operation, retrying database failures for a few seconds: the
/// outcome of a publish is worth keeping through a short outage. A statement
/// the database refuses for its data is not retried: it would be refused
/// again.
async fn persist<T, F, Fut>(what: &'static str, mut op: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    const TRIES: u32 = 8;
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(e) if e.is_refusal() => {
                error!(error = %e, "outbox: the database refused the {what}; not retrying it");
                return Err(e);
            }
            Err(e) if attempt < TRIES => {
                let delay = backoff(
                    attempt,
                    Duration::from_millis(50),
                    Duration::from_secs(2),
                    fastrand::f64(),
                );
                warn!(error = %e, retry_in = ?delay, "outbox: {what} failed");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => {
                error!(error = %e, "outbox: {what} failed, giving up");
                return Err(e);
            }
        }
    }
}
