//! The versioned schema (`outbox::migrate`, `outbox::migrations`) on every
//! backend: a current schema costs one read and never waits for the
//! application's open transactions; a migration that must wait gives up
//! within its lock timeout with a clear error, without holding up the
//! application's writes for longer; concurrent migrators apply the schema
//! once; tables of the release before versions are upgraded with their
//! events and dead letters; the exported SQL, run as a migration tool runs
//! it, makes a schema `migrate` leaves alone; a newer schema is refused.
//!
//! Run one backend with `cargo test --test migrations postgres::`.

use std::time::{Duration, Instant};

use outbox::migrations::{Files, Migration, Migrator};
use outbox::{Error, Tables};
use outbox_tests::fixtures::{ORDER, order};
use outbox_tests::{Answer, Backend, Recorder, TestDb, Tx, on_backend, on_every_backend};
use sqlx::{AssertSqlSafe, Connection};

on_every_backend!(
    ;
    // All about SQL tables and their schema: the in-memory outbox has none.
    sql_only: [
    a_current_schema_is_one_read_beside_an_open_write,
    a_migration_that_must_wait_gives_up_within_its_lock_timeout,
    concurrent_migrators_apply_the_schema_once,
    tables_of_the_release_before_versions_are_upgraded_with_their_events,
    exported_migrations_run_by_a_tool_make_a_schema_migrate_leaves_alone,
    a_newer_schema_is_refused,
    the_source_refuses_tables_at_an_older_version_until_they_are_migrated,
    exported_migrations_apply_to_tables_that_migrate_made,
    ],
);
on_backend!(
    postgres_only,
    Postgres,
    [tables_of_the_release_before_versions_are_baselined_beside_an_open_write]
);
on_backend!(
    mysql_only,
    MySql,
    [tables_of_the_release_before_versions_are_baselined_beside_an_open_write]
);

/// `migrator.run` on the test's database.
async fn run(db: &TestDb, migrator: &Migrator) -> Result<(), Error> {
    match db {
        TestDb::Pg { pool, .. } => migrator.run(pool).await,
        TestDb::Sqlite { pool, .. } => migrator.run(pool).await,
        TestDb::MySql { pool, .. } => migrator.run(pool).await,
        TestDb::Memory { .. } => unreachable!("no SQL tables to migrate"),
    }
}

/// The recorded schema version.
async fn version(db: &TestDb, tables: &Tables) -> u32 {
    let migrator = Migrator::new(tables);
    match db {
        TestDb::Pg { pool, .. } => migrator.version(pool).await,
        TestDb::Sqlite { pool, .. } => migrator.version(pool).await,
        TestDb::MySql { pool, .. } => migrator.version(pool).await,
        TestDb::Memory { .. } => unreachable!("no SQL tables to migrate"),
    }
    .unwrap()
}

/// Run a script of several statements, as a migration tool does with a
/// migration file: in one round trip, not prepared.
async fn run_script(db: &TestDb, sql: &str) {
    let sql = AssertSqlSafe(sql.to_owned());
    match db {
        TestDb::Pg { pool, .. } => {
            let mut tx = pool.begin().await.unwrap();
            sqlx::raw_sql(sql).execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }
        TestDb::Sqlite { pool, .. } => {
            sqlx::raw_sql(sql).execute(pool).await.unwrap();
        }
        TestDb::MySql { pool, .. } => {
            sqlx::raw_sql(sql).execute(pool).await.unwrap();
        }
        TestDb::Memory { .. } => unreachable!("no SQL tables to migrate"),
    }
}

fn exported(backend: Backend, tables: &Tables) -> Vec<Migration> {
    match backend {
        Backend::Postgres => outbox::migrations::postgres(tables),
        Backend::Sqlite => outbox::migrations::sqlite(tables),
        Backend::MySql => outbox::migrations::mysql(tables),
        Backend::Memory => unreachable!("no SQL tables to migrate"),
    }
}

