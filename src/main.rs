//! The `event-sanitizer` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    event_sanitizer::cli::main()
}
