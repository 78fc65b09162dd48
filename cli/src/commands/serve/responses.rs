//! `POST /v1/responses` (OpenAI's Responses API), whole or streamed; `GET` and `DELETE
//! /v1/responses/{id}` for stored responses.
//!
//! The request is read in `responses_input.rs`. The reply's events go through the same [`Answer`]
//! as Chat Completions and become output items in the model's order: `reasoning` (its text in
//! `reasoning_text` content, sealed into `encrypted_content` when asked), `message` (one
//! `output_text` part) and `function_call`. A stream sends the event sequence clients read:
//! `response.created`, `response.in_progress`, per item `response.output_item.added`, its
//! deltas (`response.reasoning_text.delta`, `response.content_part.added` then
//! `response.output_text.delta`, `response.function_call_arguments.delta`), their `.done`
//! events and `response.output_item.done`, then `response.completed` (or
//! `response.incomplete` at the token limit, `response.failed` if the engine fails), every event
//! numbered by `sequence_number`. Unless `store: false`, the response and its conversation are
//! kept for `previous_response_id`.
//!
//! With `mcp` tools (servers of `--config`), a response is Kestrel's loop: the tools of servers
//! the client has not seen listed come first as `mcp_list_tools` items, then each round of the
//! model's work is one reply; the calls it makes to those tools run here (`mcp_call` items,
//! in progress until their outcome is in) and the next round reads their outcomes. The loop ends
//! when a round calls none of them, calls a client's function (which goes back to the client),
//! or asks for an approval (`mcp_approval_request`; an `mcp_approval_response` in the next
//! request runs or declines it first). A call repeating one already made is refused and, as
//! after the round limit, the model is asked for its answer without tools, as the agent does.
//! Each round is a `turn` span, parent of its generation and tool calls.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream;
use kestrel::agent::final_request;
use kestrel::backend::FinishReason;
use kestrel::hosted::{HostedOutcome, HostedTools};
use kestrel::prompts::constrain::{ToolChoice, ToolChoiceMode};
use kestrel::prompts::messages::{Content, Message, Role};
use kestrel::reply::{Reply, ReplyEnd, ReplyEvent};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::Server;
use super::answer::Answer;
use super::error::ApiError;
use super::mcp;
use super::metrics::{Outcome, Slot};
use super::response_items::Items;
use super::responses_input::{Parsed, parse};
use super::spawn_in_span;

