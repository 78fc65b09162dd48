//! MCP tools that a served request runs on the server, next to the function tools its client runs.
//!
//! A request names configured servers (OpenAI's `{"type": "mcp", "server_label": ...}` tools);
//! [`HostedTools::select`] resolves them against the running [`McpHost`] once, keeping the tools
//! each allows and whether a call needs the client's approval first. The model sees each tool
//! under its own name on its server, so that a call item read back from a client names the same
//! tool; two selected tools with one name are refused rather than renamed. [`HostedTools::run`]
//! checks a call's arguments against the tool's schema and sends it; whatever happens (a refusal,
//! the tool's error, a dead server) comes back as a [`HostedOutcome`] the model can read, so the
//! loop goes on. Every call runs in a `tool_call` span that names the server, tool and call id.

use std::sync::Arc;

use serde_json::Value;
use tracing::Instrument;

use crate::agent::check_arguments;
use crate::mcp::{HostTool, McpHost};

/// Which calls of a server need the client's approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalRule {
    /// Every call waits for an approval.
    Always,
    /// No call waits.
    Never,
    /// Calls to these tools need none; every other call waits.
    ExceptFor(Vec<String>),
}

impl ApprovalRule {
    fn needs_approval(&self, tool: &str) -> bool {
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::ExceptFor(free) => !free.iter().any(|t| t == tool),
        }
    }
}

/// One server a request selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The server's name in the `mcpServers` configuration.
    pub server: String,
    /// The tools the model may call (`None`: all the server offers).
    pub allowed: Option<Vec<String>>,
    /// Which calls need approval.
    pub approval: ApprovalRule,
}

/// Why a request's servers cannot be offered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostedError {
    /// The server is not configured.
    #[error("no MCP server `{server}` is configured (configured: {known})")]
    UnknownServer {
        /// The name asked for.
        server: String,
        /// The configured names.
        known: String,
    },
    /// The server is configured but not running.
    #[error("MCP server `{server}` is not available: {reason}")]
    Unavailable {
        /// The server.
        server: String,
        /// Why.
        reason: String,
    },
    /// An allowed tool the server does not offer.
    #[error("MCP server `{server}` offers no tool `{tool}` (it offers: {offered})")]
    UnknownTool {
        /// The server.
        server: String,
        /// The tool asked for.
        tool: String,
        /// What it offers.
        offered: String,
    },
    /// Two selected tools share a name, so a call could not say which it means.
    #[error("two tools are named `{name}` ({first} and {second}); narrow `allowed_tools`")]
    Collision {
        /// The name.
        name: String,
        /// Where the first comes from.
        first: String,
        /// Where the second comes from.
        second: String,
    },
}

/// A tool a request may run on the server.
#[derive(Debug, Clone, PartialEq)]
pub struct HostedTool {
    /// The tool as its server offers it (`name` is the name the model calls).
    pub tool: HostTool,
    /// Whether a call waits for the client's approval.
    pub needs_approval: bool,
}

/// JSON-RPC's code for invalid parameters, for arguments refused before they are sent.
pub const INVALID_ARGUMENTS: i64 = -32602;
/// JSON-RPC's code for an internal error, for calls that failed on the way.
pub const CALL_FAILED: i64 = -32603;
/// The code of a call refused because it repeats one made before in the same loop (a server
/// error in JSON-RPC's range for implementations): it was not sent, and the model did not read
/// it, so a conversation read back leaves it out.
pub const REPEAT_REFUSED: i64 = -32001;

/// The result of one hosted call.
#[derive(Debug, Clone, PartialEq)]
pub enum HostedOutcome {
    /// The tool's output, as text.
    Output(String),
    /// The tool ran and reported an error (`isError`): its content, and that content as text.
    ToolError {
        /// The content blocks as the server sent them.
        content: Value,
        /// The same as text.
        text: String,
    },
    /// The call never produced a result: refused, unreachable, timed out, or declined.
    Failed {
        /// A JSON-RPC error code.
        code: i64,
        /// Why.
        message: String,
    },
}

impl HostedOutcome {
    /// What the model reads in its `<tool_response>`.
    pub fn model_text(&self) -> String {
        match self {
            Self::Output(text) => text.clone(),
            Self::ToolError { text, .. } => format!("Error: {text}"),
            Self::Failed { message, .. } => format!("Error: {message}"),
        }
    }

    /// Whether the call failed.
    pub fn is_error(&self) -> bool {
        !matches!(self, Self::Output(_))
    }

    /// The outcome of a call that repeats one made before (see [`REPEAT_REFUSED`]).
    pub fn repeat() -> Self {
        Self::Failed {
            code: REPEAT_REFUSED,
            message:
                "this call repeats one made before (its result is above); answer with what you have"
                    .into(),
        }
    }

    /// Whether this is the refusal of a repeated call.
    pub fn is_repeat(&self) -> bool {
        matches!(self, Self::Failed { code, .. } if *code == REPEAT_REFUSED)
    }

    /// The outcome of a call the client declined.
    pub fn declined(reason: Option<&str>) -> Self {
        let message = match reason.filter(|r| !r.trim().is_empty()) {
            Some(reason) => format!("the user declined this call: {reason}"),
            None => "the user declined this call".into(),
        };
        Self::Failed {
            code: CALL_FAILED,
            message,
        }
    }
}

