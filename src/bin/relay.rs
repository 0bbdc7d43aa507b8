//! A Runner process for the crash tests: publishes `crash.event`s into a
//! sink table until it is stopped (or killed with SIGKILL).
//!
//! Configured through the environment:
//! - `RELAY_BACKEND`: `postgres` (default), `sqlite` or `mysql`
//! - `RELAY_URL`: the outbox database
//! - `RELAY_SCHEMA`: the schema (PostgreSQL) or database (MySQL) of the outbox tables
//! - `RELAY_SINK_URL`: the PostgreSQL database holding `RELAY_SINK_SCHEMA.sink`
//! - `RELAY_SINK_SCHEMA`: defaults to `RELAY_SCHEMA`
//! - `RELAY_NAME`, `RELAY_BATCH` (20), `RELAY_LEASE_MS` (1500), `RELAY_JITTER_MS` (2)

use std::time::Duration;

use outbox::Tables;
use outbox_tests::crash::SinkPublisher;

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("set {name}"))
}

fn num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RELAY_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let schema = std::env::var("RELAY_SCHEMA").ok();
    let sink_schema = std::env::var("RELAY_SINK_SCHEMA")
        .ok()
        .or_else(|| schema.clone())
        .expect("set RELAY_SINK_SCHEMA or RELAY_SCHEMA");
    let tables = match &schema {
        Some(schema) => Tables::default().schema(schema.clone())?,
        None => Tables::default(),
    };
    let name = std::env::var("RELAY_NAME").unwrap_or_else(|_| "relay".to_owned());
    let lease = Duration::from_millis(num("RELAY_LEASE_MS", 1500));
    let sink_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&var("RELAY_SINK_URL"))
        .await?;
    let sink = SinkPublisher::new(sink_pool, &sink_schema, &name, num("RELAY_JITTER_MS", 2));
    let backend = std::env::var("RELAY_BACKEND").unwrap_or_else(|_| "postgres".to_owned());
    let builder = match backend.as_str() {
        "postgres" => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect(&var("RELAY_URL"))
                .await?;
            outbox::Runner::builder(pool).tables(tables)
        }
        "mysql" => {
            let pool = sqlx::mysql::MySqlPoolOptions::new()
                .max_connections(4)
                .connect(&var("RELAY_URL"))
                .await?;
            outbox::Runner::builder(pool).tables(tables)
        }
        "sqlite" => {
            let options: sqlx::sqlite::SqliteConnectOptions = var("RELAY_URL").parse()?;
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(2)
                .connect_with(options.busy_timeout(Duration::from_secs(10)))
                .await?;
            outbox::Runner::builder(pool).tables(tables)
        }
        other => anyhow::bail!("unknown RELAY_BACKEND {other}"),
    };
    let report = builder
        .without_registered()
        .publisher(sink)
        .batch_size(usize::try_from(num("RELAY_BATCH", 20))?)
        .lease(lease)
        .publish_timeout(lease / 2)
        .poll_interval(Duration::from_millis(20))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .build()?
        .run()
        .await?;
    eprintln!("{name}: {report:?}");
    Ok(())
}
