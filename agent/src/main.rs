//! The `kestrel` binary: parse the command line, run, report errors.

use clap::Parser;

// Inference allocates and frees buffers of several megabytes per layer; glibc's allocator hands
// them back to the kernel and takes them again, paying page faults for every call (about a
// fifth of prefill time). mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = kestrel::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("KESTREL_LOG"))
        .with_writer(std::io::stderr)
        .init();
    match kestrel::cli::run(cli) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
