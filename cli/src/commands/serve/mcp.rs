//! MCP tools a request runs on the server: the `{"type": "mcp", "server_label": NAME, ...}`
//! entries of `tools`, in the shape OpenAI's Responses API defines, where NAME is a server of
//! `kestrel serve --config FILE` (servers named by URL are refused: the server runs only what its
//! operator configured). Chat Completions reads the same entries.
//!
//! Each entry becomes a [`Selection`]; [`hosted`] resolves a request's selections against the
//! running servers, so a request naming an unknown server, a server that is down or a tool the
//! server lacks is answered 400 naming the entry, before anything is generated.

use std::sync::Arc;

use kestrel::hosted::{
    ApprovalRule, CALL_FAILED, HostedError, HostedOutcome, HostedTools, Selection,
};
use kestrel::mcp::{DEFAULT_MAX_RESULT_BYTES, render_result};
use kestrel::prompts::messages::{Content, FunctionCall, Message, Role, ToolCall};
use serde_json::{Value, json};

use super::Server;
use super::error::ApiError;

/// Fields of an `mcp` tool entry this server reads.
const KNOWN: [&str; 5] = [
    "type",
    "server_label",
    "allowed_tools",
    "require_approval",
    "server_description",
];

/// An `mcp` entry of `tools`, where it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct McpEntry {
    /// `tools[i]`.
    pub(super) param: String,
    /// What it selects.
    pub(super) selection: Selection,
}

/// Reads the `mcp` entry at `param`. Without `approvals` (Chat Completions, which has no way to
/// ask), only `require_approval: "never"` is accepted.
pub(super) fn entry(param: &str, tool: &Value, approvals: bool) -> Result<McpEntry, ApiError> {
    let at = |key: &str| format!("{param}.{key}");
    if let Some(key) = tool
        .as_object()
        .into_iter()
        .flat_map(|t| t.keys())
        .find(|k| !KNOWN.contains(&k.as_str()))
    {
        let why = match key.as_str() {
            "server_url" | "connector_id" | "authorization" | "headers" => {
                "this server runs only the MCP servers it was started with (`--config`); name one by `server_label`"
            }
            _ => "it is not supported by this server",
        };
        return Err(ApiError::invalid(&at(key), format!("`{}`: {why}", at(key))));
    }
    let server = match tool.get("server_label") {
        Some(Value::String(label)) if !label.is_empty() => label.clone(),
        _ => {
            return Err(ApiError::invalid(
                &at("server_label"),
                format!("`{}` must name a configured MCP server", at("server_label")),
            ));
        }
    };
    let allowed = match tool.get("allowed_tools") {
        None | Some(Value::Null) => None,
        Some(Value::Array(names)) => Some(names_in(names, &at("allowed_tools"))?),
        Some(filter) => match filter.get("tool_names") {
            Some(Value::Array(names)) => Some(names_in(names, &at("allowed_tools.tool_names"))?),
            _ => {
                return Err(ApiError::invalid(
                    &at("allowed_tools"),
                    format!(
                        "`{}` must be a list of tool names or {{\"tool_names\": [...]}}",
                        at("allowed_tools")
                    ),
                ));
            }
        },
    };
    let approval = approval_rule(tool.get("require_approval"), &at("require_approval"))?;
    if !approvals && approval != ApprovalRule::Never {
        return Err(ApiError::invalid(
            &at("require_approval"),
            format!(
                "`{}` must be \"never\" here: Chat Completions cannot ask for an approval (the Responses API can)",
                at("require_approval")
            ),
        ));
    }
    Ok(McpEntry {
        param: param.to_string(),
        selection: Selection {
            server,
            allowed,
            approval,
        },
    })
}

/// `require_approval`: `"always"` (OpenAI's default), `"never"`, or `{"never": {"tool_names":
/// [...]}}` (those run without asking, the rest wait; an `always` list only restates that).
fn approval_rule(value: Option<&Value>, param: &str) -> Result<ApprovalRule, ApiError> {
    let bad = || {
        ApiError::invalid(
            param,
            format!(
                "`{param}` must be \"always\", \"never\" or {{\"never\": {{\"tool_names\": [...]}}}}"
            ),
        )
    };
    match value {
        None | Some(Value::Null) => Ok(ApprovalRule::Always),
        Some(Value::String(mode)) if mode == "always" => Ok(ApprovalRule::Always),
        Some(Value::String(mode)) if mode == "never" => Ok(ApprovalRule::Never),
        Some(Value::Object(rules)) => {
            if rules.keys().any(|k| k != "always" && k != "never") {
                return Err(bad());
            }
            let list = |key: &str| match rules.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(filter) => match filter.get("tool_names") {
                    Some(Value::Array(names)) => names_in(names, &format!("{param}.{key}")),
                    _ => Err(bad()),
                },
            };
            let (always, never) = (list("always")?, list("never")?);
            if let Some(both) = always.iter().find(|t| never.contains(t)) {
                return Err(ApiError::invalid(
                    param,
                    format!("`{param}` lists `{both}` under both always and never"),
                ));
            }
            Ok(ApprovalRule::ExceptFor(never))
        }
        Some(_) => Err(bad()),
    }
}

