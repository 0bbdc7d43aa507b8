//! Tests of what one backend does beyond the contracts of
//! `tests/runner_contract.rs` and `tests/source_contract.rs`: things only
//! that backend has (a session time zone, a server-wide named lock), reached
//! through its own SQL.
//!
//! Run one backend's with `cargo test --test backend_specific mysql_`.

use std::time::{Duration, SystemTime};

use outbox::{ClaimLimit, Uuid};
use outbox_tests::fixtures::{LEASE, ORDER, order, place, sorted_ids};
use outbox_tests::{Backend, Recorder, TestDb};

// ---- Rows the Runner cannot read (SQLite and MySQL/MariaDB). ----

/// Nine good events and the `bad` ones that `spoil` damages behind the
/// outbox's back: a drain publishes the nine and dead-letters each bad one
/// with a reason naming its column (`columns`, in order), and the
/// dead-letter listing still reads them.
async fn one_unreadable_row_stops_nothing<F, Fut>(backend: Backend, spoil: F, columns: &[&str])
where
    F: FnOnce(TestDb, Vec<Uuid>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let db = TestDb::new(backend, "unreadable_row").await;
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for n in 1..=9 {
        good.push(place(&db, n).await);
        if n <= columns.len() as i64 {
            bad.push(place(&db, 100 + n).await);
        }
    }
    spoil(db.clone(), bad.clone()).await;

    let rec = Recorder::new("rec", &[ORDER]);
    let report = db.runner().publisher(rec.clone()).build().unwrap().drain();
    let report = tokio::time::timeout(Duration::from_secs(60), report)
        .await
        .expect("the drain never ended")
        .expect("one unreadable row failed the drain");
    let mut published: Vec<Uuid> = rec.calls().iter().map(|c| c.id).collect();
    published.sort();
    assert_eq!(published, good, "the good events were not all published");
    assert_eq!(
        (report.published, report.dead_lettered),
        (9, bad.len() as u64)
    );
    assert_eq!(db.pending().await, 0);

    let mut dead = db.source().dead_letters(10).await.unwrap();
    dead.sort_by_key(|d| d.event.id);
    let dead_ids: Vec<Uuid> = dead.iter().map(|d| d.event.id).collect();
    assert_eq!(dead_ids, bad, "{dead:?}");
    for (d, column) in dead.iter().zip(columns) {
        assert_eq!(d.publisher, "rec");
        assert!(
            d.error.contains("could not be read") && d.error.contains(column),
            "{column}: {}",
            d.error
        );
        let unreadable = d.unreadable.as_deref().unwrap_or_default();
        assert!(
            unreadable.starts_with(&format!("{column}: ")),
            "{unreadable:?}"
        );
        assert_eq!(d.event.event_type, ORDER);
    }
    db.cleanup().await;
}

/// SQLite keeps whatever bytes a TEXT value is given: headers that are not
/// UTF-8 failed every claim, so nothing was published (0 of 9 in 25 s). A
/// version out of range is the other bad row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_headers_that_are_not_utf8_are_dead_lettered_and_the_others_go_on() {
    let spoil = |db: TestDb, bad: Vec<Uuid>| async move {
        let id = bad[0];
        db.exec(&format!(
            "UPDATE outbox_events SET headers = CAST(x'ff' AS TEXT) WHERE id = '{id}'"
        ))
        .await;
        let stored = db
            .scalar(&format!(
                "SELECT count(*) FROM outbox_events \
                 WHERE id = '{id}' AND typeof(headers) = 'text' AND hex(headers) = 'FF'"
            ))
            .await;
        assert_eq!(stored, 1, "the headers are not the text byte 0xff");
        let id = bad[1];
        db.exec(&format!(
            "UPDATE outbox_events SET version = -1 WHERE id = '{id}'"
        ))
        .await;
    };
    one_unreadable_row_stops_nothing(Backend::Sqlite, spoil, &["headers", "version"]).await;
}