/// Enqueue this order in a transaction left open.
async fn open_write(db: &TestDb, id: i64) -> Tx {
    let mut tx = db.begin().await;
    tx.enqueue(&order(id)).await;
    tx
}

/// Make the test's tables look like those of the release before versions:
/// no version table and, with `old_columns`, no `dead_publishers` column
/// either (a real change for `migrate` to make).
async fn back_to_before_versions(db: &TestDb, old_columns: bool) {
    db.exec("DROP TABLE outbox_schema_version").await;
    if old_columns {
        db.exec("ALTER TABLE outbox_events DROP COLUMN dead_publishers")
            .await;
    }
}

/// While a transaction holds an uncommitted enqueue, `migrate` on a current
/// schema returns at once: it only reads the version (before versions it
/// re-created the trigger on every start and waited behind that
/// transaction, and the application's writes behind it).
async fn a_current_schema_is_one_read_beside_an_open_write(backend: Backend) {
    let db = TestDb::new(backend, "mig_current").await;
    let open = open_write(&db, 1).await;
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(1), db.migrate_tables(&db.tables()))
        .await
        .expect("migrate waited behind the open transaction");
    result.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(version(&db, &db.tables()).await, Migrator::latest());
    open.commit().await;
    assert_eq!(db.pending().await, 1);
    db.cleanup().await;
}

/// A migration that must change tables an open transaction wrote to gives
/// up within its lock timeout with `MigrationLocked`, changing nothing;
/// meanwhile the application's new writes wait at most that long (on
/// SQLite, one writer at a time, they wait for the open transaction
/// anyway). Once the transaction ends, the migration goes through.
async fn a_migration_that_must_wait_gives_up_within_its_lock_timeout(backend: Backend) {
    let db = TestDb::new(backend, "mig_waits").await;
    back_to_before_versions(&db, true).await;
    let open = open_write(&db, 1).await;
    let timeout = Duration::from_millis(800);
    let migrator = Migrator::new(&db.tables()).lock_timeout(timeout);
    let started = Instant::now();
    let migration = tokio::spawn({
        let (db, migrator) = (db.clone(), migrator.clone());
        async move { run(&db, &migrator).await }
    });
    if backend.runs_beside_open_writes() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let write = Instant::now();
        let mut tx = db.begin().await;
        tx.enqueue(&order(2)).await;
        tx.commit().await;
        assert!(
            write.elapsed() < timeout + Duration::from_millis(700),
            "a new write waited {:?} behind the migration",
            write.elapsed()
        );
    }
    let result = migration.await.unwrap();
    // MySQL takes whole seconds.
    let allowed = match backend {
        Backend::MySql => Duration::from_secs(1),
        _ => timeout,
    } + Duration::from_millis(900);
    assert!(
        started.elapsed() < allowed,
        "gave up after {:?}",
        started.elapsed()
    );
    let Err(error @ Error::MigrationLocked { .. }) = result else {
        panic!("{result:?}")
    };
    let message = error.to_string();
    for needed in ["outbox_*", "gave up", "lock_timeout", "again"] {
        assert!(message.contains(needed), "{needed:?} not in {message}");
    }
    assert_eq!(version(&db, &db.tables()).await, 0, "the migration changed");

    open.commit().await;
    run(&db, &migrator).await.unwrap();
    assert_eq!(version(&db, &db.tables()).await, Migrator::latest());
    let rec = Recorder::new("rec", &[ORDER]);
    db.drain_with(rec.clone()).await;
    let expected = if backend.runs_beside_open_writes() {
        2
    } else {
        1
    };
    assert_eq!(rec.calls().len(), expected);
    db.cleanup().await;
}

