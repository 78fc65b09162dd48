//! `POST /v1/completions`: raw text completion of a prompt given as text or as token ids, whole or
//! streamed, with the chat endpoint's sampling fields and stop sequences.
//!
//! Text is tokenized as `kestrel generate` does (special-token text becomes the special token),
//! so a client that renders its own prompts (a remote agent loop) gets exactly its tokens; with
//! `return_token_ids: true` the answer carries the generated ids too (vLLM's field).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, stream};
use kestrel::backend::{FinishReason, StreamItem, Submission};
use kestrel::reply::ReplyEvent;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::Server;
use super::answer::Answer;
use super::error::ApiError;
use super::metrics::Outcome;
use super::request::{count, sampling, stop_sequences, streaming};
use super::spawn_in_span;
use kestrel_engine::{MAX_TOP_LOGPROBS, TokenLogprobs};

/// OpenAI's default for this endpoint.
const DEFAULT_MAX_TOKENS: usize = 16;

pub(super) async fn completions(State(server): State<Arc<Server>>, body: Bytes) -> Response {
    let metrics = server.metrics.clone();
    let parsed = match parse(&server, &body) {
        Ok(p) => p,
        Err(e) => {
            metrics.ended(Outcome::Invalid);
            return e.into_response();
        }
    };
    let Some(slot) = metrics.admit() else {
        return ApiError::overloaded(metrics.capacity()).into_response();
    };
    // A whole answer always has its usage; a stream's last chunk when asked.
    let (prompt_len, stream, include_usage, ids_back) = (
        parsed.submission.prompt.len(),
        parsed.stream,
        parsed.include_usage || !parsed.stream,
        parsed.return_token_ids,
    );
    let mut tokens = match server.replier.backend().submit(parsed.submission) {
        Ok(t) => t,
        Err(e) => {
            metrics.ended(Outcome::Failed);
            return ApiError::from(kestrel::reply::ReplyError::from(e)).into_response();
        }
    };
    let mut answer = Answer::new(&server, true, parsed.stop);
    answer.id = answer.id.replace("chatcmpl-", "cmpl-");
    let mut logprobs = parsed.logprobs.then(|| Legacy::new(server.clone()));
    let (tx, rx) = mpsc::channel::<Value>(64);
    // One task generates for both forms; the whole answer is the stream's chunks put together.
    spawn_in_span(async move {
        let _slot = slot;
        let chunk = |answer: &Answer, text: &str, lp: &mut Option<Legacy>, reason: Option<&str>| {
            let logprobs = lp.as_mut().map_or(Value::Null, Legacy::take);
            json!({"id": answer.id, "object": "text_completion", "created": answer.created,
                   "model": answer.model,
                   "choices": [{"index": 0, "text": text, "logprobs": logprobs,
                                "finish_reason": reason}]})
        };
        while let Some(item) = tokens.next().await {
            let item = match item {
                Ok(item) => item,
                Err(e) => {
                    metrics.ended(Outcome::Failed);
                    let _ = tx
                        .send(ApiError::from(kestrel::reply::ReplyError::from(e)).body())
                        .await;
                    return;
                }
            };
            match item {
                StreamItem::Token(token) => {
                    if let (Some(lp), Some(scored)) = (&mut logprobs, &token.logprobs)
                        && !answer.stopped
                    {
                        lp.push(token.id, scored);
                    }
                    let (delta, stop) = answer.take(ReplyEvent::Content(token.text));
                    if let Some(text) = delta.as_ref().and_then(|d| d["content"].as_str())
                        && tx
                            .send(chunk(&answer, text, &mut logprobs, None))
                            .await
                            .is_err()
                    {
                        return;
                    }
                    if stop {
                        tokens.cancel();
                    }
                }
                StreamItem::Finished(finished) => {
                    if !answer.stopped {
                        answer.take(ReplyEvent::Content(finished.tail));
                    }
                    let rest = answer.flush().unwrap_or_default();
                    let reason = match finished.reason {
                        _ if answer.stopped => "stop",
                        FinishReason::MaxTokens | FinishReason::ContextFull => "length",
                        _ => "stop",
                    };
                    let mut last = chunk(&answer, &rest, &mut logprobs, Some(reason));
                    if ids_back {
                        last["choices"][0]["token_ids"] = json!(finished.generated);
                    }
                    let end = kestrel::reply::ReplyEnd {
                        reason: finished.reason,
                        tool_calls: 0,
                        prompt_tokens: prompt_len,
                        cached_tokens: finished.timings.reused_tokens,
                        completion_tokens: finished.generated.len(),
                        reasoning_tokens: 0,
                    };
                    if include_usage {
                        last["usage"] = super::answer::usage(&end);
                    }
                    metrics.tokens(&end);
                    metrics.ended(Outcome::Ok);
                    let _ = tx.send(last).await;
                    return;
                }
            }
        }
    });
    if stream {
        let events = stream::unfold((rx, false), |(mut rx, done)| async move {
            if done {
                return None;
            }
            Some(match rx.recv().await {
                Some(value) => (Event::default().data(value.to_string()), (rx, false)),
                None => (Event::default().data("[DONE]"), (rx, true)),
            })
        })
        .map(Ok::<_, std::convert::Infallible>);
        return Sse::new(events).into_response();
    }
    let mut rx = rx;
    // The last chunk carries the ending; the text is every chunk's, gathered once.
    let mut whole: Option<Value> = None;
    let mut text = String::new();
    let mut gathered = Map::new();
    while let Some(chunk) = rx.recv().await {
        if chunk.get("error").is_some() {
            return (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(chunk),
            )
                .into_response();
        }
        text.push_str(chunk["choices"][0]["text"].as_str().unwrap_or(""));
        if let Some(lp) = chunk["choices"][0]["logprobs"].as_object() {
            Legacy::append(&mut gathered, lp);
        }
        whole = Some(chunk);
    }
    if let Some(w) = whole.as_mut() {
        w["choices"][0]["text"] = json!(text);
        if !gathered.is_empty() {
            w["choices"][0]["logprobs"] = Value::Object(gathered);
        }
    }
    whole.map_or_else(
        || {
            ApiError::from(kestrel::reply::ReplyError::Backend(
                kestrel::backend::BackendError::Lost,
            ))
            .into_response()
        },
        |w| axum::Json(w).into_response(),
    )
}

