//! The `wasmgate` binary; everything is in the library's [`wasmgate::cli`].

fn main() -> std::process::ExitCode {
    wasmgate::cli::main()
}