/// Tables of the release before versions that are complete need no DDL on
/// them to be baselined: `migrate` records their version beside an open
/// write instead of waiting for it.
async fn tables_of_the_release_before_versions_are_baselined_beside_an_open_write(
    backend: Backend,
) {
    let db = TestDb::new(backend, "mig_baseline").await;
    back_to_before_versions(&db, false).await;
    assert_eq!(version(&db, &db.tables()).await, 0);
    let open = open_write(&db, 1).await;
    let migrator = Migrator::new(&db.tables()).lock_timeout(Duration::from_millis(800));
    let started = Instant::now();
    run(&db, &migrator).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(version(&db, &db.tables()).await, Migrator::latest());
    open.commit().await;
    assert_eq!(db.pending().await, 1);
    db.cleanup().await;
}

/// Four migrators at once on a fresh database: all succeed, and the schema
/// is applied once (recording a version twice would fail on its primary
/// key).
async fn concurrent_migrators_apply_the_schema_once(backend: Backend) {
    let db = TestDb::new(backend, "mig_concurrent").await;
    let tables = db.tables_with_prefix("fleet");
    let runs = (0..4).map(|_| {
        let (db, tables) = (db.clone(), tables.clone());
        tokio::spawn(async move { run(&db, &Migrator::new(&tables)).await })
    });
    for result in futures_util::future::join_all(runs).await {
        result.unwrap().unwrap();
    }
    assert_eq!(version(&db, &tables).await, Migrator::latest());
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM fleet_schema_version").await,
        i64::from(Migrator::latest())
    );
    let mut tx = db.begin_in(tables.clone()).await;
    tx.enqueue(&order(1)).await;
    tx.commit().await;
    assert_eq!(db.source_for(&tables).pending().await.unwrap(), 1);
    db.cleanup().await;
}

