//! Procedural macros of the [`outbox`](https://docs.rs/outbox) crate.
//!
//! Depend on `outbox`, not on this crate: it re-exports both macros and
//! everything the generated code needs.
//!
//! # `#[derive(OutboxEvent)]`
//!
//! ```ignore
//! use outbox::OutboxEvent;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, OutboxEvent)]
//! #[outbox(name = "order.placed", topic = "orders", key = order_id, version = 1)]
//! pub struct OrderPlaced { pub order_id: i64, pub total_cents: i64 }
//! ```
//!
//! Implements `outbox::OutboxEvent` (the Mapper between the struct and its
//! stored form) and registers the event type, so that a Runner can warn about
//! event types nobody publishes. Every key is optional, and may be given once:
//!
//! | key | meaning | default |
//! | --- | --- | --- |
//! | `name = "..."` | stable stored type name | the type's name |
//! | `topic = "..."` | subject / queue / stream for brokers | the name |
//! | `key = field` | field holding the partition key (`key = 0` on tuple structs) | no key |
//! | `version = N` | payload schema version, from 1 | 1 |
//! | `crate = path` | where the `outbox` crate is, see [below](#crate--path) | `::outbox` |
//!
//! The keys may be split over several `#[outbox(...)]` attributes. The
//! attribute goes on the type, not on a field or variant.
//!
//! Works on structs with named fields, tuple structs, unit structs and enums
//! (`key` needs a struct); generic types and unions are refused. The type
//! must also derive (or implement) serde's `Serialize` and `Deserialize`.
//!
//! # `#[publisher]`
//!
//! ```ignore
//! use outbox::{State, publisher};
//!
//! #[publisher]
//! async fn notify_billing(event: OrderPlaced) -> Result<(), BillingError> { /* ... */ }
//!
//! #[publisher(name = "audit")]
//! async fn audit(event: OrderPlaced, log: State<AuditLog>) -> anyhow::Result<()> { /* ... */ }
//! ```
//!
//! Registers a free `async fn` as a publisher of its first argument's event
//! type. The optional second argument is `State<T>` or `outbox::Context`; the
//! return type is `Result<(), E>` for any `E` that converts into
//! `Box<dyn Error + Send + Sync>`. The function stays callable as it was
//! written. Its arguments, all optional:
//!
//! | key | meaning | default |
//! | --- | --- | --- |
//! | `name = "..."` | the publisher's name, in logs and dead letters | the function's name |
//! | `crate = path` | where the `outbox` crate is, see [below](#crate--path) | `::outbox` |
//!
//! # `crate = path`
//!
//! Generated code names the runtime crate as `::outbox`. A crate that
//! depends on `outbox` only through another crate that re-exports it gives
//! the path to that re-export instead:
//!
//! ```ignore
//! use my_platform::outbox::{self, OutboxEvent};
//!
//! #[derive(Serialize, Deserialize, OutboxEvent)]
//! #[outbox(crate = my_platform::outbox, name = "order.placed")]
//! pub struct OrderPlaced { pub order_id: i64 }
//!
//! #[outbox::publisher(crate = my_platform::outbox)]
//! async fn notify(event: OrderPlaced) -> anyhow::Result<()> { /* ... */ }
//! ```
//!
//! The path is used as written, and resolved where the item is: the
//! generated items sit in an anonymous `const _: () = { ... };` next to the
//! item, so the path means what it would mean in an expression written next
//! to the item. Any path that names the crate there works: a dependency
//! (`my_platform::outbox`), `crate::reexports::outbox`, or a module in scope
//! (`reexport::ob`). The forms `::name::...` and `crate::...` mean the same in
//! every module, so prefer them where the item may move. A path that names
//! nothing fails with one error at the path ("cannot find `outbox` in
//! `reexport`").
//!
//! # Diagnostics
//!
//! Each macro parses the item into a small model, checks it, and only then
//! generates code. Every mistake is reported at once, at the token it is
//! about, with what to write instead: an unknown or duplicated key, a bad
//! value, a `key` naming no field, a generic type, a non-`async` or
//! argument-less publisher, and so on. On an error the derive still emits an
//! `OutboxEvent` impl (and the attribute the function as written), so that
//! the one real error is not buried under "trait not implemented" errors
//! wherever the type is used.
//!
//! # Generated code
//!
//! It names only absolute paths (`::outbox::__private::...`, the hidden items
//! it needs, `::core::...`, `::std::...`) and sits in `const _: () = { ... };`,
//! and its own helper items and bindings are named `__outbox_...`: a module
//! that defines `type Result`, `struct Box`, or `const value` changes nothing.

use proc_macro::TokenStream;

mod ast;
mod attr;
mod ctxt;
mod expand;
mod fallback;
mod valid;

#[cfg(test)]
mod tests;

use ctxt::Ctxt;

/// Implement `outbox::OutboxEvent` for a struct or enum. See the crate docs.
#[proc_macro_derive(OutboxEvent, attributes(outbox))]
pub fn derive_outbox_event(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    derive(&input).into()
}

/// Register an `async fn` as an outbox publisher. See the crate docs.
#[proc_macro_attribute]
pub fn publisher(args: TokenStream, item: TokenStream) -> TokenStream {
    publisher_attribute(args.into(), item.into()).into()
}

/// Parse -> validate -> expand (or fall back) for `#[derive(OutboxEvent)]`.
fn derive(input: &syn::DeriveInput) -> proc_macro2::TokenStream {
    let cx = Ctxt::new();
    let event = ast::Event::from_ast(&cx, input);
    valid::event(&cx, &event);
    match cx.check() {
        Ok(()) => expand::event(&event),
        Err(errors) => fallback::event(&event, &errors),
    }
}

/// Parse -> validate -> expand (or fall back) for `#[publisher]`.
fn publisher_attribute(
    args: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> proc_macro2::TokenStream {
    let cx = Ctxt::new();
    let attrs = attr::PublisherAttrs::from_args(&cx, args);
    let func = match ast::parse_fn(item.clone()) {
        Ok(func) => func,
        Err(error) => {
            cx.syn_error(error);
            let errors = cx.check().expect_err("an error was just reported");
            return fallback::publisher(item, &errors);
        }
    };
    let publisher = ast::Publisher::from_ast(attrs, &func);
    valid::publisher(&cx, &publisher);
    match cx.check() {
        Ok(()) => expand::publisher(&publisher),
        Err(errors) => fallback::publisher(item, &errors),
    }
}
