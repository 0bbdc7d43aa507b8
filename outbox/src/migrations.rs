//! The outbox schema, versioned: what [`migrate`](crate::migrate) runs, and
//! the same migrations as SQL files for your own migration tool.
//!
//! Each outbox records its schema version in a table of its own,
//! `{prefix}_schema_version` beside `{prefix}_events` and
//! `{prefix}_dead_letters`, one row per applied version. [`Migrator::run`]
//! (what `migrate` calls) reads it once; when the schema is current, that
//! read is all it does. Otherwise it takes a lock that keeps concurrent
//! migrators apart, applies the missing versions in order and records each,
//! giving up with [`Error::MigrationLocked`] rather than making the
//! application's writes queue behind a lock it waits for. Tables created by
//! releases from before versions (no version table) are recognised:
//! version 1 is their schema, and each of its statements is skipped when its
//! work is already done, so baselining them takes no lock on a busy table.
//!
//! # Your own migration tool
//!
//! [`postgres`], [`mysql`] and [`sqlite`] give the SQL of every version for
//! your tables; [`Files`] writes them named for `sqlx migrate`, refinery or
//! Flyway. Each migration's last statement records its version, so that
//! `migrate` (say, at a Runner's start) finds the schema current and does
//! nothing. The SQL of a version never changes between releases; a release
//! with a new schema adds a version.
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # fn export() -> Result<(), Box<dyn std::error::Error>> {
//! let tables = outbox::Tables::default().schema("app")?;
//! outbox::migrations::Files::sqlx()
//!     // after your own migrations, numbered by date
//!     .version_offset(20_260_000_000_000)
//!     .write("migrations", &outbox::migrations::postgres(&tables))?;
//! // migrations/20260000000001_outbox_create_tables.sql
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Error;
use crate::store::sealed::Sealed;
use crate::store::{Backend, schema};
use crate::tables::Tables;

/// The longest `migrate` waits for a lock by default. While a DDL statement
/// waits for a table lock, new writes to that table queue behind it
/// (measured on PostgreSQL: an enqueue started 200 ms into a 3 s wait took
/// 2.8 s), so this stays well below the timeouts applications put on their
/// writes.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// One version of the outbox schema, as SQL for a migration tool.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Migration {
    /// The schema version it brings the tables to (from 1).
    pub version: u32,
    /// What it does, with the table prefix: `outbox_create_tables`.
    pub name: String,
    /// Its statements, each ended by `;` and a newline; the last one records
    /// the version in the version table.
    pub sql: String,
}

/// The PostgreSQL migrations of these tables, oldest first.
///
/// ```
/// let tables = outbox::Tables::new("billing")?;
/// let migrations = outbox::migrations::postgres(&tables);
/// assert_eq!(migrations[0].version, 1);
/// assert_eq!(migrations[0].name, "billing_create_tables");
/// assert!(migrations[0].sql.contains(r#"CREATE TABLE IF NOT EXISTS "billing_events""#));
/// # Ok::<(), outbox::Error>(())
/// ```
#[cfg(feature = "postgres")]
pub fn postgres(tables: &Tables) -> Vec<Migration> {
    crate::store::postgres::migrate::scripts(tables)
        .iter()
        .map(|s| s.export(tables, "PostgreSQL"))
        .collect()
}

/// The MySQL 8 / MariaDB 10.6+ migrations of these tables, oldest first.
#[cfg(feature = "mysql")]
pub fn mysql(tables: &Tables) -> Vec<Migration> {
    crate::store::mysql::migrate::scripts(tables)
        .iter()
        .map(|s| s.export(tables, "MySQL/MariaDB"))
        .collect()
}

/// The SQLite migrations of these tables, oldest first.
#[cfg(feature = "sqlite")]
pub fn sqlite(tables: &Tables) -> Vec<Migration> {
    crate::store::sqlite::migrate::scripts(tables)
        .iter()
        .map(|s| s.export(tables, "SQLite"))
        .collect()
}

/// Brings the outbox tables to the schema this release needs:
/// [`migrate`](crate::migrate) with settings.
///
/// - **Current schema**: one read of the version table, no lock, no DDL.
/// - **Otherwise**: PostgreSQL applies the missing versions in one
///   transaction, under `pg_advisory_xact_lock` (transaction-scoped, so it
///   works through PgBouncer in transaction mode) with `lock_timeout` set;
///   MySQL/MariaDB (where DDL commits at once) under a named `GET_LOCK` with
///   `lock_wait_timeout` set, recording each version as it is applied;
///   SQLite in a `BEGIN IMMEDIATE` transaction with the busy timeout set.
///   Concurrent migrators wait for the first and find the schema current.
/// - A lock not granted within the [lock timeout](Self::lock_timeout) (an
///   open transaction that wrote to the outbox, another migrator that takes
///   long) ends the migration with [`Error::MigrationLocked`], changing
///   nothing: the application's writes then queue behind it for at most that
///   long. Run it again once that transaction ended.
/// - A schema newer than this release knows is refused with
///   [`Error::SchemaTooNew`]; it is never downgraded.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), outbox::Error> {
/// use std::time::Duration;
///
/// let tables = outbox::Tables::default();
/// outbox::migrations::Migrator::new(&tables)
///     .lock_timeout(Duration::from_millis(500))
///     .run(&pool)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Migrator {
    tables: Tables,
    lock_timeout: Duration,
}

