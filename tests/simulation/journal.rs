//! What happened in one schedule, as the harness saw it: every event
//! enqueued, committed or rolled back, every claim and outcome the Source
//! recorded, every publisher call, every fault, kill, retry and purge, each
//! stamped with a logical tick. The checks read it; the publishers and the
//! faulty Source check what they can at once.

use std::collections::{BTreeMap, HashMap};

use outbox::{ClaimedEvent, Settlement, StorageBox, Uuid};

/// A logical clock: every journal entry gets the next tick, so that entries
/// made in the same instant of paused time are still ordered.
pub type Tick = u64;

/// One event the producers enqueued.
#[derive(Debug)]
pub struct Event {
    pub id: Uuid,
    pub key: Option<String>,
    pub event_type: usize,
    /// When its transaction committed; `None` while open or rolled back.
    pub committed: Option<Tick>,
    pub rolled_back: bool,
    /// When a claim first took it.
    pub first_claim: Option<Tick>,
}

/// One claim of one event by one Runner.
#[derive(Debug)]
pub struct Claim {
    pub seq: usize,
    pub runner: usize,
    /// The first fault that may have kept this claim's outcome from being
    /// recorded (a lost lease, a killed or stopped Runner, a failed or slow
    /// store call while it was in flight), and when: only then may what
    /// its publishers delivered be delivered again.
    pub exposed: Option<(Tick, String)>,
}

/// One call of a publisher.
#[derive(Debug)]
pub struct Call {
    pub seq: usize,
    pub publisher: usize,
    /// The claim it was made under.
    pub claim: usize,
    pub attempt: u32,
    pub start: Tick,
    /// When it returned `Ok` (the destination has the event).
    pub delivered: Option<Tick>,
}

/// One Runner incarnation (a restart is a new one).
#[derive(Debug, Default)]
pub struct RunnerTrack {
    pub owner: Option<Uuid>,
    /// Events it claimed whose outcome it has not recorded yet, with their
    /// claims.
    pub inflight: BTreeMap<usize, usize>,
    /// Store calls with an injected fault that have not returned yet.
    pub active_faults: u32,
    /// Open from an injected fault until a claim issued after every fault
    /// returned completes: events it claims meanwhile are exposed.
    pub window_open: bool,
    /// Counts injected faults, so a claim knows whether one came since it
    /// was issued.
    pub fault_epoch: u64,
    /// Calls per store method, for the fault decisions.
    pub calls: [u64; 5],
    pub alive: bool,
}

/// Counters for the end-of-run summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub committed: u64,
    pub rolled_back: u64,
    pub calls: u64,
    pub deliveries: u64,
    pub duplicates: u64,
    pub store_faults: u64,
    pub kills: u64,
    pub stops: u64,
    pub lease_losses: u64,
    pub dead_letters: u64,
    pub retried: u64,
    pub purged: u64,
    pub late_commits: u64,
    pub releases: u64,
}

#[derive(Debug, Default)]
pub struct Journal {
    tick: Tick,
    pub events: Vec<Event>,
    pub by_id: HashMap<Uuid, usize>,
    pub runners: Vec<RunnerTrack>,
    pub claims: Vec<Claim>,
    /// The latest claim of each claimed event's allocation: the Runner
    /// hands publishers the very `Arc<StorageBox>` the claim returned, and
    /// while a call runs its allocation is alive, so its address names its
    /// claim (an (event, attempt) pair does not: a retried dead letter
    /// starts again at attempt 1).
    pub claim_of: HashMap<usize, usize>,
    pub calls: Vec<Call>,
    /// Successful deliveries per (event, publisher): when, and under which
    /// claim; the first one first.
    pub delivered: HashMap<(usize, usize), Vec<(Tick, usize)>>,
    /// Dead letters not requeued or purged since, per (event, publisher).
    pub dead_now: HashMap<(usize, usize), Tick>,
    /// First dead letter per (event, publisher).
    pub dead_ever: HashMap<(usize, usize), Tick>,
    /// Purged dead letters per (event, publisher).
    pub purged: HashMap<(usize, usize), Tick>,
    pub violations: Vec<String>,
    pub tally: Tally,
    /// Publisher names by index.
    pub publishers: Vec<String>,
}

