//! End-to-end tests of Switchyard through its real HTTP and WebSocket surface, in-process on
//! the embedded bus and store, and of the `switchyard` binary itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_flow;
mod assignment;
mod bad_input;
mod binary;
mod bots;
mod browser;
mod cluster;
mod customer_update;
mod dead_letters;
mod douyin;
mod erasure;
mod history;
mod hours;
mod identity;
mod line;
mod media;
mod presence;
mod proactive;
mod raw;
mod redaction;
mod routing;
mod support;
mod telegram;
mod timers;
mod web_flow;
mod web_gateways;
mod web_history;
mod web_queue;
mod webhooks;
mod wechat;
mod whatsapp;