fn names_in(names: &[Value], param: &str) -> Result<Vec<String>, ApiError> {
    names
        .iter()
        .map(|n| match n {
            Value::String(name) if !name.is_empty() => Ok(name.clone()),
            _ => Err(ApiError::invalid(
                param,
                format!("`{param}` must list tool names (strings)"),
            )),
        })
        .collect()
}

/// Resolves a request's entries on this server (`None` when it has none). The tools' names may
/// not repeat one of the client's function `tools` (OpenAI's shape).
pub(super) async fn hosted(
    server: &Server,
    entries: &[McpEntry],
    tools: &[Value],
) -> Result<Option<Arc<HostedTools>>, ApiError> {
    let Some(first) = entries.first() else {
        return Ok(None);
    };
    let Some(host) = &server.mcp else {
        return Err(ApiError::invalid(
            &first.param,
            format!(
                "`{}`: this server runs no MCP servers (start it with `kestrel serve --config FILE`)",
                first.param
            ),
        ));
    };
    let selections: Vec<Selection> = entries.iter().map(|e| e.selection.clone()).collect();
    let hosted = HostedTools::select(host.clone(), &selections)
        .await
        .map_err(|e| {
            let (server, key) = match &e {
                HostedError::UnknownServer { server, .. }
                | HostedError::Unavailable { server, .. } => (Some(server), "server_label"),
                HostedError::UnknownTool { server, .. } => (Some(server), "allowed_tools"),
                HostedError::Collision { .. } => (None, "allowed_tools"),
            };
            let entry = server
                .and_then(|s| entries.iter().find(|e| e.selection.server == *s))
                .unwrap_or(first);
            ApiError::invalid(&format!("{}.{key}", entry.param), e.to_string())
        })?;
    let functions: Vec<&str> = tools.iter().filter_map(name_of).collect();
    if let Some(clash) = hosted
        .tools()
        .iter()
        .find(|t| functions.contains(&t.tool.name.as_str()))
    {
        return Err(ApiError::invalid(
            "tools",
            format!(
                "the function tool `{}` has the name of MCP server `{}`'s tool; rename it or leave it out of `allowed_tools`",
                clash.tool.name, clash.tool.server
            ),
        ));
    }
    Ok(Some(Arc::new(hosted)))
}

/// The `mcp_list_tools` item for one server's selected tools.
pub(super) fn list_tools_item(id: &str, label: &str, hosted: &HostedTools) -> Value {
    let tools: Vec<Value> = hosted
        .tools()
        .iter()
        .filter(|t| t.tool.server == label)
        .map(|t| {
            json!({
                "name": t.tool.tool,
                "description": t.tool.description,
                "input_schema": t.tool.input_schema,
                "annotations": t.tool.annotations,
            })
        })
        .collect();
    json!({"type": "mcp_list_tools", "id": id, "server_label": label, "tools": tools,
           "error": null})
}

/// An `mcp_call` item's outcome, as the model read it: `output`, or `error` in OpenAI's shapes
/// (`mcp_tool_execution_error` with the tool's content, `mcp_protocol_error`, `http_error`).
pub(super) fn outcome_of(item: &Value) -> HostedOutcome {
    let error = item.get("error").filter(|e| !e.is_null());
    match (item.get("output").and_then(Value::as_str), error) {
        (_, Some(error)) if error["type"] == "mcp_tool_execution_error" => {
            let content = error.get("content").cloned().unwrap_or(Value::Null);
            let result = json!({"content": content, "isError": true});
            HostedOutcome::ToolError {
                text: render_result(&result, DEFAULT_MAX_RESULT_BYTES).text,
                content,
            }
        }
        (_, Some(error)) => HostedOutcome::Failed {
            code: error["code"].as_i64().unwrap_or(CALL_FAILED),
            message: match &error["message"] {
                Value::String(message) => message.clone(),
                _ => error.to_string(),
            },
        },
        (Some(output), None) => HostedOutcome::Output(output.to_string()),
        (None, None) => HostedOutcome::Output(String::new()),
    }
}

