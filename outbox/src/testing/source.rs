//! The Source contract over [`MemoryOutbox`]'s maps: each method does what
//! the SQL stores' statement of the same name does (`store/statements.rs`),
//! under one lock, as one transaction.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use uuid::Uuid;

use super::clock::At;
use super::memory::{DeadRow, Due, MemoryOutbox, Row, State};
use crate::delivery::{ClaimedEvent, Outcome, Settlement};
use crate::error::Error;
use crate::store::{ClaimLimit, DeadLetter, Source, legacy};

/// The longest age `purge_dead_letters_older_than` measures, as in the SQL
/// stores.
const OLDEST: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl State {
    /// Lease the claimable events in id order: due, not leased, and the
    /// oldest event of their key (whatever state the older ones are in);
    /// at most `events`, and while their payloads add up to at most `bytes`,
    /// but always one when any is claimable.
    pub(crate) fn claim(
        &mut self,
        owner: Uuid,
        events: usize,
        bytes: usize,
        lease: Duration,
    ) -> Vec<ClaimedEvent> {
        let now = self.clock.now();
        let mut keys_seen = BTreeSet::new();
        let mut taken = Vec::new();
        let mut size = 0usize;
        for (id, row) in &self.events {
            if taken.len() >= events {
                break;
            }
            let head = match &row.event.partition_key {
                Some(key) => keys_seen.insert(key.as_str()),
                None => true,
            };
            if !head || !row.is_due(now) {
                continue;
            }
            let payload = row.event.payload.len();
            if !taken.is_empty() && size.saturating_add(payload) > bytes {
                break;
            }
            size = size.saturating_add(payload);
            taken.push(*id);
        }
        let until = now.saturating_add(lease);
        let mut claimed = Vec::with_capacity(taken.len());
        for id in taken {
            let Some(row) = self.events.get_mut(&id) else {
                continue;
            };
            row.lease = Some((owner, until));
            row.attempts = row.attempts.saturating_add(1);
            let row = row.clone();
            let event = self.storage_box(&row.event, row.created_at, row.attempts);
            claimed.push(
                ClaimedEvent::new(event)
                    .with_delivered(legacy::delivered(row.done))
                    .with_only(legacy::only(row.only))
                    .with_dead(row.dead),
            );
        }
        claimed
    }

    /// Apply `change` to each of `ids` that `owner` holds; how many.
    fn for_held(&mut self, owner: Uuid, ids: &[Uuid], mut change: impl FnMut(&mut Row)) -> u64 {
        let ids: BTreeSet<&Uuid> = ids.iter().collect();
        let mut changed = 0;
        for id in ids {
            if let Some(row) = self.events.get_mut(id)
                && row.held_by(owner)
            {
                change(row);
                changed += 1;
            }
        }
        changed
    }

    fn ack(&mut self, owner: Uuid, ids: &[Uuid]) -> u64 {
        let ids: BTreeSet<&Uuid> = ids.iter().collect();
        let mut acked = 0;
        for id in ids {
            if self.events.get(id).is_some_and(|row| row.held_by(owner)) {
                self.events.remove(id);
                acked += 1;
            }
        }
        acked
    }

    fn settle(&mut self, owner: Uuid, s: &Settlement) -> bool {
        let now = self.clock.now();
        let Some(row) = self.events.get(&s.id).filter(|row| row.held_by(owner)) else {
            return false;
        };
        let row = row.clone();
        for failure in &s.dead_letters {
            let dead = DeadRow {
                event: row.event.clone(),
                created_at: row.created_at,
                attempts: row.attempts,
                error: failure.error.clone(),
                failed_at: now,
            };
            let key = (s.id, failure.publisher.clone());
            match self.dead.get_mut(&key) {
                Some(existing) => {
                    existing.error = dead.error;
                    existing.attempts = dead.attempts;
                    existing.failed_at = dead.failed_at;
                }
                None => {
                    self.dead.insert(key, dead);
                }
            }
        }
        let Some(row) = self.events.get_mut(&s.id) else {
            return false;
        };
        let record = |row: &mut Row, due: Due, error: &str| {
            row.due = due;
            row.done.clone_from(&s.delivered);
            row.dead.clone_from(&s.dead);
            row.last_error = Some(error.to_owned());
            row.lease = None;
        };
        match &s.outcome {
            Outcome::Finish => {
                self.events.remove(&s.id);
            }
            Outcome::Retry { delay, error } => {
                record(row, Due::At(now.saturating_add(*delay)), error);
            }
            Outcome::Hold { delay, reason } => {
                record(row, Due::At(now.saturating_add(*delay)), reason);
                row.attempts = row.attempts.saturating_sub(1);
            }
            Outcome::Park { error } => record(row, Due::Parked, error),
        }
        true
    }

    /// Put back the dead letters of these events (all when `None`) that are
    /// not waiting in the outbox (parked ones are not), each once, owed to
    /// the publishers that failed, with its original id.
    fn retry_dead_letters(&mut self, event_ids: Option<&[Uuid]>) -> u64 {
        let now = self.clock.now();
        let wanted: Option<BTreeSet<&Uuid>> = event_ids.map(|ids| ids.iter().collect());
        let ids: BTreeSet<Uuid> = self
            .dead
            .keys()
            .map(|(id, _)| *id)
            .filter(|id| wanted.as_ref().is_none_or(|w| w.contains(id)))
            .filter(|id| self.events.get(id).is_none_or(Row::is_parked))
            .collect();
        let mut requeued = 0;
        for id in ids {
            self.events.remove(&id);
            let letters: Vec<(String, DeadRow)> = self
                .dead
                .range((id, String::new())..)
                .take_while(|((event, _), _)| *event == id)
                .map(|((_, publisher), row)| (publisher.clone(), row.clone()))
                .collect();
            let Some((_, first)) = letters.first() else {
                continue;
            };
            let mut row = Row::new(first.event.clone(), now);
            row.created_at = first.created_at;
            row.only = Some(letters.iter().map(|(p, _)| p.clone()).collect());
            self.events.insert(id, row);
            requeued += 1;
            for (publisher, _) in letters {
                self.dead.remove(&(id, publisher));
            }
        }
        requeued
    }

    /// Delete the dead letters that failed before `cutoff`, and the parked
    /// events they held back.
    fn purge(&mut self, cutoff: Option<At>) -> u64 {
        let Some(cutoff) = cutoff else {
            return 0;
        };
        let old: Vec<(Uuid, String)> = self
            .dead
            .iter()
            .filter(|(_, row)| row.failed_at < cutoff)
            .filter(|((id, _), _)| self.events.get(id).is_none_or(Row::is_parked))
            .map(|(key, _)| key.clone())
            .collect();
        for (id, _) in &old {
            if self.events.get(id).is_some_and(Row::is_parked) {
                self.events.remove(id);
            }
        }
        for key in &old {
            self.dead.remove(key);
        }
        old.len() as u64
    }
}

