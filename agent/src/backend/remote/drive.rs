//! One generation on a remote engine, as a sequence of segments.
//!
//! Each segment is one streamed request for the prompt plus every token generated so far. A
//! segment ends at EOS (the generation is done), or at its token count: the turn's limit, the
//! context, or the point where the thinking budget must be checked. After a segment the budget
//! may force Qwen's early-stop ids (appended locally, reported as forced), and the next segment
//! continues after them; the engine's prompt cache makes that cost only the new tokens.
//!
//! Failures before any progress (a refused connection, 429, 5xx, a stream that breaks) are
//! retried with doubling waits; a stream that breaks after some tokens keeps them and the next
//! segment continues from there. A request's failures count from its last progress, so a
//! generation is never lost to one broken stream, and an engine that keeps failing ends it with
//! an error naming the engine, the status and its message.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kestrel_engine::{
    GeneratedToken, SamplingParams, StepHook, TextStream, Timings, TokenLogprobs,
};
use kestrel_prompts::constrain::ConstraintErrors;
use kestrel_prompts::gbnf::{GbnfConstraint, answer_constraint, tool_call_constraint};
use kestrel_prompts::structural_tag::tool_call_structural_tag;
use kestrel_prompts::thinking::ThinkingBudgetHook;
use serde_json::Value;

use super::llama_server::{self, Chunk, SegmentRequest};
use super::vllm::{self, VllmSegment};
use super::{Inner, TokenDialect, transport_error};
use crate::backend::{BackendError, FinishReason, Finished, StreamItem, StreamSender, Submission};

/// Longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How often a wait for the engine looks at the stream's cancellation.
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// How a watched wait ended.
pub(super) enum Watched<T> {
    Done(T),
    Cancelled,
    /// Nothing within the idle timeout.
    Silent,
}

/// How a segment ended.
enum SegmentEnd {
    /// At EOS: the generation is done.
    Eos,
    /// At its token count: the driver decides what comes next.
    Limit,
    /// The stream was cancelled.
    Cancelled,
}

/// Why a segment failed.
enum Failure {
    /// Worth another attempt: the engine was unreachable, busy or failing, or the stream broke.
    Retry {
        message: String,
        /// The engine's `Retry-After`.
        after: Option<Duration>,
    },
    /// Not worth one (the engine refused the request, or stopped answering).
    Fatal(String),
}

/// A generation in progress.
pub(super) struct Driver {
    inner: Arc<Inner>,
    prompt: Vec<u32>,
    max_tokens: usize,
    sampling: SamplingParams,
    thinking: Option<ThinkingBudgetHook>,
    constraint: Option<GbnfConstraint>,
    /// vLLM's form of the tool-call constraint.
    structural_tag: Option<Value>,
    call_open: Option<u32>,
    /// Ids that end the generation.
    stop_ids: Vec<u32>,
    sender: StreamSender,
    generated: Vec<u32>,
    /// Per generated token: the model chose it (it was not forced).
    chosen: Vec<bool>,
    /// `</think>`.
    think_close: Option<u32>,
    /// Where the constraint's failures are reported (taken once one is).
    errors: Option<ConstraintErrors>,
    text: TextStream,
    timings: Timings,
    started: Instant,
    first_token: Option<Instant>,
    segments: usize,
    /// Failed attempts since the last progress.
    failures: u32,
}

