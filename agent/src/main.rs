//! The `kestrel` binary: parse the command line, run, report errors.

use clap::Parser;

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
