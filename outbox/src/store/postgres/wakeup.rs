//! The wake-up: a trigger notifies a channel when events are committed, and
//! the Source listens on it between claims.

use std::sync::OnceLock;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};

use crate::tables::Tables;

/// The NOTIFY channel of these tables: readable when it fits PostgreSQL's
/// 63-byte limit, a hash otherwise.
fn channel(tables: &Tables) -> String {
    let name = format!(
        "outbox.{}.{}",
        tables.schema_name().unwrap_or(""),
        tables.prefix()
    );
    if name.len() <= 63 {
        name
    } else {
        format!("outbox.{:016x}", fnv1a(name.as_bytes()))
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The statements of `migrate` that install the trigger on the events
/// table `ev`.
pub(super) fn trigger(tables: &Tables, ev: &str) -> [String; 3] {
    // Wake-up: a NOTIFY on commit, with no event data. A NOTIFY makes its
    // transaction's commit take a global lock, which serialises committing
    // writers; so at most one committing transaction at a time sends it
    // (the others skip: the Runner claims again right after a batch, and
    // polls). The trigger is deferred to commit time, so a long transaction
    // holds the lock only while it commits.
    let channel = channel(tables);
    let lock_key = i64::from_ne_bytes(fnv1a(channel.as_bytes()).to_ne_bytes());
    let notify_fn = match tables.quoted_schema() {
        Some(schema) => format!("{schema}.{}", tables.index_name("events_notify")),
        None => tables.index_name("events_notify"),
    };
    let trigger = tables.index_name("events_notify");
    [
        format!(
            "CREATE OR REPLACE FUNCTION {notify_fn}() RETURNS trigger LANGUAGE plpgsql AS $fn$ \
             BEGIN \
               IF pg_try_advisory_xact_lock({lock_key}) THEN \
                 PERFORM pg_notify('{channel}', ''); \
               END IF; \
               RETURN NULL; \
             END $fn$"
        ),
        format!("DROP TRIGGER IF EXISTS {trigger} ON {ev}"),
        format!(
            "CREATE CONSTRAINT TRIGGER {trigger} AFTER INSERT ON {ev} \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {notify_fn}()"
        ),
    ]
}

/// The Source's end of the channel: one listening connection, opened on
/// the first wait. It is the listener's own, outside the application's
/// pool (a pool of one, built from that pool's connect options, that only
/// reconnects it): held for good, a connection of that pool would be one
/// fewer for the producers, and with a small pool they timed out.
pub(super) struct Listener {
    channel: String,
    own: OnceLock<PgPool>,
    listener: tokio::sync::Mutex<Option<PgListener>>,
}

impl Listener {
    pub(super) fn new(tables: &Tables) -> Self {
        Self {
            channel: channel(tables),
            own: OnceLock::new(),
            listener: tokio::sync::Mutex::new(None),
        }
    }

    /// The listener's pool of one connection, to the server of `pool`.
    fn own(&self, pool: &PgPool) -> &PgPool {
        self.own.get_or_init(|| {
            PgPoolOptions::new()
                .max_connections(1)
                .min_connections(0)
                .max_lifetime(None)
                .idle_timeout(None)
                .acquire_timeout(pool.options().get_acquire_timeout())
                .connect_lazy_with((*pool.connect_options()).clone())
        })
    }

    /// [`Source::wait_for_events`](crate::Source::wait_for_events).
    pub(super) async fn wait(&self, pool: &PgPool, timeout: Duration) {
        let mut guard = self.listener.lock().await;
        if pool.is_closed() {
            // The application closed its pool: let the listening connection
            // go too.
            guard.take();
            if let Some(own) = self.own.get() {
                own.close().await;
            }
            drop(guard);
            tokio::time::sleep(timeout).await;
            return;
        }
        let Some(listener) = guard.as_mut() else {
            match PgListener::connect_with(self.own(pool)).await {
                Ok(mut listener) => match listener.listen(&self.channel).await {
                    Ok(()) => {
                        tracing::debug!(channel = %self.channel, "outbox: listening");
                        *guard = Some(listener);
                        // Notifications sent while nobody listened are lost:
                        // claim at once.
                    }
                    Err(error) => {
                        tracing::warn!(%error, "outbox: LISTEN failed; polling");
                        drop(guard);
                        tokio::time::sleep(timeout).await;
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "outbox: cannot open the listener connection; polling");
                    drop(guard);
                    tokio::time::sleep(timeout).await;
                }
            }
            return;
        };
        match tokio::time::timeout(timeout, listener.try_recv()).await {
            Err(_elapsed) => {}
            Ok(Ok(Some(_))) => while listener.next_buffered().is_some() {},
            Ok(Ok(None)) => tracing::info!("outbox: listener reconnected; claiming at once"),
            Ok(Err(error)) => {
                tracing::warn!(%error, "outbox: listener failed; it reconnects on the next wait");
                *guard = None;
            }
        }
    }
}
