//! Macro diagnostics: every mistake in `tests/ui/fail` must fail to compile
//! with the message pinned in its `.stderr` file; every file in
//! `tests/ui/pass` must compile and run.
//!
//! The `.stderr` files are written by the toolchain in this workspace's CI
//! (stable Rust) with the README test command's features: regenerate them with
//! `TRYBUILD=overwrite cargo test --all-features --test ui`
//! only after reading the new messages.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
