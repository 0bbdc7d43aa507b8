//! The SQL the stores share, written once: each [`Dialect`] fills in its
//! spelling of the clock, parameters, parked events, lists and upserts.

use std::marker::PhantomData;
use std::sync::Arc;

use uuid::Uuid;

use super::dialect::{Dialect, Query, query};
use crate::tables::Tables;

/// The per-key head rule: the event has no partition key, or no event of
/// its key matches `other` (on alias `p`, against the event's alias `e`).
pub(crate) fn key_free(ev: &str, other: &str) -> String {
    format!(
        "(e.partition_key IS NULL OR NOT EXISTS ( \
           SELECT 1 FROM {ev} p WHERE p.partition_key = e.partition_key AND {other}))"
    )
}

/// Events of alias `a` that are due and not leased.
fn due<D: Dialect>(a: &str) -> String {
    let now = D::NOW;
    format!("{a}.due_at <= {now} AND ({a}.lease_until IS NULL OR {a}.lease_until <= {now})")
}

/// What a claim may take (alias `e`): due, not leased, and the head of its
/// key.
pub(crate) fn claimable<D: Dialect>(ev: &str) -> String {
    format!("{} AND {}", due::<D>("e"), key_free(ev, "p.id < e.id"))
}

/// The ids of the due events (alias `d`), oldest first.
pub(crate) fn due_ids<D: Dialect>(ev: &str) -> String {
    format!(
        "SELECT d.id FROM {ev} d WHERE {} ORDER BY d.id",
        due::<D>("d")
    )
}

/// Alias `e` is among the oldest `window` due events (the parameter
/// `window`; see [`claim_in_window`](super::claim_in_window)); `max_id` is
/// greater than every id, for a window past the last due event.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn in_window<D: Dialect>(ev: &str, window: &str, max_id: &str) -> String {
    format!(
        "e.id <= COALESCE(({} LIMIT 1 OFFSET {window}), {max_id})",
        due_ids::<D>(ev)
    )
}

/// The ids of `candidates` (a query of `id` and `len`, a payload's length in
/// bytes) that a claim takes within a byte budget (the parameter `budget`):
/// the oldest ones while their running total of bytes stays within it, and
/// always the oldest one.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn within_budget(candidates: &str, budget: &str) -> String {
    format!(
        "SELECT b.id FROM ( \
           SELECT c.id, c.len, SUM(c.len) OVER (ORDER BY c.id) AS run FROM ({candidates}) c) b \
         WHERE b.run <= {budget} OR b.run = b.len"
    )
}

/// The columns of an event as the store reads them (`Read::event` in
/// [`shared`](super::shared)), from `a.id_column` and the other columns of
/// alias `a` (`a` may be empty, or `e.`).
pub(crate) fn event_columns<D: Dialect>(a: &str, id_column: &str) -> String {
    format!(
        "{a}{id_column}, {a}event_type, {a}version, {a}topic, {a}partition_key, {a}payload, \
         {}, {}, {a}attempts",
        D::text(&format!("{a}headers")),
        D::millis(&format!("{a}created_at")),
    )
}

/// The columns of a claimed event as [`claimed`](super::shared::Logic::claimed)
/// reads them.
pub(crate) fn claimed_columns<D: Dialect>(a: &str) -> String {
    format!(
        "{}, {a}done, {a}only_publishers, {a}dead_publishers",
        event_columns::<D>(a, "id")
    )
}

/// Where a [`WithIds`] statement has its list of ids.
pub(crate) const IDS: &str = "<ids>";

/// A statement about a list of ids (`IDS` in its text, the list from
/// parameter 1 on): built once when the list is one parameter, for each
/// length of the list when every id is one.
pub(crate) struct WithIds<D> {
    head: String,
    tail: String,
    whole: Option<Arc<str>>,
    dialect: PhantomData<fn() -> D>,
}

impl<D: Dialect> WithIds<D> {
    pub(crate) fn new(text: &str) -> Self {
        let (head, tail) = text.split_once(IDS).unwrap_or((text, ""));
        let whole = D::IDS_PER_STATEMENT
            .is_none()
            .then(|| format!("{head}{}{tail}", D::in_ids(1)).into());
        Self {
            head: head.to_owned(),
            tail: tail.to_owned(),
            whole,
            dialect: PhantomData,
        }
    }

    /// The statement for `n` ids.
    pub(crate) fn text(&self, n: usize) -> Arc<str> {
        match &self.whole {
            Some(whole) => whole.clone(),
            None => format!("{}{}{}", self.head, D::in_ids(n), self.tail).into(),
        }
    }

    /// The statement for `ids`, with them bound (at most
    /// [`IDS_PER_STATEMENT`](Dialect::IDS_PER_STATEMENT)).
    pub(crate) fn query(&self, ids: &[Uuid]) -> Query<D::DB> {
        D::bind_ids(query(&self.text(ids.len())), ids)
    }
}

/// The statements of every store.
pub(crate) struct Statements<D> {
    pub(crate) ack: WithIds<D>,
    pub(crate) release: WithIds<D>,
    pub(crate) renew: WithIds<D>,
    pub(crate) dead: Arc<str>,
    pub(crate) retry: Arc<str>,
    pub(crate) park: Arc<str>,
    pub(crate) finish: Arc<str>,
    pub(crate) pending: Arc<str>,
    pub(crate) list_dead: Arc<str>,
    pub(crate) dead_ids: WithIds<D>,
    pub(crate) all_dead_ids: Arc<str>,
    pub(crate) unpark: WithIds<D>,
    pub(crate) requeue: WithIds<D>,
    pub(crate) delete_dead: WithIds<D>,
    /// Purge the dead letters that failed before a point in time.
    pub(crate) purge_before: Purge,
    /// Purge those that failed longer than a delay ago.
    pub(crate) purge_older: Purge,
}

