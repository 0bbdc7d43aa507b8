//! The conformance suites' per-backend test modules.

/// Every scenario, on every backend: one line per backend.
///
/// Each scenario is an `async fn name(backend: Backend)` in the calling
/// file; this makes a test `postgres::name`, `sqlite::name`, `mysql::name`,
/// `memory::name` of it, so `cargo test --test source_contract mysql::`
/// runs one backend. A new backend is one more line here (see
/// `tests/runner_contract.rs`).
///
/// Scenarios listed after `sql_only:` run on the SQL backends only, not on
/// the in-memory `outbox::testing::MemoryOutbox`: only those about SQL
/// itself (rows written behind the outbox's back, tables to migrate or
/// missing), each with a comment saying why.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)? ; sql_only: [$($sql:ident),* $(,)?] $(,)?) => {
        $crate::on_backend!(postgres, Postgres, [$($name,)* $($sql),*]);
        $crate::on_backend!(sqlite, Sqlite, [$($name,)* $($sql),*]);
        $crate::on_backend!(mysql, MySql, [$($name,)* $($sql),*]);
        $crate::on_backend!(memory, Memory, [$($name),*]);
    };
    ($($name:ident),* $(,)?) => {
        $crate::on_every_backend!($($name),* ; sql_only: []);
    };
}

/// A module `$module` of tests that run each scenario on
/// `Backend::$backend`: for scenarios that only some backends run.
#[macro_export]
macro_rules! on_backend {
    ($module:ident, $backend:ident, [$($name:ident),* $(,)?]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::$backend).await
                }
            )*
        }
    };
}