/// Sets an `mcp_call` item's outcome.
pub(super) fn complete_call(item: &mut Value, outcome: &HostedOutcome) {
    let (output, error) = match outcome {
        HostedOutcome::Output(text) => (json!(text), Value::Null),
        HostedOutcome::ToolError { content, .. } => (
            Value::Null,
            json!({"type": "mcp_tool_execution_error", "content": content}),
        ),
        HostedOutcome::Failed { code, message } => (
            Value::Null,
            json!({"type": "mcp_protocol_error", "code": code, "message": message}),
        ),
    };
    item["output"] = output;
    item["error"] = error;
    item["status"] = json!(if outcome.is_error() {
        "failed"
    } else {
        "completed"
    });
}

/// A call's function name (OpenAI's shape).
pub(super) fn name_of(call: &Value) -> Option<&str> {
    call.pointer("/function/name").and_then(Value::as_str)
}

/// A call's arguments as JSON (sent as JSON text, or already parsed).
pub(super) fn arguments_of(call: &Value) -> Value {
    match call.pointer("/function/arguments") {
        Some(Value::String(text)) => serde_json::from_str(text).unwrap_or(json!({})),
        Some(other) => other.clone(),
        None => json!({}),
    }
}

/// An assistant message with `content`, `reasoning` and OpenAI-shaped `calls`.
pub(super) fn assistant<'a>(
    content: &str,
    reasoning: &str,
    calls: impl Iterator<Item = &'a Value>,
) -> Message {
    let tool_calls: Vec<ToolCall> = calls
        .map(|c| ToolCall {
            id: c["id"].as_str().map(str::to_string),
            kind: "function".into(),
            function: FunctionCall {
                name: name_of(c).unwrap_or_default().to_string(),
                arguments: arguments_of(c),
            },
        })
        .collect();
    Message {
        content: (!content.is_empty() || tool_calls.is_empty())
            .then(|| Content::Text(content.to_string())),
        reasoning_content: (!reasoning.is_empty()).then(|| reasoning.to_string()),
        tool_calls,
        ..Message::text(Role::Assistant, "")
    }
}

/// The tool message that answers call `id` with `outcome`.
pub(super) fn tool_message(id: Option<&str>, outcome: &HostedOutcome) -> Message {
    Message {
        tool_call_id: id.map(str::to_string),
        ..Message::text(Role::Tool, &outcome.model_text())
    }
}

