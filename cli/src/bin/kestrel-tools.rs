//! `kestrel-tools NAME [--root DIR]... [--options JSON]`: serve one of Kestrel's own MCP servers
//! over stdio.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use kestrel_tools::Builtin;

/// Serve one of Kestrel's MCP servers over stdio.
#[derive(Debug, Parser)]
#[command(name = "kestrel-tools", version, about)]
struct Args {
    /// The server: fs, fetch or shell.
    name: String,
    /// A directory the server may use (fs; shell's default working directory); repeat for
    /// several.
    #[arg(long, value_name = "DIR")]
    root: Vec<PathBuf>,
    /// The server's options as JSON, as in Kestrel's configuration, e.g.
    /// '{"allow_hosts": ["docs.rs"]}' for fetch or '{"allow": ["git", "ls"]}' for shell.
    #[arg(long, value_name = "JSON")]
    options: Option<String>,
}

fn main() -> anyhow::Result<()> {
    // As the shell's sandbox helper this process confines itself, which needs a single thread.
    kestrel_tools::sandbox::run_helper_if_asked();
    let args = Args::parse();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let options = match &args.options {
        Some(text) => serde_json::from_str(text).context("--options is not valid JSON")?,
        None => serde_json::Value::Null,
    };
    let helper = kestrel_tools::sandbox::current_helper()?;
    let server = Builtin::new(&args.name, &options, &args.root, &helper)?;
    server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| anyhow::anyhow!("the {} server stopped: {e}", args.name))
}
