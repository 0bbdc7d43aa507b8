//! Checks what reached a destination against what was committed: lost,
//! duplicated, unexpected and out-of-order deliveries. Every reliability
//! test reports through it.

use std::collections::{HashMap, HashSet};
use std::fmt;

use outbox::Uuid;

/// One event as the producer committed it, or as a consumer received it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Item {
    /// The event id.
    pub id: Uuid,
    /// The partition key.
    pub key: String,
    /// Position of the event within its key, as enqueued (0, 1, 2, ...).
    pub seq: u64,
}

/// What a run delivered, compared with what was committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Committed events.
    pub expected: usize,
    /// Deliveries seen.
    pub delivered: usize,
    /// Committed events never delivered.
    pub lost: usize,
    /// Deliveries beyond the first of an event.
    pub duplicated: usize,
    /// Deliveries of events that were never committed.
    pub unexpected: usize,
    /// First deliveries that came after a later event of the same key.
    pub out_of_order: usize,
    /// A few examples of what went wrong, for the failure message.
    pub examples: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "expected {}, delivered {}: lost {}, duplicated {}, unexpected {}, out of order {}",
            self.expected,
            self.delivered,
            self.lost,
            self.duplicated,
            self.unexpected,
            self.out_of_order
        )?;
        for e in &self.examples {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Compare `delivered` (in arrival order, as one publisher saw them) with
/// `expected`. Re-deliveries (an event seen again) are duplicates, not order
/// violations; an event delivered for the first time after a later event of
/// its key is out of order.
pub fn check(expected: &[Item], delivered: &[Item]) -> Report {
    let mut report = Report {
        expected: expected.len(),
        delivered: delivered.len(),
        ..Report::default()
    };
    let wanted: HashSet<&Uuid> = expected.iter().map(|i| &i.id).collect();
    let mut seen: HashSet<&Uuid> = HashSet::new();
    let mut highest: HashMap<&str, u64> = HashMap::new();
    for item in delivered {
        if !wanted.contains(&item.id) {
            report.unexpected += 1;
            if report.examples.len() < 10 {
                report.examples.push(format!("unexpected {item:?}"));
            }
            continue;
        }
        if !seen.insert(&item.id) {
            report.duplicated += 1;
            continue;
        }
        let top = highest.entry(item.key.as_str()).or_insert(0);
        if item.seq < *top {
            report.out_of_order += 1;
            if report.examples.len() < 10 {
                report.examples.push(format!(
                    "out of order: key {} got seq {} after {}",
                    item.key, item.seq, top
                ));
            }
        }
        *top = (*top).max(item.seq);
    }
    for item in expected {
        if !seen.contains(&item.id) {
            report.lost += 1;
            if report.examples.len() < 10 {
                report.examples.push(format!("lost {item:?}"));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u128, key: &str, seq: u64) -> Item {
        Item {
            id: Uuid::from_u128(n),
            key: key.to_owned(),
            seq,
        }
    }

    #[test]
    fn counts_each_kind_of_fault() {
        let expected = vec![
            item(1, "a", 0),
            item(2, "a", 1),
            item(3, "a", 2),
            item(4, "b", 0),
        ];
        let clean = check(&expected, &expected);
        assert_eq!(
            (
                clean.lost,
                clean.duplicated,
                clean.unexpected,
                clean.out_of_order
            ),
            (0, 0, 0, 0)
        );

        // 2 is re-delivered after 3 (a duplicate, not an order fault), 4 is lost,
        // 9 was never committed.
        let delivered = vec![
            item(1, "a", 0),
            item(2, "a", 1),
            item(3, "a", 2),
            item(2, "a", 1),
            item(9, "c", 0),
        ];
        let r = check(&expected, &delivered);
        assert_eq!(
            (r.lost, r.duplicated, r.unexpected, r.out_of_order),
            (1, 1, 1, 0),
            "{r}"
        );

        // 3 before 2 on first delivery: out of order.
        let swapped = vec![
            item(1, "a", 0),
            item(3, "a", 2),
            item(2, "a", 1),
            item(4, "b", 0),
        ];
        assert_eq!(check(&expected, &swapped).out_of_order, 1);
    }
}
