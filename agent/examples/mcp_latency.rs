//! Latency of a trivial MCP tool call (server-everything's `echo`), through Kestrel's host and
//! through bare rmcp on the same kind of connection; the difference is the host's own overhead
//! (stdout pump, bookkeeping). Usage:
//!
//!   mcp_latency CALLS stdio NODE EVERYTHING_JS
//!   mcp_latency CALLS http URL
//!
//! Prints one JSON line: p50/p99 in microseconds for the host and for bare rmcp.

use std::path::Path;
use std::time::{Duration, Instant};

use kestrel::mcp::{HostOptions, McpConfig, McpHost};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use serde_json::json;

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let calls: usize = args.get(1).and_then(|c| c.parse().ok()).unwrap_or(500);
    let mode = args.get(2).map(String::as_str).unwrap_or("stdio");
    let server = match mode {
        "stdio" => json!({"command": args[3], "args": [args[4], "stdio"]}),
        _ => json!({"url": args[3]}),
    };
    let config = McpConfig::parse(
        &json!({"mcpServers": {"e": server}}).to_string(),
        false,
        Path::new("bench.json"),
    )?;
    let host = McpHost::start(&config, HostOptions::from_config(&config)).await;
    let mut through_host = Vec::with_capacity(calls);
    for i in 0..calls + 20 {
        let t = Instant::now();
        host.call("e", "echo", json!({"message": "ping"}), None)
            .await?;
        if i >= 20 {
            through_host.push(t.elapsed());
        }
    }
    host.shutdown().await;

    let params = || {
        CallToolRequestParams::new("echo").with_arguments(
            json!({"message": "ping"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        )
    };
    let mut bare = Vec::with_capacity(calls);
    let client = match mode {
        "stdio" => {
            let mut cmd = tokio::process::Command::new(&args[3]);
            cmd.arg(&args[4]).arg("stdio");
            let (child, _) = TokioChildProcess::builder(cmd)
                .stderr(std::process::Stdio::null())
                .spawn()?;
            ().serve(child).await?
        }
        _ => ().serve(StreamableHttpClientTransport::from_uri(args[3].as_str())).await?,
    };
    for i in 0..calls + 20 {
        let t = Instant::now();
        client.peer().call_tool(params()).await?;
        if i >= 20 {
            bare.push(t.elapsed());
        }
    }
    client.cancel().await?;

    let (hp50, hp99) = percentiles(through_host);
    let (bp50, bp99) = percentiles(bare);
    println!(
        "{}",
        json!({"transport": mode, "calls": calls,
               "kestrel_p50_us": hp50.round(), "kestrel_p99_us": hp99.round(),
               "rmcp_p50_us": bp50.round(), "rmcp_p99_us": bp99.round(),
               "overhead_p50_us": (hp50 - bp50).round()})
    );
    Ok(())
}
