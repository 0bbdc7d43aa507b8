//! The conformance suites' per-backend test modules.

/// Every scenario, on every backend: one line per backend.
///
/// Each scenario is an `async fn name(backend: Backend)` in the calling
/// file; this makes a test `postgres::name`, `sqlite::name`, `mysql::name`
/// of it, so `cargo test --test source_contract mysql::` runs one backend.
/// A new backend is one more line here (see `tests/runner_contract.rs`).
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        $crate::on_backend!(postgres, Postgres, [$($name),*]);
        $crate::on_backend!(sqlite, Sqlite, [$($name),*]);
        $crate::on_backend!(mysql, MySql, [$($name),*]);
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