impl Migrator {
    /// A migrator for these tables, with the [default lock
    /// timeout](DEFAULT_LOCK_TIMEOUT).
    pub fn new(tables: &Tables) -> Self {
        Self {
            tables: tables.clone(),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }

    /// Wait at most this long for each lock (at least 1 ms; on MySQL and
    /// MariaDB, whole seconds, rounded up): for another migrator, and for
    /// transactions that hold the tables. The application's writes to the
    /// outbox may queue behind a migration for this long.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// Bring the tables to the current schema.
    pub async fn run<DB: Backend>(&self, pool: &sqlx::Pool<DB>) -> Result<(), Error> {
        <DB as Sealed>::migrate(pool, self).await
    }

    /// The schema version the tables are at: 0 when none is recorded (no
    /// tables, or tables of a release from before versions). One read.
    pub async fn version<DB: Backend>(&self, pool: &sqlx::Pool<DB>) -> Result<u32, Error> {
        let found = <DB as Sealed>::schema_version(pool, &self.tables).await?;
        Ok(schema::recorded(found))
    }

    /// The latest schema version this release knows, which
    /// [`run`](Self::run) brings the tables to.
    pub fn latest() -> u32 {
        schema::LATEST
    }

    pub(crate) fn tables(&self) -> &Tables {
        &self.tables
    }

    pub(crate) fn lock_wait(&self) -> Duration {
        self.lock_timeout
    }
}

/// How migration files are named, and where they start numbering.
///
/// ```
/// use outbox::migrations::{Files, sqlite};
///
/// let v1 = &sqlite(&outbox::Tables::default())[0];
/// assert_eq!(Files::sqlx().file_name(v1), "1_outbox_create_tables.sql");
/// assert_eq!(Files::flyway().file_name(v1), "V1__outbox_create_tables.sql");
/// assert_eq!(
///     Files::sqlx().version_offset(20_260_000_000_000).file_name(v1),
///     "20260000000001_outbox_create_tables.sql"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Files {
    flyway: bool,
    offset: u64,
}

impl Files {
    /// `{version}_{name}.sql`: for `sqlx migrate run` and `sqlx::migrate!`.
    pub fn sqlx() -> Self {
        Self {
            flyway: false,
            offset: 0,
        }
    }

    /// `V{version}__{name}.sql`: for Flyway, and for refinery
    /// (`embed_migrations!`), which reads the same names.
    pub fn flyway() -> Self {
        Self {
            flyway: true,
            offset: 0,
        }
    }

    /// Number the files `offset + version`, to place them among (after) your
    /// own migrations: sqlx and Flyway need each number once in a folder.
    /// Keep the offset once chosen: a migration tool knows applied
    /// migrations by their number.
    pub fn version_offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }

    /// The file name of this migration.
    pub fn file_name(&self, migration: &Migration) -> String {
        let version = self.offset.saturating_add(u64::from(migration.version));
        if self.flyway {
            format!("V{version}__{}.sql", migration.name)
        } else {
            format!("{version}_{}.sql", migration.name)
        }
    }

    /// Write each migration into `dir` (created if missing), and return the
    /// files' paths. A file that is already there with the same content is
    /// left as it is; one with other content is an error (an applied
    /// migration must not change: choose another
    /// [`version_offset`](Self::version_offset) or folder), and nothing is
    /// written.
    pub fn write(
        &self,
        dir: impl AsRef<Path>,
        migrations: &[Migration],
    ) -> std::io::Result<Vec<PathBuf>> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)?;
        let files: Vec<(PathBuf, &Migration)> = migrations
            .iter()
            .map(|m| (dir.join(self.file_name(m)), m))
            .collect();
        for (path, migration) in &files {
            match std::fs::read(path) {
                Ok(found) if found != migration.sql.as_bytes() => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        format!(
                            "{} exists with other content than outbox schema version {}; an \
                             applied migration must not change: write the outbox migrations \
                             with another version_offset or into another folder",
                            path.display(),
                            migration.version
                        ),
                    ));
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        for (path, migration) in &files {
            std::fs::write(path, &migration.sql)?;
        }
        Ok(files.into_iter().map(|(path, _)| path).collect())
    }
}
