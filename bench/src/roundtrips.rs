//! Part 0: what one round trip costs here, and how many round trips each
//! code path makes, counted on the wire.
//!
//! `pg_stat_statements` is not preloaded on this server, so the count comes
//! from a small TCP relay between sqlx and PostgreSQL that reads the
//! frontend protocol: every `Sync` (end of an extended-protocol exchange)
//! and every simple `Query` is one round trip.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use outbox::{Runner, Tables};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{
    Config, Recorder, Sink, drop_schema, events_table, fill_pg, fresh_schema, pg_pool, settle_table,
};
use crate::enqueue::{Mode, Setup, batch};
use crate::relay::KEYS;

/// Frontend messages seen by the relay.
#[derive(Default)]
struct Counts {
    syncs: AtomicU64,
    queries: AtomicU64,
    parses: AtomicU64,
    executes: AtomicU64,
    pings: AtomicU64,
}

impl Counts {
    fn round_trips(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed) + self.queries.load(Ordering::Relaxed)
    }

    fn reset(&self) {
        self.syncs.store(0, Ordering::Relaxed);
        self.queries.store(0, Ordering::Relaxed);
        self.parses.store(0, Ordering::Relaxed);
        self.executes.store(0, Ordering::Relaxed);
        self.pings.store(0, Ordering::Relaxed);
    }
}

/// Reads the client's byte stream and counts its messages.
struct Parser {
    buf: Vec<u8>,
    started: bool,
    /// Messages since the last Sync: a Sync with none is a bare ping.
    since_sync: u32,
}

impl Parser {
    fn feed(&mut self, bytes: &[u8], counts: &Counts) {
        self.buf.extend_from_slice(bytes);
        loop {
            if !self.started {
                // Untyped: SSLRequest / GSSENCRequest / StartupMessage.
                if self.buf.len() < 8 {
                    return;
                }
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                let code = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
                if self.buf.len() < len {
                    return;
                }
                self.buf.drain(..len.max(8));
                if code != 80_877_103 && code != 80_877_104 {
                    self.started = true;
                }
            } else {
                if self.buf.len() < 5 {
                    return;
                }
                let kind = self.buf[0];
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() < 1 + len {
                    return;
                }
                self.buf.drain(..1 + len.max(4));
                match kind {
                    b'S' => {
                        counts.syncs.fetch_add(1, Ordering::Relaxed);
                        if self.since_sync == 0 {
                            counts.pings.fetch_add(1, Ordering::Relaxed);
                        }
                        self.since_sync = 0;
                    }
                    b'Q' => {
                        counts.queries.fetch_add(1, Ordering::Relaxed);
                    }
                    b'P' => {
                        counts.parses.fetch_add(1, Ordering::Relaxed);
                        self.since_sync += 1;
                    }
                    b'E' => {
                        counts.executes.fetch_add(1, Ordering::Relaxed);
                        self.since_sync += 1;
                    }
                    _ => self.since_sync += 1,
                }
            }
        }
    }
}

/// Starts the counting relay in front of `upstream`; returns its port.
async fn start_relay(upstream: String, counts: Arc<Counts>) -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let counts = counts.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let down = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
                let mut parser = Parser {
                    buf: Vec::new(),
                    started: false,
                    since_sync: 0,
                };
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    parser.feed(&buf[..n], &counts);
                }
                let _ = sw.shutdown().await;
                down.abort();
            });
        }
    });
    Ok(port)
}

pub(crate) async fn run(cfg: &Config, rec: &mut Recorder) -> anyhow::Result<()> {
    let admin = pg_pool(&cfg.url, 2).await?;
    let rtt = select_one_rtt(
        &admin,
        cfg.pick(Duration::from_secs(2), Duration::from_millis(500)),
    )
    .await?;
    rec.add("roundtrips", "pg.select1_rtt_us", rtt, "us");
    let schema = fresh_schema(&admin, "rt").await?;
    let result = run_in(cfg, rec, &admin, &schema).await;
    drop_schema(&admin, &schema).await;
    result
}

/// Microseconds per `SELECT 1` round trip on one connection.
async fn select_one_rtt(pool: &sqlx::PgPool, window: Duration) -> anyhow::Result<f64> {
    let mut conn = pool.acquire().await?;
    for _ in 0..200 {
        sqlx::query("SELECT 1").execute(&mut *conn).await?;
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < window {
        sqlx::query("SELECT 1").execute(&mut *conn).await?;
        n += 1;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / n as f64)
}

async fn run_in(
    cfg: &Config,
    rec: &mut Recorder,
    admin: &sqlx::PgPool,
    schema: &str,
) -> anyhow::Result<()> {
    let direct: PgConnectOptions = cfg.url.parse()?;
    let upstream = format!("{}:{}", direct.get_host(), direct.get_port());
    let counts = Arc::new(Counts::default());
    let port = start_relay(upstream, counts.clone()).await?;
    let proxied = direct
        .clone()
        .host("127.0.0.1")
        .port(port)
        .application_name(crate::common::APP_NAME);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(proxied.clone())
        .await?;

    let setup = Setup::create(admin, schema).await?;
    let n = 500u64;
    for (k, mode) in [
        (1, Mode::Outbox),
        (1, Mode::Hand),
        (10, Mode::Outbox),
        (10, Mode::Hand),
    ] {
        let mut conn = pool.acquire().await?;
        for i in 0..20 {
            setup.transaction(&mut conn, mode, &batch(i, k)).await?;
        }
        counts.reset();
        for i in 0..n as i64 {
            setup.transaction(&mut conn, mode, &batch(i, k)).await?;
        }
        let label = if mode == Mode::Outbox {
            "outbox"
        } else {
            "hand"
        };
        rec.add(
            "roundtrips",
            format!("pg.e{k}.{label}_per_tx"),
            counts.round_trips() as f64 / n as f64,
            "round trips",
        );
        rec.add(
            "roundtrips",
            format!("pg.e{k}.{label}_parses_per_tx"),
            counts.parses.load(Ordering::Relaxed) as f64 / n as f64,
            "parses",
        );
    }
    drop(pool);

    // The Runner, draining 10,000 events with 1,000 keys.
    let events = cfg.pick(10_000u64, 2_000);
    for b in [100usize, 1000] {
        let tables = Tables::new(format!("rt{b}"))?.schema(schema)?;
        tables.migrate(admin).await?;
        fill_pg(admin, &tables, events as usize, KEYS, 1).await?;
        settle_table(admin, &events_table(&tables)).await?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(proxied.clone())
            .await?;
        let sink = Sink::counting(events);
        let runner = Runner::builder(pool)
            .tables(tables)
            .without_registered()
            .publisher(sink.clone())
            .batch_size(b)
            .shutdown(sink.reached_target())
            .build()?;
        counts.reset();
        runner.run().await?;
        let per_event = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64 / events as f64;
        rec.add(
            "roundtrips",
            format!("pg.runner_b{b}_per_event"),
            counts.round_trips() as f64 / events as f64,
            "round trips",
        );
        rec.add(
            "roundtrips",
            format!("pg.runner_b{b}_statements_per_event"),
            per_event(&counts.executes) + per_event(&counts.queries),
            "statements",
        );
        rec.add(
            "roundtrips",
            format!("pg.runner_b{b}_pings_per_event"),
            per_event(&counts.pings),
            "pings",
        );
    }
    Ok(())
}
