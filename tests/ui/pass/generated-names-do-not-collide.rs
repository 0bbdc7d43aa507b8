//! Generated code declares no name that a user's module could clash with:
//! its bindings and helper items are `__outbox_...`, its paths absolute.
#![allow(non_upper_case_globals, dead_code)]

use outbox::{publisher, Context, OutboxEvent, State};
use serde::{Deserialize, Serialize};

// A binding `x` (in `let x`, `Ok(x)`, or a parameter) in generated code would
// be a pattern matching one of these constants, and fail to compile.
const value: u8 = 0;
const event: u8 = 0;
const error: u8 = 0;
const output: u8 = 0;
const cx: u8 = 0;
const future: u8 = 0;
const state: u8 = 0;
const key: u8 = 0;
const result: u8 = 0;
const e: u8 = 0;

// And the prelude's names, shadowed.
type Result<T> = std::result::Result<T, ()>;
struct Box;
struct Option;
struct String;
struct Vec;
struct Some;
struct None;
struct Ok;
struct Err;
struct Send;
struct Sync;

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "order.placed", key = order_id)]
struct OrderPlaced {
    order_id: i64,
}

#[derive(Serialize, Deserialize, OutboxEvent)]
enum Refund {
    Full,
}

struct AuditLog;

#[publisher]
async fn plain(placed: OrderPlaced) -> anyhow::Result<()> {
    let _ = placed;
    ::core::result::Result::Ok(())
}

#[publisher]
async fn with_state(placed: OrderPlaced, log: State<AuditLog>) -> anyhow::Result<()> {
    let _ = (placed, log);
    ::core::result::Result::Ok(())
}

#[publisher]
async fn with_context(refund: Refund, context: Context) -> anyhow::Result<()> {
    let _ = (refund, context);
    ::core::result::Result::Ok(())
}

fn main() {
    assert_eq!(
        OrderPlaced { order_id: 7 }.partition_key().as_deref(),
        ::core::option::Option::Some("7")
    );
    let names: ::std::vec::Vec<&str> = outbox::registered_publishers().map(|p| p.name).collect();
    for expected in ["plain", "with_state", "with_context"] {
        assert!(names.contains(&expected), "{expected} not registered: {names:?}");
    }
    let _ = (value, event, error, output, cx, future, state, key, result, e);
}
