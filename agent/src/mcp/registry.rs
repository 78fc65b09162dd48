//! The tools the host offers, as one list whose names never collide, fixed for a turn.
//!
//! A tool keeps its server's name for it unless two servers offer the same name; then both are
//! offered as `server__tool`. The order is the configuration's server order, then each server's
//! own, so the prompt (and the KV cache behind it) is the same from one turn to the next. A
//! model's call is resolved against the snapshot its turn was offered, once, to a (server, tool)
//! pair: a name the turn did not offer is refused, never looked up again.

use std::collections::HashMap;

use rmcp::model::Tool;
use serde::Serialize;
use serde_json::{Value, json};

use super::config::ServerConfig;
use super::error::{CallError, join_names};

/// Name of the resource-reading tool offered when [`super::HostOptions::resource_tool`] is set.
pub const READ_RESOURCE_TOOL: &str = "read_resource";

/// A tool as offered to the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostTool {
    /// The name the model uses: the server's name for it, or `server__tool` when two servers
    /// offer the same name.
    pub name: String,
    /// The server that owns it.
    pub server: String,
    /// Its name on that server.
    pub tool: String,
    /// Its description.
    pub description: Option<String>,
    /// Its JSON Schema for arguments.
    pub input_schema: Value,
    /// Its MCP annotations (`readOnlyHint`, `destructiveHint`, ...), if any.
    pub annotations: Option<Value>,
    /// Whether its server is trusted, so that its annotations decide (see [`ServerConfig`]).
    pub trusted: bool,
    /// Whether its server's `alwaysAllow` / `autoApprove` names it.
    pub always_allowed: bool,
}

impl HostTool {
    /// The tool in OpenAI's `{"type": "function", ...}` form, which Qwen's template renders.
    pub fn to_openai(&self) -> Value {
        json!({"type": "function", "function": {
            "name": self.name,
            "description": self.description.clone().unwrap_or_default(),
            "parameters": self.input_schema,
        }})
    }
}

impl HostTool {
    /// Whether this is the host's own resource-reading tool rather than a server's.
    pub fn is_read_resource(&self) -> bool {
        self.server.is_empty() && self.tool == READ_RESOURCE_TOOL
    }
}

/// A server's tool as offered under `name`.
pub(crate) fn host_tool(server: &ServerConfig, tool: &Tool, name: String) -> HostTool {
    HostTool {
        trusted: server.trusted,
        always_allowed: server.always_allow.iter().any(|t| *t == *tool.name),
        name,
        server: server.name.clone(),
        tool: tool.name.to_string(),
        description: described_with_output(tool),
        input_schema: Value::Object((*tool.input_schema).clone()),
        annotations: tool
            .annotations
            .as_ref()
            .and_then(|a| serde_json::to_value(a).ok()),
    }
}

/// Longest output schema (compact JSON) told to the model: a larger one costs more prompt than
/// it helps, and the result is still checked against it.
const MAX_OFFERED_OUTPUT_SCHEMA: usize = 1024;

/// A tool's description, with what its results look like when it declares an output schema small
/// enough to be worth the prompt it takes (the model then knows the fields before it calls).
fn described_with_output(tool: &Tool) -> Option<String> {
    let description = tool.description.as_ref().map(|d| d.to_string());
    let Some(schema) = &tool.output_schema else {
        return description;
    };
    let schema = Value::Object((**schema).clone()).to_string();
    if schema.len() > MAX_OFFERED_OUTPUT_SCHEMA {
        return description;
    }
    let returns = format!("Returns JSON matching this schema: {schema}");
    Some(match description {
        Some(d) if !d.is_empty() => format!("{d}\n\n{returns}"),
        _ => returns,
    })
}

/// The tools offered for one turn.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct ToolSnapshot {
    tools: Vec<HostTool>,
}