/// The MCP tools of one request.
#[derive(Clone)]
pub struct HostedTools {
    host: Arc<McpHost>,
    tools: Vec<HostedTool>,
}

impl std::fmt::Debug for HostedTools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostedTools")
            .field("tools", &self.tools)
            .finish_non_exhaustive()
    }
}

impl HostedTools {
    /// Resolves `selections` against the servers running now.
    pub async fn select(host: Arc<McpHost>, selections: &[Selection]) -> Result<Self, HostedError> {
        let status = host.status().await;
        let mut tools: Vec<HostedTool> = Vec::new();
        for selection in selections {
            let Some(server) = status.iter().find(|s| s.name == selection.server) else {
                let known: Vec<&str> = status.iter().map(|s| s.name.as_str()).collect();
                return Err(HostedError::UnknownServer {
                    server: selection.server.clone(),
                    known: if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    },
                });
            };
            if server.status != "connected" {
                return Err(HostedError::Unavailable {
                    server: server.name.clone(),
                    reason: server.error.clone().unwrap_or_else(|| server.status.into()),
                });
            }
            if let Some(allowed) = &selection.allowed
                && let Some(missing) = allowed
                    .iter()
                    .find(|a| !server.tools.iter().any(|t| t.tool == **a))
            {
                let offered: Vec<&str> = server.tools.iter().map(|t| t.tool.as_str()).collect();
                return Err(HostedError::UnknownTool {
                    server: server.name.clone(),
                    tool: missing.clone(),
                    offered: offered.join(", "),
                });
            }
            let chosen = server.tools.iter().filter(|t| {
                selection
                    .allowed
                    .as_ref()
                    .is_none_or(|allowed| allowed.contains(&t.tool))
            });
            for tool in chosen {
                if let Some(other) = tools.iter().find(|h| h.tool.name == tool.tool) {
                    return Err(HostedError::Collision {
                        name: tool.tool.clone(),
                        first: format!("server `{}`", other.tool.server),
                        second: format!("server `{}`", tool.server),
                    });
                }
                let mut tool = tool.clone();
                tool.name = tool.tool.clone();
                tools.push(HostedTool {
                    needs_approval: selection.approval.needs_approval(&tool.tool),
                    tool,
                });
            }
        }
        Ok(Self { host, tools })
    }

    /// The selected tools, in the order of the selections.
    pub fn tools(&self) -> &[HostedTool] {
        &self.tools
    }

    /// The tool a model's call names, if it is one of these.
    pub fn find(&self, name: &str) -> Option<&HostedTool> {
        self.tools.iter().find(|t| t.tool.name == name)
    }

    /// The tools in OpenAI's function form, for the template.
    pub fn functions(&self) -> Vec<Value> {
        self.tools.iter().map(|t| t.tool.to_openai()).collect()
    }

    /// Runs a call to one of these tools: its arguments are checked against the tool's schema
    /// first (a mismatch names the field and nothing is sent).
    pub async fn run(&self, call_id: &str, name: &str, arguments: &Value) -> HostedOutcome {
        let Some(tool) = self.find(name) else {
            let offered: Vec<&str> = self.tools.iter().map(|t| t.tool.name.as_str()).collect();
            return HostedOutcome::Failed {
                code: INVALID_ARGUMENTS,
                message: format!(
                    "no tool `{name}` is offered here (offered: {})",
                    offered.join(", ")
                ),
            };
        };
        let span = tracing::info_span!(
            "tool_call",
            id = %call_id,
            server = %tool.tool.server,
            tool = %tool.tool.tool
        );
        async {
            if let Err(problems) = check_arguments(&tool.tool.input_schema, arguments) {
                tracing::info!(%problems, "arguments refused");
                return HostedOutcome::Failed {
                    code: INVALID_ARGUMENTS,
                    message: format!("invalid arguments for `{name}`: {problems}"),
                };
            }
            let outcome = match self.host.call_offered(&tool.tool, arguments.clone()).await {
                Ok(outcome) if outcome.rendered.is_error => HostedOutcome::ToolError {
                    content: outcome.raw.get("content").cloned().unwrap_or(Value::Null),
                    text: outcome.rendered.text,
                },
                Ok(outcome) => HostedOutcome::Output(outcome.rendered.text),
                Err(e) => HostedOutcome::Failed {
                    code: CALL_FAILED,
                    message: e.to_string(),
                },
            };
            tracing::info!(failed = outcome.is_error(), "tool call done");
            outcome
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approval_rules_and_declines_read_as_the_model_sees_them() {
        assert!(ApprovalRule::Always.needs_approval("x"));
        assert!(!ApprovalRule::Never.needs_approval("x"));
        let rule = ApprovalRule::ExceptFor(vec!["get_time".into()]);
        assert!(!rule.needs_approval("get_time"));
        assert!(rule.needs_approval("delete_file"));
        assert_eq!(
            HostedOutcome::declined(Some("too risky")).model_text(),
            "Error: the user declined this call: too risky"
        );
        assert_eq!(
            HostedOutcome::declined(Some("  ")).model_text(),
            "Error: the user declined this call"
        );
        let failed = HostedOutcome::ToolError {
            content: serde_json::json!([{"type": "text", "text": "no such city"}]),
            text: "no such city".into(),
        };
        assert_eq!(failed.model_text(), "Error: no such city");
        assert!(failed.is_error() && !HostedOutcome::Output(String::new()).is_error());
    }
}
