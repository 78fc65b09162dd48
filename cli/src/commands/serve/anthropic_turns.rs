//! An Anthropic conversation's turns as the chat Kestrel renders: a user turn's `tool_result`
//! blocks become tool messages (before its text, as the API requires them first), an assistant
//! turn's `thinking`, `text` and `tool_use` blocks one assistant message with reasoning, content
//! and tool calls. A `thinking` block comes back into the prompt only with this server's
//! signature on it.

use kestrel::prompts::messages::{Content, FunctionCall, Message, Role, ToolCall};
use serde_json::{Value, json};

use super::error::ApiError;
use super::signature::Signer;

/// The text of a `{"type": "text", "text": ...}` block.
pub(super) fn text_of(block: &Value, param: &str) -> Result<String, ApiError> {
    match (block.get("type").and_then(Value::as_str), block.get("text")) {
        (Some("text"), Some(Value::String(text))) => Ok(text.clone()),
        (Some(kind), _) if kind != "text" => Err(ApiError::invalid(
            param,
            format!("`{param}`: blocks of type `{kind}` are not supported here (only `text`)"),
        )),
        _ => Err(ApiError::invalid(
            param,
            format!("`{param}` must be a text block with a `text` string"),
        )),
    }
}

/// One message of `messages`, appended to `out` as one or more chat messages.
pub(super) fn turn(
    i: usize,
    item: &Value,
    signer: &Signer,
    out: &mut Vec<Message>,
) -> Result<(), ApiError> {
    let param = format!("messages[{i}]");
    let role = match item.get("role").and_then(Value::as_str) {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        _ => {
            return Err(ApiError::invalid(
                &param,
                format!("`{param}.role` must be \"user\" or \"assistant\""),
            ));
        }
    };
    let blocks = match item.get("content") {
        Some(Value::String(text)) => {
            out.push(Message::text(role, text));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(ApiError::invalid(
                &param,
                format!("`{param}.content` must be a string or an array of blocks"),
            ));
        }
    };
    let mut text = String::new();
    let mut reasoning: Option<String> = None;
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("{param}.content[{j}]");
        let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
        match (role, kind) {
            (_, "text") => text.push_str(&text_of(block, &at)?),
            (Role::User, "tool_result") => out.push(tool_result(block, &at)?),
            (Role::Assistant, "thinking") => {
                let thought = string(block, "thinking", &at)?;
                let signature = string(block, "signature", &at)?;
                if !signer.verify(thought, signature) {
                    return Err(ApiError::invalid(
                        &format!("{at}.signature"),
                        format!(
                            "`{at}.signature` does not match its thinking: the block was changed \
                             or was not made by this server"
                        ),
                    ));
                }
                reasoning.get_or_insert_default().push_str(thought);
            }
            (Role::Assistant, "tool_use") => {
                let id = string(block, "id", &at)?;
                let name = string(block, "name", &at)?;
                let input = match block.get("input") {
                    Some(input @ Value::Object(_)) => input.clone(),
                    _ => {
                        return Err(ApiError::invalid(
                            &format!("{at}.input"),
                            format!("`{at}.input` must be an object"),
                        ));
                    }
                };
                calls.push(ToolCall {
                    id: Some(id.to_string()),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: name.to_string(),
                        arguments: input,
                    },
                });
            }
            _ => {
                return Err(ApiError::invalid(
                    &at,
                    format!(
                        "`{at}`: {} blocks of type `{kind}` are not supported",
                        if role == Role::User {
                            "user"
                        } else {
                            "assistant"
                        }
                    ),
                ));
            }
        }
    }
    if role == Role::User && text.is_empty() && blocks.iter().any(is_tool_result) {
        return Ok(());
    }
    out.push(Message {
        content: (!text.is_empty() || calls.is_empty()).then_some(Content::Text(text)),
        reasoning_content: reasoning,
        tool_calls: calls,
        ..Message::text(role, "")
    });
    Ok(())
}

fn is_tool_result(block: &Value) -> bool {
    block.get("type") == Some(&json!("tool_result"))
}

/// A `tool_result` block as a tool message; an error result says so in its text.
fn tool_result(block: &Value, at: &str) -> Result<Message, ApiError> {
    let id = string(block, "tool_use_id", at)?;
    let text = match block.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(k, p)| text_of(p, &format!("{at}.content[{k}]")))
            .collect::<Result<Vec<_>, _>>()?
            .join("\n"),
        Some(_) => {
            return Err(ApiError::invalid(
                &format!("{at}.content"),
                format!("`{at}.content` must be a string or an array of text blocks"),
            ));
        }
    };
    let failed = match block.get("is_error") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid(
                &format!("{at}.is_error"),
                format!("`{at}.is_error` must be true or false"),
            ));
        }
    };
    Ok(Message {
        tool_call_id: Some(id.to_string()),
        ..Message::text(
            Role::Tool,
            &if failed {
                format!("Error: {text}")
            } else {
                text
            },
        )
    })
}

fn string<'a>(block: &'a Value, key: &str, at: &str) -> Result<&'a str, ApiError> {
    block.get(key).and_then(Value::as_str).ok_or_else(|| {
        ApiError::invalid(
            &format!("{at}.{key}"),
            format!("`{at}.{key}` must be a string"),
        )
    })
}
