//! The Source vacuums the events table itself.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Row};

use crate::error::Error;
use crate::store::conn::Conn;
use crate::tables::Tables;

/// Acked events are deleted at the head of the queue, and until vacuum
/// removes them every claim wades through their dead index entries. The
/// per-table autovacuum settings that `migrate` sets only help once the
/// autovacuum launcher visits the table, which is every
/// `autovacuum_naptime` (one minute by default): long enough, under load,
/// for the dead rows to slow the claims until the Runner falls behind for
/// good (measured: a backlog of 230,000 events after 60 s). So the Source
/// vacuums the events table itself after every [`VACUUM_EVERY`] deleted
/// events, at most once a [`VACUUM_INTERVAL`], in the background, skipping
/// when a vacuum already runs on it, and only when its role owns the table.
pub(super) struct Vacuum {
    state: Arc<Mutex<State>>,
    sql: Arc<Sql>,
}

#[derive(Default)]
struct State {
    /// Events deleted since the last vacuum started.
    deleted: u64,
    /// When the last vacuum started.
    last: Option<Instant>,
    running: bool,
    /// Whether this role owns the table; `None` until checked.
    owner: Option<bool>,
}

struct Sql {
    events: String,
    vacuum: String,
    owns_table: &'static str,
}

/// Deleted events after which the Source vacuums the events table.
const VACUUM_EVERY: u64 = 5000;
/// The shortest time between two such vacuums.
const VACUUM_INTERVAL: Duration = Duration::from_secs(1);

impl Vacuum {
    pub(super) fn new(tables: &Tables) -> Self {
        let events = tables.qualified("events");
        Self {
            state: Arc::default(),
            sql: Arc::new(Sql {
                vacuum: format!("VACUUM (SKIP_LOCKED) {events}"),
                owns_table: "SELECT pg_has_role(current_user, c.relowner, 'USAGE') \
                     FROM pg_class c WHERE c.oid = $1::regclass",
                events,
            }),
        }
    }

    /// Count deleted events; start a vacuum when it is time.
    pub(super) fn deleted(&self, pool: &PgPool, n: u64) {
        {
            let mut v = self.state.lock().unwrap_or_else(|e| e.into_inner());
            v.deleted = v.deleted.saturating_add(n);
            if v.deleted < VACUUM_EVERY
                || v.running
                || v.owner == Some(false)
                || v.last.is_some_and(|t| t.elapsed() < VACUUM_INTERVAL)
            {
                return;
            }
            v.deleted = 0;
            v.running = true;
            v.last = Some(Instant::now());
        }
        let (pool, sql, state) = (pool.clone(), self.sql.clone(), self.state.clone());
        tokio::spawn(async move {
            let owner = state.lock().unwrap_or_else(|e| e.into_inner()).owner;
            let result = vacuum(&pool, &sql, owner).await;
            let mut v = state.lock().unwrap_or_else(|e| e.into_inner());
            v.running = false;
            match result {
                Ok(owner) => v.owner = Some(owner),
                Err(error) => {
                    tracing::warn!(%error, table = %sql.events, "outbox: vacuuming the events table failed");
                }
            }
        });
    }
}

/// Vacuum the events table when this role owns it (checked once, when
/// `owner` is not known yet). Returns whether it does.
async fn vacuum(pool: &PgPool, sql: &Sql, owner: Option<bool>) -> Result<bool, Error> {
    let owner = match owner {
        Some(known) => known,
        None => {
            // Unnamed and in a transaction, so that it also works behind a
            // pooler in transaction mode.
            let mut conn = Conn::begin(pool, true).await?;
            let owns = conn.query(sqlx::query(sql.owns_table).bind(&sql.events));
            let owns: bool = owns.fetch_one(&mut *conn).await?.try_get(0)?;
            conn.commit().await?;
            if !owns {
                tracing::info!(
                    table = %sql.events,
                    "outbox: this role does not own the events table, so it leaves vacuuming it \
                     to autovacuum; under sustained load, lower autovacuum_naptime (e.g. to 1s)"
                );
            }
            owns
        }
    };
    if owner {
        let started = Instant::now();
        // One simple-protocol message: VACUUM cannot run in a transaction,
        // and a statement sent in one exchange cannot be split between two
        // server connections by a pooler in transaction mode.
        sqlx::raw_sql(AssertSqlSafe(sql.vacuum.clone()))
            .execute(pool)
            .await?;
        tracing::debug!(took = ?started.elapsed(), "outbox: vacuumed the events table");
    }
    Ok(owner)
}
