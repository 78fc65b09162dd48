//! A client for the MCP conformance suite (`@modelcontextprotocol/conformance client`): the suite
//! starts a test server per scenario and runs this with the server's URL as the last argument.
//!
//! It does what a host does: connect through Kestrel's MCP host, list the tools, and call each one
//! with arguments made from its schema (required numbers 1, strings "x", booleans true), as a model
//! would. Nothing is scenario-specific beyond the configuration a user would write for the
//! scenario's server (`oauth_settings`); an OAuth login runs through the host, the browser's part
//! played by following the authorization server's redirect.

use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use kestrel::mcp::oauth::{Authorizer, AuthorizerHandle};
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

/// The server's `oauth` settings, as a user would write them for it: the client the suite
/// registered beforehand (its `MCP_CONFORMANCE_CONTEXT`), the client-credentials grant where the
/// scenario's server offers only that, and a client metadata document URL.
fn oauth_settings() -> Value {
    let context: Value = std::env::var("MCP_CONFORMANCE_CONTEXT")
        .ok()
        .and_then(|c| serde_json::from_str(&c).ok())
        .unwrap_or(Value::Null);
    let scenario = std::env::var("MCP_CONFORMANCE_SCENARIO").unwrap_or_default();
    let mut settings = json!({"clientMetadataUrl": CLIENT_METADATA_URL});
    for (field, key) in [("client_id", "clientId"), ("client_secret", "clientSecret")] {
        if let Some(value) = context[field].as_str() {
            settings[key] = json!(value);
        }
    }
    if scenario.contains("client-credentials") {
        settings["grant"] = json!("client_credentials");
    }
    if let Some(pem) = context["private_key_pem"].as_str() {
        // A key file, as a user would keep one.
        let file = std::env::temp_dir().join(format!("conformance-key-{}.pem", std::process::id()));
        if std::fs::write(&file, pem).is_ok() {
            settings["privateKeyFile"] = json!(file);
        }
    }
    settings
}

/// The metadata document the suite's authorization servers expect as a client id.
const CLIENT_METADATA_URL: &str = "https://conformance-test.local/client-metadata.json";

/// Plays the browser: the suite's authorization endpoint redirects at once, so following it to
/// the redirect is the whole person's part.
struct FollowRedirect;

impl Authorizer for FollowRedirect {
    fn redirect_uri(&self) -> String {
        "http://localhost:3000/callback".into()
    }

    fn authorize(&self, _server: &str, page: &str) -> BoxFuture<'_, Result<String, String>> {
        let page = page.to_string();
        Box::pin(async move {
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| e.to_string())?;
            let response = client.get(&page).send().await.map_err(|e| e.to_string())?;
            let location = response.headers().get("location").ok_or("no redirect")?;
            Ok(location.to_str().map_err(|e| e.to_string())?.to_string())
        })
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args().next_back().unwrap_or_default();
    let server = json!({"url": url, "startup_timeout_secs": 15, "oauth": oauth_settings()});
    let config = McpConfig::parse(
        &json!({"mcpServers": {"server": server}}).to_string(),
        false,
        Path::new("conformance.json"),
    )?;
    let options = HostOptions {
        // As `kestrel run --elicit defaults`: forms are accepted with their schema's defaults.
        elicitation: ElicitPolicy::Defaults.into(),
        // The person's part of a login, done by following the redirect; tokens kept in memory.
        authorizer: Some(AuthorizerHandle(Arc::new(FollowRedirect))),
        oauth_dir: None,
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
