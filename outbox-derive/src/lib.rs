//! Procedural macros of the [`outbox`](https://docs.rs/outbox) crate.
//!
//! Depend on `outbox`, not on this crate: it re-exports both macros and
//! everything the generated code needs.
//!
//! # `#[derive(OutboxEvent)]`
//!
//! ```ignore
//! #[derive(Debug, Serialize, Deserialize, OutboxEvent)]
//! #[outbox(name = "order.placed", topic = "orders", key = order_id, version = 1)]
//! pub struct OrderPlaced { pub order_id: i64, pub total_cents: i64 }
//! ```
//!
//! Implements `outbox::OutboxEvent` (the Mapper between the struct and its
//! stored form) and registers the event type, so that a Runner can warn about
//! event types nobody publishes. Every key is optional:
//!
//! | key | meaning | default |
//! | --- | --- | --- |
//! | `name = "..."` | stable stored type name | the type's name |
//! | `topic = "..."` | subject / queue / stream for brokers | the name |
//! | `key = field` | field holding the partition key (`key = 0` on tuple structs) | no key |
//! | `version = N` | payload schema version | 1 |
//!
//! Works on structs with named fields, tuple structs, unit structs and enums;
//! generic types and unions are refused.
//!
//! # `#[publisher]`
//!
//! ```ignore
//! #[publisher]
//! async fn notify_billing(event: OrderPlaced) -> Result<(), BillingError> { /* ... */ }
//!
//! #[publisher(name = "audit")]
//! async fn audit(event: OrderPlaced, log: State<AuditLog>) -> anyhow::Result<()> { /* ... */ }
//! ```
//!
//! Registers the function as a publisher of its first argument's event type.
//! The optional second argument is `State<T>` or `outbox::Context`. The
//! function stays callable as it was written.

use proc_macro::TokenStream;

mod attr;
mod event;
mod publisher;

/// Implement `outbox::OutboxEvent` for a struct or enum. See the crate docs.
#[proc_macro_derive(OutboxEvent, attributes(outbox))]
pub fn derive_outbox_event(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    event::expand(input).into()
}

/// Register an `async fn` as an outbox publisher. See the crate docs.
#[proc_macro_attribute]
pub fn publisher(args: TokenStream, item: TokenStream) -> TokenStream {
    publisher::expand(args.into(), item.into()).into()
}
