//! `POST /v1/messages` (Anthropic's Messages API), whole or streamed, and
//! `POST /v1/messages/count_tokens`.
//!
//! The request is read in `anthropic.rs`. The reply's events go through the same [`Answer`] as
//! Chat Completions (stop sequences held back and cut, one call when parallel calls are off) and
//! then become content blocks: `thinking` (signed when it closes), `text` and `tool_use`, in the
//! order the model wrote them. A stream sends Anthropic's event sequence: `message_start`, per
//! block `content_block_start`, deltas (`thinking_delta` and `signature_delta`, `text_delta`,
//! `input_json_delta`) and `content_block_stop`, then `message_delta` with the stop reason and
//! usage, and `message_stop`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream;
use kestrel::backend::FinishReason;
use kestrel::reply::{Reply, ReplyEnd, ReplyEvent};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Server;
use super::answer::Answer;
use super::anthropic::{parse, parse_chat};
use super::error::{AnthropicError, ApiError};
use super::metrics::{Metrics, Outcome, Slot};
use super::signature::Signer;
use super::spawn_in_span;

pub(super) async fn messages(State(server): State<Arc<Server>>, body: Bytes) -> Response {
    let metrics = server.metrics.clone();
    let refuse = |e: ApiError| {
        metrics.ended(if e.is_client_error() {
            Outcome::Invalid
        } else {
            Outcome::Failed
        });
        AnthropicError(e).into_response()
    };
    let parsed = match parse(&body, &server.signer) {
        Ok(p) => p,
        Err(e) => return refuse(e),
    };
    let Some(slot) = metrics.admit() else {
        return AnthropicError(ApiError::overloaded(metrics.capacity())).into_response();
    };
    let reply = match server.replier.start(parsed.reply) {
        Ok(r) => r,
        Err(e) => return refuse(e.into()),
    };
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let mut answer = Answer::new(&server, parsed.parallel_tool_calls, parsed.stop);
    answer.id = format!("msg_{:024}", NEXT.fetch_add(1, Ordering::Relaxed));
    answer.stream_arguments = parsed.stream;
    let blocks = Blocks::new(answer.id.clone(), server.signer.clone());
    if parsed.stream {
        stream_message(reply, answer, blocks, slot)
    } else {
        let response = whole_message(reply, answer, blocks, &metrics).await;
        drop(slot);
        response
    }
}

pub(super) async fn count_tokens(State(server): State<Arc<Server>>, body: Bytes) -> Response {
    let counted = parse_chat(&body, &server.signer)
        .and_then(|(chat, _)| Ok(server.replier.count_tokens(&chat)?));
    match counted {
        Ok(n) => axum::Json(json!({"input_tokens": n})).into_response(),
        Err(e) => AnthropicError(e).into_response(),
    }
}

/// The content blocks of one answer: the one open now and those already closed.
struct Blocks {
    id: String,
    signer: Arc<Signer>,
    open: Option<Open>,
    /// Index of the next block.
    next: usize,
    closed: Vec<Value>,
}

enum Open {
    Thinking(String),
    Text(String),
    /// A tool call streamed as it is written: its id, name and the input's JSON text so far.
    ToolUse {
        id: String,
        name: Value,
        json: String,
    },
}

/// A call's input from its arguments' JSON text.
fn input_of(arguments: &str) -> Value {
    match serde_json::from_str(arguments) {
        Ok(object @ Value::Object(_)) => object,
        _ => {
            tracing::warn!("a tool call's arguments are not a JSON object: {arguments}");
            json!({})
        }
    }
}

