//! The `wasmgate` command line for the end-to-end tests (same code as the
//! `wasmgate` binary: `wasmgate::cli::main`).

fn main() -> std::process::ExitCode {
    wasmgate::cli::main()
}