/// With a non-strict `sql_mode`, MariaDB cuts a 1,025-byte key ending in a
/// two-byte character to the column's 1,024 bytes, mid-character: every
/// claim failed on it. Headers that are not JSON are the other bad row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_key_cut_mid_character_is_dead_lettered_and_the_others_go_on() {
    let spoil = |db: TestDb, bad: Vec<Uuid>| async move {
        let TestDb::MySql { pool, .. } = &db else {
            unreachable!()
        };
        let mut conn = pool.acquire().await.unwrap();
        conn.close_on_drop();
        sqlx::query("SET SESSION sql_mode = ''")
            .execute(&mut *conn)
            .await
            .unwrap();
        sqlx::query(
            "UPDATE outbox_events SET partition_key = CONCAT(REPEAT('k', 1023), 'é') WHERE id = ?",
        )
        .bind(bad[0])
        .execute(&mut *conn)
        .await
        .unwrap();
        let (length, last): (i64, String) = sqlx::query_as(
            "SELECT LENGTH(partition_key), HEX(RIGHT(partition_key, 1)) \
             FROM outbox_events WHERE id = ?",
        )
        .bind(bad[0])
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert_eq!((length, last.as_str()), (1024, "C3"), "the key was not cut");
        sqlx::query("UPDATE outbox_events SET headers = 'not json' WHERE id = ?")
            .bind(bad[1])
            .execute(&mut *conn)
            .await
            .unwrap();
    };
    one_unreadable_row_stops_nothing(Backend::MySql, spoil, &["partition_key", "headers"]).await;
}

// ---- A database clock hours behind this host's (PostgreSQL, MySQL/MariaDB;
// SQLite's clock is this host's). ----

/// Dead letters `old` and `recent` failed 2 h and 30 min ago on a database
/// clock 3 h behind this host's, seen through `source`: the Runner's
/// retention of 1 h purges the old one only. Measured on this host's clock
/// (a cutoff 2 h after the database's "now"), it purged both.
async fn retention_is_measured_on_the_database_clock(
    source: std::sync::Arc<dyn outbox::Source>,
    old: Uuid,
    recent: Uuid,
) {
    assert_eq!(source.dead_letters(10).await.unwrap().len(), 2);
    let hour = Duration::from_secs(3600);
    assert_eq!(source.purge_dead_letters_older_than(hour).await.unwrap(), 1);
    let left = source.dead_letters(10).await.unwrap();
    let left: Vec<Uuid> = left.iter().map(|d| d.event.id).collect();
    assert_eq!(left, vec![recent], "old: {old}");
}

/// `INSERT` of a dead letter of `id` that failed `failed_at`.
fn dead_letter(id: &str, failed_at: &str) -> String {
    format!(
        "INSERT INTO outbox_dead_letters (event_id, publisher, event_type, version, topic, \
           payload, headers, created_at, attempts, error, failed_at) \
         VALUES ({id}, 'sink', 'test.e', 1, 'test.e', 'x', '{{}}', {failed_at}, 1, 'refused', \
           {failed_at})"
    )
}

#[tokio::test]
async fn postgres_retention_is_measured_on_the_database_clock() {
    use sqlx::postgres::PgPoolOptions;

    let db = TestDb::new(Backend::Postgres, "pg_retention_clock").await;
    let TestDb::Pg { schema, .. } = &db else {
        unreachable!()
    };
    // A clock 3 h behind: `now()` of this schema, found before pg_catalog's.
    db.exec(&format!(
        "CREATE FUNCTION \"{schema}\".now() RETURNS timestamptz LANGUAGE sql STABLE \
         AS $$ SELECT pg_catalog.now() - interval '3 hours' $$"
    ))
    .await;
    let path = format!("SET search_path TO \"{schema}\", pg_catalog");
    let behind = PgPoolOptions::new()
        .max_connections(2)
        .after_connect(move |conn, _| {
            let path = path.clone();
            Box::pin(async move {
                sqlx::query(sqlx::AssertSqlSafe(path)).execute(conn).await?;
                Ok(())
            })
        })
        .connect(&outbox_tests::pg_url())
        .await
        .unwrap();
    let skew: f64 =
        sqlx::query_scalar("SELECT extract(epoch FROM pg_catalog.now() - now())::float8")
            .fetch_one(&behind)
            .await
            .unwrap();
    assert!((skew - 10800.0).abs() < 1.0, "the clock is {skew} s behind");
    let (old, recent) = (Uuid::now_v7(), Uuid::now_v7());
    for (id, ago) in [(old, "2 hours"), (recent, "30 minutes")] {
        let insert = dead_letter(&format!("'{id}'"), &format!("now() - interval '{ago}'"));
        sqlx::query(sqlx::AssertSqlSafe(insert))
            .execute(&behind)
            .await
            .unwrap();
    }
    let source = outbox::source(behind.clone(), &db.tables());
    retention_is_measured_on_the_database_clock(source, old, recent).await;
    behind.close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn mysql_retention_is_measured_on_the_database_clock() {
    use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};

    let db = TestDb::new(Backend::MySql, "mysql_retention_clock").await;
    let TestDb::MySql { database, .. } = &db else {
        unreachable!()
    };
    let options: MySqlConnectOptions = outbox_tests::mysql_url().parse().unwrap();
    // A session clock 3 h behind (`SET timestamp` moves UTC_TIMESTAMP too).
    let behind = MySqlPoolOptions::new()
        .max_connections(2)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query("SET timestamp = UNIX_TIMESTAMP() - 10800")
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .connect_with(options.database(database))
        .await
        .unwrap();
    let skew: i64 =
        sqlx::query_scalar("SELECT CAST(TIMESTAMPDIFF(SECOND, NOW(), SYSDATE()) AS SIGNED)")
            .fetch_one(&behind)
            .await
            .unwrap();
    assert!((skew - 10800).abs() <= 1, "the clock is {skew} s behind");
    let (old, recent) = (Uuid::now_v7(), Uuid::now_v7());
    for (id, ago) in [(old, "2 HOUR"), (recent, "30 MINUTE")] {
        let insert = dead_letter("?", &format!("UTC_TIMESTAMP(3) - INTERVAL {ago}"));
        sqlx::query(sqlx::AssertSqlSafe(insert))
            .bind(id)
            .execute(&behind)
            .await
            .unwrap();
    }
    let source = outbox::source(behind.clone(), &db.tables());
    retention_is_measured_on_the_database_clock(source, old, recent).await;
    behind.close().await;
    db.cleanup().await;
}