#[async_trait]
impl Source for MemoryOutbox {
    async fn claim(
        &self,
        owner: Uuid,
        limit: ClaimLimit,
        lease: Duration,
    ) -> Result<Vec<ClaimedEvent>, Error> {
        Ok(self.state().claim(owner, limit.events, limit.bytes, lease))
    }

    async fn ack(&self, owner: Uuid, ids: &[Uuid]) -> Result<u64, Error> {
        Ok(self.state().ack(owner, ids))
    }

    async fn settle(&self, owner: Uuid, settlement: &Settlement) -> Result<bool, Error> {
        Ok(self.state().settle(owner, settlement))
    }

    async fn renew(&self, owner: Uuid, ids: &[Uuid], lease: Duration) -> Result<u64, Error> {
        let mut state = self.state();
        let until = state.clock.now().saturating_add(lease);
        Ok(state.for_held(owner, ids, |row| {
            row.lease = Some((owner, until));
        }))
    }

    async fn release(&self, owner: Uuid, ids: &[Uuid]) -> Result<u64, Error> {
        Ok(self.state().for_held(owner, ids, |row| {
            row.lease = None;
            row.attempts = row.attempts.saturating_sub(1);
        }))
    }

    async fn pending(&self) -> Result<u64, Error> {
        Ok(self.state().pending())
    }

    /// Returns as soon as a transaction commits (or the clock is
    /// [`advance`](MemoryOutbox::advance)d), else after `timeout`.
    async fn wait_for_events(&self, timeout: Duration) {
        let committed = self.shared.committed.notified();
        tokio::select! {
            () = committed => {}
            () = tokio::time::sleep(timeout) => {}
        }
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        Ok(self.state().dead_letters(limit))
    }

    async fn retry_dead_letters(&self, event_ids: Option<&[Uuid]>) -> Result<u64, Error> {
        let requeued = self.state().retry_dead_letters(event_ids);
        if requeued > 0 {
            self.shared.committed.notify_waiters();
        }
        Ok(requeued)
    }

    async fn purge_dead_letters(&self, before: SystemTime) -> Result<u64, Error> {
        let mut state = self.state();
        let cutoff = state.clock.at(before);
        Ok(state.purge(cutoff))
    }

    /// The cutoff is taken on the outbox's clock.
    async fn purge_dead_letters_older_than(&self, age: Duration) -> Result<u64, Error> {
        let mut state = self.state();
        let cutoff = state.clock.ago(age.min(OLDEST));
        Ok(state.purge(cutoff))
    }
}
