//! `profile`: where a draining Runner spends its time, from its own tracing
//! spans (`outbox.claim`, `outbox.ack`, `outbox.publish`). A diagnostic,
//! not part of `all`: the spans cost a little.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox::{Runner, Tables};
use tracing::Subscriber;
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

use crate::common::{
    Config, Recorder, Sink, drop_schema, events_table, exec, fill_pg, fresh_schema, lock, pg_pool,
    settle_table,
};
use crate::relay::KEYS;

type Totals = Arc<Mutex<BTreeMap<&'static str, (u64, Duration)>>>;

struct Timing {
    totals: Totals,
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Timing {
    fn on_new_span(&self, _attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Instant::now());
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        let Some(start) = span.extensions().get::<Instant>().copied() else {
            return;
        };
        let mut totals = lock(&self.totals);
        let e = totals.entry(span.metadata().name()).or_default();
        e.0 += 1;
        e.1 += start.elapsed();
    }
}

pub(crate) async fn run(cfg: &Config, rec: &mut Recorder) -> anyhow::Result<()> {
    // One subscriber for the process: `--runs N` calls this N times.
    static TOTALS: std::sync::OnceLock<Totals> = std::sync::OnceLock::new();
    let mut installed = Ok(());
    let totals = TOTALS
        .get_or_init(|| {
            let totals: Totals = Arc::default();
            let subscriber = tracing_subscriber::registry().with(Timing {
                totals: totals.clone(),
            });
            installed = tracing::subscriber::set_global_default(subscriber);
            totals
        })
        .clone();
    installed?;
    let admin = pg_pool(&cfg.url, 2).await?;
    let schema = fresh_schema(&admin, "prof").await?;
    let result = run_in(cfg, rec, &admin, &schema, &totals).await;
    drop_schema(&admin, &schema).await;
    result
}

async fn run_in(
    cfg: &Config,
    rec: &mut Recorder,
    admin: &sqlx::PgPool,
    schema: &str,
    totals: &Totals,
) -> anyhow::Result<()> {
    let n: u64 = cfg.pick(200_000, 20_000);
    let tables = Tables::default().schema(schema)?;
    tables.migrate(admin).await?;
    let table = events_table(&tables);
    create_procedures(admin, schema, &table).await?;
    for b in [100usize, 1000] {
        // The Runner's claim and ack statements in a loop inside the server:
        // no round trips, no client. What the SQL itself costs.
        for (what, procedure) in [
            ("in_server_claim_ack", "claim_ack_loop"),
            ("in_server_raw", "raw_loop"),
        ] {
            exec(admin, format!("TRUNCATE {table}")).await?;
            fill_pg(admin, &tables, n as usize, KEYS, 2).await?;
            settle_table(admin, &table).await?;
            let start = Instant::now();
            exec(admin, format!("CALL \"{schema}\".{procedure}({b})")).await?;
            let rate = n as f64 / start.elapsed().as_secs_f64();
            rec.add("profile", format!("pg.b{b}.{what}_ev_s"), rate, "ev/s");
        }
        exec(admin, format!("TRUNCATE {table}")).await?;
        fill_pg(admin, &tables, n as usize, KEYS, 2).await?;
        settle_table(admin, &table).await?;
        lock(totals).clear();
        let sink = Sink::counting(n);
        let runner = Runner::builder(pg_pool(&cfg.url, 4).await?)
            .tables(tables.clone())
            .without_registered()
            .publisher(sink.clone())
            .batch_size(b)
            .shutdown(sink.reached_target())
            .build()?;
        let start = Instant::now();
        runner.run().await?;
        let wall = start.elapsed().as_secs_f64();
        let t = lock(totals).clone();
        rec.add("profile", format!("pg.b{b}.ev_s"), n as f64 / wall, "ev/s");
        let claims = t.get("outbox.claim").map_or(0, |c| c.0);
        rec.add(
            "profile",
            format!("pg.b{b}.claims"),
            claims as f64,
            "claims",
        );
        rec.add(
            "profile",
            format!("pg.b{b}.events_per_claim"),
            n as f64 / claims.max(1) as f64,
            "events",
        );
        for (name, label) in [
            ("outbox.claim", "claim"),
            ("outbox.ack", "ack"),
            ("outbox.publish", "publish"),
        ] {
            let (count, total) = t.get(name).copied().unwrap_or_default();
            rec.add(
                "profile",
                format!("pg.b{b}.{label}_total_s_share"),
                total.as_secs_f64() / wall,
                "of wall",
            );
            rec.add(
                "profile",
                format!("pg.b{b}.{label}_mean_ms"),
                total.as_secs_f64() * 1000.0 / count.max(1) as f64,
                "ms",
            );
        }
    }
    Ok(())
}

/// Two procedures that drain the table inside the server, a batch per
/// transaction: `claim_ack_loop` runs the Runner's PostgreSQL claim (as in
/// `outbox/src/store/postgres.rs`, keep them in step) then its ack;
/// `raw_loop` the raw `DELETE … FOR UPDATE SKIP LOCKED`.
async fn create_procedures(admin: &sqlx::PgPool, schema: &str, ev: &str) -> anyhow::Result<()> {
    exec(
        admin,
        format!(
            "CREATE PROCEDURE \"{schema}\".claim_ack_loop(lim int) LANGUAGE plpgsql AS $p$ \
             DECLARE ids uuid[]; me uuid := gen_random_uuid(); \
             BEGIN LOOP \
               WITH c AS ( \
                 SELECT e.id FROM {ev} e \
                 WHERE (SELECT set_config('synchronous_commit', 'off', true)) = 'off' \
                   AND e.due_at <= now() \
                   AND (e.lease_until IS NULL OR e.lease_until <= now()) \
                   AND (e.partition_key IS NULL OR NOT EXISTS ( \
                     SELECT 1 FROM {ev} p WHERE p.partition_key = e.partition_key AND p.id < e.id)) \
                   AND e.id <= COALESCE(( \
                     SELECT d.id FROM {ev} d WHERE d.due_at <= now() \
                       AND (d.lease_until IS NULL OR d.lease_until <= now()) \
                     ORDER BY d.id OFFSET greatest(4 * lim, 64) LIMIT 1), \
                     'ffffffff-ffff-ffff-ffff-ffffffffffff') \
                 ORDER BY e.id LIMIT lim FOR UPDATE SKIP LOCKED), \
               u AS (UPDATE {ev} e SET lease_owner = me, \
                   lease_until = now() + interval '60 s', attempts = e.attempts + 1 \
                 FROM c WHERE e.id = c.id \
                 RETURNING e.id, e.event_type, e.version, e.topic, e.partition_key, e.payload, \
                   e.headers::text, e.done, e.only_publishers) \
               SELECT array_agg(id) INTO ids FROM u; \
               COMMIT; \
               EXIT WHEN ids IS NULL; \
               DELETE FROM {ev} WHERE id = ANY(ids) AND lease_owner = me; \
               COMMIT; \
             END LOOP; END $p$"
        ),
    )
    .await?;
    exec(
        admin,
        format!(
            "CREATE PROCEDURE \"{schema}\".raw_loop(lim int) LANGUAGE plpgsql AS $p$ \
             DECLARE k int; \
             BEGIN LOOP \
               DELETE FROM {ev} WHERE id IN ( \
                 SELECT id FROM {ev} ORDER BY id LIMIT lim FOR UPDATE SKIP LOCKED); \
               GET DIAGNOSTICS k = ROW_COUNT; \
               COMMIT; \
               EXIT WHEN k = 0; \
             END LOOP; END $p$"
        ),
    )
    .await?;
    Ok(())
}
