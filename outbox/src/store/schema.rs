//! The versioned schema, written once: each database lists its migrations
//! as [`Script`]s of [`Step`]s (in its `migrate` module); this renders them
//! for export and decides what a run of `migrate` must do.
//!
//! Every outbox records its schema version in a table of its own,
//! `{prefix}_schema_version`, one row per applied migration, so two outboxes
//! in one schema never share it. Version 1 is the schema that `migrate`
//! created before versions existed: tables made by those releases have no
//! version table, and are recognised, completed and baselined by version 1,
//! whose steps each check first whether they are already done.
//!
//! The SQL of a released version never changes (migration tools checksum
//! what they applied; `tests/migrations/` pins it): a schema change is a new
//! [`Script`], and [`LATEST`] its version.

// Each database uses the helpers its migrations need; built with one
// backend, the others' go unused.
#![cfg_attr(
    not(all(feature = "postgres", feature = "mysql", feature = "sqlite")),
    allow(dead_code)
)]

use std::time::Duration;

use crate::error::Error;
use crate::migrations::Migration;
use crate::tables::Tables;

/// The latest schema version this release knows.
pub(crate) const LATEST: u32 = 1;

/// The oldest schema version the Source of this release works on: a
/// migration that only adds what older releases ignore keeps it lower than
/// [`LATEST`], so that Runners of the old and new release run side by side
/// while a deployment rolls.
pub(crate) const REQUIRED: u32 = 1;

/// The suffix of the version table's name.
pub(crate) const VERSION_TABLE: &str = "schema_version";

/// One statement of a migration.
pub(crate) struct Step {
    /// The statement.
    pub(crate) sql: String,
    /// A query that returns a count above zero when the statement's work is
    /// already done (on tables that releases before versions created):
    /// `migrate` then skips it, and takes none of the locks it would wait
    /// for on a busy table.
    pub(crate) done_if: Option<String>,
    /// Whether exported migrations hold it: not a repair that only tables
    /// of old releases need and that cannot be written idempotently.
    pub(crate) export: bool,
    /// Whether `migrate` runs it.
    pub(crate) run: bool,
}

impl Step {
    /// A statement that always runs.
    pub(crate) fn always(sql: String) -> Self {
        Self {
            sql,
            done_if: None,
            export: true,
            run: true,
        }
    }

    /// A statement that runs unless `done_if` finds its work done.
    pub(crate) fn unless(sql: String, done_if: String) -> Self {
        Self {
            sql,
            done_if: Some(done_if),
            export: true,
            run: true,
        }
    }

    /// A repair of tables made by old releases, which `migrate` runs unless
    /// `done_if` finds it done, and exported migrations leave out (their
    /// tables are created complete).
    pub(crate) fn repair(sql: String, done_if: String) -> Self {
        Self {
            sql,
            done_if: Some(done_if),
            export: false,
            run: true,
        }
    }

    /// The record of `version`: `migrate`, under its lock, inserts it
    /// (recording a version twice would be a bug, and fails on the primary
    /// key); exported migrations insert it unless it is there (`insert_new`,
    /// the same with the dialect's "unless it exists"), so that a team can
    /// apply them to tables that `migrate` brought to that version.
    pub(crate) fn record(insert: String, insert_new: String) -> [Self; 2] {
        [
            Self {
                sql: insert,
                done_if: None,
                export: false,
                run: true,
            },
            Self {
                sql: insert_new,
                done_if: None,
                export: true,
                run: false,
            },
        ]
    }
}

/// One migration: its version, name and statements; the last statement
/// records the version.
pub(crate) struct Script {
    pub(crate) version: u32,
    pub(crate) name: &'static str,
    pub(crate) steps: Vec<Step>,
}

impl Script {
    /// The migration as a team's migration tool runs it.
    pub(crate) fn export(&self, tables: &Tables, database: &str) -> Migration {
        // No release number in it: the text of a version never changes, or
        // migration tools that checksum applied migrations (sqlx, Flyway,
        // refinery) would refuse it.
        let mut sql = format!(
            "-- outbox schema version {}: {}, for the tables {} ({database}).\n\
             -- From outbox::migrations; apply the versions in order, and do not edit: the \
             last\n\
             -- statement records the version, so that outbox::migrate finds the schema \
             current.\n",
            self.version,
            self.name,
            tables.display_name(),
        );
        for step in self.steps.iter().filter(|s| s.export) {
            sql.push_str(&step.sql);
            sql.push_str(";\n");
        }
        Migration {
            version: self.version,
            name: format!("{}_{}", tables.prefix(), self.name),
            sql,
        }
    }
}

/// What `migrate` finds, from the recorded version (0: no version table, or
/// no version in it yet).
pub(crate) enum Plan {
    /// Current: nothing to do.
    Current,
    /// Apply the scripts after this version.
    From(u32),
}

