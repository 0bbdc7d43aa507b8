//! Shared pieces: the settings of a run, the figures it records, the event
//! type, the no-op publisher and database helpers.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use outbox::{Context, OutboxEvent, PublishError, Publisher, Tables, Uuid};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Executor};

/// What every part needs to know about this invocation.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The PostgreSQL server (a database in it; each part makes its own schema).
    pub(crate) url: String,
    /// Short smoke run: smaller data, shorter windows. Its figures mean little.
    pub(crate) quick: bool,
}

impl Config {
    /// `full` normally, `quick` with `--quick`.
    pub(crate) fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
}

/// One measured figure.
#[derive(Debug, Clone)]
pub(crate) struct Figure {
    pub(crate) part: &'static str,
    pub(crate) name: String,
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
}

/// Collects the figures of a run and appends each, as it is measured, as a
/// JSON line to the `--json` file.
pub(crate) struct Recorder {
    pub(crate) run: usize,
    pub(crate) quick: bool,
    pub(crate) started: u64,
    pub(crate) json: PathBuf,
    pub(crate) figures: Vec<Figure>,
}

impl Recorder {
    pub(crate) fn add(
        &mut self,
        part: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) {
        let name = name.into();
        println!("  {part:<10} {name:<44} {:>14} {unit}", fmt_value(value));
        let line = serde_json::json!({
            "started": self.started,
            "run": self.run,
            "quick": self.quick,
            "part": part,
            "name": name,
            "value": value,
            "unit": unit,
        });
        if let Err(e) = append_line(&self.json, &line) {
            eprintln!("cannot append to {}: {e}", self.json.display());
        }
        self.figures.push(Figure {
            part,
            name,
            value,
            unit,
        });
    }
}

pub(crate) fn append_line(path: &PathBuf, line: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(f, "{line}")?;
    Ok(())
}

pub(crate) fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "n/a".to_owned()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The benchmark's event: a ~200-byte JSON payload, keyed by customer.
#[derive(Debug, Clone, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "bench.order_placed", topic = "orders", key = customer_id)]
pub(crate) struct OrderPlaced {
    pub(crate) order_id: i64,
    pub(crate) customer_id: i64,
    pub(crate) total_cents: i64,
    pub(crate) currency: String,
    pub(crate) note: String,
}

const NOTE: &str = "gift wrap, leave at the back door, call before delivery; \
                    fragile items inside, keep upright, thank you";

/// Event number `i` for customer (partition key) `customer`.
pub(crate) fn order(i: i64, customer: i64) -> OrderPlaced {
    OrderPlaced {
        order_id: i,
        customer_id: customer,
        total_cents: 1299 + i % 1000,
        currency: "EUR".to_owned(),
        note: NOTE.to_owned(),
    }
}

/// A random customer among `keys`.
pub(crate) fn random_key(keys: i64) -> i64 {
    fastrand::i64(0..keys)
}

/// The JSON payload size of a typical event.
pub(crate) fn payload_bytes() -> usize {
    serde_json::to_vec(&order(123_456, 789)).map_or(0, |v| v.len())
}

/// A publisher that does nothing but count (and, when asked, note when it
/// was called for which event).
#[derive(Clone)]
pub(crate) struct Sink {
    inner: Arc<SinkInner>,
}

struct SinkInner {
    count: AtomicU64,
    target: u64,
    reached: Mutex<Option<Instant>>,
    done: tokio::sync::watch::Sender<bool>,
    calls: Option<Mutex<Vec<(Uuid, Instant)>>>,
}

impl Sink {
    /// Counts, and notes the instant the `target`-th call happened.
    pub(crate) fn counting(target: u64) -> Self {
        Self {
            inner: Arc::new(SinkInner {
                count: AtomicU64::new(0),
                target,
                reached: Mutex::new(None),
                done: tokio::sync::watch::Sender::new(false),
                calls: None,
            }),
        }
    }