/// The statements the release before versions ran in `migrate`, copied
/// from it: the tables it left are what `migrate` must upgrade.
fn before_versions_ddl(db: &TestDb) -> Vec<String> {
    match db {
        TestDb::Pg { schema, .. } => {
            let ev = format!("\"{schema}\".\"outbox_events\"");
            let dl = format!("\"{schema}\".\"outbox_dead_letters\"");
            let channel = format!("outbox.{schema}.outbox");
            let lock_key = i64::from_ne_bytes(fnv1a(channel.as_bytes()).to_ne_bytes());
            let notify_fn = format!("\"{schema}\".\"outbox_events_notify\"");
            vec![
                format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ev} ( \
                       id uuid PRIMARY KEY, \
                       event_type text NOT NULL, \
                       version integer NOT NULL, \
                       topic text NOT NULL, \
                       partition_key text, \
                       payload bytea NOT NULL, \
                       headers jsonb NOT NULL DEFAULT '{{}}', \
                       created_at timestamptz NOT NULL DEFAULT now(), \
                       due_at timestamptz NOT NULL DEFAULT now(), \
                       attempts integer NOT NULL DEFAULT 0, \
                       lease_owner uuid, \
                       lease_until timestamptz, \
                       done text[] NOT NULL DEFAULT '{{}}', \
                       dead_publishers text[] NOT NULL DEFAULT '{{}}', \
                       only_publishers text[], \
                       last_error text)"
                ),
                format!(
                    "ALTER TABLE {ev} ADD COLUMN IF NOT EXISTS dead_publishers text[] NOT NULL DEFAULT '{{}}'"
                ),
                format!(
                    "CREATE INDEX IF NOT EXISTS \"outbox_events_key_idx\" ON {ev} (partition_key, id) \
                     WHERE partition_key IS NOT NULL"
                ),
                format!(
                    "ALTER TABLE {ev} SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0, \
                       autovacuum_vacuum_threshold = 5000, autovacuum_vacuum_cost_delay = 0, \
                       autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 5000)"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {dl} ( \
                       event_id uuid NOT NULL, \
                       publisher text NOT NULL, \
                       event_type text NOT NULL, \
                       version integer NOT NULL, \
                       topic text NOT NULL, \
                       partition_key text, \
                       payload bytea NOT NULL, \
                       headers jsonb NOT NULL, \
                       created_at timestamptz NOT NULL, \
                       attempts integer NOT NULL, \
                       error text NOT NULL, \
                       failed_at timestamptz NOT NULL DEFAULT now(), \
                       PRIMARY KEY (event_id, publisher))"
                ),
                format!(
                    "CREATE INDEX IF NOT EXISTS \"outbox_dead_letters_failed_idx\" ON {dl} (failed_at)"
                ),
                format!(
                    "CREATE OR REPLACE FUNCTION {notify_fn}() RETURNS trigger LANGUAGE plpgsql AS $fn$ \
                     BEGIN \
                       IF pg_try_advisory_xact_lock({lock_key}) THEN \
                         PERFORM pg_notify('{channel}', ''); \
                       END IF; \
                       RETURN NULL; \
                     END $fn$"
                ),
                format!("DROP TRIGGER IF EXISTS \"outbox_events_notify\" ON {ev}"),
                format!(
                    "CREATE CONSTRAINT TRIGGER \"outbox_events_notify\" AFTER INSERT ON {ev} \
                     DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {notify_fn}()"
                ),
            ]
        }
        TestDb::MySql { database, .. } => {
            let ev = format!("`{database}`.`outbox_events`");
            let dl = format!("`{database}`.`outbox_dead_letters`");
            let event = "event_type TEXT NOT NULL, \
                         version INT NOT NULL, \
                         topic TEXT NOT NULL, \
                         partition_key VARBINARY(1024) NULL, \
                         payload LONGBLOB NOT NULL, \
                         headers LONGTEXT NOT NULL, \
                         created_at DATETIME(3) NOT NULL";
            vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {ev} ( \
                       id BINARY(16) NOT NULL PRIMARY KEY, \
                       {event}, \
                       due_at DATETIME(3) NOT NULL, \
                       attempts INT NOT NULL DEFAULT 0, \
                       lease_owner BINARY(16) NULL, \
                       lease_until DATETIME(3) NULL, \
                       done TEXT NOT NULL, \
                       dead_publishers TEXT NULL, \
                       only_publishers TEXT NULL, \
                       last_error LONGTEXT NULL, \
                       INDEX key_idx (partition_key, id)) \
                     ENGINE = InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {dl} ( \
                       event_id BINARY(16) NOT NULL, \
                       publisher VARCHAR(255) NOT NULL, \
                       {event}, \
                       attempts INT NOT NULL, \
                       error LONGTEXT NOT NULL, \
                       failed_at DATETIME(3) NOT NULL, \
                       PRIMARY KEY (event_id, publisher), \
                       INDEX failed_idx (failed_at)) \
                     ENGINE = InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                ),
            ]
        }
        TestDb::Sqlite { .. } => vec![
            "CREATE TABLE IF NOT EXISTS \"outbox_events\" ( \
               id TEXT PRIMARY KEY NOT NULL, \
               event_type TEXT NOT NULL, \
               version INTEGER NOT NULL, \
               topic TEXT NOT NULL, \
               partition_key TEXT, \
               payload BLOB NOT NULL, \
               headers TEXT NOT NULL DEFAULT '{}', \
               created_at INTEGER NOT NULL, \
               due_at INTEGER NOT NULL, \
               attempts INTEGER NOT NULL DEFAULT 0, \
               lease_owner TEXT, \
               lease_until INTEGER, \
               done TEXT NOT NULL DEFAULT '[]', \
               dead_publishers TEXT, \
               only_publishers TEXT, \
               last_error TEXT) WITHOUT ROWID"
                .to_owned(),
            "CREATE INDEX IF NOT EXISTS \"outbox_events_key_idx\" ON \"outbox_events\" \
             (partition_key, id) WHERE partition_key IS NOT NULL"
                .to_owned(),
            "CREATE TABLE IF NOT EXISTS \"outbox_dead_letters\" ( \
               event_id TEXT NOT NULL, \
               publisher TEXT NOT NULL, \
               event_type TEXT NOT NULL, \
               version INTEGER NOT NULL, \
               topic TEXT NOT NULL, \
               partition_key TEXT, \
               payload BLOB NOT NULL, \
               headers TEXT NOT NULL, \
               created_at INTEGER NOT NULL, \
               attempts INTEGER NOT NULL, \
               error TEXT NOT NULL, \
               failed_at INTEGER NOT NULL, \
               PRIMARY KEY (event_id, publisher)) WITHOUT ROWID"
                .to_owned(),
            "CREATE INDEX IF NOT EXISTS \"outbox_dead_letters_failed_idx\" ON \
             \"outbox_dead_letters\" (failed_at)"
                .to_owned(),
        ],
        TestDb::Memory { .. } => unreachable!("no SQL tables to migrate"),
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A database that is not migrated.
async fn bare(backend: Backend, test: &str) -> TestDb {
    match backend {
        Backend::Postgres => TestDb::postgres(test).await,
        Backend::Sqlite => TestDb::sqlite(test).await,
        Backend::MySql => TestDb::mysql(test).await,
        Backend::Memory => unreachable!("no SQL tables to migrate"),
    }
}

