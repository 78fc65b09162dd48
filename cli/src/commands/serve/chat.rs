//! `POST /v1/chat/completions`, non-streaming and streaming (server-sent events).
//!
//! The request is read in `request.rs`; its reply's events become OpenAI's JSON through an
//! [`Answer`] (`answer.rs`), sent whole or as chunks here; with `mcp` tools `chat_mcp.rs` answers. Tool calls
//! come back in `message.tool_calls`, never in `content`, and reasoning in both
//! `reasoning_content` and `reasoning`, the two names clients read. In a stream, a call's first
//! delta (keyed by its `index`) carries its `id`, `type` and name as soon as the name is written,
//! the next ones its arguments as the model writes them.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream;
use kestrel::reply::{Reply, ReplyEvent};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Server;
use super::answer::{Answer, collect, completion, message_of, usage};
use super::error::ApiError;
use super::metrics::{Outcome, Slot};
use super::request::parse;
use super::spawn_in_span;

pub(super) async fn completions(State(server): State<Arc<Server>>, body: Bytes) -> Response {
    let metrics = server.metrics.clone();
    let refuse = |e: ApiError| {
        metrics.ended(if e.is_client_error() {
            Outcome::Invalid
        } else {
            Outcome::Failed
        });
        e.into_response()
    };
    let mut parsed = match parse(&body) {
        Ok(p) => p,
        Err(e) => return refuse(e),
    };
    let hosted = match super::mcp::hosted(&server, &parsed.mcp, &parsed.reply.chat.tools).await {
        Ok(h) => h,
        Err(e) => return refuse(e),
    };
    // The slot lives as long as the answer: this future, or the streaming task.
    let Some(slot) = metrics.admit() else {
        return ApiError::overloaded(metrics.capacity()).into_response();
    };
    if let Some(hosted) = hosted {
        parsed.reply.chat.tools.extend(hosted.functions());
        let response = super::chat_mcp::answer(&server, parsed, hosted).await;
        drop(slot);
        return response;
    }
    let reply = match server.replier.start(parsed.reply) {
        Ok(r) => r,
        Err(e) => return refuse(e.into()),
    };
    let mut answer = Answer::new(&server, parsed.parallel_tool_calls, parsed.stop);
    answer.stream_arguments = parsed.stream;
    if parsed.logprobs {
        answer.keep_logprobs();
    }
    if parsed.stream {
        stream_reply(reply, answer, parsed.include_usage, slot)
    } else {
        let response = whole_reply(reply, answer, &metrics).await;
        drop(slot);
        response
    }
}

async fn whole_reply(
    mut reply: Reply,
    mut answer: Answer,
    metrics: &super::metrics::Metrics,
) -> Response {
    let end = match collect(&mut reply, &mut answer).await {
        Ok(end) => end,
        Err(e) => {
            metrics.ended(Outcome::Failed);
            return e.into_response();
        }
    };
    metrics.tokens(&end);
    metrics.ended(Outcome::Ok);
    axum::Json(completion(&answer, message_of(&answer), &end)).into_response()
}

fn stream_reply(mut reply: Reply, mut answer: Answer, include_usage: bool, slot: Slot) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(64);
    // The generation runs on its own task; when the client goes, the body (and `rx`) is dropped,
    // the next send fails and dropping the reply cancels the generation.
    spawn_in_span(async move {
        let metrics = slot.metrics();
        let send = |value: Value| {
            let tx = tx.clone();
            async move {
                tx.send(Event::default().data(value.to_string()))
                    .await
                    .is_ok()
            }
        };
        if !send(answer.chunk(json!({"role": "assistant", "content": ""}), None)).await {
            return;
        }
        while let Some(events) = reply.next().await {
            let events = match events {
                Ok(events) => events,
                Err(e) => {
                    metrics.ended(Outcome::Failed);
                    send(ApiError::from(e).body()).await;
                    return;
                }
            };
            for event in events {
                if let ReplyEvent::Done(end) = &event {
                    metrics.tokens(end);
                    metrics.ended(Outcome::Ok);
                    if let Some(text) = answer.flush() {
                        send(answer.chunk(json!({"content": text}), None)).await;
                    }
                    let reason = answer.finish_reason(end);
                    send(answer.chunk(json!({}), Some(reason))).await;
                    if include_usage {
                        let mut last = answer.chunk(json!({}), None);
                        last["choices"] = json!([]);
                        last["usage"] = usage(end);
                        send(last).await;
                    }
                    let _ = tx.send(Event::default().data("[DONE]")).await;
                    return;
                }
                let (delta, stop) = answer.take(event);
                if let Some(delta) = delta
                    && !send(answer.chunk(delta, None)).await
                {
                    return;
                }
                if stop {
                    reply.cancel();
                }
            }
        }
    });
    let events = stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|event| (Ok::<_, std::convert::Infallible>(event), rx))
    });
    Sse::new(events).into_response()
}
