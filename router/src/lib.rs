//! The Switchyard router and its HTTP surface: identity resolution and merge, one conversation
//! per customer, pool queues and longest-idle assignment, agent commands, outbound dispatch,
//! the agent hub, and the axum server that exposes them.

pub mod app;
pub mod assignment;
pub mod auto_reply;
pub mod dead_letters;
pub mod error;
pub mod events;
pub mod explain;
pub mod http;
pub mod hub;
pub mod in_order;
pub mod inbound;
pub mod ingress;
pub mod operations;
pub mod outbox;
pub mod peers;
pub mod retention;
pub mod routes;
pub mod timers;
pub mod webhooks;
pub mod workers;

pub use app::{App, Role};