pub(super) async fn create(State(server): State<Arc<Server>>, body: Bytes) -> Response {
    let metrics = server.metrics.clone();
    let refuse = |e: ApiError| {
        metrics.ended(if e.is_client_error() {
            Outcome::Invalid
        } else {
            Outcome::Failed
        });
        e.into_response()
    };
    let mut parsed = match parse(&body, &server.signer, &server.responses) {
        Ok(p) => p,
        Err(e) => return refuse(e),
    };
    let hosted = match mcp::hosted(&server, &parsed.mcp, &parsed.reply.chat.tools).await {
        Ok(h) => h,
        Err(e) => return refuse(e),
    };
    if let Some(hosted) = &hosted {
        parsed.reply.chat.tools.extend(hosted.functions());
    }
    let Some(slot) = metrics.admit() else {
        return ApiError::overloaded(metrics.capacity()).into_response();
    };
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let mut answer = Answer::new(&server, parsed.parallel_tool_calls, Vec::new());
    answer.id = format!(
        "resp_{:x}{:08x}",
        server.created,
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    answer.stream_arguments = parsed.stream;
    let items = Items::new(
        &answer.id,
        server.signer.clone(),
        parsed.sealed_reasoning,
        hosted.clone(),
    );
    let mut prologue = Prologue {
        items,
        hosted,
        events: Vec::new(),
        turn: tracing::info_span!("turn", round = 0),
    };
    if let Err(e) = prologue.run(&mut parsed).await {
        return refuse(e);
    }
    let reply = match prologue
        .turn
        .in_scope(|| server.replier.start(parsed.reply.clone()))
    {
        Ok(r) => r,
        Err(e) => return refuse(e.into()),
    };
    let mut run = Run {
        server: server.clone(),
        reply,
        answer,
        conversation: parsed.reply.chat.messages.clone(),
        items: prologue.items,
        hosted: prologue.hosted,
        opening: prologue.events,
        turn: prologue.turn,
        added: Vec::new(),
        total: None,
        round: 0,
        looping: false,
        left_out: Vec::new(),
        parsed,
        slot,
    };
    if run.parsed.stream {
        stream_response(run)
    } else {
        match run.finish_whole().await {
            Ok(response) => axum::Json(response).into_response(),
            Err(e) => e.into_response(),
        }
    }
}

/// What a response does before the model starts: lists the tools of servers the client has not
/// seen listed, and acts on the client's approvals (runs or declines each call; its tool message
/// gets the outcome).
struct Prologue {
    items: Items,
    hosted: Option<Arc<HostedTools>>,
    events: Vec<Value>,
    turn: tracing::Span,
}

impl Prologue {
    async fn run(&mut self, parsed: &mut Parsed) -> Result<(), ApiError> {
        if let Some(hosted) = self.hosted.clone() {
            for entry in &parsed.mcp {
                let label = &entry.selection.server;
                if !parsed.notes.listed.contains(label) {
                    let id = self.items.item_id("mcpl");
                    let item = mcp::list_tools_item(&id, label, &hosted);
                    self.events.extend(self.items.push_done(item));
                }
            }
        }
        for approval in std::mem::take(&mut parsed.notes.approvals) {
            let call = parsed
                .history
                .iter()
                .flat_map(|m| &m.tool_calls)
                .find(|c| c.id.as_deref() == Some(approval.request_id.as_str()))
                .cloned();
            let param = format!("{}.approval_request_id", approval.param);
            let Some(call) = call else {
                return Err(ApiError::invalid(
                    &param,
                    format!(
                        "`{param}`: no mcp_approval_request `{}` in the conversation",
                        approval.request_id
                    ),
                ));
            };
            let name = &call.function.name;
            let tool = self.hosted.as_ref().and_then(|h| h.find(name));
            let (Some(hosted), Some(tool)) = (&self.hosted, tool) else {
                return Err(ApiError::invalid(
                    &param,
                    format!(
                        "`{param}`: the approved call is to `{name}`, which no `mcp` entry in `tools` offers"
                    ),
                ));
            };
            let arguments = &call.function.arguments;
            self.items.ran.push((name.clone(), arguments.clone()));
            let outcome = if approval.approve {
                let run = hosted.run(&approval.request_id, name, arguments);
                let outcome = run.instrument(self.turn.clone()).await;
                let id = self.items.item_id("mcp");
                let mut item = json!({"type": "mcp_call", "id": id,
                    "server_label": tool.tool.server, "name": name,
                    "arguments": arguments.to_string(),
                    "approval_request_id": approval.request_id});
                mcp::complete_call(&mut item, &outcome);
                self.events.extend(self.items.push_done(item));
                outcome
            } else {
                HostedOutcome::declined(approval.reason.as_deref())
            };
            let text = outcome.model_text();
            for messages in [&mut parsed.history, &mut parsed.reply.chat.messages] {
                if let Some(m) = messages
                    .iter_mut()
                    .rev()
                    .find(|m| m.tool_call_id.as_deref() == Some(approval.request_id.as_str()))
                {
                    m.content = Some(Content::Text(text.clone()));
                }
            }
        }
        Ok(())
    }
}

pub(super) async fn retrieve(
    State(server): State<Arc<Server>>,
    Path(id): Path<String>,
) -> Response {
    match server.responses.response(&id) {
        Some(response) => axum::Json(response).into_response(),
        None => ApiError::not_found(&format!("no stored response `{id}`")).into_response(),
    }
}

pub(super) async fn delete(State(server): State<Arc<Server>>, Path(id): Path<String>) -> Response {
    if server.responses.delete(&id) {
        axum::Json(json!({"id": id, "object": "response.deleted", "deleted": true})).into_response()
    } else {
        ApiError::not_found(&format!("no stored response `{id}`")).into_response()
    }
}

/// Rounds of the model's work after which it must answer without the server's tools.
const MAX_HOSTED_ROUNDS: usize = 8;

/// One response being produced: one or more rounds, each a reply; a round whose calls the
/// server ran is followed by the next, which reads their outcomes.
struct Run {
    server: Arc<Server>,
    reply: Reply,
    answer: Answer,
    items: Items,
    parsed: Parsed,
    slot: Slot,
    hosted: Option<Arc<HostedTools>>,
    /// Events for items made before the first round (sent once the stream opens).
    opening: Vec<Value>,
    /// The conversation the next round renders.
    conversation: Vec<Message>,
    /// What this response adds to the conversation (for the store).
    added: Vec<Message>,
    /// The rounds' token counts so far.
    total: Option<ReplyEnd>,
    round: usize,
    /// A call repeated one made before: the next round answers without tools.
    looping: bool,
    /// The ids of repeated calls, left out of the next rounds' prompts.
    left_out: Vec<String>,
    /// The current round's span (its generation and tool calls are its children).
    turn: tracing::Span,
}

impl Run {
    /// The response object (`status` and `output` as given).
    fn object(&self, status: &str, end: Option<&ReplyEnd>) -> Value {
        let echo =
            |key: &str, default: Value| self.parsed.echo.get(key).cloned().unwrap_or(default);
        let incomplete = (status == "incomplete").then(|| json!({"reason": "max_output_tokens"}));
        json!({
            "id": self.answer.id,
            "object": "response",
            "created_at": self.answer.created,
            "status": status,
            "error": null,
            "incomplete_details": incomplete,
            "instructions": echo("instructions", Value::Null),
            "max_output_tokens": echo("max_output_tokens", Value::Null),
            "model": self.answer.model,
            "output": if status == "in_progress" { json!([]) } else { json!(self.items.output) },
            "parallel_tool_calls": self.parsed.parallel_tool_calls,
            "previous_response_id": echo("previous_response_id", Value::Null),
            "reasoning": echo("reasoning", json!({"effort": null, "summary": null})),
            "store": self.parsed.store,
            "temperature": self.parsed.reply.sampling.temperature,
            "text": echo("text", json!({"format": {"type": "text"}})),
            "tool_choice": echo("tool_choice", json!("auto")),
            "tools": echo("tools", json!([])),
            "top_p": self.parsed.reply.sampling.top_p,
            "truncation": "disabled",
            "usage": end.map(usage),
            "user": echo("user", Value::Null),
            "metadata": echo("metadata", json!({})),
        })
    }

    /// Takes a batch of the reply's events; returns the stream events and the end, if reached.
    fn take(&mut self, events: Vec<ReplyEvent>) -> (Vec<Value>, Option<ReplyEnd>) {
        let mut sent = Vec::new();
        for event in events {
            if let ReplyEvent::Done(end) = event {
                if let Some(text) = self.answer.flush() {
                    sent.extend(self.items.take(&json!({"content": text})));
                }
                sent.extend(self.items.close());
                return (sent, Some(end));
            }
            let (delta, stop) = self.answer.take(event);
            if let Some(delta) = delta {
                sent.extend(self.items.take(&delta));
            }
            if stop {
                self.reply.cancel();
            }
        }
        (sent, None)
    }

    /// Ends a round: runs the calls it left to the server and, when the model should read
    /// their outcomes, starts the next round. Returns the events, and the response's totals when
    /// it is over.
    async fn end_round(
        &mut self,
        end: ReplyEnd,
    ) -> Result<(Vec<Value>, Option<ReplyEnd>), ApiError> {
        let total = match self.total.take() {
            None => end.clone(),
            Some(t) => t.then(&end),
        };
        let round = self.items.take_round();
        self.added.extend(round.message);
        let mut sent = Vec::new();
        if let (Some(hosted), false) = (&self.hosted, round.hosted.is_empty()) {
            // A call made before in this response is not sent again: the model is looping,
            // and the next round must answer.
            let repeated = round.hosted.iter().filter(|c| c.repeat);
            self.left_out.extend(repeated.map(|call| call.id.clone()));
            self.looping |= round.hosted.iter().any(|c| c.repeat);
            let runs = round.hosted.iter().map(|call| {
                let run = hosted.run(&call.id, &call.name, &call.arguments);
                let turn = self.turn.clone();
                let repeat = call.repeat;
                async move {
                    if repeat {
                        return HostedOutcome::repeat();
                    }
                    run.instrument(turn).await
                }
            });
            let outcomes = futures::future::join_all(runs).await;
            for (call, outcome) in round.hosted.iter().zip(outcomes) {
                sent.extend(self.items.finish_call(call, &outcome));
                self.added.push(Message {
                    tool_call_id: Some(call.id.clone()),
                    ..Message::text(Role::Tool, &outcome.model_text())
                });
            }
        }
        let left = self
            .parsed
            .reply
            .max_tokens
            .map(|m| m.saturating_sub(total.completion_tokens));
        let go_on = !round.hosted.is_empty()
            && round.client_calls == 0
            && round.approvals == 0
            && left != Some(0)
            && !matches!(
                end.reason,
                FinishReason::ContextFull | FinishReason::MaxTokens
            );
        if !go_on {
            return Ok((sent, Some(total)));
        }
        self.total = Some(total);
        self.round += 1;
        let mut request = self.parsed.reply.clone();
        request.chat.messages = self.conversation.clone();
        request.chat.messages.extend(self.added.iter().cloned());
        // A refused repeat stays out of what the model reads, as in the agent's loop: it holds
        // that call's result already, and a small model shown its refused repeat repeats again.
        if !self.left_out.is_empty() {
            let left_out =
                |id: &Option<String>| id.as_ref().is_some_and(|id| self.left_out.contains(id));
            request.chat.messages.retain_mut(|m| {
                m.tool_calls.retain(|c| !left_out(&c.id));
                let empty = m.role == Role::Assistant
                    && m.tool_calls.is_empty()
                    && m.content.as_ref().is_none_or(|c| c.text().is_empty())
                    && m.reasoning_content.is_none();
                !left_out(&m.tool_call_id) && !empty
            });
        }
        request.max_tokens = left;
        // Tool rounds the server ends (a limit, a loop) end as the agent's do: with a request
        // for the answer, which only this round reads.
        request.tool_choice = if self.round >= MAX_HOSTED_ROUNDS || self.looping {
            let ask = final_request(&request.chat.messages);
            request.chat.messages.push(ask);
            ToolChoice::Mode(ToolChoiceMode::None)
        } else {
            ToolChoice::Unset
        };
        self.turn = tracing::info_span!("turn", round = self.round);
        self.reply = self
            .turn
            .in_scope(|| self.server.replier.start(request))
            .inspect_err(|_| self.slot.metrics().ended(Outcome::Failed))?;
        let mut answer = Answer::new(&self.server, self.parsed.parallel_tool_calls, Vec::new());
        answer.id = self.answer.id.clone();
        answer.created = self.answer.created;
        answer.stream_arguments = self.parsed.stream;
        self.answer = answer;
        Ok((sent, None))
    }

    /// The final status, the object, and (unless `store: false`) the stored copy.
    fn conclude(&mut self, end: &ReplyEnd) -> Value {
        let metrics = self.slot.metrics();
        metrics.tokens(end);
        metrics.ended(Outcome::Ok);
        let cut = matches!(
            end.reason,
            FinishReason::MaxTokens | FinishReason::ContextFull
        );
        let status = if cut && !self.answer.made_calls() {
            "incomplete"
        } else {
            "completed"
        };
        let object = self.object(status, Some(end));
        if self.parsed.store {
            let mut conversation = self.parsed.history.clone();
            conversation.extend(self.added.iter().cloned());
            self.server
                .responses
                .put(&self.answer.id, object.clone(), conversation);
        }
        object
    }

    async fn finish_whole(&mut self) -> Result<Value, ApiError> {
        while let Some(events) = self.reply.next().await {
            let events = events.inspect_err(|_| self.slot.metrics().ended(Outcome::Failed))?;
            if let (_, Some(end)) = self.take(events)
                && let (_, Some(total)) = self.end_round(end).await?
            {
                return Ok(self.conclude(&total));
            }
        }
        self.slot.metrics().ended(Outcome::Failed);
        Err(lost())
    }
}

fn lost() -> ApiError {
    ApiError::from(kestrel::reply::ReplyError::Backend(
        kestrel::backend::BackendError::Lost,
    ))
}

fn usage(end: &ReplyEnd) -> Value {
    json!({
        "input_tokens": end.prompt_tokens,
        "input_tokens_details": {"cached_tokens": end.cached_tokens},
        "output_tokens": end.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": end.reasoning_tokens},
        "total_tokens": end.prompt_tokens + end.completion_tokens,
    })
}

fn stream_response(mut run: Run) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(64);
    spawn_in_span(async move {
        let mut sequence = 0u64;
        let mut send = |events: Vec<Value>| {
            let tx = tx.clone();
            let numbered: Vec<Event> = events
                .into_iter()
                .map(|mut event| {
                    event["sequence_number"] = json!(sequence);
                    sequence += 1;
                    let name = event["type"].as_str().unwrap_or("message").to_string();
                    Event::default().event(name).data(event.to_string())
                })
                .collect();
            async move {
                for event in numbered {
                    if tx.send(event).await.is_err() {
                        return false;
                    }
                }
                true
            }
        };
        let started = run.object("in_progress", None);
        let mut opening = vec![
            json!({"type": "response.created", "response": started}),
            json!({"type": "response.in_progress", "response": started}),
        ];
        opening.append(&mut run.opening);
        if !send(opening).await {
            return;
        }
        while let Some(events) = run.reply.next().await {
            let events = match events {
                Ok(events) => events,
                Err(e) => {
                    run.slot.metrics().ended(Outcome::Failed);
                    let mut failed = run.object("failed", None);
                    failed["error"] = json!({"code": "server_error", "message": e.to_string()});
                    send(vec![json!({"type": "response.failed", "response": failed})]).await;
                    return;
                }
            };
            let (mut sent, end) = run.take(events);
            let end = match end {
                None => None,
                Some(end) => match run.end_round(end).await {
                    Ok((more, total)) => {
                        sent.extend(more);
                        total
                    }
                    Err(e) => {
                        let mut failed = run.object("failed", None);
                        failed["error"] = e.body()["error"].clone();
                        sent.push(json!({"type": "response.failed", "response": failed}));
                        send(sent).await;
                        return;
                    }
                },
            };
            if let Some(end) = end {
                let object = run.conclude(&end);
                let kind = if object["status"] == "incomplete" {
                    "response.incomplete"
                } else {
                    "response.completed"
                };
                sent.push(json!({"type": kind, "response": object}));
                send(sent).await;
                return;
            }
            if !send(sent).await {
                return;
            }
        }
        run.slot.metrics().ended(Outcome::Failed);
        let mut failed = run.object("failed", None);
        failed["error"] =
            json!({"code": "server_error", "message": lost().body()["error"]["message"]});
        send(vec![json!({"type": "response.failed", "response": failed})]).await;
    });
    let events = stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|event| (Ok::<_, std::convert::Infallible>(event), rx))
    });
    Sse::new(events).into_response()
}