impl Driver {
    pub(super) fn new(
        inner: Arc<Inner>,
        submission: Submission,
        sender: StreamSender,
    ) -> Result<Self, BackendError> {
        if inner.dialect == TokenDialect::Vllm {
            return Ok(Self::on_vllm(inner, submission, sender));
        }
        // As with the embedded constraints, a grammar that cannot be built leaves the output
        // unconstrained, and the failure is reported where the hook's errors are read.
        let errors = match (&submission.answer_format, &submission.tool_calls) {
            (Some(format), _) => Some(format.errors()),
            (None, Some(calls)) => Some(calls.errors()),
            (None, None) => None,
        };
        let constraint = match (&submission.answer_format, &submission.tool_calls) {
            (Some(format), calls) => answer_constraint(format, calls.as_ref()).map_err(|e| {
                format.errors().push(format!("the answer's format: {e}"));
            }),
            (None, Some(calls)) => {
                tool_call_constraint(calls).map_err(|e| calls.errors().push(e.to_string()))
            }
            (None, None) => Err(()),
        }
        .ok()
        // Without the server's grammars only a ban on calls is left (said at connection).
        .filter(|c| inner.grammars || *c == GbnfConstraint::NoCalls);
        let call_open = inner.tokenizer.token_id("<tool_call>");
        let think_close = inner.tokenizer.token_id("</think>");
        let stop_ids = submission
            .stop_ids
            .clone()
            .unwrap_or_else(|| inner.tokenizer.eos_ids().to_vec());
        Ok(Self {
            timings: Timings {
                prompt_tokens: submission.prompt.len(),
                ..Timings::default()
            },
            inner,
            prompt: submission.prompt,
            max_tokens: submission.max_tokens,
            sampling: submission.sampling,
            thinking: submission.thinking,
            constraint,
            structural_tag: None,
            call_open,
            stop_ids,
            sender,
            generated: Vec::new(),
            chosen: Vec::new(),
            think_close,
            errors,
            text: TextStream::new(),
            started: Instant::now(),
            first_token: None,
            segments: 0,
            failures: 0,
        })
    }

    /// A generation on vLLM: the tool-call constraint as a structural tag (none for an answer
    /// format, which is reported as unconstrained), `<tool_call>` banned when no call may be made.
    fn on_vllm(inner: Arc<Inner>, submission: Submission, sender: StreamSender) -> Self {
        let errors = match (&submission.answer_format, &submission.tool_calls) {
            (Some(format), _) => Some(format.errors()),
            (None, Some(calls)) => Some(calls.errors()),
            (None, None) => None,
        };
        if let (Some(errors), Some(_)) = (&errors, &submission.answer_format) {
            errors.push("vLLM's token mode does not constrain answer formats yet; the answer was generated without one".into());
        }
        let calls = submission.tool_calls.as_ref();
        let structural_tag = calls
            .filter(|_| inner.grammars && submission.answer_format.is_none())
            .and_then(tool_call_structural_tag);
        let constraint = calls
            .and_then(|c| tool_call_constraint(c).ok())
            .filter(|c| *c == GbnfConstraint::NoCalls);
        let stop_ids = submission
            .stop_ids
            .clone()
            .unwrap_or_else(|| inner.tokenizer.eos_ids().to_vec());
        Self {
            timings: Timings {
                prompt_tokens: submission.prompt.len(),
                ..Timings::default()
            },
            call_open: inner.tokenizer.token_id("<tool_call>"),
            think_close: inner.tokenizer.token_id("</think>"),
            inner,
            prompt: submission.prompt,
            max_tokens: submission.max_tokens,
            sampling: submission.sampling,
            thinking: submission.thinking,
            constraint,
            structural_tag,
            stop_ids,
            sender,
            generated: Vec::new(),
            chosen: Vec::new(),
            errors,
            text: TextStream::new(),
            started: Instant::now(),
            first_token: None,
            segments: 0,
            failures: 0,
        }
    }

    /// Runs the generation to its end and reports it.
    pub(super) async fn run(mut self) {
        let reason = match self.generate().await {
            Ok(reason) => reason,
            Err(e) => {
                self.sender.send(Err(e));
                return;
            }
        };
        let tail = self.text.flush(&self.inner.tokenizer).unwrap_or_default();
        self.timings.generated_tokens = self.generated.len();
        if let Some(first) = self.first_token {
            self.timings.decode_secs = first.elapsed().as_secs_f64();
        }
        tracing::debug!(
            segments = self.segments,
            generated = self.generated.len(),
            reused = self.timings.reused_tokens,
            "remote generation finished"
        );
        self.sender.send(Ok(StreamItem::Finished(Finished {
            reason,
            generated: std::mem::take(&mut self.generated),
            tail,
            timings: std::mem::take(&mut self.timings),
        })));
    }