/// Delete the dead letters that failed before a cutoff (parameter 1), and
/// first the parked events they held back, so that their keys move on.
/// Those of an event still waiting in the outbox (not parked) are left
/// alone, as a retry leaves them: under `KeyPolicy::Block` the event would
/// otherwise be parked later with no dead letter to retry or purge, and
/// hold its key for good.
pub(crate) struct Purge {
    pub(crate) parked: Arc<str>,
    pub(crate) dead: Arc<str>,
}

impl Purge {
    fn new(ev: &str, dl: &str, parked: &str, cutoff: &str) -> Self {
        Self {
            parked: format!(
                "DELETE FROM {ev} WHERE due_at = {parked} AND id IN ( \
                   SELECT event_id FROM {dl} WHERE failed_at < {cutoff})"
            )
            .into(),
            dead: format!(
                "DELETE FROM {dl} WHERE failed_at < {cutoff} AND event_id NOT IN ( \
                   SELECT id FROM {ev} WHERE due_at < {parked})"
            )
            .into(),
        }
    }
}

impl<D: Dialect> Statements<D> {
    pub(crate) fn new(tables: &Tables) -> Self {
        let ev = D::table(tables, "events");
        let dl = D::table(tables, "dead_letters");
        let p = D::param;
        let (now, parked, greatest) = (D::NOW, D::PARKED, D::GREATEST);
        let [publisher, error, from] = D::failures();
        let unleased = "lease_owner = NULL, lease_until = NULL";
        let fenced = format!("lease_owner = {}", p(2));
        // Dead letters of events that are not waiting in the outbox (parked
        // ones are not): these are retried, the others left alone.
        let dead_ids = |filter: &str| {
            format!(
                "SELECT DISTINCT event_id FROM {dl} d WHERE {filter} NOT EXISTS ( \
                   SELECT 1 FROM {ev} e WHERE e.id = d.event_id AND e.due_at < {parked}) \
                 ORDER BY event_id"
            )
        };
        let any = D::any_value;
        Self {
            ack: WithIds::new(&format!("DELETE FROM {ev} WHERE id {IDS} AND {fenced}")),
            release: WithIds::new(&format!(
                "UPDATE {ev} SET {unleased}, attempts = {greatest}(attempts - 1, 0) \
                 WHERE id {IDS} AND {fenced}"
            )),
            renew: WithIds::new(&format!(
                "UPDATE {ev} SET lease_until = {} WHERE id {IDS} AND {fenced}",
                D::after(&p(3))
            )),
            dead: D::upsert(
                &dl,
                &format!(
                    "(event_id, publisher, event_type, version, topic, partition_key, payload, \
                       headers, created_at, attempts, error, failed_at) \
                     SELECT e.id, {publisher}, e.event_type, e.version, e.topic, e.partition_key, \
                       e.payload, e.headers, e.created_at, e.attempts, {error}, {now} \
                     FROM {ev} e{from} WHERE e.id = {} AND e.lease_owner = {}",
                    p(3),
                    p(4)
                ),
                "event_id, publisher",
                &["error", "attempts", "failed_at"],
            )
            .into(),
            retry: format!(
                "UPDATE {ev} SET due_at = {}, done = {}, dead_publishers = {}, last_error = {}, \
                   attempts = {greatest}(attempts - {}, 0), {unleased} \
                 WHERE id = {} AND lease_owner = {}",
                D::after(&p(1)),
                p(2),
                p(3),
                p(4),
                p(5),
                p(6),
                p(7)
            )
            .into(),
            park: format!(
                "UPDATE {ev} SET due_at = {parked}, done = {}, dead_publishers = {}, \
                   last_error = {}, {unleased} \
                 WHERE id = {} AND lease_owner = {}",
                p(1),
                p(2),
                p(3),
                p(4),
                p(5)
            )
            .into(),
            finish: format!("DELETE FROM {ev} WHERE id = {} AND {fenced}", p(1)).into(),
            pending: format!(
                "SELECT count(*) FROM {ev} e WHERE e.due_at < {parked} AND {}",
                key_free(&ev, &format!("p.due_at = {parked} AND p.id < e.id"))
            )
            .into(),
            list_dead: format!(
                "SELECT {}, publisher, error, {} \
                 FROM {dl} ORDER BY failed_at, event_id, publisher LIMIT {}",
                event_columns::<D>("", "event_id"),
                D::millis("failed_at"),
                p(1)
            )
            .into(),
            dead_ids: WithIds::new(&dead_ids(&format!("d.event_id {IDS} AND"))),
            all_dead_ids: dead_ids("").into(),
            unpark: WithIds::new(&format!(
                "DELETE FROM {ev} WHERE due_at = {parked} AND id {IDS}"
            )),
            requeue: WithIds::new(&D::insert_or_skip(
                &ev,
                &format!(
                    "(id, event_type, version, topic, partition_key, payload, headers, \
                       created_at, due_at, done, only_publishers) \
                     SELECT event_id, {}, {}, {}, {}, {}, {}, {}, {now}, {}, {} \
                     FROM {dl} WHERE event_id {IDS} GROUP BY event_id",
                    any("event_type"),
                    any("version"),
                    any("topic"),
                    any("partition_key"),
                    any("payload"),
                    any("headers"),
                    any("created_at"),
                    D::EMPTY_LIST,
                    D::list_agg("publisher"),
                ),
                "id",
            )),
            delete_dead: WithIds::new(&format!("DELETE FROM {dl} WHERE event_id {IDS}")),
            purge_before: Purge::new(&ev, &dl, parked, &D::time(&p(1))),
            purge_older: Purge::new(&ev, &dl, parked, &D::ago(&p(1))),
        }
    }
}
