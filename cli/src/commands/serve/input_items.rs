//! A Responses request's `input` items as the chat Kestrel renders.
//!
//! Messages go by role (`developer` is `system`). An assistant's `reasoning`, `message`,
//! `function_call`, `mcp_call` and `mcp_approval_request` items in a row become one assistant
//! message (reasoning, text, calls), as the model wrote them; a turn's calls come last, so
//! reasoning or text after a call starts the next assistant message. `function_call_output`
//! items become tool messages, and so does the outcome an `mcp_call` item carries (right after
//! its assistant message). An `mcp_approval_response` answers an earlier request: its tool
//! message is left empty for the server to fill once it has run (or declined) the call, unless a
//! later `mcp_call` item with that `approval_request_id` already carries the outcome.
//! `mcp_list_tools` items only say which servers' tools the client has seen.

use kestrel::prompts::messages::{Content, FunctionCall, Message, Role, ToolCall};
use serde_json::{Value, json};

use super::error::ApiError;
use super::mcp::outcome_of;
use super::signature::Signer;

/// An approval (or refusal) of an `mcp_approval_request` that the server has yet to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ApprovalAnswer {
    /// Where it was (`input[i]`).
    pub(super) param: String,
    /// The request it answers (the id of its call in the conversation).
    pub(super) request_id: String,
    /// Whether the call may run.
    pub(super) approve: bool,
    /// The client's reason, if any.
    pub(super) reason: Option<String>,
}

/// What the items add besides messages.
#[derive(Debug, Default)]
pub(super) struct ItemNotes {
    /// Approvals to act on, in order.
    pub(super) approvals: Vec<ApprovalAnswer>,
    /// Servers whose `mcp_list_tools` the client has.
    pub(super) listed: Vec<String>,
}

/// The assistant message being gathered from consecutive output items.
#[derive(Default)]
struct Assistant {
    reasoning: Option<String>,
    text: String,
    calls: Vec<ToolCall>,
    open: bool,
    /// Outcomes of `mcp_call` items, as tool messages to follow the message.
    results: Vec<Message>,
    /// The round the last `mcp_call` item's id names.
    mcp_round: Option<String>,
}

impl Assistant {
    fn flush(&mut self, out: &mut Vec<Message>) {
        if !self.open {
            return;
        }
        let done = std::mem::take(self);
        out.push(Message {
            content: (!done.text.is_empty() || done.calls.is_empty())
                .then_some(Content::Text(done.text)),
            reasoning_content: done.reasoning,
            tool_calls: done.calls,
            ..Message::text(Role::Assistant, "")
        });
        out.extend(done.results);
    }

    /// Opens for more of the model's text: a new message if this one already made calls.
    fn open_for_text(&mut self, out: &mut Vec<Message>) {
        if !self.calls.is_empty() {
            self.flush(out);
        }
        self.open = true;
    }

    fn call(&mut self, id: &str, name: &str, arguments: Value) {
        self.open = true;
        self.calls.push(ToolCall {
            id: Some(id.to_string()),
            kind: "function".into(),
            function: FunctionCall {
                name: name.to_string(),
                arguments,
            },
        });
    }
}

