//! The Source each simulated Runner gets: the in-memory outbox's, wrapped
//! to inject store faults (a call that fails before or after it took
//! effect, a call delayed before or after, long enough to lose leases) and
//! to journal what the store did for this Runner.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use outbox::{ClaimedEvent, DeadLetter, Error, Settlement, Source, Uuid};

use crate::plan::{mix, unit};
use crate::sim::Sim;

#[derive(Debug, Clone, Copy)]
enum Method {
    Claim = 0,
    Ack = 1,
    Settle = 2,
    Renew = 3,
    Release = 4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Fails without touching the store (the connection broke on the way).
    FailBefore,
    /// Takes effect, then fails (the reply was lost).
    FailAfter,
    /// A slow round trip before the statement.
    DelayBefore(Duration),
    /// A slow reply after the statement took effect.
    DelayAfter(Duration),
}

fn injected() -> Error {
    Error::from(sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "sim: injected store fault",
    )))
}

pub struct FaultySource {
    sim: Arc<Sim>,
    inner: Arc<dyn Source>,
    /// The Runner incarnation this Source belongs to.
    runner: usize,
}

impl FaultySource {
    pub fn new(sim: Arc<Sim>, runner: usize) -> Self {
        let inner = sim.store.source();
        Self { sim, inner, runner }
    }

    /// Whether this call gets a fault: a hash of the seed, the Runner and
    /// how many calls of this method it made, so that one Runner's faults
    /// do not move when another Runner's calls come in another order.
    fn draw(&self, method: Method) -> Fault {
        let plan = &self.sim.plan;
        let mut journal = self.sim.journal();
        let track = &mut journal.runners[self.runner];
        let n = track.calls[method as usize];
        track.calls[method as usize] += 1;
        if self.sim.healthy() || plan.store_fault_rate == 0.0 {
            return Fault::None;
        }
        let h = mix(self.sim.seed, &[4, self.runner as u64, method as u64, n]);
        if unit(h) >= plan.store_fault_rate {
            return Fault::None;
        }
        let delay = plan.max_fault_delay.mul_f64(unit(mix(h, &[2])));
        let fault = match mix(h, &[1]) % 4 {
            0 => Fault::FailBefore,
            1 => Fault::FailAfter,
            2 => Fault::DelayBefore(delay),
            _ => Fault::DelayAfter(delay),
        };
        tracing::info!(target: "sim", "runner {}: injecting {fault:?} into {method:?}", self.runner);
        journal.fault_started(self.runner, &format!("a {method:?} fault ({fault:?})"));
        fault
    }

    async fn before(&self, fault: Fault) -> Result<(), Error> {
        match fault {
            Fault::FailBefore => {
                self.sim.journal().fault_ended(self.runner);
                Err(injected())
            }
            Fault::DelayBefore(delay) => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn after<T>(&self, fault: Fault, result: Result<T, Error>) -> Result<T, Error> {
        match fault {
            Fault::None | Fault::FailBefore => result,
            Fault::FailAfter => {
                self.sim.journal().fault_ended(self.runner);
                Err(injected())
            }
            Fault::DelayBefore(_) => {
                self.sim.journal().fault_ended(self.runner);
                result
            }
            Fault::DelayAfter(delay) => {
                tokio::time::sleep(delay).await;
                self.sim.journal().fault_ended(self.runner);
                result
            }
        }
    }
}

#[async_trait]
impl Source for FaultySource {
    async fn claim(
        &self,
        owner: Uuid,
        limit: outbox::ClaimLimit,
        lease: Duration,
    ) -> Result<Vec<ClaimedEvent>, Error> {
        let fault = self.draw(Method::Claim);
        let clean = self.sim.journal().claim_issued(self.runner);
        self.before(fault).await?;
        let result = self.inner.claim(owner, limit, lease).await;
        if let Ok(claimed) = &result {
            self.sim
                .journal()
                .claimed(self.runner, claimed, fault == Fault::FailAfter, clean);
        }
        self.after(fault, result).await
    }

    async fn ack(&self, owner: Uuid, ids: &[Uuid]) -> Result<u64, Error> {
        let fault = self.draw(Method::Ack);
        self.before(fault).await?;
        let result = self.inner.ack(owner, ids).await;
        if result.is_ok() {
            self.sim.journal().acked(self.runner, ids);
        }
        self.after(fault, result).await
    }

    async fn settle(&self, owner: Uuid, settlement: &Settlement) -> Result<bool, Error> {
        let fault = self.draw(Method::Settle);
        self.before(fault).await?;
        let result = self.inner.settle(owner, settlement).await;
        if let Ok(recorded) = result {
            self.sim
                .journal()
                .settled(self.runner, settlement, recorded);
        }
        self.after(fault, result).await
    }

    async fn renew(&self, owner: Uuid, ids: &[Uuid], lease: Duration) -> Result<u64, Error> {
        let fault = self.draw(Method::Renew);
        self.before(fault).await?;
        let result = self.inner.renew(owner, ids, lease).await;
        self.after(fault, result).await
    }

    async fn release(&self, owner: Uuid, ids: &[Uuid]) -> Result<u64, Error> {
        let fault = self.draw(Method::Release);
        self.before(fault).await?;
        let result = self.inner.release(owner, ids).await;
        if result.is_ok() {
            self.sim.journal().released(self.runner, ids);
        }
        self.after(fault, result).await
    }

    async fn pending(&self) -> Result<u64, Error> {
        self.inner.pending().await
    }

    async fn wait_for_events(&self, timeout: Duration) {
        self.inner.wait_for_events(timeout).await;
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        self.inner.dead_letters(limit).await
    }

    async fn retry_dead_letters(&self, event_ids: Option<&[Uuid]>) -> Result<u64, Error> {
        let before = self.sim.dead_letter_keys();
        let result = self.inner.retry_dead_letters(event_ids).await;
        self.sim.removed_since(&before, true);
        result
    }

    async fn purge_dead_letters(&self, before: SystemTime) -> Result<u64, Error> {
        let listed = self.sim.dead_letter_keys();
        let result = self.inner.purge_dead_letters(before).await;
        self.sim.removed_since(&listed, false);
        result
    }

    async fn purge_dead_letters_older_than(&self, age: Duration) -> Result<u64, Error> {
        let listed = self.sim.dead_letter_keys();
        let result = self.inner.purge_dead_letters_older_than(age).await;
        self.sim.removed_since(&listed, false);
        result
    }
}

/// A dead letter's identity: its event and publisher.
pub type LetterKey = (Uuid, String);

/// The dead letters in `letters`, as keys.
pub fn letter_keys(letters: Vec<DeadLetter>) -> BTreeSet<LetterKey> {
    letters
        .into_iter()
        .map(|d| (d.event.id, d.publisher))
        .collect()
}
