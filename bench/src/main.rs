//! Benchmarks of the outbox runtime, each against the raw database limit
//! measured in the same run. See BENCHMARKS.md for the figures and what
//! limits them.
//!
//! ```text
//! cargo run --release -p outbox-bench -- all [--runs 3] [--quick] [--json target/bench.jsonl]
//! ```

mod burst;
mod common;
mod enqueue;
mod latency;
mod memory;
mod monitor;
mod nats;
mod profile;
mod relay;
mod roundtrips;
mod sqlite;
mod sustained;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use sqlx::Row;

use common::{Config, Figure, Recorder, append_line, fmt_value, group, median, pg_pool};

const USAGE: &str = "\
outbox-bench: the outbox runtime against the raw database limits

USAGE:
    cargo run --release -p outbox-bench -- [COMMAND] [OPTIONS]

COMMANDS:
    all          every part below, in this order (default)
    roundtrips   cost of one round trip; round trips per transaction and per relayed event
    enqueue      enqueue overhead vs a hand-written INSERT (1 and 4 connections, 1 and 10 events)
    relay        Runner drain throughput vs a raw DELETE ... SKIP LOCKED loop (batch 100, 1000)
    latency      commit -> publisher call latency at 100, 1000, 5000 events/s, wake-up and poll
    sustained    4 producers + 1 Runner for 60 s vs producers alone; backlog
    memory       peak RSS of a Runner process draining a 1,000,000-event backlog, and
                 100 events of 4 MiB with and without the claim's byte budget
    sqlite       SQLite (WAL): enqueue overhead, Runner drain vs raw DELETE loop
    nats         Runner drain into NATS JetStream vs a raw async-nats publish loop (batch 100)
    burst        diagnostic, not in `all`: 200,000 events arrive at a Runner idling on an empty outbox
    profile      diagnostic, not in `all`: a draining Runner's time in claim, ack and publish
    env          print the machine and PostgreSQL settings only

