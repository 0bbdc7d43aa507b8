//! The checks at the end of a schedule, once the Runners drained the
//! outbox and stopped: nothing lost, order per key kept, nothing left
//! behind that an operator could not release. (Duplicates, calls after a
//! dead letter or a purge, lost leases and uncommitted claims are checked
//! as they happen, in the journal.)

use std::collections::{BTreeMap, HashMap, HashSet};

use outbox::testing::{MemoryEvent, MemoryOutbox};
use outbox::{KeyPolicy, Uuid};

use crate::sim::Sim;

/// The first parked event of each key (KeyPolicy::Block).
fn parked_heads(events: &[MemoryEvent]) -> HashMap<String, Uuid> {
    let mut heads: HashMap<String, Uuid> = HashMap::new();
    for e in events.iter().filter(|e| e.due.is_none()) {
        if let Some(key) = &e.event.partition_key {
            let head = heads.entry(key.clone()).or_insert(e.event.id);
            *head = (*head).min(e.event.id);
        }
    }
    heads
}

/// Events in the outbox that can still be published without an operator:
/// not parked, and not behind a parked event of their key (an event that
/// committed late, with an older id, is ahead of it, not behind).
pub fn publishable(store: &MemoryOutbox) -> u64 {
    let events = store.events();
    let heads = parked_heads(&events);
    events
        .iter()
        .filter(|e| e.due.is_some())
        .filter(|e| {
            e.event
                .partition_key
                .as_ref()
                .and_then(|k| heads.get(k))
                .is_none_or(|head| e.event.id < *head)
        })
        .count() as u64
}

pub fn at_end(sim: &Sim) {
    let plan = &sim.plan;
    let remaining = sim.store.events();
    let letters: HashSet<(Uuid, String)> = sim
        .store
        .dead_letters()
        .into_iter()
        .map(|d| (d.event.id, d.publisher))
        .collect();
    let mut journal = sim.journal();
    let j = &mut *journal;

    // What is left in the outbox may only be parked events (KeyPolicy::Block)
    // that an operator can retry or purge, and the events behind them.
    for e in remaining.iter().filter(|e| e.due.is_none()) {
        if !letters.iter().any(|(id, _)| *id == e.event.id) {
            let what = j
                .by_id
                .get(&e.event.id)
                .map_or_else(|| e.event.id.to_string(), |&s| j.describe(s));
            j.violation(format!(
                "{what} is parked without a dead letter: no operator action can retry or purge it, and its key is blocked for good"
            ));
        }
    }
    let parked_from = parked_heads(&remaining);
    let blocked = |id: Uuid, key: Option<&String>| {
        plan.key_policy == KeyPolicy::Block
            && key
                .and_then(|k| parked_from.get(k))
                .is_some_and(|first| *first <= id)
    };
    let left: HashSet<Uuid> = remaining.iter().map(|e| e.event.id).collect();
    for e in &remaining {
        if !blocked(e.event.id, e.event.partition_key.as_ref()) {
            let what = j
                .by_id
                .get(&e.event.id)
                .map_or_else(|| e.event.id.to_string(), |&s| j.describe(s));
            j.violation(format!(
                "{what} is still in the outbox after the Runners drained it (attempt {}, last error {:?})",
                e.event.attempt, e.last_error
            ));
        }
    }

    // Every committed event reached each of its publishers, or is
    // dead-lettered for it, or its dead letter was purged, or it waits
    // behind a parked event of its key.
    for seq in 0..j.events.len() {
        let e = &j.events[seq];
        if e.committed.is_none() {
            continue;
        }
        let (id, key) = (e.id, e.key.clone());
        for p in plan.publishers_of(e.event_type) {
            let name = &plan.publishers[p].name;
            let accounted = j.delivered.contains_key(&(seq, p))
                || letters.contains(&(id, name.clone()))
                || j.purged.contains_key(&(seq, p))
                || (left.contains(&id) && blocked(id, key.as_ref()));
            if !accounted {
                let what = j.describe(seq);
                j.violation(format!(
                    "{what} was lost for {name}: never delivered to it, not dead-lettered, not purged"
                ));
            }
        }
    }

    order(sim, j);
}

/// For every publisher and key, first deliveries in enqueue order, except
/// where the Guarantees allow otherwise: an event whose transaction
/// committed after a later event was claimed; under `KeyPolicy::Skip`, a
/// dead letter retried after its key moved on; a delivery repeated by a
/// fault.
fn order(sim: &Sim, j: &mut crate::journal::Journal) {
    // (publisher, key) -> (id, event, first delivery's tick, its claim)
    type Firsts = BTreeMap<(usize, String), Vec<(Uuid, usize, u64, usize)>>;
    let mut by_key = Firsts::new();
    for &(seq, p) in j.delivered.keys() {
        let Some((tick, claim)) = j.first_delivery(seq, p) else {
            continue;
        };
        if let Some(key) = &j.events[seq].key {
            by_key
                .entry((p, key.clone()))
                .or_default()
                .push((j.events[seq].id, seq, tick, claim));
        }
    }
    let mut found = Vec::new();
    for ((p, key), mut firsts) in by_key {
        firsts.sort();
        for (i, &(_, earlier, earlier_at, claim)) in firsts.iter().enumerate() {
            for &(_, later, later_at, _) in &firsts[i + 1..] {
                if earlier_at < later_at {
                    continue;
                }
                let late_commit = match (j.events[earlier].committed, j.events[later].first_claim) {
                    (Some(committed), Some(claimed)) => committed > claimed,
                    _ => false,
                };
                let retried = sim.plan.key_policy == KeyPolicy::Skip
                    && j.dead_ever
                        .get(&(earlier, p))
                        .is_some_and(|&t| t < earlier_at);
                let repeated = j.exposed_before(claim, earlier_at);
                if !(late_commit || retried || repeated) {
                    found.push(format!(
                        "{} received event #{later} before event #{earlier} of key {key}, which was enqueued first and committed before #{later} was claimed",
                        sim.plan.publishers[p].name
                    ));
                }
            }
        }
    }
    for v in found {
        j.violation(v);
    }
}
