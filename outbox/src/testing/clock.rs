//! The in-memory outbox's clock: tokio's, so that a test with paused time
//! (`#[tokio::test(start_paused = true)]`) drives leases, retries and dead
//! letters; shown as wall-clock times from a start the caller may fix.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Where the in-memory outbox's clock starts, unless told otherwise:
/// 2025-01-01T00:00:00Z, so that the times a run shows do not depend on when
/// it ran.
pub(crate) const DEFAULT_START: Duration = Duration::from_secs(1_735_689_600);

/// A point on the outbox's clock: the time since the outbox was made.
pub(crate) type At = Duration;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// The tokio instant the clock started at.
    base: Instant,
    /// The wall-clock time it shows at `base`.
    start: SystemTime,
    /// How far [`advance`](Self::advance) moved it beyond tokio's time.
    skew: Duration,
}

impl Clock {
    pub(crate) fn new(start: SystemTime) -> Self {
        Self {
            base: Instant::now(),
            start,
            skew: Duration::ZERO,
        }
    }

    pub(crate) fn now(&self) -> At {
        self.base.elapsed() + self.skew
    }

    pub(crate) fn advance(&mut self, by: Duration) {
        self.skew = self.skew.saturating_add(by);
    }

    /// Show `wall` now, without moving the clock.
    pub(crate) fn show_now(&mut self, wall: SystemTime) {
        let now = self.now();
        self.start = wall.checked_sub(now).unwrap_or(wall);
    }

    /// `at` as a wall-clock time.
    pub(crate) fn wall(&self, at: At) -> SystemTime {
        self.start.checked_add(at).unwrap_or(self.start)
    }

    /// A wall-clock time on this clock; `None` before it started.
    pub(crate) fn at(&self, wall: SystemTime) -> Option<At> {
        wall.duration_since(self.start).ok()
    }

    /// `age` before now; `None` before the clock started.
    pub(crate) fn ago(&self, age: Duration) -> Option<At> {
        self.now().checked_sub(age)
    }
}