OPTIONS:
    --runs N       repeat the command N times and print the median of every figure (default 1)
    --quick        small data and short windows: a smoke test, not a measurement
    --json PATH    append every figure as a JSON line (default target/bench.jsonl)
    --wait-quiet   before each run, wait until the 1-minute load average is below 1.0
                   (checked every 10 s, at most 40 minutes in all)
    --url URL      PostgreSQL (default $OUTBOX_BENCH_PG_URL or postgres://postgres@127.0.0.1:5432/test)

NATS (part `nats`): $OUTBOX_BENCH_NATS_URL or 127.0.0.1:4222, with JetStream enabled.
";

const PARTS: [&str; 8] = [
    "roundtrips",
    "enqueue",
    "relay",
    "latency",
    "sustained",
    "memory",
    "sqlite",
    "nats",
];

struct Args {
    command: String,
    runs: usize,
    quick: bool,
    json: PathBuf,
    url: String,
    schema: String,
    expect: u64,
    max_secs: u64,
    batch_bytes: Option<usize>,
    wait_quiet: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        command: "all".to_owned(),
        runs: 1,
        quick: false,
        json: PathBuf::from("target/bench.jsonl"),
        url: std::env::var("OUTBOX_BENCH_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
        schema: String::new(),
        expect: 0,
        max_secs: 60,
        batch_bytes: None,
        wait_quiet: false,
    };
    let mut it = std::env::args().skip(1);
    let mut command_seen = false;
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("{name} needs a value; see --help"))
        };
        match a.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "--quick" => args.quick = true,
            "--wait-quiet" => args.wait_quiet = true,
            "--runs" => {
                args.runs = value("--runs")?
                    .parse()
                    .context("--runs takes a positive number")?;
                if args.runs == 0 {
                    bail!("--runs takes a positive number");
                }
            }
            "--json" => args.json = PathBuf::from(value("--json")?),
            "--url" => args.url = value("--url")?,
            "--schema" => args.schema = value("--schema")?,
            "--expect" => args.expect = value("--expect")?.parse()?,
            "--max-secs" => args.max_secs = value("--max-secs")?.parse()?,
            "--batch-bytes" => args.batch_bytes = Some(value("--batch-bytes")?.parse()?),
            other if other.starts_with('-') => bail!("unknown option {other}; see --help"),
            other if !command_seen => {
                command_seen = true;
                args.command = other.to_owned();
            }
            other => bail!("unexpected argument {other}; see --help"),
        }
    }
    let known = PARTS.contains(&args.command.as_str())
        || ["all", "env", "memory-child", "profile", "burst"].contains(&args.command.as_str());
    if !known {
        bail!("unknown command {}; see --help", args.command);
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if args.command == "memory-child" {
        return memory::child(
            &args.url,
            &args.schema,
            args.expect,
            args.max_secs,
            args.batch_bytes,
        )
        .await;
    }
    let cfg = Config {
        url: args.url.clone(),
        quick: args.quick,
    };
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let env = environment(&cfg).await?;
    println!("== environment");
    for (k, v) in env.as_object().into_iter().flatten() {
        println!(
            "  {k:<22} {}",
            v.as_str().map_or_else(|| v.to_string(), str::to_owned)
        );
    }
    append_line(
        &args.json,
        &serde_json::json!({"started": started, "kind": "env", "command": args.command, "runs": args.runs, "quick": args.quick, "env": env}),
    )?;
    if args.command == "env" {
        return Ok(());
    }
    if args.quick {
        println!("  (--quick: a smoke run; the figures are not measurements)");
    }
    let parts: Vec<&str> = if args.command == "all" {
        PARTS.to_vec()
    } else {
        vec![args.command.as_str()]
    };

    let foreign = monitor::start(&cfg.url).await?;
    let mut wait_budget = std::time::Duration::from_secs(40 * 60);
    let mut runs: Vec<Vec<Figure>> = Vec::new();
    for run in 1..=args.runs {
        let mut waited = 0.0;
        if args.wait_quiet {
            let t = Instant::now();
            while loadavg() >= 1.0 && t.elapsed() < wait_budget {
                println!("  waiting for a quiet machine: load {:.2}", loadavg());
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            }
            waited = t.elapsed().as_secs_f64();
            wait_budget = wait_budget.saturating_sub(t.elapsed());
        }
        let mut rec = Recorder {
            run,
            quick: args.quick,
            started,
            json: args.json.clone(),
            figures: Vec::new(),
        };
        println!("== run {run} of {}", args.runs);
        rec.add("env", "loadavg_1m_before", loadavg(), "load");
        if args.wait_quiet {
            rec.add("env", "waited_for_quiet_s", waited, "s");
        }
        let run_foreign = foreign.snapshot();
        let t = Instant::now();
        for part in &parts {
            let part_start = Instant::now();
            let part_foreign = foreign.snapshot();
            match *part {
                "roundtrips" => roundtrips::run(&cfg, &mut rec).await,
                "enqueue" => enqueue::run(&cfg, &mut rec).await,
                "relay" => relay::run(&cfg, &mut rec).await,
                "latency" => latency::run(&cfg, &mut rec).await,
                "sustained" => sustained::run(&cfg, &mut rec).await,
                "memory" => memory::run(&cfg, &mut rec).await,
                "sqlite" => sqlite::run(&cfg, &mut rec).await,
                "nats" => nats::run(&cfg, &mut rec).await,
                "profile" => profile::run(&cfg, &mut rec).await,
                "burst" => burst::run(&cfg, &mut rec).await,
                _ => unreachable!("checked in parse_args"),
            }
            .with_context(|| format!("part `{part}` failed"))?;
            let f = foreign.snapshot() - part_foreign;
            println!(
                "  ({part}: {:.0} s; other processes used {:.1} CPU-s, other PostgreSQL clients {:.0} session-s)",
                part_start.elapsed().as_secs_f64(),
                f.cpu_s,
                f.pg_active_s
            );
            rec.add("env", format!("foreign_cpu_s.{part}"), f.cpu_s, "CPU-s");
            rec.add(
                "env",
                format!("foreign_pg_session_s.{part}"),
                f.pg_active_s,
                "session-s",
            );
        }
        rec.add("env", "loadavg_1m_after", loadavg(), "load");
        rec.add("env", "run_seconds", t.elapsed().as_secs_f64(), "s");
        let f = foreign.snapshot() - run_foreign;
        rec.add("env", "foreign_cpu_s", f.cpu_s, "CPU-s");
        rec.add("env", "foreign_pg_session_s", f.pg_active_s, "session-s");
        runs.push(rec.figures);
    }

    let grouped = group(&runs);
    let mut medians: HashMap<String, f64> = HashMap::new();
    println!(
        "\n== {} of {} run(s)",
        if args.runs > 1 { "median" } else { "figures" },
        args.runs
    );
    println!(
        "  {:<10} {:<44} {:>14} {:<11} runs",
        "part", "figure", "median", "unit"
    );
    for (f, values) in &grouped {
        let m = median(values);
        medians.insert(f.name.clone(), m);
        let all: Vec<String> = values.iter().map(|v| fmt_value(*v)).collect();
        println!(
            "  {:<10} {:<44} {:>14} {:<11} [{}]",
            f.part,
            f.name,
            fmt_value(m),
            f.unit,
            all.join(", ")
        );
        if args.runs > 1 {
            append_line(
                &args.json,
                &serde_json::json!({"started": started, "run": "median", "runs": args.runs, "quick": args.quick, "part": f.part, "name": f.name, "value": m, "unit": f.unit, "values": values}),
            )?;
        }
    }
    print_targets(&medians);
    Ok(())
}

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

