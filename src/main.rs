//! The `switchyard` binary.

/// mimalloc instead of the system allocator: routing allocates many small, short-lived strings
/// and buffers, and glibc's malloc took 10-15% of the server's CPU in the benchmarks
/// (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    switchyard::main()
}