/// A recorded version as a `u32`; `None` (no version table) is 0.
pub(crate) fn recorded(found: Option<i64>) -> u32 {
    u32::try_from(found.unwrap_or(0).max(0)).unwrap_or(u32::MAX)
}

/// What to do at `found` (`None`: no version table): refuse a newer schema
/// than this release knows.
pub(crate) fn plan(tables: &Tables, found: Option<i64>) -> Result<Plan, Error> {
    let found = recorded(found);
    if found > LATEST {
        return Err(Error::SchemaTooNew {
            table: tables.display_name(),
            found,
            known: LATEST,
        });
    }
    Ok(if found == LATEST {
        Plan::Current
    } else {
        Plan::From(found)
    })
}

/// The Source's check, once, before its first statement: tables whose
/// recorded version is older than [`REQUIRED`] (created by a migration tool
/// at an older version, or a MySQL migration cut short) are refused with
/// [`Error::SchemaTooOld`], which says what to apply. Tables without a
/// version table (of releases before versions; or none at all, which the
/// statements themselves report) are not checked. Until it passes, it is
/// checked again on every call, so a Runner goes on once they are migrated.
pub(crate) struct SchemaCheck {
    tables: Tables,
    passed: tokio::sync::OnceCell<()>,
}

impl SchemaCheck {
    pub(crate) fn new(tables: &Tables) -> Self {
        Self {
            tables: tables.clone(),
            passed: tokio::sync::OnceCell::new(),
        }
    }

    pub(crate) fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Check, unless it passed before, with `read` (the backend's version
    /// read, made for [`tables`](Self::tables)).
    pub(crate) async fn check(
        &self,
        read: impl std::future::Future<Output = Result<Option<i64>, Error>>,
    ) -> Result<(), Error> {
        if self.passed.initialized() {
            return Ok(());
        }
        match read.await? {
            Some(found) if found < i64::from(REQUIRED) => Err(Error::SchemaTooOld {
                table: self.tables.display_name(),
                found: recorded(Some(found)),
                required: REQUIRED,
            }),
            _ => {
                let _ = self.passed.set(());
                Ok(())
            }
        }
    }
}

/// Apply the steps of `scripts` newer than `found`, on one connection, each
/// unless its `done_if` finds its work done.
pub(crate) async fn apply<DB>(
    conn: &mut DB::Connection,
    scripts: &[Script],
    found: u32,
) -> Result<(), Error>
where
    DB: sqlx::Database + sqlx::database::HasStatementCache,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'r> i64: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    (i64,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    for script in scripts.iter().filter(|s| s.version > found) {
        for step in script.steps.iter().filter(|s| s.run) {
            if let Some(done_if) = &step.done_if {
                let done: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(done_if.clone()))
                    .persistent(false)
                    .fetch_one(&mut *conn)
                    .await?;
                if done > 0 {
                    continue;
                }
            }
            super::dialect::run_once(&mut *conn, step.sql.clone()).await?;
        }
    }
    Ok(())
}

/// The error of a migration that gave up waiting for a lock after
/// `waited`, for these `tables`; `reason` says who held it.
pub(crate) fn locked(tables: &Tables, waited: Duration, reason: impl Into<String>) -> Error {
    Error::MigrationLocked {
        table: tables.display_name(),
        waited,
        reason: reason.into(),
    }
}

/// The lock timeout in whole milliseconds, at least 1 (0 would mean no
/// timeout at all on PostgreSQL and SQLite).
pub(crate) fn millis_at_least_one(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The lock timeout in whole seconds, rounded up, at least 1 (MySQL takes
/// seconds).
pub(crate) fn seconds_at_least_one(d: Duration) -> u64 {
    d.as_secs()
        .saturating_add(u64::from(d.subsec_nanos() > 0))
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_newer_versions_and_finds_current() {
        let t = Tables::default();
        assert!(matches!(plan(&t, None), Ok(Plan::From(0))));
        assert!(matches!(plan(&t, Some(0)), Ok(Plan::From(0))));
        assert!(matches!(
            plan(&t, Some(i64::from(LATEST))),
            Ok(Plan::Current)
        ));
        let err = plan(&t, Some(i64::from(LATEST) + 1)).err().unwrap();
        assert!(err.to_string().contains("does not downgrade"), "{err}");
    }

    #[test]
    fn rounds_lock_timeouts_up() {
        assert_eq!(seconds_at_least_one(Duration::from_millis(1500)), 2);
        assert_eq!(seconds_at_least_one(Duration::ZERO), 1);
        assert_eq!(seconds_at_least_one(Duration::from_secs(3)), 3);
        assert_eq!(millis_at_least_one(Duration::ZERO), 1);
        assert_eq!(millis_at_least_one(Duration::from_millis(250)), 250);
    }
}