async fn environment(cfg: &Config) -> anyhow::Result<serde_json::Value> {
    let pool = pg_pool(&cfg.url, 1).await?;
    let mut env = serde_json::Map::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|k| k.parse::<u64>().ok())
        .unwrap_or(0);
    env.insert(
        "cores".into(),
        std::thread::available_parallelism()
            .map_or(0, |n| n.get())
            .to_string()
            .into(),
    );
    env.insert("cpu".into(), cpu.into());
    env.insert("memory".into(), format!("{} MiB", mem / 1024).into());
    env.insert(
        "loadavg".into(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_owned()
            .into(),
    );
    let version: String = sqlx::query("SELECT version()")
        .fetch_one(&pool)
        .await?
        .try_get(0)?;
    env.insert("postgres".into(), version.into());
    for setting in [
        "fsync",
        "synchronous_commit",
        "shared_buffers",
        "wal_level",
        "max_wal_size",
        "checkpoint_timeout",
        "autovacuum_naptime",
        "work_mem",
        "max_connections",
        "shared_preload_libraries",
    ] {
        let v: String = sqlx::query("SELECT current_setting($1)")
            .bind(setting)
            .fetch_one(&pool)
            .await?
            .try_get(0)?;
        env.insert(setting.into(), v.into());
    }
    env.insert(
        "payload_bytes".into(),
        common::payload_bytes().to_string().into(),
    );
    Ok(serde_json::Value::Object(env))
}

fn print_targets(m: &HashMap<String, f64>) {
    let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut check = |target: &str, figure: String, ok: Option<bool>| {
        let verdict = match ok {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        rows.push((target.to_owned(), figure, verdict.to_owned()));
    };
    let known = |v: f64| !v.is_nan();
    for tag in ["c1.e1", "c4.e1", "c1.e10", "c4.e10"] {
        let r = get(&format!("pg.{tag}.ratio"));
        // outbox / hand-written throughput; the overhead target is hand/outbox <= 1.05.
        check(
            &format!("enqueue overhead <= 1.05 ({tag})"),
            format!("outbox/hand {:.3}, overhead {:.3}", r, 1.0 / r),
            known(r).then_some(1.0 / r <= 1.05),
        );
    }
    for b in [100, 1000] {
        let r = get(&format!("pg.b{b}.runner1_vs_raw1"));
        check(
            &format!("1 Runner >= 70% of raw (batch {b})"),
            format!("{:.0}%", r * 100.0),
            known(r).then_some(r >= 0.7),
        );
    }
    let best = get("pg.b100.runner1_ev_s").max(get("pg.b1000.runner1_ev_s"));
    check(
        "1 Runner >= 60,000 ev/s (best batch)",
        format!("{best:.0} ev/s"),
        known(best).then_some(best >= 60_000.0),
    );
    for b in [100, 1000] {
        let r = get(&format!("pg.b{b}.runner2_vs_runner1"));
        check(
            &format!("2 Runners >= 1.4x one (batch {b})"),
            format!("{r:.2}x"),
            known(r).then_some(r >= 1.4),
        );
    }
    let r = get("pg.ratio");
    check(
        "producers keep >= 90% with a Runner",
        format!("{:.0}%", r * 100.0),
        known(r).then_some(r >= 0.9),
    );
    let slope = get("pg.backlog_slope");
    let rate = get("pg.producers_with_runner_tx_s");
    let catch_up = get("pg.catch_up_s");
    check(
        "backlog stays bounded",
        format!(
            "max {:.0}, slope {:.1}/s, catch-up {:.2} s",
            get("pg.max_backlog"),
            slope,
            catch_up
        ),
        (known(slope) && known(rate)).then_some(slope.abs() < 0.01 * rate && known(catch_up)),
    );
    let p99 = get("pg.1000hz.wakeup.p99_ms");
    check(
        "p99 commit->publish <= 5 ms at 1,000/s (wake-up)",
        format!("{p99:.2} ms"),
        known(p99).then_some(p99 <= 5.0),
    );
    let rss = get("pg.runner_vmhwm_mib");
    check(
        "RSS <= 64 MiB under a 1M backlog",
        format!("{rss:.1} MiB"),
        known(rss).then_some(rss <= 64.0),
    );
    println!("\n== targets (on the medians)");
    for (t, f, v) in rows {
        println!("  {t:<48} {f:<40} {v}");
    }
}