/// Tables made by the release before versions, with pending events and a
/// dead letter in them, are upgraded by `migrate` (twice, as a fleet
/// would): nothing is lost, and the Runner publishes every event, the
/// retried dead letter too.
async fn tables_of_the_release_before_versions_are_upgraded_with_their_events(backend: Backend) {
    let db = bare(backend, "mig_upgrade").await;
    for statement in before_versions_ddl(&db) {
        db.exec(&statement).await;
    }
    // What that release left: a dead letter and two pending events.
    let mut tx = db.begin().await;
    let dead = tx.enqueue(&order(1)).await;
    tx.commit().await;
    let failing = Recorder::new("billing", &[ORDER]).always(Answer::Permanent);
    db.drain_with(failing).await;
    let mut tx = db.begin().await;
    let pending = tx.enqueue_all(&[order(2), order(3)]).await;
    tx.commit().await;
    assert_eq!(version(&db, &db.tables()).await, 0);

    db.migrate().await;
    db.migrate().await;
    assert_eq!(version(&db, &db.tables()).await, Migrator::latest());
    let source = db.source();
    assert_eq!(source.pending().await.unwrap(), 2);
    let letters = source.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].event.id, dead);
    assert_eq!(source.retry_dead_letters(None).await.unwrap(), 1);

    let billing = Recorder::new("billing", &[ORDER]);
    db.drain_with(billing.clone()).await;
    let mut got: Vec<_> = billing.calls().iter().map(|c| c.id).collect();
    got.sort();
    let mut want = vec![dead, pending[0], pending[1]];
    want.sort();
    assert_eq!(got, want);
    assert!(source.dead_letters(10).await.unwrap().is_empty());
    db.cleanup().await;
}

/// Something that keeps any migration of the test's tables from taking its
/// lock: on PostgreSQL and MySQL/MariaDB the migration lock itself, taken
/// by another session; on SQLite an open write transaction.
enum Blocker {
    Pg(sqlx::PgConnection),
    MySql(sqlx::MySqlConnection),
    Sqlite(Tx),
}

async fn block_migrations(db: &TestDb) -> Blocker {
    match db {
        TestDb::Pg { schema, .. } => {
            let mut conn = sqlx::PgConnection::connect(&outbox_tests::pg_url())
                .await
                .unwrap();
            sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
                .bind(format!("outbox.migrate:\"{schema}\".\"outbox_events\""))
                .execute(&mut conn)
                .await
                .unwrap();
            Blocker::Pg(conn)
        }
        TestDb::MySql { database, .. } => {
            let mut conn = sqlx::MySqlConnection::connect(&outbox_tests::mysql_url())
                .await
                .unwrap();
            let got: i64 = sqlx::query_scalar(
                "SELECT GET_LOCK(CONCAT('outbox.migrate:', SHA1(CONCAT(?, '.', ?))), 5)",
            )
            .bind(database)
            .bind("outbox")
            .fetch_one(&mut conn)
            .await
            .unwrap();
            assert_eq!(got, 1);
            Blocker::MySql(conn)
        }
        TestDb::Sqlite { .. } => Blocker::Sqlite(open_write(db, 99).await),
        TestDb::Memory { .. } => unreachable!("no SQL tables to migrate"),
    }
}