/// A named server-sent event.
type Sent = (&'static str, Value);

impl Blocks {
    fn new(id: String, signer: Arc<Signer>) -> Self {
        Self {
            id,
            signer,
            open: None,
            next: 0,
            closed: Vec::new(),
        }
    }

    /// The events for one of [`Answer`]'s deltas.
    fn take(&mut self, delta: &Value) -> Vec<Sent> {
        let mut sent = Vec::new();
        if let Some(text) = delta.get("reasoning_content").and_then(Value::as_str) {
            if !matches!(self.open, Some(Open::Thinking(_))) {
                sent.extend(self.close());
                sent.push(self.start(json!({"type": "thinking", "thinking": "", "signature": ""})));
                self.open = Some(Open::Thinking(String::new()));
            }
            if let Some(Open::Thinking(all)) = &mut self.open {
                all.push_str(text);
            }
            sent.push(self.delta(json!({"type": "thinking_delta", "thinking": text})));
        }
        if let Some(text) = delta.get("content").and_then(Value::as_str) {
            if !matches!(self.open, Some(Open::Text(_))) {
                sent.extend(self.close());
                sent.push(self.start(json!({"type": "text", "text": ""})));
                self.open = Some(Open::Text(String::new()));
            }
            if let Some(Open::Text(all)) = &mut self.open {
                all.push_str(text);
            }
            sent.push(self.delta(json!({"type": "text_delta", "text": text})));
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let name = call.pointer("/function/name").cloned().unwrap_or_default();
            let arguments = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("{}");
            // A streamed call: its first delta has the name and no arguments yet, the next ones
            // only arguments.
            if call.get("id").is_none() {
                if let Some(Open::ToolUse { json, .. }) = &mut self.open {
                    json.push_str(arguments);
                    let piece = json!({"type": "input_json_delta", "partial_json": arguments});
                    sent.push(self.delta(piece));
                }
                continue;
            }
            sent.extend(self.close());
            let id = format!("toolu_{}_{index}", self.id.trim_start_matches("msg_"));
            if arguments.is_empty() {
                let block = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
                sent.push(self.start(block));
                self.open = Some(Open::ToolUse {
                    id,
                    name,
                    json: String::new(),
                });
                continue;
            }
            let input = input_of(arguments);
            sent.push(self.start(json!({"type": "tool_use", "id": id, "name": name, "input": {}})));
            sent.push(self.delta(json!({"type": "input_json_delta", "partial_json": arguments})));
            sent.push(self.stop());
            self.closed
                .push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
        }
        sent
    }

    /// Closes the open block: a thinking block gets its signature first.
    fn close(&mut self) -> Vec<Sent> {
        match self.open.take() {
            None => Vec::new(),
            Some(Open::Text(text)) => {
                self.closed.push(json!({"type": "text", "text": text}));
                vec![self.stop()]
            }
            Some(Open::ToolUse { id, name, json }) => {
                let input = input_of(&json);
                self.closed
                    .push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
                vec![self.stop()]
            }
            Some(Open::Thinking(thinking)) => {
                let signature = self.signer.sign(&thinking);
                let sent = vec![
                    self.delta(json!({"type": "signature_delta", "signature": signature})),
                    self.stop(),
                ];
                self.closed.push(
                    json!({"type": "thinking", "thinking": thinking, "signature": signature}),
                );
                sent
            }
        }
    }

    fn start(&mut self, block: Value) -> Sent {
        let event =
            json!({"type": "content_block_start", "index": self.next, "content_block": block});
        ("content_block_start", event)
    }

    fn delta(&self, delta: Value) -> Sent {
        let event = json!({"type": "content_block_delta", "index": self.next, "delta": delta});
        ("content_block_delta", event)
    }

    fn stop(&mut self) -> Sent {
        let event = json!({"type": "content_block_stop", "index": self.next});
        self.next += 1;
        ("content_block_stop", event)
    }
}

/// Anthropic's `stop_reason` and `stop_sequence`.
fn stop_reason(answer: &Answer, end: &ReplyEnd) -> (&'static str, Option<String>) {
    if answer.made_calls() {
        ("tool_use", None)
    } else if let Some(stop) = &answer.matched_stop {
        ("stop_sequence", Some(stop.clone()))
    } else {
        match end.reason {
            FinishReason::MaxTokens | FinishReason::ContextFull => ("max_tokens", None),
            _ => ("end_turn", None),
        }
    }
}

/// Anthropic's usage: `input_tokens` counts only what was not read from the cache.
fn usage(end: &ReplyEnd) -> Value {
    json!({
        "input_tokens": end.prompt_tokens - end.cached_tokens.min(end.prompt_tokens),
        "output_tokens": end.completion_tokens,
        "cache_read_input_tokens": end.cached_tokens,
        "cache_creation_input_tokens": 0,
    })
}

fn lost() -> ApiError {
    ApiError::from(kestrel::reply::ReplyError::Backend(
        kestrel::backend::BackendError::Lost,
    ))
}

async fn whole_message(
    mut reply: Reply,
    mut answer: Answer,
    mut blocks: Blocks,
    metrics: &Metrics,
) -> Response {
    let mut end = None;
    while let Some(events) = reply.next().await {
        let events = match events {
            Ok(events) => events,
            Err(e) => {
                metrics.ended(Outcome::Failed);
                return AnthropicError(e.into()).into_response();
            }
        };
        for event in events {
            if let ReplyEvent::Done(e) = &event {
                end = Some(e.clone());
            }
            let (delta, stop) = answer.take(event);
            if let Some(delta) = delta {
                blocks.take(&delta);
            }
            if stop {
                reply.cancel();
            }
        }
    }
    if let Some(text) = answer.flush() {
        blocks.take(&json!({"content": text}));
    }
    blocks.close();
    let Some(end) = end else {
        metrics.ended(Outcome::Failed);
        return AnthropicError(lost()).into_response();
    };
    metrics.tokens(&end);
    metrics.ended(Outcome::Ok);
    let (reason, sequence) = stop_reason(&answer, &end);
    axum::Json(json!({
        "id": answer.id,
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": blocks.closed,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage(&end),
    }))
    .into_response()
}

fn stream_message(
    mut reply: Reply,
    mut answer: Answer,
    mut blocks: Blocks,
    slot: Slot,
) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(64);
    let prompt_tokens = reply.prompt_tokens();
    spawn_in_span(async move {
        let metrics = slot.metrics();
        let send = |sent: Vec<Sent>| {
            let tx = tx.clone();
            async move {
                for (name, data) in sent {
                    let event = Event::default().event(name).data(data.to_string());
                    if tx.send(event).await.is_err() {
                        return false;
                    }
                }
                true
            }
        };
        let start = json!({"type": "message_start", "message": {
            "id": answer.id, "type": "message", "role": "assistant", "model": answer.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": prompt_tokens, "output_tokens": 0},
        }});
        if !send(vec![("message_start", start)]).await {
            return;
        }
        while let Some(events) = reply.next().await {
            let events = match events {
                Ok(events) => events,
                Err(e) => {
                    metrics.ended(Outcome::Failed);
                    send(vec![("error", ApiError::from(e).anthropic_body())]).await;
                    return;
                }
            };
            for event in events {
                if let ReplyEvent::Done(end) = &event {
                    metrics.tokens(end);
                    metrics.ended(Outcome::Ok);
                    let mut sent = Vec::new();
                    if let Some(text) = answer.flush() {
                        sent.extend(blocks.take(&json!({"content": text})));
                    }
                    sent.extend(blocks.close());
                    let (reason, sequence) = stop_reason(&answer, end);
                    sent.push((
                        "message_delta",
                        json!({"type": "message_delta",
                               "delta": {"stop_reason": reason, "stop_sequence": sequence},
                               "usage": usage(end)}),
                    ));
                    sent.push(("message_stop", json!({"type": "message_stop"})));
                    send(sent).await;
                    return;
                }
                let (delta, stop) = answer.take(event);
                if let Some(delta) = delta
                    && !send(blocks.take(&delta)).await
                {
                    return;
                }
                if stop {
                    reply.cancel();
                }
            }
        }
        metrics.ended(Outcome::Failed);
        send(vec![("error", lost().anthropic_body())]).await;
    });
    let events = stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|event| (Ok::<_, std::convert::Infallible>(event), rx))
    });
    Sse::new(events).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_follow_the_model_and_thinking_is_signed_when_it_closes() {
        let signer = Arc::new(Signer::with_key([3; 32]));
        let mut blocks = Blocks::new("msg_1".into(), signer.clone());
        let mut sent = Vec::new();
        for delta in [
            json!({"reasoning_content": "Paris, ", "reasoning": "Paris, "}),
            json!({"reasoning_content": "so call.", "reasoning": "so call."}),
            json!({"content": "Checking."}),
            json!({"tool_calls": [{"index": 0, "id": "x", "type": "function",
                   "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}),
        ] {
            sent.extend(blocks.take(&delta));
        }
        sent.extend(blocks.close());
        let kinds: Vec<String> = sent
            .iter()
            .map(|(name, data)| {
                let detail = data
                    .pointer("/delta/type")
                    .or_else(|| data.pointer("/content_block/type"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                format!("{name}:{}:{detail}", data["index"])
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "content_block_start:0:thinking",
                "content_block_delta:0:thinking_delta",
                "content_block_delta:0:thinking_delta",
                "content_block_delta:0:signature_delta",
                "content_block_stop:0:",
                "content_block_start:1:text",
                "content_block_delta:1:text_delta",
                "content_block_stop:1:",
                "content_block_start:2:tool_use",
                "content_block_delta:2:input_json_delta",
                "content_block_stop:2:",
            ]
        );
        let signature = blocks.closed[0]["signature"].as_str().unwrap_or("");
        assert!(signer.verify("Paris, so call.", signature));
        assert_eq!(
            blocks.closed[1],
            json!({"type": "text", "text": "Checking."})
        );
        assert_eq!(blocks.closed[2]["input"], json!({"city": "Paris"}));
        assert_eq!(blocks.closed[2]["id"], "toolu_1_0");
    }
}