    async fn generate(&mut self) -> Result<FinishReason, BackendError> {
        let context = self.inner.props.n_ctx;
        loop {
            if self.sender.cancelled() {
                return Ok(FinishReason::Cancelled);
            }
            if let Some(forced) = self.thinking.as_mut().and_then(|t| t.close_if_spent()) {
                for id in forced {
                    if !self.emit(id, true, None)? {
                        return Ok(FinishReason::Cancelled);
                    }
                }
                continue;
            }
            if self.generated.len() >= self.max_tokens {
                return Ok(FinishReason::MaxTokens);
            }
            let room = context.saturating_sub(self.prompt.len() + self.generated.len());
            if room == 0 {
                return Ok(FinishReason::ContextFull);
            }
            let mut n = (self.max_tokens - self.generated.len()).min(room);
            // A grammar over the whole output leaves no room for `<think>`: nothing to check.
            let may_think = !matches!(self.constraint, Some(GbnfConstraint::Whole(_)));
            if let Some(check) = self.thinking.as_ref().and_then(|t| t.tokens_before_check())
                && may_think
            {
                n = n.min(check.max(1));
            }
            let before = self.generated.len();
            match self.segment(n).await {
                Ok(SegmentEnd::Eos) => return Ok(FinishReason::Stop),
                Ok(SegmentEnd::Cancelled) => return Ok(FinishReason::Cancelled),
                Ok(SegmentEnd::Limit) => self.failures = 0,
                Err(Failure::Fatal(message)) => return Err(BackendError::Remote(message)),
                Err(Failure::Retry { message, after }) => {
                    if self.generated.len() > before {
                        self.failures = 0;
                    }
                    self.failures += 1;
                    let attempts = self.inner.options.attempts.max(1);
                    if self.failures >= attempts {
                        return Err(BackendError::Remote(format!(
                            "{message} (gave up after {attempts} attempts)"
                        )));
                    }
                    let wait = after.unwrap_or_else(|| {
                        self.inner.options.backoff * 2u32.pow(self.failures.min(16) - 1)
                    });
                    tracing::warn!(
                        "{message}; trying again in {:.1}s (attempt {} of {attempts})",
                        wait.as_secs_f64(),
                        self.failures + 1
                    );
                    if !self.sleep(wait.min(MAX_BACKOFF)).await {
                        return Ok(FinishReason::Cancelled);
                    }
                }
            }
        }
    }

    async fn sleep(&self, wait: Duration) -> bool {
        sleep(&self.sender, wait).await
    }

