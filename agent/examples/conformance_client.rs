//! A client for the MCP conformance suite (`@modelcontextprotocol/conformance client`): the suite
//! starts a test server per scenario and runs this with the server's URL as the last argument.
//!
//! It does what a host does: connect through Kestrel's MCP host, list the tools, and call each one
//! with arguments made from its schema (required numbers 1, strings "x", booleans true), as a model
//! would. Nothing is scenario-specific.

use std::path::Path;

use kestrel::mcp::{ElicitPolicy, HostOptions, McpConfig, McpHost};
use serde_json::{Map, Value, json};

fn minimal_arguments(schema: &Value) -> Value {
    let mut args = Map::new();
    let required = schema["required"].as_array().cloned().unwrap_or_default();
    for name in required.iter().filter_map(Value::as_str) {
        let value = match schema["properties"][name]["type"].as_str() {
            Some("number" | "integer") => json!(1),
            Some("boolean") => json!(true),
            Some("array") => json!([]),
            Some("object") => json!({}),
            _ => json!("x"),
        };
        args.insert(name.to_string(), value);
    }
    Value::Object(args)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args().next_back().unwrap_or_default();
    let config = McpConfig::parse(
        &json!({"mcpServers": {"server": {"url": url, "startup_timeout_secs": 15}}}).to_string(),
        false,
        Path::new("conformance.json"),
    )?;
    // As `kestrel run --elicit defaults`: forms are accepted with their schema's defaults.
    let options = HostOptions {
        elicitation: ElicitPolicy::Defaults.into(),
        ..HostOptions::from_config(&config)
    };
    let host = McpHost::start(&config, options).await;
    let status = host.status().await;
    if let Some(error) = &status[0].error {
        eprintln!("not connected: {error}");
    }
    for tool in host.tools().await {
        let args = minimal_arguments(&tool.input_schema);
        match host.call(&tool.server, &tool.tool, args, None).await {
            Ok(out) => println!("{}: {}", tool.name, out.rendered.text),
            Err(e) => eprintln!("{}: {e}", tool.name),
        }
    }
    host.shutdown().await;
    Ok(())
}