    /// Also notes (event id, call instant) of every call.
    pub(crate) fn recording() -> Self {
        Self {
            inner: Arc::new(SinkInner {
                count: AtomicU64::new(0),
                target: u64::MAX,
                reached: Mutex::new(None),
                done: tokio::sync::watch::Sender::new(false),
                calls: Some(Mutex::new(Vec::with_capacity(200_000))),
            }),
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }

    pub(crate) fn reached(&self) -> Option<Instant> {
        *lock(&self.inner.reached)
    }

    /// Completes once the target count was reached: a Runner's shutdown
    /// signal, so that Runners are measured in `run` mode, as in production.
    pub(crate) fn reached_target(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.done.subscribe();
        async move {
            let _ = rx.wait_for(|done| *done).await;
        }
    }

    pub(crate) fn take_calls(&self) -> Vec<(Uuid, Instant)> {
        self.inner
            .calls
            .as_ref()
            .map(|c| std::mem::take(&mut *lock(c)))
            .unwrap_or_default()
    }

    /// Waits until `n` calls were made, or `timeout` passed; true if reached.
    pub(crate) async fn wait_for(&self, n: u64, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while self.count() < n {
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl Publisher for Sink {
    fn name(&self) -> &str {
        "bench-noop"
    }

    fn accepts(&self, _event_type: &str) -> bool {
        true
    }

    async fn publish(&self, cx: &Context) -> Result<(), PublishError> {
        let now = Instant::now();
        if let Some(calls) = &self.inner.calls {
            lock(calls).push((cx.id(), now));
        }
        let n = self.inner.count.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.inner.target {
            *lock(&self.inner.reached) = Some(now);
            self.inner.done.send_replace(true);
        }
        Ok(())
    }
}

/// The `application_name` of every connection this program opens, so that
/// the monitor can tell other sessions on the server apart.
pub(crate) const APP_NAME: &str = "outbox-bench";

/// A pool of up to `n` connections, all opened now.
pub(crate) async fn pg_pool(url: &str, n: u32) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url
        .parse()
        .with_context(|| format!("invalid PostgreSQL URL {url}"))?;
    let pool = PgPoolOptions::new()
        .max_connections(n)
        .min_connections(n)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(options.application_name(APP_NAME))
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {url}"))?;
    Ok(pool)
}

/// Run one SQL statement (not prepared).
pub(crate) async fn exec<'c, E>(conn: E, sql: impl Into<String>) -> anyhow::Result<u64>
where
    E: Executor<'c, Database = sqlx::Postgres>,
{
    let sql = sql.into();
    let done = conn
        .execute(sqlx::query(AssertSqlSafe(sql.clone())).persistent(false))
        .await
        .with_context(|| format!("running `{sql}`"))?;
    Ok(done.rows_affected())
}

/// A fresh schema for one part of one run.
pub(crate) async fn fresh_schema(pool: &PgPool, part: &str) -> anyhow::Result<String> {
    let name = format!("bench_{part}_{:08x}", fastrand::u32(..));
    exec(pool, format!("DROP SCHEMA IF EXISTS {name} CASCADE")).await?;
    exec(pool, format!("CREATE SCHEMA {name}")).await?;
    Ok(name)
}

pub(crate) async fn drop_schema(pool: &PgPool, schema: &str) {
    if let Err(e) = exec(pool, format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await {
        eprintln!("could not drop schema {schema}: {e:#}");
    }
}

/// The business table every producer transaction writes one row to.
pub(crate) async fn create_orders(pool: &PgPool, schema: &str) -> anyhow::Result<String> {
    let t = format!("{schema}.orders");
    exec(
        pool,
        format!(
            "CREATE TABLE {t} (id bigserial PRIMARY KEY, customer_id bigint NOT NULL, \
             total_cents bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
        ),
    )
    .await?;
    Ok(t)
}

/// `"schema"."prefix_events"`, as the outbox names it.
pub(crate) fn events_table(tables: &Tables) -> String {
    match tables.schema_name() {
        Some(s) => format!("\"{s}\".\"{}_events\"", tables.prefix()),
        None => format!("\"{}_events\"", tables.prefix()),
    }
}

/// Enqueue `n` events with random keys among `keys`, 1,000 per transaction
/// (`enqueue_all`), over `conns` connections. Not measured.
pub(crate) async fn fill_pg(
    pool: &PgPool,
    tables: &Tables,
    n: usize,
    keys: i64,
    conns: usize,
) -> anyhow::Result<()> {
    const CHUNK: usize = 1000;
    let chunks = n.div_ceil(CHUNK);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns.max(1) {
        let pool = pool.clone();
        let tables = tables.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let c = next.fetch_add(1, Ordering::Relaxed) as usize;
                if c >= chunks {
                    return anyhow::Ok(());
                }
                let start = c * CHUNK;
                let end = (start + CHUNK).min(n);
                let events: Vec<OrderPlaced> = (start..end)
                    .map(|i| order(i as i64, random_key(keys)))
                    .collect();
                let mut tx = pool.begin().await?;
                tables.enqueue_all(&mut tx, &events).await?;
                tx.commit().await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// `VACUUM ANALYZE` the table, then `CHECKPOINT` so that the fill's dirty
/// pages are not written out during the measurement.
pub(crate) async fn settle_table(pool: &PgPool, table: &str) -> anyhow::Result<()> {
    exec(pool, format!("VACUUM ANALYZE {table}")).await?;
    checkpoint(pool).await;
    Ok(())
}

/// `CHECKPOINT`, when allowed (superuser); ignored otherwise.
pub(crate) async fn checkpoint(pool: &PgPool) {
    let _ = exec(pool, "CHECKPOINT").await;
}

/// Percentile (0..=100) of sorted values.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Median of values (mean of the middle two for an even count). A value
/// that is not a number (not measured, not reached) counts as unknown: the
/// median is unknown when half or more of the values are.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() || 2 * v.len() <= values.len() && v.len() < values.len() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// The figures of several runs, by (part, name), in first-seen order.
pub(crate) fn group(runs: &[Vec<Figure>]) -> Vec<(Figure, Vec<f64>)> {
    let mut order: Vec<(&'static str, String)> = Vec::new();
    let mut by: BTreeMap<(&'static str, String), (Figure, Vec<f64>)> = BTreeMap::new();
    for run in runs {
        for f in run {
            let key = (f.part, f.name.clone());
            by.entry(key.clone())
                .or_insert_with(|| {
                    order.push(key);
                    (f.clone(), Vec::new())
                })
                .1
                .push(f.value);
        }
    }
    order.into_iter().filter_map(|k| by.remove(&k)).collect()
}

/// The value of a figure in `/proc/<pid>/status`, in KiB (`VmHWM`, `VmRSS`).
pub(crate) fn proc_status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}
