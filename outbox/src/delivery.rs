//! The bookkeeping of one event's deliveries: what a claim hands the Runner
//! ([`ClaimedEvent`]) and what the Runner decides became of it
//! ([`Settlement`], an [`Outcome`] plus the dead letters to write).
//!
//! Every fact is a typed field: which publishers delivered the event, which
//! were dead-lettered, which alone are still owed it. Nothing is carried as
//! a sentinel name inside a list of publishers.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::event::StorageBox;

/// A claimed event with the Runner's bookkeeping of its deliveries.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClaimedEvent {
    /// The event as publishers see it.
    pub event: Arc<StorageBox>,
    /// Publishers that have delivered it (in earlier attempts).
    pub delivered: Vec<String>,
    /// Publishers whose delivery of it was dead-lettered (in earlier attempts).
    pub dead: Vec<String>,
    /// When set, only these publishers are still owed the event (a retried
    /// dead letter); when `None`, every publisher that accepts its type.
    pub only: Option<Vec<String>>,
    /// Why the stored row could not be read as it was written (headers that
    /// are not text, a key cut mid-character…), when it could not: the
    /// Runner dead-letters such an event for every publisher it is owed to,
    /// with this reason, instead of publishing what was read of it.
    pub unreadable: Option<String>,
}

impl ClaimedEvent {
    /// A claimed event that no publisher has seen yet (for Source
    /// implementations and tests).
    pub fn new(event: StorageBox) -> Self {
        Self {
            event: Arc::new(event),
            delivered: Vec::new(),
            dead: Vec::new(),
            only: None,
            unreadable: None,
        }
    }

    /// With these publishers having delivered it already.
    pub fn with_delivered(mut self, publishers: Vec<String>) -> Self {
        self.delivered = publishers;
        self
    }

    /// With these publishers' deliveries dead-lettered already.
    pub fn with_dead(mut self, publishers: Vec<String>) -> Self {
        self.dead = publishers;
        self
    }

    /// Owed only to these publishers (a retried dead letter).
    pub fn with_only(mut self, publishers: Option<Vec<String>>) -> Self {
        self.only = publishers;
        self
    }

    /// Marked unreadable, for this reason.
    pub fn with_unreadable(mut self, reason: impl Into<String>) -> Self {
        self.unreadable = Some(reason.into());
        self
    }

    /// Whether `publisher` is finished with this event: it delivered it, or
    /// its delivery was dead-lettered.
    pub fn is_finished_for(&self, publisher: &str) -> bool {
        self.delivered
            .iter()
            .chain(&self.dead)
            .any(|p| p == publisher)
    }
}

/// One publisher's delivery that is given up on: a row of the dead-letter
/// table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The publisher's name.
    pub publisher: String,
    /// Why.
    pub error: String,
}

/// What becomes of a claimed event in the outbox table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Every publisher owed the event is finished with it: delete it.
    Finish,
    /// Some deliveries failed and will be tried again: the event is due
    /// again after `delay`, with `error` recorded as its last error.
    Retry {
        /// When it is due again.
        delay: Duration,
        /// What went wrong, one line per failed publisher.
        error: String,
    },
    /// Publishers the event is owed to are not in this Runner (not deployed
    /// yet, or deployed on another Runner): the event waits, due again after
    /// `delay`, and this attempt does not count toward `max_attempts`.
    Hold {
        /// When it is due again.
        delay: Duration,
        /// Which publishers are missing, for the event's last error.
        reason: String,
    },
    /// [`KeyPolicy::Block`](crate::KeyPolicy::Block) and a delivery was
    /// dead-lettered: the event stays in the outbox, never due, and holds
    /// its partition key until an operator retries or purges its dead
    /// letters.
    Park {
        /// Why, for the event's last error.
        error: String,
    },
}

/// The Runner's decision for one claimed event, for
/// [`Source::settle`](crate::Source::settle) to record in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settlement {
    /// The event.
    pub id: Uuid,
    /// Every publisher that has delivered it, this attempt included.
    pub delivered: Vec<String>,
    /// Every publisher whose delivery is dead-lettered, this attempt included.
    pub dead: Vec<String>,
    /// Dead letters to write now.
    pub dead_letters: Vec<Failure>,
    /// What becomes of the event.
    pub outcome: Outcome,
}

impl Settlement {
    /// Finish the event: every publisher is done with it.
    pub fn finish(id: Uuid) -> Self {
        Self::new(id, Outcome::Finish)
    }

    /// A settlement with this outcome and no deliveries recorded.
    pub fn new(id: Uuid, outcome: Outcome) -> Self {
        Self {
            id,
            delivered: Vec::new(),
            dead: Vec::new(),
            dead_letters: Vec::new(),
            outcome,
        }
    }

    /// With these publishers having delivered it.
    pub fn with_delivered(mut self, publishers: Vec<String>) -> Self {
        self.delivered = publishers;
        self
    }

    /// The same decision with every error text replaced by a plain note,
    /// for a database that refused to store the texts themselves.
    pub(crate) fn without_error_texts(mut self) -> Self {
        const PLAIN: &str = "the database refused to store this error text; see the Runner's log";
        for failure in &mut self.dead_letters {
            PLAIN.clone_into(&mut failure.error);
        }
        match &mut self.outcome {
            Outcome::Retry { error, .. } | Outcome::Park { error } => PLAIN.clone_into(error),
            Outcome::Hold { reason, .. } => PLAIN.clone_into(reason),
            Outcome::Finish => {}
        }
        self
    }

    /// With these dead letters written now (their publishers are added to
    /// [`dead`](Self::dead)).
    pub fn with_dead_letters(mut self, failures: Vec<Failure>) -> Self {
        for f in &failures {
            if !self.dead.contains(&f.publisher) {
                self.dead.push(f.publisher.clone());
            }
        }
        self.dead_letters = failures;
        self
    }
}
