//! Part 3: latency from the instant a producer's commit returned to the
//! instant the publisher is called, at steady producer rates.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox::{Runner, Uuid};
use tokio::time::MissedTickBehavior;

use crate::common::{Config, Recorder, Sink, drop_schema, exec, fresh_schema, percentile, pg_pool};
use crate::enqueue::{Mode, Setup, batch};

/// Latencies (ms) and how many were negative (clamped to 0).
struct Outcome {
    sorted_ms: Vec<f64>,
    negative: usize,
    rate: f64,
    missing: u64,
}

pub(crate) async fn run(cfg: &Config, rec: &mut Recorder) -> anyhow::Result<()> {
    let admin = pg_pool(&cfg.url, 1).await?;
    let schema = fresh_schema(&admin, "lat").await?;
    let result = run_in(cfg, rec, &schema).await;
    drop_schema(&admin, &schema).await;
    result
}

async fn run_in(cfg: &Config, rec: &mut Recorder, schema: &str) -> anyhow::Result<()> {
    let producers_pool = pg_pool(&cfg.url, 10).await?;
    let setup = Arc::new(Setup::create(&producers_pool, schema).await?);
    let window = cfg.pick(Duration::from_secs(20), Duration::from_secs(3));
    for rate in [100u32, 1000, 5000] {
        for listen in [true, false] {
            exec(&producers_pool, setup.truncate_sql.clone()).await?;
            let o = once(cfg, &producers_pool, &setup, rate, listen, window).await?;
            let tag = format!("pg.{rate}hz.{}", if listen { "wakeup" } else { "poll" });
            rec.add(
                "latency",
                format!("{tag}.p50_ms"),
                percentile(&o.sorted_ms, 50.0),
                "ms",
            );
            rec.add(
                "latency",
                format!("{tag}.p99_ms"),
                percentile(&o.sorted_ms, 99.0),
                "ms",
            );
            rec.add(
                "latency",
                format!("{tag}.max_ms"),
                o.sorted_ms.last().copied().unwrap_or(f64::NAN),
                "ms",
            );
            rec.add(
                "latency",
                format!("{tag}.negative"),
                o.negative as f64,
                "events",
            );
            rec.add("latency", format!("{tag}.achieved_rate"), o.rate, "ev/s");
            if o.missing > 0 {
                rec.add(
                    "latency",
                    format!("{tag}.missing"),
                    o.missing as f64,
                    "events",
                );
            }
        }
    }
    Ok(())
}

async fn once(
    cfg: &Config,
    pool: &sqlx::PgPool,
    setup: &Arc<Setup>,
    rate: u32,
    listen: bool,
    window: Duration,
) -> anyhow::Result<Outcome> {
    let sink = Sink::recording();
    let runner_pool = pg_pool(&cfg.url, 4).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = Runner::builder(runner_pool)
        .tables(setup.outbox.clone())
        .without_registered()
        .publisher(sink.clone())
        .listen(listen)
        .shutdown(async move {
            let _ = stop_rx.await;
        })
        .build()?;
    let runner = tokio::spawn(runner.run());
    // Let the Runner go idle (and open its listener).
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Producers: each ticks every 2 ms or slower, so that tokio's 1 ms timer
    // keeps the rate steady.
    let producers = (rate as usize).div_ceil(500).max(1);
    let period = Duration::from_secs_f64(producers as f64 / f64::from(rate));
    let warmup = Duration::from_secs(1);
    let start = tokio::time::Instant::now();
    let measure_from = start.into_std() + warmup;
    let end = start + warmup + window;
    let mut tasks = Vec::new();
    for p in 0..producers {
        let pool = pool.clone();
        let setup = setup.clone();
        let first = start + period.mul_f64(p as f64 / producers as f64);
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            let mut ticker = tokio::time::interval_at(first, period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
            let mut commits: Vec<(Uuid, Instant)> = Vec::new();
            let mut seq = (p as i64) << 40;
            loop {
                let tick = ticker.tick().await;
                if tick >= end {
                    break;
                }
                let events = batch(seq, 1);
                seq += 1;
                let id = setup.transaction(&mut conn, Mode::Outbox, &events).await?;
                commits.push((id, Instant::now()));
            }
            anyhow::Ok(commits)
        }));
    }
    let mut commits = HashMap::new();
    for t in tasks {
        commits.extend(t.await??);
    }
    let produced = commits.len() as u64;
    let all_in = sink.wait_for(produced, Duration::from_secs(15)).await;
    let _ = stop_tx.send(());
    runner.await??;
    let calls = sink.take_calls();
    let missing = if all_in {
        0
    } else {
        produced.saturating_sub(calls.len() as u64)
    };

    let mut negative = 0;
    let mut latencies = Vec::with_capacity(calls.len());
    for (id, called) in calls {
        let Some(&committed) = commits.get(&id) else {
            continue;
        };
        if committed < measure_from {
            continue;
        }
        let ms = match called.checked_duration_since(committed) {
            Some(d) => d.as_secs_f64() * 1000.0,
            None => {
                negative += 1;
                0.0
            }
        };
        latencies.push(ms);
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let measured = commits.values().filter(|t| **t >= measure_from).count();
    Ok(Outcome {
        rate: measured as f64 / window.as_secs_f64(),
        sorted_ms: latencies,
        negative,
        missing,
    })
}
