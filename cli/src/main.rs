//! The `kestrel` binary: parse the command line, run one command, report errors.
//!
//! A thin shell over the libraries: `args` is the command line, `options` turns flags into library
//! options, `loading` and `hub` find and load the model, `startup` starts and stops the MCP host,
//! `render` is the terminal view, and `commands` holds one module per subcommand.

use clap::Parser;

mod args;
mod commands;
mod hub;
mod loading;
mod options;
mod render;
mod startup;
mod transcript;

use args::{Cli, Command, LogFormat, PromptCommand, ToolsCommand};

// Inference allocates and frees buffers of several megabytes per layer; glibc's allocator hands
// them back to the kernel and takes them again, paying page faults for every call (about a
// fifth of prefill time). mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Before anything else, and before any thread exists: confining needs a single thread.
    kestrel_tools::sandbox::run_helper_if_asked();
    let cli = Cli::parse();
    // A server's requests are what its operator reads; other commands stay quiet.
    let default = if matches!(cli.command, Command::Serve(_)) {
        "warn,kestrel=info"
    } else {
        "warn"
    };
    init_logging(cli.log_format, default);
    match run(cli) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `KESTREL_LOG`. Without it, warnings and errors show (and a
/// server's requests): they say that a setting was ignored or a fallback taken, which the user
/// must see (tracing's own default keeps errors only).
fn init_logging(format: LogFormat, default: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let (filter, rejected) = match std::env::var("KESTREL_LOG") {
        Ok(spec) => match EnvFilter::try_new(&spec) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new(default), Some((spec, e))),
        },
        Err(_) => (EnvFilter::new(default), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
    if let Some((spec, e)) = rejected {
        tracing::warn!(
            "KESTREL_LOG={spec:?} is not a log filter ({e}); showing warnings and errors"
        );
    }
}

/// Runs a parsed command line; returns the process exit code.
fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Run(args) => commands::run::run(&args),
        Command::Chat(args) => commands::chat::run(&args),
        Command::Batch(args) => commands::batch::run(&args),
        Command::Generate(args) => commands::generate::run(&args).map(|()| 0),
        Command::Bench(args) => commands::bench::run(&args).map(|()| 0),
        Command::Plan(args) => commands::plan::run(&args),
        Command::Replay(args) => commands::replay::run(&args),
        Command::Serve(args) => commands::serve::run(&args).map(|()| 0),
        Command::Prompt(PromptCommand::Render(args)) => commands::prompt::render(&args).map(|()| 0),
        Command::Tools(ToolsCommand::List(args)) => commands::tools::list(&args).map(|all_up| {
            if all_up {
                0
            } else {
                commands::tools::EXIT_SERVER_FAILED
            }
        }),
        Command::Tools(ToolsCommand::Call(args)) => commands::tools::call(&args).map(|()| 0),
    }
}
