//! `kestrel tools list` and `kestrel tools call`: the MCP host from the command line.
//!
//! Both start every configured server (so a broken one shows up here first), do their one thing,
//! and stop every server again, also on Ctrl-C. Progress and server log messages go to stderr; the
//! result goes to stdout, so scripts can pipe it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::args::{ToolsCallArgs, ToolsListArgs};
use kestrel::agent::Cancel;
use kestrel::mcp::{HostEvent, McpConfig, McpHost};

use crate::render::progress_line;
use crate::startup::{HostSetup, Services};

/// Exit code of `tools list` when an enabled server failed to start.
pub const EXIT_SERVER_FAILED: u8 = 2;

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<McpConfig> {
    let path = match path {
        Some(p) => p.clone(),
        None => McpConfig::default_path().map_err(|looked| {
            let places: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
            anyhow::anyhow!(
                "no MCP configuration found (looked at {}); pass --config FILE or set KESTREL_CONFIG",
                if places.is_empty() { "no config directory".to_string() } else { places.join(", ") }
            )
        })?,
    };
    Ok(McpConfig::load(&path)?)
}

/// Runs `work` with the host, stopping every server afterwards; Ctrl-C cancels the work (a call
/// in flight is dropped, which tells its server) and stops them too.
fn with_host<T>(
    config: &McpConfig,
    work: impl AsyncFnOnce(&McpHost) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let (events, mut rx) = tokio::sync::broadcast::channel(1024);
    let setup = HostSetup {
        events: Some(events),
        ..HostSetup::default()
    };
    let services = Services::start(config, setup, "interrupted")?;
    let printer = services.runtime.spawn(async move {
        while let Ok(event) = rx.recv().await {
            match event {
                HostEvent::Progress {
                    server,
                    progress,
                    total,
                    message,
                    ..
                } => eprintln!(
                    "{}",
                    progress_line(&server, progress, total, message.as_deref())
                ),
                HostEvent::Log {
                    server,
                    level,
                    message,
                } => eprintln!("{server}: [{level}] {message}"),
                // Failures are part of the command's own output or error.
                HostEvent::Failed { .. }
                | HostEvent::Connected { .. }
                | HostEvent::ToolsChanged { .. }
                | HostEvent::Sampling { .. }
                | HostEvent::Elicitation { .. } => {}
            }
        }
    });
    let cancel = Cancel::new();
    let outcome = {
        let _interruptible = services.cancel_on_interrupt(&cancel);
        services.runtime.block_on(async {
            tokio::select! {
                r = work(&services.host) => r,
                () = cancel.cancelled() => Err(anyhow::anyhow!("interrupted")),
            }
        })
    };
    printer.abort();
    services.shutdown();
    outcome
}

/// `kestrel tools list`: returns whether every enabled server is up.
pub fn list(args: &ToolsListArgs) -> anyhow::Result<bool> {
    let mut config = load_config(args.config.as_ref())?;
    config.sandbox_servers |= args.sandbox_servers;
    let json = args.json;
    with_host(&config, async |host: &McpHost| {
        let status = host.status().await;
        let all_up = status.iter().all(|s| s.status != "failed");
        if json {
            let names: Vec<Value> = host
                .tools()
                .await
                .into_iter()
                .map(|t| json!({"name": t.name, "server": t.server, "tool": t.tool}))
                .collect();
            let out = json!({"servers": status, "offered": names});
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(all_up);
        }
        for s in &status {
            let mut line = format!("{}  {}  {}", s.name, s.status, s.transport);
            if let Some(p) = &s.protocol {
                line.push_str(&format!("  protocol {p}"));
            }
            if let Some(i) = &s.server_info {
                line.push_str(&format!("  ({i})"));
            }
            if s.status == "connected" {
                line.push_str(&format!("  {} tools", s.tools.len()));
            }
            if let Some(sandbox) = &s.sandbox {
                line.push_str(&format!("\n  sandbox: {sandbox}"));
            }
            if let Some(e) = &s.error {
                line.push_str(&format!("\n  error: {e}"));
            }
            println!("{line}");
            let width = s.tools.iter().map(|t| t.tool.len()).max().unwrap_or(0);
            for t in &s.tools {
                let description = t
                    .description
                    .as_deref()
                    .and_then(|d| d.lines().find(|l| !l.trim().is_empty()))
                    .unwrap_or("")
                    .trim();
                let description = if description.chars().count() > 90 {
                    format!("{}…", description.chars().take(89).collect::<String>())
                } else {
                    description.to_string()
                };
                println!("  {:width$}  {description}", t.tool);
            }
        }
        Ok(all_up)
    })
}

/// `kestrel tools call`.
pub fn call(args: &ToolsCallArgs) -> anyhow::Result<()> {
    let mut config = load_config(args.config.as_ref())?;
    config.sandbox_servers |= args.sandbox_servers;
    let arguments: Value = match &args.args {
        None => json!({}),
        Some(text) => serde_json::from_str(text)
            .with_context(|| format!("--args is not valid JSON: {text}"))?,
    };
    if !arguments.is_object() {
        bail!("--args must be a JSON object, like '{{\"name\": \"value\"}}'");
    }
    let timeout = match args.timeout {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => bail!("--timeout must be a positive number of seconds, got {s}"),
    };
    if let Some(server) = config.servers.iter().find(|s| s.name == args.server)
        && !server.enabled
    {
        bail!(
            "MCP server `{}` is disabled in the configuration",
            args.server
        );
    }
    if !config.servers.iter().any(|s| s.name == args.server) {
        let known: Vec<&str> = config.servers.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "no MCP server named `{}` (configured: {})",
            args.server,
            known.join(", ")
        );
    }
    // Only the named server is started: a call should not wait on the others.
    let mut only = config.clone();
    only.servers.retain(|s| s.name == args.server);
    let json = args.json;
    with_host(&only, async |host: &McpHost| {
        let outcome = host
            .call(&args.server, &args.tool, arguments, timeout)
            .await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&outcome.raw)?);
        } else {
            println!("{}", outcome.rendered.text);
        }
        if outcome.rendered.is_error {
            bail!(
                "tool `{}` of MCP server `{}` reported an error",
                args.tool,
                args.server
            );
        }
        Ok(())
    })
}