/// Appends `items` to `out` as messages.
pub(super) fn items_to_messages(
    items: &[Value],
    signer: &Signer,
    out: &mut Vec<Message>,
) -> Result<ItemNotes, ApiError> {
    let mut notes = ItemNotes::default();
    let mut assistant = Assistant::default();
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        match kind {
            "message" => {
                let role = item.get("role").and_then(Value::as_str).unwrap_or("");
                let text = message_text(item.get("content"), &at)?;
                match role {
                    "assistant" => {
                        assistant.open_for_text(out);
                        assistant.text.push_str(&text);
                    }
                    "user" | "system" | "developer" => {
                        assistant.flush(out);
                        let role = if role == "user" {
                            Role::User
                        } else {
                            Role::System
                        };
                        out.push(Message::text(role, &text));
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            &format!("{at}.role"),
                            format!("`{at}.role` must be user, assistant, system or developer"),
                        ));
                    }
                }
            }
            "reasoning" => {
                let text = reasoning_text(item, signer, &at)?;
                assistant.open_for_text(out);
                assistant.reasoning.get_or_insert_default().push_str(&text);
            }
            "function_call" => {
                let arguments = json_arguments(item, &at)?;
                let id = string(item, "call_id", &at)?;
                assistant.call(id, string(item, "name", &at)?, arguments);
            }
            "mcp_call" => {
                let id = string(item, "id", &at)?;
                let outcome = outcome_of(item);
                if outcome.is_repeat() {
                    // Refused, never read by the model.
                    continue;
                }
                // Calls of another round are another message.
                let round = id.rsplit_once('_').map(|(round, _)| round.to_string());
                if assistant.mcp_round.is_some() && assistant.mcp_round != round {
                    assistant.flush(out);
                }
                let text = outcome.model_text();
                let approved = item.get("approval_request_id").and_then(Value::as_str);
                // The call an approval let run: its outcome fills the approval's tool message.
                if let Some(request) = approved
                    && let Some(at) = notes.approvals.iter().position(|a| a.request_id == request)
                {
                    notes.approvals.remove(at);
                    if let Some(message) = out
                        .iter_mut()
                        .rev()
                        .find(|m| m.tool_call_id.as_deref() == Some(request))
                    {
                        message.content = Some(Content::Text(text));
                    }
                    continue;
                }
                let arguments = json_arguments(item, &at)?;
                assistant.call(id, string(item, "name", &at)?, arguments);
                assistant.mcp_round = round;
                assistant.results.push(Message {
                    tool_call_id: Some(id.to_string()),
                    ..Message::text(Role::Tool, &text)
                });
            }
            "mcp_approval_request" => {
                let arguments = json_arguments(item, &at)?;
                let id = string(item, "id", &at)?;
                assistant.call(id, string(item, "name", &at)?, arguments);
            }
            "mcp_approval_response" => {
                assistant.flush(out);
                let request_id = string(item, "approval_request_id", &at)?.to_string();
                let Some(approve) = item.get("approve").and_then(Value::as_bool) else {
                    return Err(ApiError::invalid(
                        &format!("{at}.approve"),
                        format!("`{at}.approve` must be true or false"),
                    ));
                };
                out.push(Message {
                    tool_call_id: Some(request_id.clone()),
                    ..Message::text(Role::Tool, "")
                });
                notes.approvals.push(ApprovalAnswer {
                    param: at.clone(),
                    request_id,
                    approve,
                    reason: item
                        .get("reason")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                });
            }
            "mcp_list_tools" => {
                notes
                    .listed
                    .push(string(item, "server_label", &at)?.to_string());
            }
            "function_call_output" => {
                assistant.flush(out);
                let output = match item.get("output") {
                    Some(Value::String(text)) => text.clone(),
                    Some(parts @ Value::Array(_)) => {
                        message_text(Some(parts), &format!("{at}.output"))?
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            &format!("{at}.output"),
                            format!("`{at}.output` must be a string or text parts"),
                        ));
                    }
                };
                out.push(Message {
                    tool_call_id: Some(string(item, "call_id", &at)?.to_string()),
                    ..Message::text(Role::Tool, &output)
                });
            }
            other => {
                return Err(ApiError::invalid(
                    &format!("{at}.type"),
                    format!("`{at}`: items of type `{other}` are not supported"),
                ));
            }
        }
    }
    assistant.flush(out);
    Ok(notes)
}

/// A call item's `arguments`: a JSON text.
fn json_arguments(item: &Value, at: &str) -> Result<Value, ApiError> {
    let arguments = string(item, "arguments", at)?;
    serde_json::from_str(arguments).map_err(|e| {
        ApiError::invalid(
            &format!("{at}.arguments"),
            format!("`{at}.arguments` is not JSON: {e}"),
        )
    })
}

/// A message's text: a string, or text parts (`input_text`, `output_text`).
fn message_text(content: Option<&Value>, at: &str) -> Result<String, ApiError> {
    match content {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, part)| {
                let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
                match (kind, part.get("text")) {
                    ("input_text" | "output_text" | "text", Some(Value::String(t))) => Ok(t.clone()),
                    _ => Err(ApiError::invalid(
                        &format!("{at}.content[{j}]"),
                        format!("`{at}.content[{j}]`: parts of type `{kind}` are not supported (only text)"),
                    )),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|texts| texts.concat()),
        _ => Err(ApiError::invalid(
            &format!("{at}.content"),
            format!("`{at}.content` must be a string or an array of text parts"),
        )),
    }
}

/// A reasoning item's text: unsealed from `encrypted_content`, else its `reasoning_text` parts.
fn reasoning_text(item: &Value, signer: &Signer, at: &str) -> Result<String, ApiError> {
    if let Some(sealed) = item.get("encrypted_content").and_then(Value::as_str) {
        return signer.open(sealed).ok_or_else(|| {
            ApiError::invalid(
                &format!("{at}.encrypted_content"),
                format!("`{at}.encrypted_content` was changed or was not made by this server"),
            )
        });
    }
    let parts = item
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    Ok(parts
        .filter(|p| p.get("type") == Some(&json!("reasoning_text")))
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect())
}