impl ToolSnapshot {
    /// Names every server's tools (in the order given) so that none collide, and adds the
    /// resource tool when `resource_servers` is `Some` and not empty.
    pub(crate) fn build(
        per_server: Vec<(String, Vec<HostTool>)>,
        resource_servers: Option<Vec<String>>,
    ) -> Self {
        let mut tools: Vec<HostTool> = per_server.into_iter().flat_map(|(_, t)| t).collect();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for t in &tools {
            *counts.entry(t.tool.clone()).or_default() += 1;
        }
        let resource_servers = resource_servers.filter(|s| !s.is_empty());
        if resource_servers.is_some() {
            *counts.entry(READ_RESOURCE_TOOL.to_string()).or_default() += 1;
        }
        for t in &mut tools {
            if counts[&t.tool] > 1 {
                t.name = format!("{}__{}", t.server, t.tool);
            }
        }
        if let Some(servers) = resource_servers {
            tools.push(HostTool {
                name: READ_RESOURCE_TOOL.to_string(),
                server: String::new(),
                tool: READ_RESOURCE_TOOL.to_string(),
                description: Some("Read a resource (a file, document or record) that an MCP server provides, by its URI; without a URI, list the server's resources.".into()),
                input_schema: json!({"type": "object", "properties": {
                    "server": {"type": "string", "enum": servers},
                    "uri": {"type": "string"}
                }, "required": ["server"]}),
                annotations: Some(json!({"readOnlyHint": true})),
                // The host's own tool: it reads what a listed server offers.
                trusted: true,
                always_allowed: false,
            });
        }
        Self { tools }
    }

    /// The offered tools, in order.
    pub fn tools(&self) -> &[HostTool] {
        &self.tools
    }

    /// The offered names, in order.
    pub fn names(&self) -> Vec<String> {
        self.tools.iter().map(|t| t.name.clone()).collect()
    }

    /// The tools in OpenAI's form, for the template.
    pub fn to_openai(&self) -> Vec<Value> {
        self.tools.iter().map(HostTool::to_openai).collect()
    }

    /// The offered tool a model's call names; an error naming what was offered otherwise.
    pub fn resolve(&self, name: &str) -> Result<&HostTool, CallError> {
        self.tools
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| CallError::UnknownName {
                name: name.to_string(),
                known: join_names(self.tools.iter().map(|t| t.name.as_str())),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(server: &str, name: &str) -> HostTool {
        HostTool {
            name: name.into(),
            server: server.into(),
            tool: name.into(),
            description: None,
            input_schema: json!({"type": "object"}),
            annotations: None,
            trusted: false,
            always_allowed: false,
        }
    }

    #[test]
    fn colliding_names_are_namespaced_and_order_is_kept() {
        let snapshot = ToolSnapshot::build(
            vec![
                ("a".into(), vec![tool("a", "read"), tool("a", "only_a")]),
                ("b".into(), vec![tool("b", "read")]),
            ],
            None,
        );
        assert_eq!(snapshot.names(), ["a__read", "only_a", "b__read"]);
        let read = snapshot.resolve("b__read").expect("offered");
        assert_eq!((read.server.as_str(), read.tool.as_str()), ("b", "read"));
    }

    #[test]
    fn a_name_not_offered_is_refused_with_the_offered_names() {
        let snapshot = ToolSnapshot::build(vec![("a".into(), vec![tool("a", "x")])], None);
        let err = snapshot.resolve("read").expect_err("not offered");
        assert_eq!(
            err.to_string(),
            "no tool named `read` is offered (offered: x)"
        );
    }

    #[test]
    fn a_small_output_schema_is_told_in_the_description() {
        let mut weather: Tool = serde_json::from_value(json!({
            "name": "weather", "description": "Weather in a city.",
            "inputSchema": {"type": "object"},
            "outputSchema": {"type": "object", "properties": {"celsius": {"type": "number"}}}
        }))
        .expect("tool");
        assert_eq!(
            described_with_output(&weather).as_deref(),
            Some(
                "Weather in a city.\n\nReturns JSON matching this schema: \
                 {\"type\":\"object\",\"properties\":{\"celsius\":{\"type\":\"number\"}}}"
            )
        );
        let big: serde_json::Map<String, Value> = (0..100)
            .map(|i| (format!("field_{i}"), json!({"type": "string"})))
            .collect();
        weather.output_schema = Some(std::sync::Arc::new(
            json!({"type": "object", "properties": big})
                .as_object()
                .cloned()
                .expect("object"),
        ));
        assert_eq!(
            described_with_output(&weather).as_deref(),
            Some("Weather in a city.")
        );
    }

    #[test]
    fn the_resource_tool_joins_only_when_a_server_has_resources() {
        let without = ToolSnapshot::build(vec![("a".into(), vec![tool("a", "x")])], Some(vec![]));
        assert_eq!(without.names(), ["x"]);
        let with = ToolSnapshot::build(
            vec![("a".into(), vec![tool("a", READ_RESOURCE_TOOL)])],
            Some(vec!["a".into()]),
        );
        assert_eq!(with.names(), ["a__read_resource", READ_RESOURCE_TOOL]);
        assert!(
            with.resolve(READ_RESOURCE_TOOL)
                .expect("offered")
                .is_read_resource()
        );
    }
}
