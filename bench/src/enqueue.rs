//! Part 1: what `outbox::enqueue` adds to a business transaction, against a
//! hand-written INSERT of the same row into an equivalent plain table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox::{OutboxEvent, Tables, Uuid};
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Connection, Postgres, QueryBuilder};

use crate::common::{
    Config, OrderPlaced, Recorder, checkpoint, create_orders, drop_schema, events_table, exec,
    fresh_schema, order, pg_pool, random_key,
};

/// How the events of a transaction are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `outbox::enqueue` / `enqueue_all`, wake-up trigger installed.
    Outbox,
    /// The same, into outbox tables whose wake-up trigger was dropped.
    NoTrigger,
    /// A hand-written sqlx INSERT into a plain table with the same columns.
    Hand,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Outbox => "outbox",
            Mode::NoTrigger => "outbox_notrigger",
            Mode::Hand => "hand",
        }
    }
}

/// The tables one producer transaction writes to.
pub(crate) struct Setup {
    pub(crate) outbox: Tables,
    pub(crate) notrig: Tables,
    pub(crate) orders_sql: Arc<str>,
    pub(crate) hand_one_sql: Arc<str>,
    pub(crate) hand_many_head: String,
    pub(crate) truncate_sql: String,
}

impl Setup {
    /// Creates the business table, the outbox tables (with and without the
    /// wake-up trigger) and the plain table in `schema`.
    pub(crate) async fn create(pool: &PgPool, schema: &str) -> anyhow::Result<Self> {
        let orders = create_orders(pool, schema).await?;
        let outbox = Tables::default().schema(schema)?;
        outbox.migrate(pool).await?;
        let notrig = Tables::new("notrig")?.schema(schema)?;
        notrig.migrate(pool).await?;
        exec(
            pool,
            format!(
                "DROP TRIGGER \"notrig_events_notify\" ON {}",
                events_table(&notrig)
            ),
        )
        .await?;
        // Same columns, defaults, primary key and partition-key index; no trigger.
        let plain = format!("{schema}.plain_events");
        exec(
            pool,
            format!(
                "CREATE TABLE {plain} (LIKE {} INCLUDING ALL)",
                events_table(&outbox)
            ),
        )
        .await?;
        Ok(Self {
            orders_sql: format!("INSERT INTO {orders} (customer_id, total_cents) VALUES ($1, $2)")
                .into(),
            hand_one_sql: format!(
                "INSERT INTO {plain} (id, event_type, version, topic, partition_key, payload, headers) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)"
            )
            .into(),
            hand_many_head: format!(
                "INSERT INTO {plain} (id, event_type, version, topic, partition_key, payload, headers) "
            ),
            truncate_sql: format!(
                "TRUNCATE {orders}, {}, {}, {plain}",
                events_table(&outbox),
                events_table(&notrig)
            ),
            outbox,
            notrig,
        })
    }

