//! Part 7: relay throughput through a NATS JetStream publisher. One Runner
//! with `outbox::nats::JetStreamPublisher` drains a pre-filled outbox into a
//! fresh stream, against a plain async-nats loop that publishes the same
//! messages (same subjects, payloads and headers, `Nats-Msg-Id` included)
//! into another fresh stream and awaits every PubAck.
//!
//! The raw loop keeps the Runner's shape: windows of a batch (100), at most
//! `concurrency` (64) publishes awaiting their PubAck at a time, and every
//! PubAck of a window awaited before the next window starts.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, ensure};
use outbox::brokers::{JSON, Route, header};
use outbox::nats::{JetStreamPublisher, MSG_ID, async_nats};
use outbox::{Runner, Tables};
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Row};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, Context as JetStream};

use crate::common::{
    Config, Recorder, drop_schema, events_table, fill_pg, fresh_schema, pg_pool, settle_table,
};
use crate::relay::KEYS;

/// The Runner's default batch size and publish concurrency, given to both
/// sides explicitly.
const BATCH: usize = 100;
const CONCURRENCY: usize = 64;

fn nats_url() -> String {
    std::env::var("OUTBOX_BENCH_NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".to_owned())
}

async fn connect(url: &str) -> anyhow::Result<JetStream> {
    let client = async_nats::connect(url)
        .await
        .with_context(|| format!("cannot connect to NATS at {url}"))?;
    Ok(jetstream::new(client))
}

/// One message as the publisher sends it: subject, headers, payload.
struct Message {
    subject: String,
    headers: HeaderMap,
    payload: Vec<u8>,
}

pub(crate) async fn run(cfg: &Config, rec: &mut Recorder) -> anyhow::Result<()> {
    let url = nats_url();
    // Streams are created and deleted on a connection of their own.
    let admin_js = connect(&url).await?;
    let admin = pg_pool(&cfg.url, 2).await?;
    let schema = fresh_schema(&admin, "nats").await?;
    let result = run_in(cfg, rec, &admin, &schema, &admin_js, &url).await;
    drop_schema(&admin, &schema).await;
    result
}

async fn run_in(
    cfg: &Config,
    rec: &mut Recorder,
    admin: &PgPool,
    schema: &str,
    admin_js: &JetStream,
    url: &str,
) -> anyhow::Result<()> {
    let n: u64 = cfg.pick(50_000, 5_000);
    let tables = Tables::default().schema(schema)?;
    tables.migrate(admin).await?;
    let table = events_table(&tables);
    fill_pg(admin, &tables, n as usize, KEYS, 2).await?;
    settle_table(admin, &table).await?;

    let unique = format!(
        "{}_{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    // Both sides publish to the same subjects, each into a fresh stream that
    // holds them (created after the previous one was deleted).
    let prefix = format!("bench.{unique}");
    let messages = read_messages(admin, &table, &prefix).await?;
    ensure!(
        messages.len() as u64 == n,
        "read {} of {n} events",
        messages.len()
    );

    let stream = format!("OUTBOX_BENCH_{unique}_RUNNER");
    create_stream(admin_js, &stream, &prefix).await?;
    let runner = drain_runner(cfg, &tables, url, &prefix, n).await;
    let stored = stored_and_delete(admin_js, &stream).await;
    let runner = runner?;
    let stored = stored?;
    ensure!(
        stored == n,
        "the Runner's stream holds {stored} of {n} messages"
    );

    let stream = format!("OUTBOX_BENCH_{unique}_RAW");
    create_stream(admin_js, &stream, &prefix).await?;
    let raw = publish_raw(url, messages, n).await;
    let stored = stored_and_delete(admin_js, &stream).await;
    let raw = raw?;
    let stored = stored?;
    ensure!(
        stored == n,
        "the raw loop's stream holds {stored} of {n} messages"
    );

    rec.add("nats", "pg.runner_ev_s", runner, "ev/s");
    rec.add("nats", "raw_ev_s", raw, "ev/s");
    rec.add("nats", "runner_over_raw", runner / raw, "x");
    // Let the Runner's pool close before the next part.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

/// A File-storage stream (the default) for `<prefix>.>`.
async fn create_stream(js: &JetStream, name: &str, prefix: &str) -> anyhow::Result<()> {
    js.create_stream(jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{prefix}.>")],
        ..Default::default()
    })
    .await
    .with_context(|| format!("cannot create JetStream stream {name}"))?;
    Ok(())
}

/// The number of messages the stream holds; deletes it whatever happens.
async fn stored_and_delete(js: &JetStream, name: &str) -> anyhow::Result<u64> {
    let stored = async {
        let mut stream = js.get_stream(name).await?;
        anyhow::Ok(stream.info().await?.state.messages)
    }
    .await
    .with_context(|| format!("cannot read the info of JetStream stream {name}"));
    if let Err(e) = js.delete_stream(name).await {
        eprintln!("could not delete JetStream stream {name}: {e}");
    }
    stored
}

/// Every event of the outbox as the JetStreamPublisher would send it (its
/// subject under `Route::template("<prefix>.{topic}")`, its headers).
async fn read_messages(pool: &PgPool, table: &str, prefix: &str) -> anyhow::Result<Vec<Message>> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT id, event_type, version, topic, partition_key, payload, headers::text \
         FROM {table} ORDER BY id"
    )))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let id: outbox::Uuid = row.try_get("id")?;
            let event_type: String = row.try_get("event_type")?;
            let version: i32 = row.try_get("version")?;
            let topic: String = row.try_get("topic")?;
            let key: Option<String> = row.try_get("partition_key")?;
            let payload: Vec<u8> = row.try_get("payload")?;
            let stored: BTreeMap<String, String> =
                serde_json::from_str(&row.try_get::<String, _>("headers")?)?;
            // `Nats-Msg-Id`, then what `outbox::brokers::metadata` gives.
            let mut pairs: Vec<(String, String)> = vec![
                (MSG_ID.to_owned(), id.to_string()),
                (header::EVENT_ID.to_owned(), id.to_string()),
                (header::EVENT_TYPE.to_owned(), event_type),
                (header::VERSION.to_owned(), version.to_string()),
                (header::CONTENT_TYPE.to_owned(), JSON.to_owned()),
            ];
            if let Some(key) = key {
                pairs.push((header::PARTITION_KEY.to_owned(), key));
            }
            for (name, value) in stored {
                if !pairs.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name)) {
                    pairs.push((name, value));
                }
            }
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(name, value);
            }
            Ok(Message {
                subject: format!("{prefix}.{topic}"),
                headers,
                payload,
            })
        })
        .collect()
}