struct Parsed {
    submission: Submission,
    stream: bool,
    include_usage: bool,
    return_token_ids: bool,
    stop: Vec<String>,
    logprobs: bool,
}

/// Log-probabilities in the completions endpoint's legacy shape: parallel lists of tokens, their
/// log-probabilities, their alternatives (token to log-probability) and their byte offsets in
/// the text; a stream chunk carries those of the tokens since the last one.
struct Legacy {
    server: Arc<Server>,
    offset: usize,
    unsent: Map<String, Value>,
}

impl Legacy {
    const KEYS: [&str; 4] = ["tokens", "token_logprobs", "top_logprobs", "text_offset"];

    fn new(server: Arc<Server>) -> Self {
        Self {
            server,
            offset: 0,
            unsent: Map::new(),
        }
    }

    fn push(&mut self, id: u32, scored: &TokenLogprobs) {
        let text = |id| String::from_utf8_lossy(self.server.replier.token_bytes(id)).to_string();
        let token = text(id);
        let top: Map<String, Value> = scored
            .top
            .iter()
            .map(|&(t, l)| (text(t), json!(l)))
            .collect();
        let entry = [
            json!(token),
            json!(scored.logprob),
            Value::Object(top),
            json!(self.offset),
        ];
        self.offset += token.len();
        for (key, value) in Self::KEYS.into_iter().zip(entry) {
            if let Value::Array(list) = self.unsent.entry(key).or_insert_with(|| json!([])) {
                list.push(value);
            }
        }
    }

    /// The lists since the last call.
    fn take(&mut self) -> Value {
        let mut taken = std::mem::take(&mut self.unsent);
        for key in Self::KEYS {
            taken.entry(key).or_insert_with(|| json!([]));
        }
        Value::Object(taken)
    }

