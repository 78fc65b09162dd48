//! One reply from an engine in chat mode: its request, and its streamed deltas turned into
//! tokens through [`QwenText`].
//!
//! Failures before the first delta (a refused connection, 429, 5xx) are retried with backoff; a
//! stream that breaks after it ends the reply with an error, since a Chat Completions reply
//! cannot be continued from where it broke.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kestrel_engine::{GeneratedToken, Timings};
use kestrel_prompts::thinking::ThinkingBudgetHook;
use serde_json::{Value, json};

use kestrel_engine::Tokenizer;
use tokio::sync::oneshot;

use super::RemoteOptions;
use super::chat_wire::{ChatDialect, ChatRequestParts, Piece, QwenText, early_stop_message};
use super::drive::{Watched, sleep, watch};
use super::llama_server::{error_message, take_events};
use super::transport_error;
use crate::backend::{BackendError, FinishReason, Finished, StreamItem, StreamSender, Submission};

/// Longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Thinking tokens past the limit tolerated when the engine enforces the budget itself (the two
/// sides may count the tokens around the tags differently); beyond them Kestrel ends the reply.
const ENGINE_BUDGET_SLACK: usize = 8;

/// The engine a reply goes to, shared by every reply of a [`ChatEngine`](super::ChatEngine).
pub(super) struct ChatInner {
    pub(super) root: String,
    pub(super) options: RemoteOptions,
    pub(super) tokenizer: Arc<Tokenizer>,
    pub(super) dialect: ChatDialect,
    /// The model to ask for.
    pub(super) model: String,
    pub(super) context: Option<usize>,
    /// The engine bounds the thinking itself (a request field it reads).
    pub(super) engine_budget: bool,
    pub(super) client: reqwest::Client,
    pub(super) runtime: tokio::runtime::Handle,
    /// Dropped with the last handle: the runtime's thread then ends.
    pub(super) _stop: oneshot::Sender<()>,
}

/// Why a request failed.
enum Failure {
    /// Worth another attempt (nothing of the reply came yet).
    Retry {
        message: String,
        after: Option<Duration>,
    },
    /// Not worth one.
    Fatal(String),
}

/// How a request ended.
enum ReplyEnd {
    Finished(FinishReason),
    Cancelled,
    /// Kestrel ended it: the thinking reached its limit.
    BudgetSpent,
}

/// A reply in progress.
pub(super) struct ChatDriver {
    inner: Arc<ChatInner>,
    body: Value,
    sender: StreamSender,
    thinking: Option<ThinkingBudgetHook>,
    text: QwenText,
    generated: Vec<u32>,
    timings: Timings,
    started: Instant,
    first_token: Option<Instant>,
}

impl ChatDriver {
    pub(super) fn new(
        inner: Arc<ChatInner>,
        submission: Submission,
        sender: StreamSender,
    ) -> Result<Self, BackendError> {
        let Some(conversation) = &submission.conversation else {
            return Err(BackendError::Unsupported(
                "an engine in chat mode takes messages; this generation has only a prompt (raw prompts need an engine in token mode)".into(),
            ));
        };
        let tokenizer = &inner.tokenizer;
        let starts_in_thinking = tokenizer
            .decode(&submission.prompt[submission.prompt.len().saturating_sub(3)..])
            .is_ok_and(|tail| tail.ends_with("<think>\n"));
        let mut thinking = submission.thinking;
        let engine_budget = inner.engine_budget;
        let budget = thinking.as_ref().and_then(ThinkingBudgetHook::limit);
        if engine_budget && let (Some(hook), Some(limit)) = (thinking.as_mut(), budget) {
            hook.set_limit(Some(limit + ENGINE_BUDGET_SLACK));
        }
        let body = ChatRequestParts {
            dialect: inner.dialect,
            model: &inner.model,
            conversation,
            sampling: &submission.sampling,
            max_tokens: submission.max_tokens,
            budget: budget.filter(|_| engine_budget),
            format: submission.answer_format.as_ref().map(|f| f.format()),
        }
        .body();
        // llama-server writes the message it is given; vLLM writes what its server was started
        // with (`--reasoning-config`'s `reasoning_end_str`, Qwen's text in the README's recipe).
        let message = (engine_budget && budget.is_some()).then(|| early_stop_message().to_string());
        Ok(Self {
            timings: Timings {
                prompt_tokens: submission.prompt.len(),
                ..Timings::default()
            },
            text: QwenText::new(starts_in_thinking, message),
            inner,
            body,
            sender,
            thinking,
            generated: Vec::new(),
            started: Instant::now(),
            first_token: None,
        })
    }

    /// Runs the reply to its end and reports it.
    pub(super) async fn run(mut self) {
        let reason = match self.reply().await {
            Ok(reason) => reason,
            Err(e) => {
                self.sender.send(Err(e));
                return;
            }
        };
        self.timings.generated_tokens = self.generated.len();
        if let Some(first) = self.first_token {
            self.timings.decode_secs = first.elapsed().as_secs_f64();
        }
        self.sender.send(Ok(StreamItem::Finished(Finished {
            reason,
            generated: std::mem::take(&mut self.generated),
            tail: String::new(),
            timings: std::mem::take(&mut self.timings),
        })));
    }

