//! Writes the committed schema files: `cargo run -p switchyard-schemas --bin write-schemas`.
//!
//! `write-schemas [--check] [DIR]`: DIR defaults to the crate folder (`schemas/`). With
//! `--check` nothing is written; the exit status is 1 when a file is missing or stale.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut check = false;
    let mut dir = switchyard_schemas::schema_dir();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!(
                    "usage: write-schemas [--check] [DIR]  (DIR defaults to {})",
                    dir.display()
                );
                return ExitCode::SUCCESS;
            }
            other => dir = PathBuf::from(other),
        }
    }
    if check {
        let stale = switchyard_schemas::stale(&dir);
        for path in &stale {
            eprintln!("stale: {}", path.display());
        }
        if stale.is_empty() {
            println!("schemas in {} are up to date", dir.display());
            return ExitCode::SUCCESS;
        }
        eprintln!(
            "run `cargo run -p switchyard-schemas --bin write-schemas` and commit the result"
        );
        return ExitCode::FAILURE;
    }
    match switchyard_schemas::write_all(&dir) {
        Ok(changed) => {
            for path in &changed {
                println!("wrote {}", path.display());
            }
            if changed.is_empty() {
                println!("schemas in {} are up to date", dir.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("write-schemas: {e}");
            ExitCode::FAILURE
        }
    }
}
