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

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let options = match &args.options {
        Some(text) => serde_json::from_str(text).context("--options is not valid JSON")?,
        None => serde_json::Value::Null,
    };
    let server = Builtin::new(&args.name, &options, &args.root)?;
    server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| anyhow::anyhow!("the {} server stopped: {e}", args.name))
}
