//! The `kestrel` binary: parse the command line, run, report errors.

use clap::Parser;

// Inference allocates and frees buffers of several megabytes per layer; glibc's allocator hands
// them back to the kernel and takes them again, paying page faults for every call (about a
// fifth of prefill time). mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = kestrel::cli::Cli::parse();
    init_logging();
    match kestrel::cli::run(cli) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `KESTREL_LOG`. Without it, warnings and errors show: they say
/// that a setting was ignored or a fallback taken, which the user must see (tracing's own default
/// keeps errors only).
fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let (filter, rejected) = match std::env::var("KESTREL_LOG") {
        Ok(spec) => match EnvFilter::try_new(&spec) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new("warn"), Some((spec, e))),
        },
        Err(_) => (EnvFilter::new("warn"), None),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Some((spec, e)) = rejected {
        tracing::warn!(
            "KESTREL_LOG={spec:?} is not a log filter ({e}); showing warnings and errors"
        );
    }
}
