//! Testing without a database (feature `testing`): an outbox in memory that
//! keeps the [`Source`](crate::Source) contract of the SQL stores (it passes
//! the same conformance suite), for tests of publishers, retry policies and
//! the Runner itself.
//!
//! - [`MemoryOutbox`]: the events and dead letters in memory, with the
//!   write side ([`MemoryOutbox::begin`], [`MemoryTransaction`]) and the
//!   Source ([`MemoryOutbox::source`]) a Runner claims from.
//! - [`delivery`]: what a publisher receives for an event, in one line, to
//!   call a `#[publisher]` fn or any [`Publisher`](crate::Publisher) with;
//!   [`registered`]: a `#[publisher]` fn as the Runner calls it.
//! - [`TestOutbox`]: a Runner over a `MemoryOutbox`, configured as in
//!   production, whose publishers' calls are recorded and can be made to
//!   fail ([`Fault`]): to test a publisher's retry policy in a plain
//!   `#[tokio::test]`, with paused time so that backoffs cost nothing.

mod clock;
mod delivery;
mod kit;
mod memory;
mod source;

pub use delivery::{Delivery, delivery, registered};
pub use kit::{Call, CallResult, Fault, TestOutbox, TestOutboxBuilder};
pub use memory::{MemoryEvent, MemoryOutbox, MemoryTransaction};

#[cfg(test)]
mod tests;