    /// One streamed request for up to `n` tokens.
    async fn segment(&mut self, n: usize) -> Result<SegmentEnd, Failure> {
        self.segments += 1;
        let mut prompt = Vec::with_capacity(self.prompt.len() + self.generated.len());
        prompt.extend_from_slice(&self.prompt);
        prompt.extend_from_slice(&self.generated);
        // A grammar for the whole output applies only from its start; after that, the calls
        // that follow are constrained lazily by the same grammar.
        let constraint = self.segment_constraint();
        let (url, body) = match self.inner.dialect {
            TokenDialect::LlamaServer => (
                format!("{}/completion", self.inner.root),
                SegmentRequest {
                    prompt: &prompt,
                    n_predict: n,
                    sampling: &self.sampling,
                    constraint: constraint.as_ref(),
                    call_open: self.call_open,
                    model: self.inner.options.model.as_deref(),
                }
                .body(),
            ),
            TokenDialect::Vllm => (
                format!("{}/v1/completions", self.inner.root),
                VllmSegment {
                    model: &self.inner.props.model,
                    prompt: &prompt,
                    max_tokens: n,
                    sampling: &self.sampling,
                    stop_ids: &self.stop_ids,
                    structural_tag: self.structural_tag.as_ref(),
                    ban: self
                        .call_open
                        .filter(|_| constraint == Some(GbnfConstraint::NoCalls)),
                }
                .body(),
            ),
        };
        let idle = self.inner.options.idle_timeout;
        let silent = || Failure::Retry {
            message: format!("engine {url} sent nothing for {}s", idle.as_secs_f64()),
            after: None,
        };
        let request = self
            .inner
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send();
        let response = match self.watch(request, idle).await {
            Watched::Done(response) => response.map_err(|e| Failure::Retry {
                message: format!("engine {url}: {}", transport_error(&e)),
                after: None,
            })?,
            Watched::Cancelled => return Ok(SegmentEnd::Cancelled),
            Watched::Silent => return Err(silent()),
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
            let message = format!(
                "engine {url}: HTTP {status}: {}",
                llama_server::error_message(&text)
            );
            return Err(if status.as_u16() == 429 || status.is_server_error() {
                Failure::Retry { message, after }
            } else {
                Failure::Fatal(message)
            });
        }
        let mut body = response.bytes_stream();
        let mut buffer = String::new();
        let mut pending = Vec::new();
        let mut stopped = false;
        let mut finish = None;
        loop {
            if self.sender.cancelled() {
                return Ok(SegmentEnd::Cancelled);
            }
            let next = match self.watch(body.next(), idle).await {
                Watched::Done(next) => next,
                Watched::Cancelled => return Ok(SegmentEnd::Cancelled),
                // The next attempt continues after what came (the engine may have recovered).
                Watched::Silent => return Err(silent()),
            };
            let bytes = match next {
                None if stopped => return Ok(SegmentEnd::Eos),
                None => {
                    return Err(Failure::Retry {
                        message: format!(
                            "engine {url}: the stream ended before the generation did"
                        ),
                        after: None,
                    });
                }
                Some(Err(e)) => {
                    return Err(Failure::Retry {
                        message: format!("engine {url}: the stream broke: {}", transport_error(&e)),
                        after: None,
                    });
                }
                Some(Ok(bytes)) => bytes,
            };
            // Events are split at byte boundaries; only complete UTF-8 goes into the buffer.
            pending.extend_from_slice(&bytes);
            let valid = match std::str::from_utf8(&pending) {
                Ok(text) => text.len(),
                Err(e) => e.valid_up_to(),
            };
            buffer.push_str(std::str::from_utf8(&pending[..valid]).unwrap_or_default());
            pending.drain(..valid);
            for event in llama_server::take_events(&mut buffer) {
                if event.trim() == "[DONE]" {
                    return Ok(if stopped || finish.as_deref() == Some("stop") {
                        SegmentEnd::Eos
                    } else {
                        SegmentEnd::Limit
                    });
                }
                let value: serde_json::Value = serde_json::from_str(&event).map_err(|e| {
                    Failure::Fatal(format!(
                        "engine {url} sent an unreadable event ({e}): {event}"
                    ))
                })?;
                if let Some(error) = value.get("error") {
                    return Err(Failure::Fatal(format!(
                        "engine {url}: {}",
                        llama_server::error_message(
                            &serde_json::json!({"error": error}).to_string()
                        )
                    )));
                }
                let chunk: Chunk = match self.inner.dialect {
                    TokenDialect::Vllm => vllm::chunk(&value, &mut finish),
                    TokenDialect::LlamaServer => serde_json::from_value(value).map_err(|e| {
                        Failure::Fatal(format!(
                            "engine {url} sent an unexpected event ({e}): {event}"
                        ))
                    })?,
                };
                if stopped && !chunk.tokens.is_empty() {
                    // The engine does not count that id as an end: stop reading.
                    return Ok(SegmentEnd::Eos);
                }
                for (i, id) in chunk.tokens.into_iter().enumerate() {
                    let logprobs = self.sampling.logprobs.and_then(|top| {
                        chunk
                            .completion_probabilities
                            .get(i)
                            .map(|p| p.to_logprobs(top))
                    });
                    match self.emit(id, false, logprobs) {
                        Ok(true) => {}
                        Ok(false) => return Ok(SegmentEnd::Cancelled),
                        Err(e) => return Err(Failure::Fatal(e.to_string())),
                    }
                    // Kestrel's stop ids end the generation, whatever the engine counts as EOS
                    // (the engine's last event, with its figures, should follow).
                    if self.stop_ids.contains(&id) {
                        stopped = true;
                        break;
                    }
                }
                if chunk.stop && stopped {
                    self.take_timings(chunk.timings.unwrap_or_default());
                    return Ok(SegmentEnd::Eos);
                }
                if chunk.stop {
                    self.take_timings(chunk.timings.unwrap_or_default());
                    return Ok(match chunk.stop_type.as_deref() {
                        Some("eos") => SegmentEnd::Eos,
                        _ => SegmentEnd::Limit,
                    });
                }
            }
        }
    }

