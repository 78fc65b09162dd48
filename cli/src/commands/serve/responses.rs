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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream;
use kestrel::backend::FinishReason;
use kestrel::prompts::messages::{Content, FunctionCall, Message, Role, ToolCall};
use kestrel::reply::{Reply, ReplyEnd, ReplyEvent};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Server;
use super::chat::Answer;
use super::error::ApiError;
use super::metrics::{Outcome, Slot};
use super::responses_input::{Parsed, parse};
use super::signature::Signer;
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
    let parsed = match parse(&body, &server.signer, &server.responses) {
        Ok(p) => p,
        Err(e) => return refuse(e),
    };
    let Some(slot) = metrics.admit() else {
        return ApiError::overloaded(metrics.capacity()).into_response();
    };
    let reply = match server.replier.start(parsed.reply.clone()) {
        Ok(r) => r,
        Err(e) => return refuse(e.into()),
    };
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let mut answer = Answer::new(&server, parsed.parallel_tool_calls, Vec::new());
    answer.id = format!(
        "resp_{:x}{:08x}",
        server.created,
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    answer.stream_arguments = parsed.stream;
    let items = Items::new(&answer.id, server.signer.clone(), parsed.sealed_reasoning);
    let mut run = Run {
        server: server.clone(),
        reply,
        answer,
        items,
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

/// The output items of one response: the one open now and those finished.
struct Items {
    base: String,
    signer: Arc<Signer>,
    sealed: bool,
    open: Option<Open>,
    output: Vec<Value>,
    /// What the answer said, for the stored conversation.
    reasoning: String,
    text: String,
    calls: Vec<ToolCall>,
}

enum Open {
    Reasoning {
        id: String,
        text: String,
    },
    Message {
        id: String,
        text: String,
    },
    /// A function call, its arguments as they come.
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

impl Items {
    fn new(response_id: &str, signer: Arc<Signer>, sealed: bool) -> Self {
        Self {
            base: response_id.trim_start_matches("resp_").to_string(),
            signer,
            sealed,
            open: None,
            output: Vec::new(),
            reasoning: String::new(),
            text: String::new(),
            calls: Vec::new(),
        }
    }

    fn item_id(&self, prefix: &str) -> String {
        format!("{prefix}_{}_{}", self.base, self.output.len())
    }

    /// The events for one of [`Answer`]'s deltas.
    fn take(&mut self, delta: &Value) -> Vec<Value> {
        let mut sent = Vec::new();
        let index = |items: &Self| items.output.len();
        if let Some(text) = delta.get("reasoning_content").and_then(Value::as_str) {
            if !matches!(self.open, Some(Open::Reasoning { .. })) {
                sent.extend(self.close());
                let id = self.item_id("rs");
                sent.push(
                    json!({"type": "response.output_item.added", "output_index": index(self),
                    "item": {"type": "reasoning", "id": id, "summary": [], "content": [],
                             "status": "in_progress"}}),
                );
                self.open = Some(Open::Reasoning {
                    id,
                    text: String::new(),
                });
            }
            if let Some(Open::Reasoning { id, text: all }) = &mut self.open {
                all.push_str(text);
                sent.push(
                    json!({"type": "response.reasoning_text.delta", "item_id": id,
                    "output_index": self.output.len(), "content_index": 0, "delta": text}),
                );
            }
            self.reasoning.push_str(text);
        }
        if let Some(text) = delta.get("content").and_then(Value::as_str) {
            if !matches!(self.open, Some(Open::Message { .. })) {
                sent.extend(self.close());
                let id = self.item_id("msg");
                sent.push(
                    json!({"type": "response.output_item.added", "output_index": index(self),
                    "item": {"type": "message", "id": id, "role": "assistant",
                             "status": "in_progress", "content": []}}),
                );
                sent.push(json!({"type": "response.content_part.added", "item_id": id,
                    "output_index": index(self), "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []}}));
                self.open = Some(Open::Message {
                    id,
                    text: String::new(),
                });
            }
            if let Some(Open::Message { id, text: all }) = &mut self.open {
                all.push_str(text);
                sent.push(json!({"type": "response.output_text.delta", "item_id": id,
                    "output_index": self.output.len(), "content_index": 0, "delta": text,
                    "logprobs": []}));
            }
            self.text.push_str(text);
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let arguments = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("{}")
                .to_string();
            // A streamed call: its first delta has the name and no arguments yet, the next ones
            // only arguments.
            if call.get("id").is_none() {
                if let Some(Open::Call {
                    id, arguments: all, ..
                }) = &mut self.open
                {
                    all.push_str(&arguments);
                    sent.push(json!({"type": "response.function_call_arguments.delta",
                        "item_id": id, "output_index": self.output.len(), "delta": arguments}));
                }
                continue;
            }
            sent.extend(self.close());
            let id = self.item_id("fc");
            let call_id = format!("call_{}_{}", self.base, self.calls.len());
            let name = call
                .pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            sent.push(
                json!({"type": "response.output_item.added", "output_index": index(self),
                "item": {"type": "function_call", "id": id, "call_id": call_id, "name": name,
                         "arguments": "", "status": "in_progress"}}),
            );
            self.open = Some(Open::Call {
                id,
                call_id,
                name,
                arguments: String::new(),
            });
            if !arguments.is_empty() {
                // A call sent whole: its arguments in one piece, and it is done.
                if let Some(Open::Call {
                    id, arguments: all, ..
                }) = &mut self.open
                {
                    all.push_str(&arguments);
                    sent.push(json!({"type": "response.function_call_arguments.delta",
                        "item_id": id, "output_index": self.output.len(), "delta": arguments}));
                }
                sent.extend(self.close());
            }
        }
        sent
    }

    /// Finishes the open item.
    fn close(&mut self) -> Vec<Value> {
        let at = self.output.len();
        match self.open.take() {
            None => Vec::new(),
            Some(Open::Call {
                id,
                call_id,
                name,
                arguments,
            }) => {
                let done = json!({"type": "function_call", "id": id, "call_id": call_id,
                    "name": name, "arguments": arguments, "status": "completed"});
                let sent = vec![
                    json!({"type": "response.function_call_arguments.done", "item_id": id,
                           "output_index": at, "name": name, "arguments": arguments}),
                    json!({"type": "response.output_item.done", "output_index": at,
                           "item": done}),
                ];
                self.output.push(done);
                self.calls.push(ToolCall {
                    id: Some(call_id),
                    kind: "function".into(),
                    function: FunctionCall {
                        name,
                        arguments: serde_json::from_str(&arguments).unwrap_or(json!({})),
                    },
                });
                sent
            }
            Some(Open::Reasoning { id, text }) => {
                let mut item = json!({"type": "reasoning", "id": id, "summary": [],
                    "content": [{"type": "reasoning_text", "text": text}], "status": "completed"});
                if self.sealed {
                    item["encrypted_content"] = json!(self.signer.seal(&text));
                }
                let sent = vec![
                    json!({"type": "response.reasoning_text.done", "item_id": id,
                           "output_index": at, "content_index": 0, "text": text}),
                    json!({"type": "response.output_item.done", "output_index": at,
                           "item": item}),
                ];
                self.output.push(item);
                sent
            }
            Some(Open::Message { id, text }) => {
                let part = json!({"type": "output_text", "text": text, "annotations": []});
                let item = json!({"type": "message", "id": id, "role": "assistant",
                    "status": "completed", "content": [part]});
                let sent = vec![
                    json!({"type": "response.output_text.done", "item_id": id,
                           "output_index": at, "content_index": 0, "text": text, "logprobs": []}),
                    json!({"type": "response.content_part.done", "item_id": id,
                           "output_index": at, "content_index": 0, "part": part}),
                    json!({"type": "response.output_item.done", "output_index": at,
                           "item": item}),
                ];
                self.output.push(item);
                sent
            }
        }
    }

    /// The answer as an assistant message of the stored conversation.
    fn as_message(&self) -> Message {
        Message {
            content: (!self.text.is_empty() || self.calls.is_empty())
                .then(|| Content::Text(self.text.clone())),
            reasoning_content: (!self.reasoning.is_empty()).then(|| self.reasoning.clone()),
            tool_calls: self.calls.clone(),
            ..Message::text(Role::Assistant, "")
        }
    }
}

/// One response being produced.
struct Run {
    server: Arc<Server>,
    reply: Reply,
    answer: Answer,
    items: Items,
    parsed: Parsed,
    slot: Slot,
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
            conversation.push(self.items.as_message());
            self.server
                .responses
                .put(&self.answer.id, object.clone(), conversation);
        }
        object
    }

    async fn finish_whole(&mut self) -> Result<Value, ApiError> {
        while let Some(events) = self.reply.next().await {
            let events = events.inspect_err(|_| self.slot.metrics().ended(Outcome::Failed))?;
            if let (_, Some(end)) = self.take(events) {
                return Ok(self.conclude(&end));
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
        let opening = vec![
            json!({"type": "response.created", "response": started}),
            json!({"type": "response.in_progress", "response": started}),
        ];
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
