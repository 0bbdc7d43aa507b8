//! `burst`: a backlog that arrives while a Runner is already running on an
//! empty outbox (after a broker outage, a bulk import). The Runner's
//! statements were prepared, and their plans cached, while the table was
//! small; this measures how fast it then drains. A diagnostic, not in `all`.

use std::time::{Duration, Instant};

use outbox::{Runner, Tables};

use crate::common::{Config, Recorder, Sink, drop_schema, fill_pg, fresh_schema, pg_pool};
use crate::relay::KEYS;

pub(crate) async fn run(cfg: &Config, rec: &mut Recorder) -> anyhow::Result<()> {
    let admin = pg_pool(&cfg.url, 2).await?;
    let schema = fresh_schema(&admin, "burst").await?;
    let result = run_in(cfg, rec, &admin, &schema).await;
    drop_schema(&admin, &schema).await;
    result
}

async fn run_in(
    cfg: &Config,
    rec: &mut Recorder,
    admin: &sqlx::PgPool,
    schema: &str,
) -> anyhow::Result<()> {
    let n: u64 = cfg.pick(200_000, 20_000);
    let tables = Tables::default().schema(schema)?;
    tables.migrate(admin).await?;
    let sink = Sink::counting(n);
    let cap = cfg.pick(Duration::from_secs(120), Duration::from_secs(30));
    let runner = Runner::builder(pg_pool(&cfg.url, 4).await?)
        .tables(tables.clone())
        .without_registered()
        .publisher(sink.clone())
        .shutdown({
            let reached = sink.reached_target();
            async move {
                tokio::select! {
                    () = reached => {}
                    () = tokio::time::sleep(cap) => {}
                }
            }
        })
        .build()?;
    let runner = tokio::spawn(runner.run());
    // Idle polls on the empty table: enough executions for PostgreSQL to
    // settle on a generic plan for the prepared claim.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let start = Instant::now();
    fill_pg(admin, &tables, n as usize, KEYS, 2).await?;
    let filled = start.elapsed().as_secs_f64();
    runner.await??;
    let end = sink.reached().unwrap_or_else(Instant::now);
    let published = sink.count().min(n);
    rec.add("burst", "pg.fill_s", filled, "s");
    rec.add(
        "burst",
        "pg.published_share",
        published as f64 / n as f64,
        "of n",
    );
    rec.add(
        "burst",
        "pg.runner_ev_s",
        published as f64 / (end - start).as_secs_f64(),
        "ev/s",
    );
    Ok(())
}