impl Blocker {
    async fn release(self) {
        match self {
            Self::Pg(conn) => conn.close().await.unwrap(),
            Self::MySql(conn) => conn.close().await.unwrap(),
            Self::Sqlite(tx) => tx.rollback().await,
        }
    }
}

/// The exported migrations, written as `sqlx migrate` files and run in
/// order as a migration tool runs them, make tables at the latest version
/// that `migrate` then leaves alone: it succeeds while its lock is held
/// elsewhere (it would give up if it had anything to do, as the second half
/// shows), and the Runner works on them.
async fn exported_migrations_run_by_a_tool_make_a_schema_migrate_leaves_alone(backend: Backend) {
    let db = bare(backend, "mig_export").await;
    let tables = db.tables();
    let dir = std::env::temp_dir()
        .join("outbox-tests")
        .join(outbox_tests::unique_name("migrations"));
    let files = Files::sqlx()
        .version_offset(20_260_000_000_000)
        .write(&dir, &exported(backend, &tables))
        .unwrap();
    assert_eq!(files.len(), Migrator::latest() as usize);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|f| f.unwrap().path())
        .collect();
    names.sort();
    assert_eq!(names, files);
    assert!(
        files[0].ends_with("20260000000001_outbox_create_tables.sql"),
        "{files:?}"
    );
    for file in &files {
        run_script(&db, &std::fs::read_to_string(file).unwrap()).await;
    }
    // Writing them again changes nothing; other content is refused.
    Files::sqlx()
        .version_offset(20_260_000_000_000)
        .write(&dir, &exported(backend, &tables))
        .unwrap();
    std::fs::write(&files[0], "-- edited\n").unwrap();
    let refused = Files::sqlx()
        .version_offset(20_260_000_000_000)
        .write(&dir, &exported(backend, &tables))
        .unwrap_err();
    assert!(refused.to_string().contains("must not change"), "{refused}");
    std::fs::remove_dir_all(&dir).unwrap();

    assert_eq!(version(&db, &tables).await, Migrator::latest());
    let quick = Migrator::new(&tables).lock_timeout(Duration::from_millis(300));
    let blocker = block_migrations(&db).await;
    run(&db, &quick).await.unwrap();
    // The control: with a version missing, the same migration gives up.
    if backend != Backend::Sqlite {
        db.exec("DELETE FROM outbox_schema_version").await;
        let result = run(&db, &quick).await;
        assert!(
            matches!(result, Err(Error::MigrationLocked { .. })),
            "{result:?}"
        );
    }
    blocker.release().await;
    run(&db, &quick).await.unwrap();
    assert_eq!(version(&db, &tables).await, Migrator::latest());

    let mut tx = db.begin().await;
    let ids = tx.enqueue_all(&[order(1), order(2)]).await;
    tx.commit().await;
    let rec = Recorder::new("rec", &[ORDER]);
    db.drain_with(rec.clone()).await;
    assert_eq!(rec.calls().iter().map(|c| c.id).collect::<Vec<_>>(), ids);
    db.cleanup().await;
}

/// A team that moves from `migrate` to its own migration tool can apply
/// the exported migrations to the tables `migrate` made: they change
/// nothing, and events stay.
async fn exported_migrations_apply_to_tables_that_migrate_made(backend: Backend) {
    let db = TestDb::new(backend, "mig_switch").await;
    let mut tx = db.begin().await;
    tx.enqueue(&order(1)).await;
    tx.commit().await;
    for migration in exported(backend, &db.tables()) {
        run_script(&db, &migration.sql).await;
    }
    assert_eq!(version(&db, &db.tables()).await, Migrator::latest());
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM outbox_schema_version")
            .await,
        i64::from(Migrator::latest())
    );
    assert_eq!(db.pending().await, 1);
    db.cleanup().await;
}