/// Chat Completions' `mcp_rounds` (the calls the server ran, per round; see `chat_mcp.rs`)
/// as the messages the model saw: each round an assistant message and its tool results.
pub(super) fn rounds_to_messages(rounds: &Value, param: &str) -> Result<Vec<Message>, ApiError> {
    let Value::Array(rounds) = rounds else {
        return Err(ApiError::invalid(
            param,
            format!("`{param}` must be an array"),
        ));
    };
    let mut messages = Vec::new();
    for (i, round) in rounds.iter().enumerate() {
        let at = format!("{param}[{i}]");
        let text = |key: &str| -> Result<String, ApiError> {
            match round.get(key) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(ApiError::invalid(
                    &format!("{at}.{key}"),
                    format!("`{at}.{key}` must be a string"),
                )),
            }
        };
        let Some(Value::Array(calls)) = round.get("calls") else {
            return Err(ApiError::invalid(
                &format!("{at}.calls"),
                format!("`{at}.calls` must be an array of calls"),
            ));
        };
        // Refused repeats were never read by the model.
        let read = |c: &&Value| !outcome_of(c).is_repeat();
        if !calls.iter().any(|c| read(&c)) {
            continue;
        }
        let mut openai_calls = Vec::new();
        for (j, call) in calls.iter().enumerate().filter(|(_, c)| read(c)) {
            let field = |key: &str| match call.get(key) {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(ApiError::invalid(
                    &format!("{at}.calls[{j}].{key}"),
                    format!("`{at}.calls[{j}].{key}` must be a string"),
                )),
            };
            let arguments = field("arguments")?;
            if serde_json::from_str::<Value>(&arguments).is_err() {
                let key = format!("{at}.calls[{j}].arguments");
                return Err(ApiError::invalid(&key, format!("`{key}` is not JSON")));
            }
            openai_calls.push(json!({"id": field("id")?, "type": "function",
                "function": {"name": field("name")?, "arguments": arguments}}));
        }
        messages.push(assistant(
            &text("content")?,
            &text("reasoning_content")?,
            openai_calls.iter(),
        ));
        for call in calls.iter().filter(read) {
            messages.push(tool_message(call["id"].as_str(), &outcome_of(call)));
        }
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of(tool: Value, approvals: bool) -> Option<String> {
        entry("tools[0]", &tool, approvals)
            .err()
            .and_then(|e| e.body()["error"]["param"].as_str().map(str::to_string))
    }

    #[test]
    fn entries_read_openai_shapes_and_name_what_is_wrong() {
        let read = entry(
            "tools[1]",
            &json!({"type": "mcp", "server_label": "time", "allowed_tools": {"tool_names": ["get_current_time"]},
                    "require_approval": {"never": {"tool_names": ["get_current_time"]}}}),
            true,
        )
        .expect("accepted");
        assert_eq!(read.param, "tools[1]");
        assert_eq!(read.selection.server, "time");
        assert_eq!(
            read.selection.allowed.as_deref(),
            Some(&["get_current_time".to_string()][..])
        );
        assert_eq!(
            read.selection.approval,
            ApprovalRule::ExceptFor(vec!["get_current_time".into()])
        );
        let plain = entry(
            "tools[0]",
            &json!({"type": "mcp", "server_label": "time"}),
            true,
        )
        .expect("accepted");
        assert_eq!(plain.selection.approval, ApprovalRule::Always);
        assert_eq!(plain.selection.allowed, None);

        for (tool, approvals, param) in [
            (json!({"type": "mcp"}), true, "tools[0].server_label"),
            (
                json!({"type": "mcp", "server_label": "t", "server_url": "https://x"}),
                true,
                "tools[0].server_url",
            ),
            (
                json!({"type": "mcp", "server_label": "t", "allowed_tools": "all"}),
                true,
                "tools[0].allowed_tools",
            ),
            (
                json!({"type": "mcp", "server_label": "t", "allowed_tools": [3]}),
                true,
                "tools[0].allowed_tools",
            ),
            (
                json!({"type": "mcp", "server_label": "t", "require_approval": "sometimes"}),
                true,
                "tools[0].require_approval",
            ),
            (
                json!({"type": "mcp", "server_label": "t"}),
                false,
                "tools[0].require_approval",
            ),
            (
                json!({"type": "mcp", "server_label": "t", "require_approval": {"always": {"tool_names": ["a"]}, "never": {"tool_names": ["a"]}}}),
                true,
                "tools[0].require_approval",
            ),
        ] {
            assert_eq!(
                param_of(tool.clone(), approvals).as_deref(),
                Some(param),
                "{tool}"
            );
        }
        assert_eq!(
            param_of(
                json!({"type": "mcp", "server_label": "t", "require_approval": "never"}),
                false
            ),
            None
        );
    }

    #[test]
    fn a_call_item_keeps_its_outcome() {
        let mut item = json!({"type": "mcp_call", "id": "mcp_1", "name": "f", "arguments": "{}"});
        for outcome in [
            HostedOutcome::Output("12:00".into()),
            HostedOutcome::Failed {
                code: CALL_FAILED,
                message: "server gone".into(),
            },
            HostedOutcome::ToolError {
                content: json!([{"type": "text", "text": "no such zone"}]),
                text: "no such zone".into(),
            },
        ] {
            complete_call(&mut item, &outcome);
            assert_eq!(
                item["status"],
                if outcome.is_error() {
                    "failed"
                } else {
                    "completed"
                }
            );
            assert_eq!(outcome_of(&item), outcome);
        }
        assert_eq!(outcome_of(&item).model_text(), "Error: no such zone");
    }

    #[test]
    fn rounds_read_back_as_calls_and_results() {
        let rounds = json!([
            {"reasoning_content": "Look it up.", "content": null, "calls": [
                {"id": "call_1", "server_label": "time", "name": "now",
                 "arguments": "{\"tz\": \"UTC\"}", "output": "12:00", "error": null},
                {"id": "call_2", "server_label": "time", "name": "now", "arguments": "{}",
                 "output": null, "error": {"type": "mcp_protocol_error", "code": -32602, "message": "tz is required"}},
            ]},
        ]);
        let messages = rounds_to_messages(&rounds, "messages[2].mcp_rounds").expect("read");
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[0].role, Role::Assistant);
        assert_eq!(
            messages[0].reasoning_content.as_deref(),
            Some("Look it up.")
        );
        assert_eq!(messages[0].tool_calls[0].function.arguments["tz"], "UTC");
        assert_eq!(messages[1].tool_call_id.as_deref(), Some("call_1"));
        let text = |m: &Message| m.content.as_ref().map(Content::text);
        assert_eq!(text(&messages[1]).as_deref(), Some("12:00"));
        assert_eq!(text(&messages[2]).as_deref(), Some("Error: tz is required"));

        let bad = json!([{"calls": [{"id": "c", "name": "now", "arguments": "{"}]}]);
        let e = rounds_to_messages(&bad, "m.mcp_rounds")
            .err()
            .map(|e| e.body());
        assert_eq!(
            e.as_ref().and_then(|b| b["error"]["param"].as_str()),
            Some("m.mcp_rounds[0].calls[0].arguments")
        );
    }
}