    async fn reply(&mut self) -> Result<FinishReason, BackendError> {
        let mut failures = 0u32;
        loop {
            match self.request().await {
                Ok(ReplyEnd::Finished(reason)) => return Ok(reason),
                Ok(ReplyEnd::Cancelled) => return Ok(FinishReason::Cancelled),
                Ok(ReplyEnd::BudgetSpent) => return Ok(FinishReason::Hook),
                Err(Failure::Fatal(message)) => return Err(BackendError::Remote(message)),
                Err(Failure::Retry { message, after }) => {
                    failures += 1;
                    let attempts = self.inner.options.attempts.max(1);
                    if failures >= attempts {
                        return Err(BackendError::Remote(format!(
                            "{message} (gave up after {attempts} attempts)"
                        )));
                    }
                    let wait = after.unwrap_or_else(|| {
                        self.inner.options.backoff * 2u32.pow(failures.min(16) - 1)
                    });
                    tracing::warn!(
                        "{message}; trying again in {:.1}s (attempt {} of {attempts})",
                        wait.as_secs_f64(),
                        failures + 1
                    );
                    if !sleep(&self.sender, wait.min(MAX_BACKOFF)).await {
                        return Ok(FinishReason::Cancelled);
                    }
                }
            }
        }
    }

    /// One streamed request.
    async fn request(&mut self) -> Result<ReplyEnd, Failure> {
        let url = format!("{}/v1/chat/completions", self.inner.root);
        let idle = self.inner.options.idle_timeout;
        let silent = |received: bool| {
            let message = format!("engine {url} sent nothing for {}s", idle.as_secs_f64());
            if received {
                Failure::Fatal(format!("{message}; a reply in chat mode cannot be resumed"))
            } else {
                Failure::Retry {
                    message,
                    after: None,
                }
            }
        };
        let request = self
            .inner
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(self.body.to_string())
            .send();
        let response = match watch(&self.sender, request, idle).await {
            Watched::Done(response) => response.map_err(|e| Failure::Retry {
                message: format!("engine {url}: {}", transport_error(&e)),
                after: None,
            })?,
            Watched::Cancelled => return Ok(ReplyEnd::Cancelled),
            Watched::Silent => return Err(silent(false)),
        };
        let status = response.status();
        if !status.is_success() {
            let after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let text = response.text().await.unwrap_or_default();
            let message = format!("engine {url}: HTTP {status}: {}", error_message(&text));
            return Err(if status.as_u16() == 429 || status.is_server_error() {
                Failure::Retry { message, after }
            } else {
                Failure::Fatal(message)
            });
        }
        let mut body = response.bytes_stream();
        let mut buffer = String::new();
        let mut pending = Vec::new();
        let mut finish: Option<FinishReason> = None;
        loop {
            let received = !self.generated.is_empty();
            let next = match watch(&self.sender, body.next(), idle).await {
                Watched::Done(next) => next,
                Watched::Cancelled => return Ok(ReplyEnd::Cancelled),
                Watched::Silent => return Err(silent(received)),
            };
            let bytes = match next {
                None => match finish {
                    Some(reason) => return self.end(reason),
                    None => {
                        let message =
                            format!("engine {url}: the stream ended before the reply did");
                        return Err(if received {
                            Failure::Fatal(format!(
                                "{message}; a reply in chat mode cannot be resumed"
                            ))
                        } else {
                            Failure::Retry {
                                message,
                                after: None,
                            }
                        });
                    }
                },
                Some(Err(e)) => {
                    let message =
                        format!("engine {url}: the stream broke: {}", transport_error(&e));
                    return Err(if received {
                        Failure::Fatal(format!("{message}; a reply in chat mode cannot be resumed"))
                    } else {
                        Failure::Retry {
                            message,
                            after: None,
                        }
                    });
                }
                Some(Ok(bytes)) => bytes,
            };
            pending.extend_from_slice(&bytes);
            let valid = match std::str::from_utf8(&pending) {
                Ok(text) => text.len(),
                Err(e) => e.valid_up_to(),
            };
            buffer.push_str(std::str::from_utf8(&pending[..valid]).unwrap_or_default());
            pending.drain(..valid);
            for event in take_events(&mut buffer) {
                if event.trim() == "[DONE]" {
                    return self.end(finish.unwrap_or(FinishReason::Stop));
                }
                let chunk: Value = serde_json::from_str(&event).map_err(|e| {
                    Failure::Fatal(format!(
                        "engine {url} sent an unreadable event ({e}): {event}"
                    ))
                })?;
                if let Some(error) = chunk.get("error") {
                    return Err(Failure::Fatal(format!(
                        "engine {url}: {}",
                        error_message(&json!({"error": error}).to_string())
                    )));
                }
                self.take_usage(&chunk);
                let Some(choice) = chunk["choices"].get(0) else {
                    continue;
                };
                let delta = &choice["delta"];
                let reasoning = delta["reasoning_content"]
                    .as_str()
                    .or_else(|| delta["reasoning"].as_str())
                    .unwrap_or_default();
                let pieces = self.text.reasoning(reasoning);
                if !self
                    .emit(pieces)
                    .map_err(|e| Failure::Fatal(e.to_string()))?
                {
                    return Ok(ReplyEnd::Cancelled);
                }
                if self.budget_spent() {
                    return Ok(ReplyEnd::BudgetSpent);
                }
                let mut pieces = self.text.content(delta["content"].as_str().unwrap_or(""));
                for call in delta["tool_calls"].as_array().into_iter().flatten() {
                    let index = call["index"].as_u64().unwrap_or(0) as usize;
                    let function = &call["function"];
                    pieces.extend(self.text.call(
                        index,
                        function["name"].as_str(),
                        function["arguments"].as_str().unwrap_or(""),
                    ));
                }
                if !self
                    .emit(pieces)
                    .map_err(|e| Failure::Fatal(e.to_string()))?
                {
                    return Ok(ReplyEnd::Cancelled);
                }
                if let Some(reason) = choice["finish_reason"].as_str() {
                    finish = Some(match reason {
                        "length" => FinishReason::MaxTokens,
                        _ => FinishReason::Stop,
                    });
                }
            }
        }
    }

