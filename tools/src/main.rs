//! `kestrel-tools NAME [--root DIR]...`: serve one of Kestrel's own MCP servers over stdio.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use rmcp::ServiceExt;

/// Serve one of Kestrel's MCP servers over stdio.
#[derive(Debug, Parser)]
#[command(name = "kestrel-tools", version, about)]
struct Args {
    /// The server: fs.
    name: String,
    /// A directory the server may use (fs); repeat for several.
    #[arg(long, value_name = "DIR")]
    root: Vec<PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.name.as_str() {
        "fs" => {
            if args.root.is_empty() {
                bail!("fs needs at least one --root DIR");
            }
            let server = kestrel_tools::fs::FsServer::new(&args.root)?;
            let running = server
                .serve(rmcp::transport::stdio())
                .await
                .context("cannot start the fs server")?;
            running.waiting().await?;
        }
        other => bail!(
            "no server named `{other}` (available: {})",
            kestrel_tools::SERVERS.join(", ")
        ),
    }
    Ok(())
}