// ---- MySQL/MariaDB only. ----

/// Leases and timestamps use the server's UTC clock: a session `time_zone`
/// seven hours off changes nothing, neither for the writer nor for claimers
/// in other time zones.
#[tokio::test]
async fn mysql_clock_ignores_the_session_time_zone() {
    use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};

    let db = TestDb::new(Backend::MySql, "mysql_time_zone").await;
    let TestDb::MySql { database, .. } = &db else {
        unreachable!()
    };
    let options: MySqlConnectOptions = outbox_tests::mysql_url().parse().unwrap();
    let pool = MySqlPoolOptions::new()
        .max_connections(2)
        .connect_with(
            options
                .database(database)
                .timezone(Some("-07:00".to_owned())),
        )
        .await
        .unwrap();
    let offset: String = sqlx::query_scalar("SELECT @@session.time_zone")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(offset, "-07:00");
    let tables = db.tables();
    let mut tx = pool.begin().await.unwrap();
    let id = tables.enqueue(&mut tx, &order(1)).await.unwrap();
    tx.commit().await.unwrap();

    let west = outbox::source(pool.clone(), &tables);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let claimed = west
        .claim(a, ClaimLimit::events(10), Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let age = SystemTime::now()
        .duration_since(claimed[0].event.created_at)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(60), "created_at is {age:?} old");
    assert!(
        db.source()
            .claim(b, ClaimLimit::events(10), LEASE)
            .await
            .unwrap()
            .is_empty(),
        "a UTC session saw the -07:00 session's lease as expired"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let reclaimed = db
        .source()
        .claim(b, ClaimLimit::events(10), LEASE)
        .await
        .unwrap();
    assert_eq!(sorted_ids(&reclaimed), vec![id], "the lease never expired");
    pool.close().await;
    db.cleanup().await;
}

/// An event larger than the server's `max_allowed_packet` failed with
/// "Connection reset by peer" (or a bare error 1153), which says nothing of
/// the limit's value or how to raise it: the error names the setting, its
/// value and the statement to raise it. Just over the limit, MariaDB
/// answers 1153; at 100 MiB it resets the connection while the statement is
/// sent.
#[tokio::test]
async fn mysql_a_payload_over_max_allowed_packet_names_the_setting() {
    let db = TestDb::new(Backend::MySql, "mysql_packet").await;
    let max = db
        .scalar("SELECT CAST(@@max_allowed_packet AS SIGNED)")
        .await;
    let max = usize::try_from(max).unwrap();
    for size in [max + (1 << 20), (max + (1 << 20)).max(100 << 20)] {
        let payload = vec![b'x'; size];
        let mut tx = db.begin().await;
        let error = tx
            .try_enqueue_raw(&[outbox::NewEvent::new("test.e", payload)])
            .await
            .expect_err("a payload over max_allowed_packet was enqueued");
        drop(tx);
        let message = error.to_string();
        for part in [
            "max_allowed_packet (",
            &format!("{max} bytes"),
            "SET GLOBAL max_allowed_packet = ",
        ] {
            assert!(message.contains(part), "{part:?} is not in: {message}");
        }
    }
    assert_eq!(db.pending().await, 0);
    let mut tx = db.begin().await;
    tx.enqueue(&order(1)).await;
    tx.commit().await;
    assert_eq!(db.pending().await, 1, "the pool was left broken");
    db.cleanup().await;
}

