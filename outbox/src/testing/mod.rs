//! Testing without a database (feature `testing`): an outbox in memory that
//! keeps the [`Source`](crate::Source) contract of the SQL stores (it passes
//! the same conformance suite), for tests of publishers, retry policies and
//! the Runner itself.
//!
//! - [`MemoryOutbox`]: the events and dead letters in memory, with the
//!   write side ([`MemoryOutbox::begin`], [`MemoryTransaction`]) and the
//!   Source ([`MemoryOutbox::source`]) a Runner claims from.

mod clock;
mod memory;
mod source;

pub use memory::{MemoryEvent, MemoryOutbox, MemoryTransaction};

#[cfg(test)]
mod tests;
