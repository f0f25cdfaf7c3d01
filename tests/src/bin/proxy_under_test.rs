//! The `host` binary, under the name the end-to-end tests start.
fn main() -> std::process::ExitCode {
    host::main()
}
