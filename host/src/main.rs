fn main() -> std::process::ExitCode {
    host::main()
}