/// One Runner (a pool of 4 connections, as in `relay`) with the
/// JetStreamPublisher as its only publisher, in `drain` mode. Returns
/// events/s up to the return of `drain`.
async fn drain_runner(
    cfg: &Config,
    tables: &Tables,
    url: &str,
    prefix: &str,
    n: u64,
) -> anyhow::Result<f64> {
    let publisher = JetStreamPublisher::new(connect(url).await?)
        .route(Route::template(format!("{prefix}.{{topic}}")));
    let pool = pg_pool(&cfg.url, 4).await?;
    let runner = Runner::builder(pool)
        .tables(tables.clone())
        .without_registered()
        .publisher(publisher)
        .batch_size(BATCH)
        .concurrency(CONCURRENCY)
        .build()?;
    // A publish that keeps failing is retried with backoff, which `drain`
    // waits for: give up instead of hanging.
    let cap = cfg.pick(Duration::from_secs(120), Duration::from_secs(30));
    let start = Instant::now();
    let report = tokio::time::timeout(cap, runner.drain())
        .await
        .map_err(|_| anyhow::anyhow!("the Runner did not drain {n} events within {cap:?}"))??;
    let secs = start.elapsed().as_secs_f64();
    ensure!(
        report.published == n && report.retried == 0 && report.dead_lettered == 0,
        "the Runner published {} of {n} events ({} retried, {} dead-lettered)",
        report.published,
        report.retried,
        report.dead_lettered
    );
    Ok(n as f64 / secs)
}

/// The raw loop: windows of `BATCH` messages, at most `CONCURRENCY` awaiting
/// their PubAck at a time; each window's PubAcks all awaited before the next.
/// JetStream acknowledges a stream's messages in order, so awaiting the
/// oldest PubAck first frees a slot as soon as the Runner's
/// `buffer_unordered` would.
async fn publish_raw(url: &str, messages: Vec<Message>, n: u64) -> anyhow::Result<f64> {
    let js = connect(url).await?;
    let mut acked = 0u64;
    let mut messages = messages.into_iter();
    let mut pending = VecDeque::with_capacity(CONCURRENCY);
    let start = Instant::now();
    loop {
        let mut sent = 0;
        for m in messages.by_ref().take(BATCH) {
            if pending.len() == CONCURRENCY
                && let Some(ack) = pending.pop_front()
            {
                ack.await?;
                acked += 1;
            }
            pending.push_back(
                js.publish_with_headers(m.subject, m.headers, m.payload.into())
                    .await?,
            );
            sent += 1;
        }
        for ack in pending.drain(..) {
            ack.await?;
            acked += 1;
        }
        if sent < BATCH {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    ensure!(acked == n, "the raw loop got {acked} of {n} PubAcks");
    Ok(n as f64 / secs)
}
