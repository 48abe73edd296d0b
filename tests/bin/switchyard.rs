//! The `switchyard` command line, built inside this package so its integration tests can run it
//! (`env!("CARGO_BIN_EXE_switchyard-under-test")`) after a plain `cargo test`.

fn main() -> std::process::ExitCode {
    switchyard::main()
}