    /// The end of the reply: what the rebuilt text still holds.
    fn end(&mut self, reason: FinishReason) -> Result<ReplyEnd, Failure> {
        let pieces = self.text.finish();
        if !self
            .emit(pieces)
            .map_err(|e| Failure::Fatal(e.to_string()))?
        {
            return Ok(ReplyEnd::Cancelled);
        }
        tracing::debug!(
            generated = self.generated.len(),
            budget_closed_thinking = self.text.stopped_by_budget,
            "chat-mode reply finished"
        );
        Ok(ReplyEnd::Finished(reason))
    }

    /// Whether Kestrel must end the reply for the thinking budget; its early-stop text is then
    /// reported as forced, as the embedded engine forces it.
    fn budget_spent(&mut self) -> bool {
        let Some(forced) = self.thinking.as_mut().and_then(|t| t.close_if_spent()) else {
            return false;
        };
        for id in forced {
            if let Some(hook) = &mut self.thinking {
                kestrel_engine::StepHook::on_token(hook, id, true);
            }
            self.generated.push(id);
            let token = GeneratedToken {
                id,
                text: self.inner.tokenizer.decode(&[id]).unwrap_or_default(),
                forced: true,
                logprobs: None,
            };
            self.sender.send(Ok(StreamItem::Token(token)));
        }
        true
    }

    fn take_usage(&mut self, chunk: &Value) {
        let usage = &chunk["usage"];
        if let Some(prompt) = usage["prompt_tokens"].as_u64() {
            self.timings.prompt_tokens = prompt as usize;
        }
        if let Some(cached) = usage["prompt_tokens_details"]["cached_tokens"].as_u64() {
            self.timings.reused_tokens = cached as usize;
        }
        // llama-server reports its cache in its own timings.
        let timings = &chunk["timings"];
        if let Some(cached) = timings["cache_n"].as_u64() {
            self.timings.reused_tokens = cached as usize;
        }
        if let Some(prompt_n) = timings["prompt_n"].as_u64() {
            self.timings.prefilled_tokens = prompt_n as usize;
        }
        if let Some(ms) = timings["prompt_ms"].as_f64() {
            self.timings.prefill_secs = ms / 1000.0;
        }
    }

    /// Tokenizes and reports pieces; `false` when the stream is gone.
    fn emit(&mut self, pieces: Vec<Piece>) -> Result<bool, BackendError> {
        let tokenizer = self.inner.tokenizer.clone();
        for piece in pieces {
            let (text, ids, forced) = match piece {
                Piece::Text(text) => {
                    let ids = tokenizer.encode_plain(&text)?;
                    (text, ids, false)
                }
                Piece::Markup(text) => {
                    let ids = tokenizer.encode_raw(&text)?;
                    (text, ids, false)
                }
                Piece::Forced(text) => {
                    let ids = tokenizer.encode_raw(&text)?;
                    (text, ids, true)
                }
            };
            if self.first_token.is_none() {
                self.first_token = Some(Instant::now());
                self.timings.time_to_first_token_secs = self.started.elapsed().as_secs_f64();
            }
            let mut text = Some(text);
            for id in ids {
                if let Some(hook) = &mut self.thinking {
                    kestrel_engine::StepHook::on_token(hook, id, forced);
                }
                self.generated.push(id);
                let token = GeneratedToken {
                    id,
                    // The piece's text goes with its first id.
                    text: text.take().unwrap_or_default(),
                    forced,
                    logprobs: None,
                };
                if !self.sender.send(Ok(StreamItem::Token(token))) || self.sender.cancelled() {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}
