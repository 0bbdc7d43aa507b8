//! Part 2: how fast Runners drain a pre-filled outbox through a no-op
//! publisher, against a plain `DELETE … FOR UPDATE SKIP LOCKED` loop over the
//! same rows.

use std::time::{Duration, Instant};

use outbox::{Runner, Tables};
use sqlx::AssertSqlSafe;
use sqlx::postgres::PgPool;

use crate::common::{
    Config, Recorder, Sink, drop_schema, events_table, exec, fill_pg, fresh_schema, pg_pool,
    settle_table,
};

/// Distinct partition keys in the pre-filled outbox.
pub(crate) const KEYS: i64 = 1000;

/// Drains the outbox with `runners` Runner instances (each its own pool of 4
/// connections, all in this process), in `run` mode (default poll interval
/// and wake-up) until the last event was published, or `cap` passed.
/// Returns events/s (measured up to the last publisher call) and the share
/// of the `n` events published.
pub(crate) async fn drain_runners(
    url: &str,
    tables: &Tables,
    n: u64,
    batch: usize,
    runners: usize,
    cap: Duration,
) -> anyhow::Result<(f64, f64)> {
    let sink = Sink::counting(n);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut built = Vec::new();
    for _ in 0..runners {
        let pool = pg_pool(url, 4).await?;
        let reached = sink.reached_target();
        let mut stop = stop_rx.clone();
        built.push(
            Runner::builder(pool)
                .tables(tables.clone())
                .without_registered()
                .publisher(sink.clone())
                .batch_size(batch)
                .shutdown(async move {
                    tokio::select! {
                        () = reached => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                })
                .build()?,
        );
    }
    let start = Instant::now();
    let tasks: Vec<_> = built.into_iter().map(|r| tokio::spawn(r.run())).collect();
    let timer = tokio::spawn(async move {
        tokio::time::sleep(cap).await;
        let _ = stop_tx.send(true);
        Instant::now()
    });
    for t in tasks {
        t.await??;
    }
    let end = match sink.reached() {
        Some(t) => {
            timer.abort();
            t
        }
        None => timer.await?,
    };
    let published = sink.count().min(n);
    Ok((
        published as f64 / (end - start).as_secs_f64(),
        published as f64 / n as f64,
    ))
}

/// Drains `table` with `drainers` connections running the raw DELETE loop.
pub(crate) async fn drain_raw(
    pool: &PgPool,
    table: &str,
    n: u64,
    batch: usize,
    drainers: usize,
) -> anyhow::Result<f64> {
    let sql: std::sync::Arc<str> = format!(
        "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} ORDER BY id LIMIT $1 \
         FOR UPDATE SKIP LOCKED)"
    )
    .into();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..drainers {
        let pool = pool.clone();
        let sql = sql.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            let mut total = 0u64;
            loop {
                let done = sqlx::query(AssertSqlSafe(sql.clone()))
                    .bind(batch as i64)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                if done == 0 {
                    return anyhow::Ok(total);
                }
                total += done;
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(total == n, "the raw drain deleted {total} of {n} rows");
    Ok(n as f64 / secs)
}

pub(crate) async fn run(cfg: &Config, rec: &mut Recorder) -> anyhow::Result<()> {
    let admin = pg_pool(&cfg.url, 2).await?;
    let schema = fresh_schema(&admin, "relay").await?;
    let result = run_in(cfg, rec, &admin, &schema).await;
    drop_schema(&admin, &schema).await;
    result
}

async fn refill(pool: &PgPool, tables: &Tables, n: u64) -> anyhow::Result<()> {
    let table = events_table(tables);
    exec(pool, format!("TRUNCATE {table}")).await?;
    fill_pg(pool, tables, n as usize, KEYS, 2).await?;
    settle_table(pool, &table).await
}

async fn run_in(
    cfg: &Config,
    rec: &mut Recorder,
    admin: &PgPool,
    schema: &str,
) -> anyhow::Result<()> {
    let n: u64 = cfg.pick(200_000, 20_000);
    let tables = Tables::default().schema(schema)?;
    tables.migrate(admin).await?;
    let table = events_table(&tables);
    let fill_start = Instant::now();
    refill(admin, &tables, n).await?;
    rec.add(
        "relay",
        "pg.fill_events_s",
        n as f64 / fill_start.elapsed().as_secs_f64(),
        "ev/s",
    );
    let raw_pool = pg_pool(&cfg.url, 2).await?;
    let cap = cfg.pick(Duration::from_secs(45), Duration::from_secs(20));
    for batch in [100usize, 1000] {
        let tag = format!("pg.b{batch}");
        let mut got = [0.0f64; 4];
        for (i, (what, count)) in [("raw", 1), ("runner", 1), ("raw", 2), ("runner", 2)]
            .into_iter()
            .enumerate()
        {
            if i > 0 || batch > 100 {
                refill(admin, &tables, n).await?;
            }
            let cpu = CpuTimes::now();
            let rate = if what == "raw" {
                drain_raw(&raw_pool, &table, n, batch, count).await?
            } else {
                let (rate, share) = drain_runners(&cfg.url, &tables, n, batch, count, cap).await?;
                if share < 1.0 {
                    // Stopped at the cap: the rate is over the part drained.
                    rec.add(
                        "relay",
                        format!("{tag}.{what}{count}_drained_share"),
                        share,
                        "of n",
                    );
                }
                rate
            };
            rec.add("relay", format!("{tag}.{what}{count}_ev_s"), rate, "ev/s");
            if let Some(busy) = cpu.busy_share() {
                rec.add(
                    "relay",
                    format!("{tag}.{what}{count}_cpu_busy"),
                    busy,
                    "of all cores",
                );
            }
            got[i] = rate;
        }
        let [raw1, runner1, raw2, runner2] = got;
        rec.add(
            "relay",
            format!("{tag}.runner1_vs_raw1"),
            runner1 / raw1,
            "x",
        );
        rec.add(
            "relay",
            format!("{tag}.runner2_vs_runner1"),
            runner2 / runner1,
            "x",
        );
        rec.add(
            "relay",
            format!("{tag}.runner2_vs_raw2"),
            runner2 / raw2,
            "x",
        );
    }
    // Let the last Runners' pools close before the next part.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

/// The machine's CPU time counters (`/proc/stat`), to tell how busy all
/// cores were during a drain: a drain that keeps them busy cannot go faster
/// by adding Runners on the same machine.
pub(crate) struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    pub(crate) fn now() -> Self {
        let (busy, total) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?.strip_prefix("cpu ")?.to_owned();
                let v: Vec<u64> = line
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal ...
                let total: u64 = v.iter().take(8).sum();
                let idle = v.get(3)? + v.get(4)?;
                Some((total - idle, total))
            })
            .unwrap_or((0, 0));
        Self { busy, total }
    }

    /// Share of all cores' time that was busy since `self` was taken.
    pub(crate) fn busy_share(&self) -> Option<f64> {
        let now = Self::now();
        let total = now.total.checked_sub(self.total)?;
        (total > 0).then(|| now.busy.saturating_sub(self.busy) as f64 / total as f64)
    }
}
