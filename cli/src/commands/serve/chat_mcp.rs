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
use kestrel::reply::ReplyEnd;
use serde_json::{Value, json};
use tracing::Instrument;

use super::Server;
use super::answer::{Answer, collect, completion, message_of};
use super::error::ApiError;
use super::mcp::{arguments_of, assistant, complete_call, name_of, tool_message};
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
            Some(t) => t.then(&end),
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
