//! Chat Completions with `mcp` tools: the server runs Kestrel's loop for calls to those tools,
//! and the calls it ran come back inside the assistant message, so that a client resending the
//! history resends them too.
//!
//! Chat Completions has no shape for this, so Kestrel's is the smallest that keeps the
//! conversation exact: the message carries `mcp_rounds`, one entry per round of the model's work
//! that ended in calls the server ran, in order (`reasoning_content`, `content`, and `calls`:
//! `id`, `server_label`, `name`, `arguments`, `output`, `error`, as in the Responses API's
//! `mcp_call` items), and its own `content`, `reasoning_content` and `tool_calls` are the last
//! round's. Sent back, such a message is read as those rounds (each an assistant message and
//! its tool results) followed by the message itself: the prompt the model saw, so the cached
//! prefix holds. A call repeating an earlier one is refused and the model asked for its answer,
//! as in the agent's loop; client function tools still come back to the client.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use kestrel::agent::final_request;
use kestrel::hosted::{HostedOutcome, HostedTools};
use kestrel::prompts::constrain::{ToolChoice, ToolChoiceMode};
use kestrel::prompts::messages::{Content, FunctionCall, Message, Role, ToolCall};
use kestrel::reply::ReplyEnd;
use serde_json::{Value, json};
use tracing::Instrument;

use super::Server;
use super::chat::{Answer, collect, completion, message_of};
use super::error::ApiError;
use super::mcp::{complete_call, outcome_of};
use super::metrics::Outcome;
use super::request::Parsed;

/// Rounds after which the model must answer without the server's tools.
const MAX_ROUNDS: usize = 8;

/// Answers a request with `mcp` tools (not streamed).
pub(super) async fn answer(server: &Server, parsed: Parsed, hosted: Arc<HostedTools>) -> Response {
    let metrics = server.metrics.clone();
    match run(server, parsed, &hosted).await {
        Ok(body) => {
            metrics.ended(Outcome::Ok);
            axum::Json(body).into_response()
        }
        Err(e) => {
            metrics.ended(if e.is_client_error() {
                Outcome::Invalid
            } else {
                Outcome::Failed
            });
            e.into_response()
        }
    }
}

async fn run(server: &Server, parsed: Parsed, hosted: &HostedTools) -> Result<Value, ApiError> {
    let mut request = parsed.reply.clone();
    let mut rounds: Vec<Value> = Vec::new();
    let mut ran: Vec<(String, Value)> = Vec::new();
    let mut total: Option<ReplyEnd> = None;
    let mut id = None;
    let mut calls_so_far = 0;
    for round in 0.. {
        let turn = tracing::info_span!("turn", round);
        let mut reply = turn.in_scope(|| server.replier.start(request.clone()))?;
        let mut answer = Answer::new(server, parsed.parallel_tool_calls, parsed.stop.clone());
        if let Some(id) = &id {
            answer.id.clone_from(id);
        }
        answer.earlier_calls = calls_so_far;
        id = Some(answer.id.clone());
        let end = collect(&mut reply, &mut answer).await?;
        server.metrics.tokens(&end);
        let sum = match total.take() {
            None => end.clone(),
            Some(t) => ReplyEnd {
                prompt_tokens: t.prompt_tokens + end.prompt_tokens,
                cached_tokens: t.cached_tokens + end.cached_tokens,
                completion_tokens: t.completion_tokens + end.completion_tokens,
                reasoning_tokens: t.reasoning_tokens + end.reasoning_tokens,
                tool_calls: t.tool_calls + end.tool_calls,
                ..end.clone()
            },
        };
        let calls = answer.calls().to_vec();
        calls_so_far += calls.len();
        let (mine, theirs): (Vec<&Value>, Vec<&Value>) = calls
            .iter()
            .partition(|c| name_of(c).is_some_and(|n| hosted.find(n).is_some()));
        let left = (request.max_tokens).map(|m| m.saturating_sub(end.completion_tokens));
        if mine.is_empty() {
            let mut message = message_of(&answer);
            if !rounds.is_empty() {
                message["mcp_rounds"] = json!(rounds);
            }
            return Ok(completion(&answer, message, &sum));
        }
        total = Some(sum);
        // The server's calls run now, the client's (if any) go back with the round.
        let mut items = Vec::new();
        let mut looping = false;
        let mut outcomes = Vec::new();
        for call in &mine {
            let name = name_of(call).unwrap_or_default();
            let arguments = arguments_of(call);
            let key = (name.to_string(), arguments.clone());
            let repeat = ran.contains(&key);
            looping |= repeat;
            let outcome = if repeat {
                HostedOutcome::repeat()
            } else {
                ran.push(key);
                let call_id = call["id"].as_str().unwrap_or_default();
                let run = hosted.run(call_id, name, &arguments);
                run.instrument(turn.clone()).await
            };
            let label = hosted.find(name).map(|t| t.tool.server.clone());
            let mut item = json!({"id": call["id"], "server_label": label, "name": name,
                "arguments": call.pointer("/function/arguments")});
            complete_call(&mut item, &outcome);
            item.as_object_mut().map(|o| o.remove("status"));
            items.push(item);
            outcomes.push((outcome, repeat));
        }
        let reasoning = answer.reasoning();
        rounds.push(json!({
            "reasoning_content": (!reasoning.is_empty()).then_some(reasoning),
            "content": (!answer.content.is_empty()).then_some(&answer.content),
            "calls": items,
        }));
        if !theirs.is_empty() || left == Some(0) {
            let mut message = message_of(&answer);
            message["content"] = Value::Null;
            message["tool_calls"] = json!(theirs);
            message.as_object_mut().map(|m| {
                m.remove("reasoning_content");
                m.remove("reasoning")
            });
            message["mcp_rounds"] = json!(rounds);
            let total = total.take().unwrap_or(end);
            return Ok(completion(&answer, message, &total));
        }
        // What the model reads next: the round and its outcomes, less refused repeats.
        let kept: Vec<(&Value, &HostedOutcome)> = (mine.iter().zip(&outcomes))
            .filter(|(_, (_, repeat))| !repeat)
            .map(|(call, (outcome, _))| (*call, outcome))
            .collect();
        if !kept.is_empty() || !answer.content.is_empty() {
            request.chat.messages.push(assistant(
                &answer.content,
                reasoning,
                kept.iter().map(|(c, _)| *c),
            ));
        }
        for (call, outcome) in kept {
            request
                .chat
                .messages
                .push(tool_message(call["id"].as_str(), outcome));
        }
        request.max_tokens = left;
        request.tool_choice = if looping || round + 1 >= MAX_ROUNDS {
            let ask = final_request(&request.chat.messages);
            request.chat.messages.push(ask);
            ToolChoice::Mode(ToolChoiceMode::None)
        } else {
            ToolChoice::Unset
        };
    }
    unreachable!("the loop returns")
}

fn name_of(call: &Value) -> Option<&str> {
    call.pointer("/function/name").and_then(Value::as_str)
}

fn arguments_of(call: &Value) -> Value {
    match call.pointer("/function/arguments") {
        Some(Value::String(text)) => serde_json::from_str(text).unwrap_or(json!({})),
        Some(other) => other.clone(),
        None => json!({}),
    }
}

fn assistant<'a>(
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

fn tool_message(id: Option<&str>, outcome: &HostedOutcome) -> Message {
    Message {
        tool_call_id: id.map(str::to_string),
        ..Message::text(Role::Tool, &outcome.model_text())
    }
}

/// An assistant message's `mcp_rounds` as the messages the model saw.
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