impl Journal {
    pub fn new(publishers: Vec<String>) -> Self {
        Self {
            publishers,
            ..Self::default()
        }
    }

    pub fn tick(&mut self) -> Tick {
        self.tick += 1;
        self.tick
    }

    pub fn violation(&mut self, message: String) {
        tracing::error!(target: "sim", "VIOLATION: {message}");
        self.violations.push(message);
    }

    pub fn describe(&self, seq: usize) -> String {
        let e = &self.events[seq];
        match &e.key {
            Some(key) => format!("event #{seq} (key {key})"),
            None => format!("event #{seq} (no key)"),
        }
    }

    pub fn expose(&mut self, claim: usize, why: &str) {
        if self.claims[claim].exposed.is_none() {
            let tick = self.tick();
            let (seq, runner) = (self.claims[claim].seq, self.claims[claim].runner);
            let what = self.describe(seq);
            tracing::debug!(target: "sim", "claim {claim} of {what} by runner {runner} exposed: {why}");
            self.claims[claim].exposed = Some((tick, why.to_owned()));
        }
    }

    /// Whether a fault exposed this claim before `tick`.
    pub fn exposed_before(&self, claim: usize, tick: Tick) -> bool {
        self.claims[claim]
            .exposed
            .as_ref()
            .is_some_and(|(t, _)| *t < tick)
    }

    /// When `publisher` first delivered `seq`.
    pub fn first_delivery(&self, seq: usize, publisher: usize) -> Option<(Tick, usize)> {
        self.delivered
            .get(&(seq, publisher))
            .and_then(|d| d.first().copied())
    }

    /// Whether some delivery of `seq` to `publisher` before `tick` was made
    /// under a claim a fault exposed: its outcome may not have been recorded.
    fn repeat_allowed(&self, seq: usize, publisher: usize, tick: Tick) -> bool {
        self.delivered
            .get(&(seq, publisher))
            .is_some_and(|d| d.iter().any(|&(_, claim)| self.exposed_before(claim, tick)))
    }

    pub fn enqueued(&mut self, id: Uuid, key: Option<String>, event_type: usize) -> usize {
        let seq = self.events.len();
        self.events.push(Event {
            id,
            key,
            event_type,
            committed: None,
            rolled_back: false,
            first_claim: None,
        });
        self.by_id.insert(id, seq);
        seq
    }

    pub fn committed(&mut self, seqs: &[usize], late: bool) {
        let tick = self.tick();
        for &seq in seqs {
            self.events[seq].committed = Some(tick);
        }
        self.tally.committed += seqs.len() as u64;
        if late {
            self.tally.late_commits += seqs.len() as u64;
        }
    }

    pub fn rolled_back(&mut self, seqs: &[usize]) {
        for &seq in seqs {
            self.events[seq].rolled_back = true;
        }
        self.tally.rolled_back += seqs.len() as u64;
    }

    fn seq_of(&mut self, id: Uuid, what: &str) -> Option<usize> {
        let seq = self.by_id.get(&id).copied();
        if seq.is_none() {
            self.violation(format!(
                "{what} an event the producers never enqueued: {id}"
            ));
        }
        seq
    }

    /// An injected fault starts on runner `r`'s store call: what it has in
    /// flight may be delivered again.
    pub fn fault_started(&mut self, r: usize, what: &str) {
        self.tally.store_faults += 1;
        let track = &mut self.runners[r];
        track.active_faults += 1;
        track.window_open = true;
        track.fault_epoch += 1;
        let inflight: Vec<usize> = track.inflight.values().copied().collect();
        let why = format!("in flight on runner {r} during {what}");
        for claim in inflight {
            self.expose(claim, &why);
        }
    }

