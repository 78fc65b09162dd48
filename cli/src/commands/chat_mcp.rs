//! What a chat adds from its MCP servers besides tools: resources attached to a message with
//! `@server:uri`, and servers' prompts (`/prompts` lists them, `/prompt SERVER NAME key=value...`
//! adds one's messages to the conversation).

use anyhow::{Context, bail};
use kestrel::mcp::McpHost;
use kestrel::prompts::messages::{Message, Role};
use serde_json::{Map, Value};
use tokio::runtime::Runtime;

/// `line` with each `@server:uri` whose server is configured replaced by a mention of the
/// resource, and the resources' text appended after the message. Other `@` words stay as they
/// are. A resource that cannot be read is an error naming it.
pub(crate) fn attach_resources(
    runtime: &Runtime,
    host: &McpHost,
    line: &str,
) -> anyhow::Result<String> {
    // Most messages mention nothing: no need to ask the host for its servers.
    if !line.contains('@') {
        return Ok(line.to_string());
    }
    let servers: Vec<String> = runtime
        .block_on(host.status())
        .into_iter()
        .map(|s| s.name)
        .collect();
    let mut attached = String::new();
    for word in line.split_whitespace() {
        let Some((server, uri)) = word.strip_prefix('@').and_then(|w| w.split_once(':')) else {
            continue;
        };
        if uri.is_empty() || !servers.iter().any(|s| s == server) {
            continue;
        }
        let read = runtime
            .block_on(host.read_resource(server, uri))
            .with_context(|| format!("cannot attach {word}"))?;
        attached.push_str(&format!(
            "\n\n[resource {server}:{uri}]\n{}",
            contents_text(&read)
        ));
    }
    Ok(format!("{line}{attached}"))
}

/// A `resources/read` result as text: text contents as they are, binary ones described.
fn contents_text(read: &Value) -> String {
    let contents = read["contents"].as_array().cloned().unwrap_or_default();
    contents
        .iter()
        .map(|c| match c["text"].as_str() {
            Some(text) => text.to_string(),
            None => format!(
                "[binary {}, {} base64 characters]",
                c["mimeType"].as_str().unwrap_or("data"),
                c["blob"].as_str().map_or(0, str::len)
            ),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Prints every server's prompts with their arguments (`*` marks a required one).
pub(crate) fn list_prompts(runtime: &Runtime, host: &McpHost) {
    let prompts = runtime.block_on(host.prompts());
    if prompts.is_empty() {
        eprintln!("no server offers prompts");
    }
    for (server, prompt) in prompts {
        let arguments: Vec<String> = prompt["arguments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                let name = a["name"].as_str()?;
                let required = if a["required"] == true { "*" } else { "" };
                Some(format!("{name}{required}"))
            })
            .collect();
        eprintln!(
            "{server} {}({}){}",
            prompt["name"].as_str().unwrap_or("?"),
            arguments.join(", "),
            prompt["description"]
                .as_str()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        );
    }
}

/// The messages of `/prompt SERVER NAME key=value...` (`rest` is what follows `/prompt`).
pub(crate) fn prompt_messages(
    runtime: &Runtime,
    host: &McpHost,
    rest: &str,
) -> anyhow::Result<Vec<Message>> {
    let words = shlex::split(rest).context("unbalanced quotes")?;
    let [server, name, pairs @ ..] = &words[..] else {
        bail!("usage: /prompt SERVER NAME key=value...");
    };
    let mut arguments = Map::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("`{pair}` is not key=value");
        };
        arguments.insert(key.to_string(), Value::String(value.to_string()));
    }
    let prompt = runtime
        .block_on(host.get_prompt(server, name, arguments))
        .with_context(|| format!("prompt {name} of {server}"))?;
    prompt["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let role = match m["role"].as_str() {
                Some("assistant") => Role::Assistant,
                _ => Role::User,
            };
            let content = &m["content"];
            let text = match content["type"].as_str() {
                Some("text") => content["text"].as_str().unwrap_or_default().to_string(),
                Some("resource") => contents_text(&serde_json::json!({
                    "contents": [content["resource"].clone()]
                })),
                other => format!("[{} content]", other.unwrap_or("unknown")),
            };
            Ok(Message::text(role, &text))
        })
        .collect()
}