    /// Appends a chunk's lists to `whole`'s.
    fn append(whole: &mut Map<String, Value>, chunk: &Map<String, Value>) {
        for key in Self::KEYS {
            let more = chunk
                .get(key)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if let Value::Array(list) = whole.entry(key).or_insert_with(|| json!([])) {
                list.extend(more);
            }
        }
    }
}

fn parse(server: &Server, body: &[u8]) -> Result<Parsed, ApiError> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("", format!("the body is not valid JSON: {e}")))?;
    let Value::Object(body) = body else {
        return Err(ApiError::invalid("", "the body must be a JSON object"));
    };
    for key in ["echo", "suffix", "best_of", "logit_bias"] {
        let default = if key == "best_of" {
            json!(1)
        } else {
            json!(false)
        };
        if body.get(key).is_some_and(|v| !v.is_null() && v != &default) {
            return Err(ApiError::invalid(
                key,
                format!("`{key}` is not supported by this server yet"),
            ));
        }
    }
    if body
        .get("n")
        .is_some_and(|n| !n.is_null() && n != &json!(1))
    {
        return Err(ApiError::invalid("n", "only `n: 1` is supported"));
    }
    let backend = server.replier.backend();
    let prompt = prompt_ids(&body, backend.tokenizer(), backend.vocab_size())?;
    let room = backend.context_len().saturating_sub(prompt.len());
    if room == 0 {
        return Err(ApiError::from(kestrel::reply::ReplyError::ContextFull {
            prompt: prompt.len(),
            context: backend.context_len(),
        }));
    }
    let max_tokens = count(&body, "max_tokens")?.unwrap_or(DEFAULT_MAX_TOKENS);
    if max_tokens == 0 {
        return Err(ApiError::invalid(
            "max_tokens",
            "`max_tokens` must be at least 1",
        ));
    }
    let (stream, include_usage) = streaming(&body)?;
    let mut sampling = sampling(&body, false)?;
    // The legacy form: `logprobs: N` asks for N alternatives (0: the chosen token's only).
    sampling.logprobs = count(&body, "logprobs")?;
    if let Some(n) = sampling.logprobs.filter(|n| *n > MAX_TOP_LOGPROBS) {
        return Err(ApiError::invalid(
            "logprobs",
            format!("`logprobs` must be at most {MAX_TOP_LOGPROBS}, got {n}"),
        ));
    }
    Ok(Parsed {
        logprobs: sampling.logprobs.is_some(),
        submission: Submission::new(prompt, max_tokens.min(room), sampling),
        stream,
        include_usage,
        return_token_ids: super::request::flag(&body, "return_token_ids")?.unwrap_or(false),
        stop: stop_sequences(&body)?,
    })
}

/// `prompt`: one text, or one sequence of token ids (also as a one-element list).
fn prompt_ids(
    body: &Map<String, Value>,
    tokenizer: &kestrel_engine::Tokenizer,
    vocab: usize,
) -> Result<Vec<u32>, ApiError> {
    let invalid = || {
        ApiError::invalid(
            "prompt",
            "`prompt` must be one text or one list of token ids (one prompt per request)",
        )
    };
    let value = match body.get("prompt") {
        Some(Value::Array(items)) if items.len() == 1 && !items[0].is_number() => &items[0],
        Some(v) => v,
        None => return Err(ApiError::invalid("prompt", "`prompt` is required")),
    };
    let ids = match value {
        Value::String(text) => tokenizer.encode_raw(text).map_err(|e| {
            ApiError::invalid("prompt", format!("`prompt` cannot be tokenized: {e}"))
        })?,
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_u64().and_then(|id| u32::try_from(id).ok()))
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(invalid)?,
        _ => return Err(invalid()),
    };
    if ids.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` is empty"));
    }
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(ApiError::invalid(
            "prompt",
            format!("token id {bad} is outside the vocabulary of {vocab}"),
        ));
    }
    Ok(ids)
}