    pub fn fault_ended(&mut self, r: usize) {
        let track = &mut self.runners[r];
        track.active_faults = track.active_faults.saturating_sub(1);
    }

    /// A claim is issued: the fault epoch it may close the window at.
    pub fn claim_issued(&self, r: usize) -> Option<u64> {
        let track = &self.runners[r];
        (track.active_faults == 0).then_some(track.fault_epoch)
    }

    /// The store leased `claimed` to runner `r`.
    pub fn claimed(
        &mut self,
        r: usize,
        claimed: &[ClaimedEvent],
        reply_lost: bool,
        clean: Option<u64>,
    ) {
        let tick = self.tick();
        {
            let track = &mut self.runners[r];
            if clean == Some(track.fault_epoch) && track.active_faults == 0 {
                track.window_open = false;
            }
        }
        for c in claimed {
            let Some(seq) = self.seq_of(c.event.id, "a claim took") else {
                continue;
            };
            if self.events[seq].committed.is_none() {
                let what = self.describe(seq);
                self.violation(format!("a claim took {what}, which was never committed"));
            }
            self.events[seq].first_claim.get_or_insert(tick);
            for other in 0..self.runners.len() {
                if let Some(old) = self.runners[other].inflight.remove(&seq) {
                    self.tally.lease_losses += 1;
                    if !self.exposed_before(old, tick) {
                        let what = self.describe(seq);
                        self.violation(format!(
                            "runner {r} claimed {what} (attempt {}) while runner {other} still had it in flight, and no fault touched that claim: a lease was lost",
                            c.event.attempt
                        ));
                    }
                    self.expose(old, &format!("lease lost by runner {other}"));
                }
            }
            self.claims.push(Claim {
                seq,
                runner: r,
                exposed: None,
            });
            let claim = self.claims.len() - 1;
            self.claim_of
                .insert(std::sync::Arc::as_ptr(&c.event) as usize, claim);
            if reply_lost {
                self.expose(claim, &format!("claim reply to runner {r} lost"));
            } else {
                self.runners[r].inflight.insert(seq, claim);
                if self.runners[r].window_open {
                    self.expose(claim, &format!("claimed by runner {r} in a fault window"));
                }
            }
        }
    }

    /// Runner `r` acknowledged (or tried to) these events: it is done with them.
    pub fn acked(&mut self, r: usize, ids: &[Uuid]) {
        for id in ids {
            if let Some(seq) = self.seq_of(*id, "an ack named") {
                self.runners[r].inflight.remove(&seq);
            }
        }
    }

    /// The store recorded runner `r`'s settlement (`recorded`), or fenced
    /// it off.
    pub fn settled(&mut self, r: usize, s: &Settlement, recorded: bool) {
        let Some(seq) = self.seq_of(s.id, "a settlement named") else {
            return;
        };
        let claim = self.runners[r].inflight.remove(&seq);
        if !recorded {
            return;
        }
        let tick = self.tick();
        let stale = claim.is_some_and(|c| self.exposed_before(c, tick));
        for failure in &s.dead_letters {
            let Some(p) = self.publisher_index(&failure.publisher) else {
                continue;
            };
            self.tally.dead_letters += 1;
            if self.delivered.contains_key(&(seq, p))
                && !stale
                && !self.repeat_allowed(seq, p, tick)
            {
                let what = self.describe(seq);
                let name = &self.publishers[p];
                self.violation(format!(
                    "{what} was dead-lettered for {name}, which had delivered it: {}",
                    failure.error
                ));
            }
            self.dead_now.insert((seq, p), tick);
            self.dead_ever.entry((seq, p)).or_insert(tick);
        }
    }

    pub fn released(&mut self, r: usize, ids: &[Uuid]) {
        self.tally.releases += ids.len() as u64;
        for id in ids {
            if let Some(seq) = self.seq_of(*id, "a release named")
                && let Some(claim) = self.runners[r].inflight.remove(&seq)
            {
                self.expose(claim, &format!("released by runner {r} at shutdown"));
            }
        }
    }

