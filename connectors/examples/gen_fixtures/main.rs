//! Writes the connector fixtures under `connectors/tests/fixtures/<channel>/`, computing every
//! signature and ciphertext. Deterministic: running it again changes nothing.
//!
//! `cargo run -p switchyard-connectors --example gen_fixtures [douyin|wecom_kf|api|web|line|telegram|whatsapp ...]`

mod api;
mod common;
mod douyin;
mod line;
mod telegram;
mod web;
mod wecom_kf;
mod whatsapp;

use std::path::PathBuf;

use switchyard_connectors::conformance::{Fixture, write_fixtures};

/// Every channel's fixtures.
pub fn all() -> Vec<(&'static str, Vec<Fixture>)> {
    vec![
        ("douyin", douyin::fixtures()),
        ("wecom_kf", wecom_kf::fixtures()),
        ("api", api::fixtures()),
        ("web", web::fixtures()),
        ("telegram", telegram::fixtures()),
        ("line", line::fixtures()),
        ("whatsapp", whatsapp::fixtures()),
    ]
}

fn main() -> std::io::Result<()> {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (channel, fixtures) in all() {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == channel) {
            continue;
        }
        write_fixtures(root.join(channel), &fixtures)?;
        println!("{channel}: {} fixtures", fixtures.len());
    }
    Ok(())
}
