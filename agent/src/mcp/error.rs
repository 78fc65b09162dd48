//! Why a call did not reach a tool or did not come back.

use std::time::Duration;

use serde_json::Value;

use super::content::cut_to;

/// Why a call did not reach a tool or did not come back.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// No such server.
    #[error("no MCP server named `{server}` (configured: {known})")]
    UnknownServer {
        /// The name asked for.
        server: String,
        /// The configured names.
        known: String,
    },
    /// The server is disabled in the configuration.
    #[error("MCP server `{server}` is disabled in the configuration")]
    Disabled {
        /// Server name.
        server: String,
    },
    /// No such tool on the server, or not offered by the configuration.
    #[error("MCP server `{server}` offers no tool `{tool}` (it offers: {known})")]
    UnknownTool {
        /// Server name.
        server: String,
        /// The tool asked for.
        tool: String,
        /// What it offers.
        known: String,
    },
    /// No offered tool has this name.
    #[error("no tool named `{name}` is offered (offered: {known})")]
    UnknownName {
        /// The name asked for.
        name: String,
        /// The offered names.
        known: String,
    },
    /// The server could not be (re)started.
    #[error("MCP server `{server}` is not available: {reason}")]
    Unavailable {
        /// Server name.
        server: String,
        /// Why.
        reason: String,
    },
    /// The call ran out of time and was cancelled.
    #[error("tool `{tool}` of MCP server `{server}` did not answer within {} s; the call was cancelled", after.as_secs_f64())]
    Timeout {
        /// Server name.
        server: String,
        /// Tool name.
        tool: String,
        /// The limit.
        after: Duration,
    },
    /// The call failed on the way (protocol error, server crash, message too large).
    #[error("tool `{tool}` of MCP server `{server}` failed: {message}")]
    Failed {
        /// Server name.
        server: String,
        /// Tool name.
        tool: String,
        /// What went wrong.
        message: String,
    },
    /// Arguments were not a JSON object.
    #[error("arguments for `{tool}` must be a JSON object, got {got}")]
    BadArguments {
        /// Tool name.
        tool: String,
        /// What was given, abbreviated.
        got: String,
    },
}

/// Names for an error message: `a, b, c`, or `none`.
pub(crate) fn join_names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = names.collect();
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

/// A JSON value cut short for an error message.
pub(crate) fn abbreviate(v: &Value) -> String {
    cut_to(v.to_string(), 80).0
}
