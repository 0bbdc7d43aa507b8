//! Part 4: producers and a Runner together, against the producers alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox::Runner;
use sqlx::{AssertSqlSafe, Row};

use crate::common::{
    Config, Recorder, Sink, drop_schema, events_table, exec, fresh_schema, pg_pool, settle_table,
};
use crate::enqueue::{Mode, Setup, run_workers};

const PRODUCERS: usize = 4;

pub(crate) async fn run(cfg: &Config, rec: &mut Recorder) -> anyhow::Result<()> {
    let admin = pg_pool(&cfg.url, 1).await?;
    let schema = fresh_schema(&admin, "sus").await?;
    let result = run_in(cfg, rec, &schema).await;
    drop_schema(&admin, &schema).await;
    result
}

/// Transactions (one event each) committed by the producers in `window`,
/// and the seconds taken.
async fn produce(
    pool: &sqlx::PgPool,
    setup: &Arc<Setup>,
    window: Duration,
) -> anyhow::Result<(u64, f64)> {
    run_workers(pool, setup, Mode::Outbox, 1, PRODUCERS, window).await
}

async fn run_in(cfg: &Config, rec: &mut Recorder, schema: &str) -> anyhow::Result<()> {
    let window = cfg.pick(Duration::from_secs(60), Duration::from_secs(5));
    let pool = pg_pool(&cfg.url, PRODUCERS as u32).await?;
    let setup = Arc::new(Setup::create(&pool, schema).await?);
    let table = events_table(&setup.outbox);

    // Producers alone.
    exec(&pool, setup.truncate_sql.clone()).await?;
    settle_table(&pool, &table).await?;
    produce(&pool, &setup, Duration::from_millis(300)).await?;
    let (alone, secs) = produce(&pool, &setup, window).await?;
    let alone = alone as f64 / secs;
    rec.add("sustained", "pg.producers_alone_tx_s", alone, "tx/s");

    // Producers with a Runner (default settings: batch 100, wake-up on).
    exec(&pool, setup.truncate_sql.clone()).await?;
    settle_table(&pool, &table).await?;
    let sink = Sink::counting(u64::MAX);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = Runner::builder(pg_pool(&cfg.url, 4).await?)
        .tables(setup.outbox.clone())
        .without_registered()
        .publisher(sink.clone())
        .shutdown(async move {
            let _ = stop_rx.await;
        })
        .build()?;
    let runner = tokio::spawn(runner.run());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let sampler_pool = pg_pool(&cfg.url, 1).await?;
    let sample_sql = format!(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)) * 1000, 0)::float8 \
         FROM {table}"
    );
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    let sampler = {
        let sql = sample_sql.clone();
        let pool = sampler_pool.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut samples: Vec<(f64, i64, f64)> = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = done_rx.changed() => break,
                }
                let row = sqlx::query(AssertSqlSafe(sql.clone()))
                    .fetch_one(&pool)
                    .await?;
                samples.push((
                    start.elapsed().as_secs_f64(),
                    row.try_get(0)?,
                    row.try_get(1)?,
                ));
            }
            anyhow::Ok(samples)
        })
    };
    let published_before = sink.count();
    let (with_runner, secs) = produce(&pool, &setup, window).await?;
    let published = sink.count() - published_before;
    let _ = done_tx.send(true);
    let samples = sampler.await??;
    let with_runner = with_runner as f64 / secs;

    // Catch-up: how long the Runner needs to empty what is left.
    let catch_up_start = Instant::now();
    let mut left: i64 = 0;
    while catch_up_start.elapsed() < Duration::from_secs(20) {
        left = sqlx::query(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&sampler_pool)
            .await?
            .try_get(0)?;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(());
    runner.await??;

    rec.add(
        "sustained",
        "pg.producers_with_runner_tx_s",
        with_runner,
        "tx/s",
    );
    rec.add("sustained", "pg.ratio", with_runner / alone, "x");
    rec.add(
        "sustained",
        "pg.runner_ev_s",
        published as f64 / secs,
        "ev/s",
    );
    let (max_at, max_backlog, age_at_max) = samples
        .iter()
        .copied()
        .max_by_key(|s| s.1)
        .unwrap_or((0.0, 0, 0.0));
    rec.add("sustained", "pg.max_backlog", max_backlog as f64, "events");
    rec.add("sustained", "pg.max_backlog_at_s", max_at, "s");
    rec.add("sustained", "pg.oldest_age_at_max_ms", age_at_max, "ms");
    let mean_backlog =
        samples.iter().map(|s| s.1 as f64).sum::<f64>() / samples.len().max(1) as f64;
    rec.add("sustained", "pg.mean_backlog", mean_backlog, "events");
    rec.add("sustained", "pg.backlog_slope", slope(&samples), "events/s");
    let second_half_max = samples
        .iter()
        .filter(|s| s.0 >= secs / 2.0)
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    rec.add(
        "sustained",
        "pg.max_backlog_second_half",
        second_half_max as f64,
        "events",
    );
    rec.add(
        "sustained",
        "pg.catch_up_s",
        if left == 0 {
            catch_up_start.elapsed().as_secs_f64()
        } else {
            f64::NAN
        },
        "s",
    );
    Ok(())
}

/// Least-squares slope of the backlog over time: about 0 when it is bounded.
fn slope(samples: &[(f64, i64, f64)]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let mx = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let my = samples.iter().map(|s| s.1 as f64).sum::<f64>() / n;
    let num: f64 = samples.iter().map(|s| (s.0 - mx) * (s.1 as f64 - my)).sum();
    let den: f64 = samples.iter().map(|s| (s.0 - mx).powi(2)).sum();
    if den == 0.0 { f64::NAN } else { num / den }
}