fn string<'a>(item: &'a Value, key: &str, at: &str) -> Result<&'a str, ApiError> {
    item.get(key).and_then(Value::as_str).ok_or_else(|| {
        ApiError::invalid(
            &format!("{at}.{key}"),
            format!("`{at}.{key}` must be a string"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(items: Value) -> Result<(Vec<Message>, ItemNotes), String> {
        let signer = Signer::with_key([3; 32]);
        let items = items.as_array().cloned().unwrap_or_default();
        let mut out = Vec::new();
        items_to_messages(&items, &signer, &mut out)
            .map(|notes| (out, notes))
            .map_err(|e| {
                e.body()["error"]["param"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
    }

    fn text(m: &Message) -> String {
        m.content.as_ref().map(Content::text).unwrap_or_default()
    }

    #[test]
    fn mcp_items_read_back_as_the_rounds_the_model_wrote() {
        let (messages, notes) = read(json!([
            {"role": "user", "content": "Time in Tokyo?"},
            {"type": "mcp_list_tools", "id": "l", "server_label": "time", "tools": []},
            {"type": "reasoning", "id": "r1", "summary": [], "content": [{"type": "reasoning_text", "text": "Ask."}]},
            {"type": "mcp_call", "id": "m1", "server_label": "time", "name": "now",
             "arguments": "{\"tz\": \"Asia/Tokyo\"}", "output": "15:00", "error": null},
            {"type": "mcp_call", "id": "m2", "server_label": "time", "name": "now",
             "arguments": "{\"tz\": \"Mars\"}", "output": null,
             "error": {"type": "mcp_tool_execution_error", "content": [{"type": "text", "text": "no such zone"}]}},
            {"type": "reasoning", "id": "r2", "summary": [], "content": [{"type": "reasoning_text", "text": "Done."}]},
            {"type": "message", "role": "assistant", "content": "It is 15:00."},
        ]))
        .expect("accepted");
        assert_eq!(notes.listed, ["time"]);
        let roles: Vec<Role> = messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::User,
                Role::Assistant,
                Role::Tool,
                Role::Tool,
                Role::Assistant
            ]
        );
        let calls = &messages[1].tool_calls;
        assert_eq!(calls.len(), 2, "both calls of the round in one message");
        assert_eq!(calls[0].function.arguments["tz"], "Asia/Tokyo");
        assert_eq!(messages[1].reasoning_content.as_deref(), Some("Ask."));
        assert_eq!(
            (
                messages[2].tool_call_id.as_deref(),
                text(&messages[2]).as_str()
            ),
            (Some("m1"), "15:00")
        );
        assert_eq!(text(&messages[3]), "Error: no such zone");
        assert_eq!(messages[4].reasoning_content.as_deref(), Some("Done."));
        assert_eq!(text(&messages[4]), "It is 15:00.");
    }

    #[test]
    fn an_approval_leaves_its_result_to_the_server_unless_the_call_item_carries_it() {
        let request = json!({"type": "mcp_approval_request", "id": "a1", "server_label": "time",
                             "name": "now", "arguments": "{}"});
        let answer = json!({"type": "mcp_approval_response", "approval_request_id": "a1",
                            "approve": true});
        let (messages, notes) =
            read(json!([{"role": "user", "content": "Time?"}, request, answer])).expect("accepted");
        assert_eq!(notes.approvals.len(), 1);
        assert_eq!(notes.approvals[0].request_id, "a1");
        assert_eq!(messages[1].tool_calls[0].id.as_deref(), Some("a1"));
        assert_eq!(messages[2].tool_call_id.as_deref(), Some("a1"));
        assert_eq!(text(&messages[2]), "", "filled once the server runs it");

        let ran = json!({"type": "mcp_call", "id": "m9", "server_label": "time", "name": "now",
                         "arguments": "{}", "output": "15:00", "approval_request_id": "a1"});
        let (messages, notes) =
            read(json!([{"role": "user", "content": "Time?"}, request, answer, ran]))
                .expect("accepted");
        assert!(
            notes.approvals.is_empty(),
            "already run: {:?}",
            notes.approvals
        );
        assert_eq!(messages.len(), 3);
        assert_eq!(text(&messages[2]), "15:00");

        for (items, param) in [
            (
                json!([{"type": "mcp_approval_response", "approval_request_id": "a1"}]),
                "input[0].approve",
            ),
            (
                json!([{"type": "mcp_call", "id": "m", "name": "now", "arguments": "{"}]),
                "input[0].arguments",
            ),
            (
                json!([{"type": "mcp_list_tools", "id": "l"}]),
                "input[0].server_label",
            ),
        ] {
            assert_eq!(read(items.clone()).err().as_deref(), Some(param), "{items}");
        }
    }
}
