//! Conformance suites for [`Bus`] and [`Store`] implementations (feature `conformance`).
//!
//! Every implementation (the embedded ones, RabbitMQ, Redis) runs the same cases, so they all
//! keep the promises of DESIGN.md "Guarantees". Each case is a `pub async fn` taking a factory
//! that returns a fresh instance and a name prefix; every queue, exchange, identity key, agent and
//! pool a case creates carries the prefix, so runs against a shared broker or database do not
//! collide. Each suite also has a `run_all` that runs every case with its own sub-prefix.
//!
//! A violated promise panics with a message naming the case and what was expected.
//!
//! ```no_run
//! use std::sync::Arc;
//! use switchyard_core::bus::{Bus, embedded::EmbeddedBus};
//! use switchyard_core::conformance::bus;
//!
//! # async fn embedded_bus_conforms() {
//! let timeout = bus::DEFAULT_PUBLISH_TIMEOUT;
//! let make = || async move { Arc::new(EmbeddedBus::new(timeout)) as Arc<dyn Bus> };
//! bus::run_all(&make, "test.", Some(timeout)).await;
//! # }
//! ```

pub mod bus;
pub mod services;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use crate::bus::Bus;
use crate::store::Store;

/// Makes a fresh [`Bus`] for one case; implemented by any `Fn() -> impl Future<Output =
/// Arc<dyn Bus>>`, e.g. `|| async { Arc::new(EmbeddedBus::new(timeout)) as Arc<dyn Bus> }`.
pub trait MakeBus {
    /// The future returned by [`MakeBus::make`].
    type Fut: Future<Output = Arc<dyn Bus>>;
    /// A new bus, not shared with any other case.
    fn make(&self) -> Self::Fut;
}

impl<F, Fut> MakeBus for F
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    type Fut = Fut;
    fn make(&self) -> Fut {
        self()
    }
}

/// Makes a fresh [`Store`] for one case; implemented by any `Fn() -> impl Future<Output =
/// Arc<dyn Store>>`, e.g. `|| async { Arc::new(EmbeddedStore::new()) as Arc<dyn Store> }`.
pub trait MakeStore {
    /// The future returned by [`MakeStore::make`].
    type Fut: Future<Output = Arc<dyn Store>>;
    /// A new store, not shared with any other case (or sharing only prefixed names).
    fn make(&self) -> Self::Fut;
}

impl<F, Fut> MakeStore for F
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    type Fut = Fut;
    fn make(&self) -> Fut {
        self()
    }
}