/// Tables at a version newer than this release knows are refused, with
/// both versions in the error, and left as they are.
async fn a_newer_schema_is_refused(backend: Backend) {
    let db = TestDb::new(backend, "mig_newer").await;
    let newer = Migrator::latest() + 1;
    db.exec(&format!(
        "INSERT INTO outbox_schema_version (version, name, applied_at) \
         VALUES ({newer}, 'from_the_future', {})",
        match backend {
            Backend::Postgres => "now()",
            Backend::MySql => "UTC_TIMESTAMP(3)",
            Backend::Sqlite => "0",
            Backend::Memory => unreachable!("no SQL tables to migrate"),
        }
    ))
    .await;
    let result = db.migrate_tables(&db.tables()).await;
    let Err(error @ Error::SchemaTooNew { found, known, .. }) = &result else {
        panic!("{result:?}")
    };
    assert_eq!((*found, *known), (newer, Migrator::latest()));
    let message = error.to_string();
    assert!(message.contains("does not downgrade"), "{message}");
    assert_eq!(version(&db, &db.tables()).await, newer);
    db.cleanup().await;
}

/// Tables whose recorded version is older than the Source needs (a
/// migration tool stopped early, a MySQL migration cut short) are refused
/// by the Source, saying what to run, instead of failing on a missing
/// column later; once migrated, the same Source (a running Runner's) goes
/// on.
async fn the_source_refuses_tables_at_an_older_version_until_they_are_migrated(backend: Backend) {
    let db = TestDb::new(backend, "mig_older").await;
    let mut tx = db.begin().await;
    tx.enqueue(&order(1)).await;
    tx.commit().await;
    db.exec("DELETE FROM outbox_schema_version").await;
    let source = db.source();
    let result = source.pending().await;
    let Err(
        error @ Error::SchemaTooOld {
            found, required, ..
        },
    ) = &result
    else {
        panic!("{result:?}")
    };
    assert_eq!((*found, *required), (0, Migrator::latest()));
    let message = error.to_string();
    for needed in ["outbox::migrate", "outbox::migrations", "version 0"] {
        assert!(message.contains(needed), "{needed:?} not in {message}");
    }
    db.migrate().await;
    assert_eq!(source.pending().await.unwrap(), 1);
    db.cleanup().await;
}

/// The SQL of every version, as exported for the default tables, is pinned
/// in `tests/migrations/<backend>/`: migration tools checksum the
/// migrations they applied (sqlx, Flyway, refinery), so a released
/// version's text must never change; a schema change is a new version. Pin
/// a new version's files with `OUTBOX_PIN_MIGRATIONS=1 cargo test --test
/// migrations released_versions`.
#[test]
fn released_versions_keep_their_sql() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/migrations");
    let tables = Tables::default();
    for backend in [Backend::Postgres, Backend::MySql, Backend::Sqlite] {
        let folder = dir.join(format!("{backend:?}").to_lowercase());
        for migration in exported(backend, &tables) {
            let path = folder.join(Files::sqlx().file_name(&migration));
            match std::fs::read_to_string(&path) {
                Ok(pinned) => assert!(
                    pinned == migration.sql,
                    "the SQL of {backend:?} schema version {} is not the one pinned in {}: a \
                     released version must never change (migration tools refuse an applied \
                     migration whose text changed); put the change in a new version",
                    migration.version,
                    path.display()
                ),
                Err(_) if std::env::var_os("OUTBOX_PIN_MIGRATIONS").is_some() => {
                    Files::sqlx()
                        .write(&folder, std::slice::from_ref(&migration))
                        .unwrap();
                }
                Err(e) => panic!(
                    "{} is missing ({e}): pin a new version with OUTBOX_PIN_MIGRATIONS=1",
                    path.display()
                ),
            }
        }
    }
}
