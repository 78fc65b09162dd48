//! The `kestrel` binary: parse the command line, run one command, report errors.
//!
//! A thin shell over the libraries: `args` is the command line, `options` turns flags into library
//! options, `loading` and `hub` find and load the model, `logging` sets up logs and traces,
//! `startup` starts and stops the MCP host, `render` is the terminal view, and `commands` holds
//! one module per subcommand.

use clap::Parser;

mod args;
mod commands;
mod hub;
mod loading;
mod logging;
mod options;
mod render;
mod startup;
mod transcript;

use args::{Cli, Command, McpCommand, PromptCommand, ToolsCommand};

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
    let telemetry = match logging::init(cli.log_format, default, cli.otlp_endpoint.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = run(cli);
    // Sends the spans still buffered before the process ends.
    drop(telemetry);
    match outcome {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
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
        Command::Mcp(McpCommand::Serve(args)) => commands::mcp_serve::run(&args).map(|()| 0),
        Command::Mcp(McpCommand::Login(args)) => commands::mcp_login::login(&args).map(|()| 0),
        Command::Mcp(McpCommand::Logout(args)) => commands::mcp_login::logout(&args).map(|()| 0),
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
