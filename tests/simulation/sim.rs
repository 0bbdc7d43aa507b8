//! The world of one schedule: its plan, the in-memory outbox, the journal,
//! and the publishers that act out the plan's behaviours.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use outbox::testing::MemoryOutbox;
use outbox::{Context, PublishError, Publisher};

use crate::faulty::{LetterKey, letter_keys};
use crate::journal::Journal;
use crate::plan::{Plan, mix, unit};

pub struct Sim {
    pub seed: u64,
    pub plan: Plan,
    pub store: MemoryOutbox,
    journal: Mutex<Journal>,
    /// Once the chaos is over: no more faults, every publisher succeeds.
    healthy: AtomicBool,
}

impl Sim {
    pub fn new(seed: u64, plan: Plan) -> Self {
        let names = plan.publishers.iter().map(|p| p.name.clone()).collect();
        Self {
            seed,
            plan,
            store: MemoryOutbox::new(),
            journal: Mutex::new(Journal::new(names)),
            healthy: AtomicBool::new(false),
        }
    }

    pub fn journal(&self) -> MutexGuard<'_, Journal> {
        self.journal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    pub fn heal(&self) {
        self.healthy.store(true, Ordering::SeqCst);
    }

    pub fn dead_letter_keys(&self) -> BTreeSet<LetterKey> {
        letter_keys(self.store.dead_letters())
    }

    /// Journal the dead letters that were listed in `before` and are gone
    /// now: requeued by a retry, or purged. (The in-memory store never
    /// yields inside a call, so nothing else ran in between.)
    pub fn removed_since(&self, before: &BTreeSet<LetterKey>, requeued: bool) {
        let after = self.dead_letter_keys();
        let removed: Vec<LetterKey> = before.difference(&after).cloned().collect();
        if !removed.is_empty() {
            tracing::info!(
                target: "sim",
                "{} {} dead letter(s)",
                if requeued { "requeued" } else { "purged" },
                removed.len()
            );
            self.journal().dead_letters_removed(&removed, requeued);
        }
    }

    fn behaviour(&self, publisher: usize, seq: usize, attempt: u32) -> Behaviour {
        if self.healthy() {
            return Behaviour::Deliver(Duration::ZERO);
        }
        let p = &self.plan.publishers[publisher];
        let h = mix(
            self.seed,
            &[5, publisher as u64, seq as u64, u64::from(attempt)],
        );
        let extra = unit(mix(h, &[1]));
        let mut u = unit(h);
        for (chance, behaviour) in [
            (
                p.transient,
                Behaviour::Transient(
                    (extra < 0.2).then(|| Duration::from_millis(100).mul_f64(extra * 50.0)),
                ),
            ),
            (p.permanent, Behaviour::Permanent),
            (p.hang, Behaviour::Hang),
            (
                p.slow,
                Behaviour::Deliver(self.plan.min_publish_timeout.mul_f64(0.9 * extra)),
            ),
            (p.panic, Behaviour::Panic),
        ] {
            if u < chance {
                return behaviour;
            }
            u -= chance;
        }
        Behaviour::Deliver(Duration::from_millis((extra * 5.0) as u64))
    }
}

#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Succeed after this long.
    Deliver(Duration),
    /// Fail, to be retried (after at least this long, when set).
    Transient(Option<Duration>),
    Permanent,
    /// Never answer: the Runner's publish timeout cuts it short.
    Hang,
    Panic,
}

/// A publisher whose every call is journaled and behaves as the plan draws
/// it for (event, publisher, attempt). It has the event only once it
/// returns `Ok`.
#[derive(Clone)]
pub struct SimPublisher {
    sim: Arc<Sim>,
    index: usize,
    name: String,
    event_type: String,
}

impl SimPublisher {
    pub fn all(sim: &Arc<Sim>) -> Vec<SimPublisher> {
        sim.plan
            .publishers
            .iter()
            .enumerate()
            .map(|(index, p)| SimPublisher {
                sim: sim.clone(),
                index,
                name: p.name.clone(),
                event_type: Plan::event_type_name(p.event_type),
            })
            .collect()
    }
}

#[async_trait]
impl Publisher for SimPublisher {
    fn name(&self) -> &str {
        &self.name
    }

    fn accepts(&self, event_type: &str) -> bool {
        event_type == self.event_type
    }

    async fn publish(&self, cx: &Context) -> Result<(), PublishError> {
        let (call, seq) = {
            let mut journal = self.sim.journal();
            let Some(call) = journal.call_started(self.index, cx.event()) else {
                return Err(PublishError::permanent(
                    "sim: an event the producers never enqueued",
                ));
            };
            (call, journal.calls[call].seq)
        };
        let behaviour = self.behaviour_for(seq, cx.attempt());
        tracing::debug!(target: "sim", "{} called with event #{seq}, attempt {}: {behaviour:?}", self.name, cx.attempt());
        match behaviour {
            Behaviour::Deliver(delay) => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                self.sim.journal().call_delivered(call);
                Ok(())
            }
            Behaviour::Transient(retry_after) => {
                let e = PublishError::transient("sim: transient failure");
                Err(match retry_after {
                    Some(delay) => e.retry_after(delay),
                    None => e,
                })
            }
            Behaviour::Permanent => Err(PublishError::permanent("sim: permanent failure")),
            Behaviour::Hang => {
                tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
                self.sim.journal().call_delivered(call);
                Ok(())
            }
            Behaviour::Panic => panic!("sim: injected publisher panic"),
        }
    }
}

impl SimPublisher {
    fn behaviour_for(&self, seq: usize, attempt: u32) -> Behaviour {
        self.sim.behaviour(self.index, seq, attempt)
    }
}