/// Concurrent migrations queue on a server-wide named lock (the same name in
/// every process), so no two run their DDL at once.
#[tokio::test]
async fn mysql_migrations_wait_for_the_migration_lock() {
    use sqlx::Connection;

    let db = TestDb::new(Backend::MySql, "mysql_migrate_lock").await;
    let TestDb::MySql { database, .. } = &db else {
        unreachable!()
    };
    let tables = db.tables_with_prefix("locked");
    let mut holder = sqlx::MySqlConnection::connect(&outbox_tests::mysql_url())
        .await
        .unwrap();
    let name = "CONCAT('outbox.migrate:', SHA1(CONCAT(?, '.', ?)))";
    let got: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT GET_LOCK({name}, 5)")))
        .bind(database)
        .bind("locked")
        .fetch_one(&mut holder)
        .await
        .unwrap();
    assert_eq!(got, 1);

    let migration = tokio::spawn({
        let (db, tables) = (db.clone(), tables.clone());
        async move { db.migrate_tables(&tables).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !migration.is_finished(),
        "migrate did not wait for the lock"
    );
    let created = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = '{database}' AND TABLE_NAME LIKE 'locked%'"
        ))
        .await;
    assert_eq!(created, 0, "migrate ran while another held the lock");

    holder.close().await.unwrap();
    migration.await.unwrap().unwrap();
    assert_eq!(db.source_for(&tables).pending().await.unwrap(), 0);
    db.cleanup().await;
}

// ---- PostgreSQL and MySQL/MariaDB (SQLite cannot add a CHECK to a table). ----

/// A database that refuses to record an outcome (here a CHECK constraint
/// on the error text; in the field a value out of range, a text too long)
/// made the event be claimed again and again: `max_attempts`, the
/// permanent failure and the key's order were all bypassed, and its other
/// publishers were called each time. Now a refused statement is not
/// retried but recorded once more without its texts, so the sibling's
/// delivery and the dead letter are kept. (Should even that be refused, an
/// event claimed past `max_attempts + 3` is dead-lettered for what it is
/// still owed without publishing it again: `runner::decide`'s unit tests.)
async fn an_outcome_the_database_refuses_ends_in_a_dead_letter(backend: Backend) {
    let db = TestDb::new(backend, "refused_outcome").await;
    for table in ["outbox_dead_letters", "outbox_events"] {
        let column = if table == "outbox_events" {
            "last_error"
        } else {
            "error"
        };
        db.exec(&format!(
            "ALTER TABLE {table} ADD CONSTRAINT {table}_refuse \
             CHECK ({column} IS NULL OR {column} NOT LIKE '%refuse-me%')"
        ))
        .await;
    }
    let first = outbox_tests::fixtures::place(&db, 1).await;
    let mut tx = db.begin().await;
    let second = tx.enqueue(&order(1)).await;
    tx.commit().await;

    let refusing =
        outbox::publisher_fn::<outbox_tests::fixtures::TestOrder, _, _>("refusing", |_, _| async {
            Err::<(), _>(outbox::PublishError::permanent(
                "refuse-me: the database will not store this",
            ))
        });
    let sibling = outbox_tests::Recorder::new("sibling", &[outbox_tests::fixtures::ORDER]);
    let report = db
        .runner()
        .publisher(refusing)
        .publisher(sibling.clone())
        .max_attempts(2)
        .batch_size(1)
        .concurrency(1)
        .publish_timeout(Duration::from_millis(200))
        .lease(Duration::from_millis(300))
        .build()
        .unwrap()
        .drain();
    let report = tokio::time::timeout(Duration::from_secs(60), report)
        .await
        .expect("an outcome the database refuses looped")
        .unwrap();
    let dead = db.source().dead_letters(10).await.unwrap();
    let dead_ids: Vec<Uuid> = dead.iter().map(|d| d.event.id).collect();
    assert_eq!(dead_ids, vec![first, second], "{dead:?}");
    for d in &dead {
        assert_eq!(d.publisher, "refusing");
        assert!(
            d.error.contains("refused to store this error text"),
            "{}",
            d.error
        );
    }
    let sibling_calls: Vec<Uuid> = sibling.calls().iter().map(|c| c.id).collect();
    assert_eq!(
        sibling_calls,
        vec![first, second],
        "the sibling is called once each"
    );
    assert_eq!((report.published, report.dead_lettered), (2, 2));
    assert_eq!(db.pending().await, 0);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_outcome_the_database_refuses_ends_in_a_dead_letter() {
    an_outcome_the_database_refuses_ends_in_a_dead_letter(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_an_outcome_the_database_refuses_ends_in_a_dead_letter() {
    an_outcome_the_database_refuses_ends_in_a_dead_letter(Backend::MySql).await;
}
