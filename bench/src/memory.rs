//! Part 5: peak resident memory of a Runner process draining a large backlog.

use std::time::{Duration, Instant};

use outbox::{NewEvent, Runner, Tables};

use crate::common::{
    Config, Recorder, Sink, drop_schema, events_table, fill_pg, fresh_schema, pg_pool,
    proc_status_kib, settle_table,
};
use crate::relay::KEYS;

/// The batch size of the measured Runner (the largest we measure elsewhere).
const BATCH: usize = 1000;

pub(crate) async fn run(cfg: &Config, rec: &mut Recorder) -> anyhow::Result<()> {
    let admin = pg_pool(&cfg.url, 2).await?;
    let schema = fresh_schema(&admin, "mem").await?;
    let result = run_in(cfg, rec, &admin, &schema).await;
    drop_schema(&admin, &schema).await;
    result?;
    for (name, batch_bytes) in [("large", None), ("large_uncapped", Some(usize::MAX))] {
        let schema = fresh_schema(&admin, "memlarge").await?;
        let result = large_payloads(cfg, rec, &admin, &schema, name, batch_bytes).await;
        drop_schema(&admin, &schema).await;
        result?;
    }
    Ok(())
}

/// Size of each payload of the large-payload backlog.
const LARGE: usize = 4 << 20;

/// A backlog of 4 MiB events drained by a Runner of batch 1000, with the
/// default byte budget per claim (`batch_bytes`) or without one.
async fn large_payloads(
    cfg: &Config,
    rec: &mut Recorder,
    admin: &sqlx::PgPool,
    schema: &str,
    name: &str,
    batch_bytes: Option<usize>,
) -> anyhow::Result<()> {
    let n: u64 = cfg.pick(100, 20);
    let tables = Tables::default().schema(schema)?;
    tables.migrate(admin).await?;
    for _ in 0..n {
        let payload: Vec<u8> = std::iter::repeat_with(|| fastrand::u8(..))
            .take(LARGE)
            .collect();
        let mut tx = admin.begin().await?;
        tables
            .enqueue_raw(&mut tx, &[NewEvent::new("bench.blob", payload)])
            .await?;
        tx.commit().await?;
    }
    let mut args = vec![
        "memory-child".to_owned(),
        "--url".to_owned(),
        cfg.url.clone(),
        "--schema".to_owned(),
        schema.to_owned(),
        "--expect".to_owned(),
        n.to_string(),
        "--max-secs".to_owned(),
        "120".to_owned(),
    ];
    if let Some(b) = batch_bytes {
        args.extend(["--batch-bytes".to_owned(), b.to_string()]);
    }
    let v = spawn_child(&args).await?;
    rec.add(
        "memory",
        format!("pg.{name}.runner_vmhwm_mib"),
        v["vmhwm_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0,
        "MiB",
    );
    rec.add(
        "memory",
        format!("pg.{name}.drained"),
        v["published"].as_f64().unwrap_or(f64::NAN),
        "events",
    );
    Ok(())
}

/// Run this program as `args` and read the JSON line it prints last.
async fn spawn_child(args: &[String]) -> anyhow::Result<serde_json::Value> {
    let exe = std::env::current_exe()?;
    let out = tokio::process::Command::new(exe)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "the Runner child process failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| anyhow::anyhow!("the child printed no result: {stdout}"))?;
    Ok(serde_json::from_str(line)?)
}

async fn run_in(
    cfg: &Config,
    rec: &mut Recorder,
    admin: &sqlx::PgPool,
    schema: &str,
) -> anyhow::Result<()> {
    let n: u64 = cfg.pick(1_000_000, 50_000);
    let tables = Tables::default().schema(schema)?;
    tables.migrate(admin).await?;
    fill_pg(admin, &tables, n as usize, KEYS, 2).await?;
    settle_table(admin, &events_table(&tables)).await?;

    let args = [
        "memory-child",
        "--url",
        &cfg.url,
        "--schema",
        schema,
        "--expect",
        &n.to_string(),
        "--max-secs",
        &cfg.pick(60u64, 20).to_string(),
    ]
    .map(str::to_owned);
    let v = spawn_child(&args).await?;
    let kib = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    rec.add("memory", "pg.backlog", n as f64, "events");
    rec.add(
        "memory",
        "pg.runner_vmhwm_mib",
        kib("vmhwm_kib") / 1024.0,
        "MiB",
    );
    rec.add(
        "memory",
        "pg.child_baseline_mib",
        kib("baseline_kib") / 1024.0,
        "MiB",
    );
    let published = kib("published");
    rec.add("memory", "pg.drained", published, "events");
    rec.add("memory", "pg.drain_ev_s", published / kib("secs"), "ev/s");
    Ok(())
}

/// The child: drain the outbox in `schema` with one Runner (batch 1000) for
/// at most `max_secs`, then print its own peak RSS as a JSON line.
pub(crate) async fn child(
    url: &str,
    schema: &str,
    expect: u64,
    max_secs: u64,
    batch_bytes: Option<usize>,
) -> anyhow::Result<()> {
    let baseline = proc_status_kib("self", "VmHWM").unwrap_or(0);
    let tables = Tables::default().schema(schema)?;
    let sink = Sink::counting(expect);
    let mut runner = Runner::builder(pg_pool(url, 4).await?);
    if let Some(b) = batch_bytes {
        runner = runner.batch_bytes(b);
    }
    let runner = runner
        .tables(tables)
        .without_registered()
        .publisher(sink.clone())
        .batch_size(BATCH)
        .shutdown({
            let reached = sink.reached_target();
            async move {
                tokio::select! {
                    () = reached => {}
                    () = tokio::time::sleep(Duration::from_secs(max_secs)) => {}
                }
            }
        })
        .build()?;
    let start = Instant::now();
    runner.run().await?;
    let secs = sink
        .reached()
        .map_or_else(|| start.elapsed(), |t| t - start)
        .as_secs_f64();
    let line = serde_json::json!({
        "baseline_kib": baseline,
        "vmhwm_kib": proc_status_kib("self", "VmHWM").unwrap_or(0),
        "vmrss_end_kib": proc_status_kib("self", "VmRSS").unwrap_or(0),
        "published": sink.count(),
        "secs": secs,
    });
    println!("{line}");
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}
