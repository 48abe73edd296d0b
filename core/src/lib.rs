//! Switchyard core: the message envelope, CloudEvents, identity keys, the [`bus::Bus`] and
//! [`store::Store`] traits with their embedded implementations, configuration and metrics.
//!
//! Nothing in this crate knows about a particular channel; connectors and the router build on it.

pub mod bus;
pub mod config;
#[cfg(feature = "conformance")]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod conformance;
pub mod envelope;
pub mod event;
pub mod handover;
pub mod hours;
pub mod identity;
pub mod metrics;
pub mod model;
pub mod protocol;
pub mod redaction;
pub mod store;
pub mod time;
pub mod tls;

pub use envelope::{ChannelRef, Content, Direction, Envelope, Media, Sender};
pub use event::{CloudEvent, EventType};
pub use identity::{IdentityKey, IdentityStrength};