    /// The constraint of the next segment. A grammar applies from where it starts, so a segment
    /// that continues after the thinking was closed takes the grammar of what follows it, and one
    /// that continues a broken stream after the grammar had begun goes on without it (reported).
    fn segment_constraint(&mut self) -> Option<GbnfConstraint> {
        let closed_at = self
            .think_close
            .and_then(|close| self.generated.iter().position(|&id| id == close));
        // Tokens the model chose after the grammar began (forced ones are not the model's).
        let chosen_since = |from: usize| self.chosen[from..].iter().any(|&c| c);
        let (constraint, begun) = match &self.constraint {
            Some(GbnfConstraint::Whole(g)) => {
                (Some(GbnfConstraint::Whole(g.clone())), chosen_since(0))
            }
            Some(GbnfConstraint::AfterThinking { after, .. }) if closed_at.is_some() => {
                let from = closed_at.map_or(0, |at| at + 1);
                (
                    Some(GbnfConstraint::Whole(after.clone())),
                    chosen_since(from),
                )
            }
            other => (other.clone(), false),
        };
        if !begun {
            return constraint;
        }
        if let Some(errors) = self.errors.take() {
            errors.push(
                "the engine's stream broke inside constrained output; the rest of it was generated without the grammar"
                    .into(),
            );
        }
        None
    }

    async fn watch<T>(
        &self,
        future: impl std::future::Future<Output = T>,
        idle: Duration,
    ) -> Watched<T> {
        watch(&self.sender, future, idle).await
    }

    /// Records a finished segment's figures: the first one's prompt is the generation's.
    fn take_timings(&mut self, t: llama_server::ChunkTimings) {
        if self.segments == 1 {
            self.timings.reused_tokens = t.cache_n;
            self.timings.prefilled_tokens = t.prompt_n;
            self.timings.prefill_secs = t.prompt_ms / 1000.0;
        }
    }

    /// Reports one token; `false` when the stream is gone.
    fn emit(
        &mut self,
        id: u32,
        forced: bool,
        logprobs: Option<TokenLogprobs>,
    ) -> Result<bool, BackendError> {
        if let Some(budget) = &mut self.thinking {
            budget.on_token(id, forced);
        }
        if self.first_token.is_none() {
            self.first_token = Some(Instant::now());
            self.timings.time_to_first_token_secs = self.started.elapsed().as_secs_f64();
        }
        self.generated.push(id);
        self.chosen.push(!forced);
        // A stop token's own spelling (`<|im_end|>`) is not part of the text.
        let text = if self.stop_ids.contains(&id) {
            String::new()
        } else {
            self.text.push(&self.inner.tokenizer, id)?
        };
        let token = GeneratedToken {
            id,
            text,
            forced,
            logprobs,
        };
        Ok(self.sender.send(Ok(StreamItem::Token(token))) && !self.sender.cancelled())
    }
}

/// Waits, unless the stream is cancelled first (then `false`).
pub(super) async fn sleep(sender: &StreamSender, wait: Duration) -> bool {
    let end = Instant::now() + wait;
    while Instant::now() < end {
        if sender.cancelled() {
            return false;
        }
        tokio::time::sleep(CANCEL_POLL.min(end - Instant::now())).await;
    }
    true
}

/// Waits for `future`, up to `idle`, while watching for the stream's cancellation (a silent
/// engine must not keep a cancelled generation waiting).
pub(super) async fn watch<T>(
    sender: &StreamSender,
    future: impl std::future::Future<Output = T>,
    idle: Duration,
) -> Watched<T> {
    let deadline = Instant::now() + idle;
    tokio::pin!(future);
    loop {
        tokio::select! {
            value = &mut future => return Watched::Done(value),
            _ = tokio::time::sleep(CANCEL_POLL) => {
                if sender.cancelled() {
                    return Watched::Cancelled;
                }
                if Instant::now() >= deadline {
                    return Watched::Silent;
                }
            }
        }
    }
}