    /// Runner `r` is gone (killed, or stopped): what it had in flight may
    /// be delivered again.
    pub fn runner_gone(&mut self, r: usize, why: &str) {
        let track = &mut self.runners[r];
        track.alive = false;
        let inflight = std::mem::take(&mut track.inflight);
        for claim in inflight.into_values() {
            self.expose(claim, &format!("in flight on runner {r} when it was {why}"));
        }
    }

    pub fn publisher_index(&mut self, name: &str) -> Option<usize> {
        let p = self.publishers.iter().position(|n| n == name);
        if p.is_none() {
            self.violation(format!("a publisher the schedule does not have: {name}"));
        }
        p
    }

    /// Dead letters an operator action (or retention) removed: `requeued`
    /// ones are owed again, the others were purged.
    pub fn dead_letters_removed(&mut self, removed: &[(Uuid, String)], requeued: bool) {
        let tick = self.tick();
        for (id, name) in removed {
            let (Some(seq), Some(p)) = (
                self.seq_of(*id, "a dead letter named"),
                self.publisher_index(name),
            ) else {
                continue;
            };
            self.dead_now.remove(&(seq, p));
            if requeued {
                self.tally.retried += 1;
            } else {
                self.tally.purged += 1;
                self.purged.insert((seq, p), tick);
            }
        }
    }

    /// A publisher is called: check that it is owed the event.
    pub fn call_started(&mut self, publisher: usize, event: &StorageBox) -> Option<usize> {
        let (id, attempt) = (event.id, event.attempt);
        let seq = self.seq_of(id, "a publisher was called with")?;
        let tick = self.tick();
        self.tally.calls += 1;
        let what = self.describe(seq);
        let name = self.publishers[publisher].clone();
        let e = &self.events[seq];
        if e.rolled_back || e.committed.is_none() {
            self.violation(format!(
                "{name} was called with {what}, whose transaction did not commit"
            ));
        }
        let claim = self
            .claim_of
            .get(&(std::ptr::from_ref(event) as usize))
            .copied()
            .filter(|&c| self.claims[c].seq == seq);
        let Some(claim) = claim else {
            self.violation(format!(
                "{name} was called with {what}, attempt {attempt}, which no claim handed out"
            ));
            return None;
        };
        if !self.exposed_before(claim, tick) {
            if self.delivered.contains_key(&(seq, publisher))
                && !self.repeat_allowed(seq, publisher, tick)
            {
                self.violation(format!(
                    "{name} was called again (attempt {attempt}) with {what} after it delivered it, and no fault touched either claim"
                ));
            }
            if self.dead_now.contains_key(&(seq, publisher)) {
                self.violation(format!(
                    "{name} was called (attempt {attempt}) with {what}, whose delivery to it is dead-lettered and was not retried"
                ));
            }
            if self.purged.contains_key(&(seq, publisher)) {
                self.violation(format!(
                    "{name} was called (attempt {attempt}) with {what} after its dead letter was purged"
                ));
            }
        }
        self.calls.push(Call {
            seq,
            publisher,
            claim,
            attempt,
            start: tick,
            delivered: None,
        });
        Some(self.calls.len() - 1)
    }

    pub fn call_delivered(&mut self, call: usize) {
        let tick = self.tick();
        let c = &mut self.calls[call];
        c.delivered = Some(tick);
        let (key, claim) = ((c.seq, c.publisher), c.claim);
        self.tally.deliveries += 1;
        let deliveries = self.delivered.entry(key).or_default();
        if !deliveries.is_empty() {
            self.tally.duplicates += 1;
        }
        deliveries.push((tick, claim));
    }

    pub fn fingerprint(&self) -> u64 {
        let mut h = self.tick;
        for c in &self.calls {
            let parts = [
                c.seq as u64,
                c.publisher as u64,
                u64::from(c.attempt),
                c.start,
                c.delivered.unwrap_or(0),
            ];
            h = crate::plan::mix(h, &parts);
        }
        h
    }
}