    /// One business transaction: the business row, then `k` events written
    /// the `mode` way. Returns the id of the first event.
    pub(crate) async fn transaction(
        &self,
        conn: &mut sqlx::PgConnection,
        mode: Mode,
        events: &[OrderPlaced],
    ) -> anyhow::Result<Uuid> {
        let mut tx = conn.begin().await?;
        let id = self.write(&mut tx, mode, events).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// The business row and the events, inside `tx`.
    pub(crate) async fn write(
        &self,
        tx: &mut sqlx::Transaction<'_, Postgres>,
        mode: Mode,
        events: &[OrderPlaced],
    ) -> anyhow::Result<Uuid> {
        let first = &events[0];
        sqlx::query(AssertSqlSafe(self.orders_sql.clone()))
            .bind(first.customer_id)
            .bind(first.total_cents)
            .execute(&mut **tx)
            .await?;
        let id = match (mode, events) {
            (Mode::Outbox, [one]) => self.outbox.enqueue(tx, one).await?,
            (Mode::NoTrigger, [one]) => self.notrig.enqueue(tx, one).await?,
            (Mode::Outbox, many) => self.outbox.enqueue_all(tx, many).await?[0],
            (Mode::NoTrigger, many) => self.notrig.enqueue_all(tx, many).await?[0],
            (Mode::Hand, [one]) => {
                let id = Uuid::now_v7();
                sqlx::query(AssertSqlSafe(self.hand_one_sql.clone()))
                    .bind(id)
                    .bind(OrderPlaced::NAME)
                    .bind(OrderPlaced::VERSION as i32)
                    .bind(OrderPlaced::TOPIC)
                    .bind(Some(one.customer_id.to_string()))
                    .bind(serde_json::to_vec(one)?)
                    .bind("{}")
                    .execute(&mut **tx)
                    .await?;
                id
            }
            (Mode::Hand, many) => {
                let rows = many
                    .iter()
                    .map(|e| {
                        Ok((
                            Uuid::now_v7(),
                            e.customer_id.to_string(),
                            serde_json::to_vec(e)?,
                        ))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let id = rows[0].0;
                let mut qb = QueryBuilder::<Postgres>::new(&self.hand_many_head);
                qb.push_values(rows, |mut b, (id, key, payload)| {
                    b.push_bind(id)
                        .push_bind(OrderPlaced::NAME)
                        .push_bind(OrderPlaced::VERSION as i32)
                        .push_bind(OrderPlaced::TOPIC)
                        .push_bind(Some(key))
                        .push_bind(payload)
                        .push_bind("{}")
                        .push_unseparated("::jsonb");
                });
                qb.build().execute(&mut **tx).await?;
                id
            }
        };
        Ok(id)
    }
}

/// Events for one transaction.
pub(crate) fn batch(seq: i64, k: usize) -> Vec<OrderPlaced> {
    (0..k as i64)
        .map(|j| order(seq * k as i64 + j, random_key(1000)))
        .collect()
}

/// Transactions per second of `conns` connections writing `k` events per
/// transaction, for each mode: `rounds` rounds of `slice` per mode, the
/// modes in a rotating order, so that drift on a shared machine hits them
/// alike.
async fn measure(
    pool: &PgPool,
    setup: &Arc<Setup>,
    modes: &[Mode],
    k: usize,
    conns: usize,
    rounds: usize,
    slice: Duration,
) -> anyhow::Result<Vec<f64>> {
    exec(pool, setup.truncate_sql.clone()).await?;
    checkpoint(pool).await;
    // Warm-up: statements prepared on every connection, caches hot.
    for &mode in modes {
        run_workers(pool, setup, mode, k, conns, Duration::from_millis(300)).await?;
    }
    let mut acc = vec![(0u64, 0.0f64); modes.len()];
    for r in 0..rounds {
        for j in 0..modes.len() {
            let i = (j + r) % modes.len();
            let (n, secs) = run_workers(pool, setup, modes[i], k, conns, slice).await?;
            acc[i].0 += n;
            acc[i].1 += secs;
        }
    }
    Ok(acc.into_iter().map(|(n, secs)| n as f64 / secs).collect())
}

/// Transactions of `k` events each that `conns` connections commit in
/// `window` in `mode`, and the seconds taken.
pub(crate) async fn run_workers(
    pool: &PgPool,
    setup: &Arc<Setup>,
    mode: Mode,
    k: usize,
    conns: usize,
    window: Duration,
) -> anyhow::Result<(u64, f64)> {
    let start = Instant::now();
    let deadline = start + window;
    let mut tasks = Vec::new();
    for w in 0..conns {
        let pool = pool.clone();
        let setup = setup.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            let mut n = 0u64;
            let mut seq = (w as i64) << 40;
            while Instant::now() < deadline {
                let events = batch(seq, k);
                setup.transaction(&mut conn, mode, &events).await?;
                seq += 1;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok((total, start.elapsed().as_secs_f64()))
}

pub(crate) async fn run(cfg: &Config, rec: &mut Recorder) -> anyhow::Result<()> {
    let admin = pg_pool(&cfg.url, 1).await?;
    let schema = fresh_schema(&admin, "enq").await?;
    let result = run_in(cfg, rec, &schema).await;
    drop_schema(&admin, &schema).await;
    result
}

async fn run_in(cfg: &Config, rec: &mut Recorder, schema: &str) -> anyhow::Result<()> {
    let pool = pg_pool(&cfg.url, 4).await?;
    let setup = Arc::new(Setup::create(&pool, schema).await?);
    let rounds = cfg.pick(4, 1);
    let slice = cfg.pick(Duration::from_secs(1), Duration::from_millis(800));
    let modes = [Mode::Outbox, Mode::Hand, Mode::NoTrigger];
    for (conns, k) in [(1, 1), (4, 1), (1, 10), (4, 10)] {
        let tag = format!("pg.c{conns}.e{k}");
        let got = measure(&pool, &setup, &modes, k, conns, rounds, slice).await?;
        for (mode, tps) in modes.iter().zip(&got) {
            rec.add(
                "enqueue",
                format!("{tag}.{}_tx_s", mode.label()),
                *tps,
                "tx/s",
            );
        }
        let (outbox, hand, notrig) = (got[0], got[1], got[2]);
        rec.add("enqueue", format!("{tag}.ratio"), outbox / hand, "x");
        rec.add(
            "enqueue",
            format!("{tag}.ratio_notrigger"),
            notrig / hand,
            "x",
        );
        rec.add(
            "enqueue",
            format!("{tag}.trigger_cost_pct"),
            100.0 * (1.0 - outbox / notrig),
            "%",
        );
        if k > 1 {
            rec.add(
                "enqueue",
                format!("{tag}.outbox_events_s"),
                outbox * k as f64,
                "ev/s",
            );
        }
    }
    Ok(())
}
