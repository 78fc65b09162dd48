//! One answer in OpenAI's chat shape, built from a reply's events: what it has said so far
//! (reasoning, content held back while it could start a stop sequence, calls, log-probabilities)
//! and the deltas to stream. Chat Completions, Completions, Responses and Messages all read their
//! replies through it; `collect`, `message_of` and `completion` make the whole, non-streamed
//! chat completion.

use std::sync::atomic::{AtomicU64, Ordering};

use kestrel::backend::FinishReason;
use kestrel::reply::{ContentLogprob, Reply, ReplyEnd, ReplyEvent};
use serde_json::{Value, json};

use super::error::ApiError;
use super::{Server, unix_time};

/// What one answer has said so far, and its identity.
pub(super) struct Answer {
    pub(super) id: String,
    pub(super) model: String,
    pub(super) created: u64,
    parallel_tool_calls: bool,
    stop: Vec<String>,
    reasoning: String,
    pub(super) content: String,
    /// Content not yet sent: held while it could be the start of a stop sequence.
    held: String,
    pub(super) stopped: bool,
    /// The stop sequence that ended the answer, if one did.
    pub(super) matched_stop: Option<String>,
    calls: Vec<Value>,
    /// The answer's token log-probabilities, when the request asked for them.
    logprobs: Option<Logprobs>,
    /// Stream a call's name as soon as it is written and its arguments piece by piece (else a
    /// call is sent once complete).
    pub(super) stream_arguments: bool,
    /// The argument text streamed for each begun call.
    streamed: Vec<(usize, String)>,
    /// Calls made by earlier rounds of the same answer (so that call ids stay unique).
    pub(super) earlier_calls: usize,
}

/// Log-probabilities in OpenAI's shape: all of them, and those a stream has not sent yet.
#[derive(Default)]
struct Logprobs {
    all: Vec<Value>,
    unsent: Vec<Value>,
}

/// One token's entry in `logprobs.content`.
fn logprob_entry(lp: &ContentLogprob) -> Value {
    let token = |bytes: &[u8], logprob: f32| {
        json!({
            "token": String::from_utf8_lossy(bytes),
            "logprob": logprob,
            "bytes": bytes,
        })
    };
    let mut entry = token(&lp.bytes, lp.logprob);
    entry["top_logprobs"] = lp.top.iter().map(|(b, l)| token(b, *l)).collect();
    entry
}

impl Answer {
    pub(super) fn new(server: &Server, parallel_tool_calls: bool, stop: Vec<String>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = format!("chatcmpl-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        Self::named(
            id,
            server.model.clone(),
            unix_time(),
            parallel_tool_calls,
            stop,
        )
    }

    /// An empty answer with this identity.
    fn named(
        id: String,
        model: String,
        created: u64,
        parallel_tool_calls: bool,
        stop: Vec<String>,
    ) -> Self {
        Self {
            id,
            model,
            created,
            parallel_tool_calls,
            stop,
            reasoning: String::new(),
            content: String::new(),
            held: String::new(),
            stopped: false,
            matched_stop: None,
            calls: Vec::new(),
            logprobs: None,
            stream_arguments: false,
            streamed: Vec::new(),
            earlier_calls: 0,
        }
    }

    fn call_id(&self, index: usize) -> String {
        let number = self.earlier_calls + index;
        format!("call_{}_{number}", self.id.trim_start_matches("chatcmpl-"))
    }

    /// Keeps the answer's token log-probabilities (for a request that asks for them).
    pub(super) fn keep_logprobs(&mut self) {
        self.logprobs = Some(Logprobs::default());
    }

    /// Whether the answer called tools.
    pub(super) fn made_calls(&self) -> bool {
        !self.calls.is_empty()
    }

    /// The calls made, in OpenAI's shape (arguments as JSON text).
    pub(super) fn calls(&self) -> &[Value] {
        &self.calls
    }

    /// The thinking text.
    pub(super) fn reasoning(&self) -> &str {
        &self.reasoning
    }

    /// Takes one event; returns the delta to stream (None: nothing to send) and whether the
    /// generation should stop (a stop sequence, or the one call allowed is made).
    pub(super) fn take(&mut self, event: ReplyEvent) -> (Option<Value>, bool) {
        if self.stopped {
            return (None, false);
        }
        match event {
            ReplyEvent::Reasoning(text) => {
                self.reasoning.push_str(&text);
                (
                    Some(json!({"reasoning_content": text, "reasoning": text})),
                    false,
                )
            }
            ReplyEvent::Content(text) => {
                self.held.push_str(&text);
                let (send, stop) = self.release();
                (send.map(|s| json!({"content": s})), stop)
            }
            ReplyEvent::ToolCallBegin { index, name } if self.stream_arguments => {
                self.streamed.push((index, String::new()));
                let call = json!({
                    "index": index,
                    "id": self.call_id(index),
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                });
                (Some(json!({"tool_calls": [call]})), false)
            }
            ReplyEvent::ToolCallArguments { index, text } => {
                let Some((_, sent)) = self.streamed.iter_mut().find(|(i, _)| *i == index) else {
                    return (None, false);
                };
                sent.push_str(&text);
                let piece = json!({"index": index, "function": {"arguments": text}});
                (Some(json!({"tool_calls": [piece]})), false)
            }
            ReplyEvent::ToolCallBegin { .. } => (None, false),
            ReplyEvent::ToolCall {
                index,
                name,
                arguments,
            } => {
                let call = json!({
                    "id": self.call_id(index),
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                });
                self.calls.push(call.clone());
                let stop = !self.parallel_tool_calls;
                self.stopped = stop;
                let delta = match self.streamed.iter().find(|(i, _)| *i == index) {
                    None => call_delta(index, &call),
                    // Arguments the model quoted were not streamed: they come whole now.
                    Some((_, sent)) if sent.is_empty() => {
                        json!({"index": index, "function": {"arguments": arguments}})
                    }
                    Some((_, sent)) => {
                        let same = serde_json::from_str::<Value>(sent).ok()
                            == serde_json::from_str::<Value>(&arguments).ok();
                        if !same {
                            tracing::warn!(
                                streamed = %sent,
                                repaired = %arguments,
                                "a streamed call's arguments needed repair; the stream has the model's text"
                            );
                        }
                        return (None, stop);
                    }
                };
                (Some(json!({"tool_calls": [delta]})), stop)
            }
            ReplyEvent::Logprob(lp) => {
                if let Some(logprobs) = &mut self.logprobs {
                    let entry = logprob_entry(&lp);
                    logprobs.all.push(entry.clone());
                    logprobs.unsent.push(entry);
                }
                (None, false)
            }
            ReplyEvent::Done(_) => (None, false),
        }
    }

    /// Moves held content out, up to a stop sequence (then stopping) or up to the longest tail
    /// that could still begin one.
    fn release(&mut self) -> (Option<String>, bool) {
        if let Some((at, stop)) = self
            .stop
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|at| (at, s)))
            .min()
        {
            self.matched_stop = Some(stop.clone());
            self.held.truncate(at);
            self.stopped = true;
            let text = std::mem::take(&mut self.held);
            self.content.push_str(&text);
            return ((!text.is_empty()).then_some(text), true);
        }
        let keep = self
            .stop
            .iter()
            .map(|s| longest_prefix_suffix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let text: String = self.held.drain(..cut).collect();
        self.content.push_str(&text);
        ((!text.is_empty()).then_some(text), false)
    }

    /// What is still held when the generation ends.
    pub(super) fn flush(&mut self) -> Option<String> {
        let text = std::mem::take(&mut self.held);
        self.content.push_str(&text);
        (!text.is_empty()).then_some(text)
    }

    pub(super) fn finish_reason(&self, end: &ReplyEnd) -> &'static str {
        if !self.calls.is_empty() {
            "tool_calls"
        } else if self.stopped {
            "stop"
        } else {
            match end.reason {
                FinishReason::MaxTokens | FinishReason::ContextFull => "length",
                _ => "stop",
            }
        }
    }

    /// A stream chunk; one that carries content, or ends the answer, carries the
    /// log-probabilities not sent yet.
    pub(super) fn chunk(&mut self, delta: Value, finish_reason: Option<&str>) -> Value {
        let logprobs = match &mut self.logprobs {
            Some(lp) if delta.get("content").is_some() || finish_reason.is_some() => {
                json!({"content": std::mem::take(&mut lp.unsent), "refusal": null})
            }
            _ => Value::Null,
        };
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
        })
    }
}

/// A complete call as stream deltas carry it: keyed by `index`.
fn call_delta(index: usize, call: &Value) -> Value {
    let mut delta = call.clone();
    if let Some(object) = delta.as_object_mut() {
        object.insert("index".into(), json!(index));
    }
    delta
}

/// The length of the longest suffix of `text` that is a proper prefix of `stop`.
fn longest_prefix_suffix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&n| stop.is_char_boundary(n) && text.ends_with(&stop[..n]))
        .unwrap_or(0)
}

pub(super) fn usage(end: &ReplyEnd) -> Value {
    json!({
        "prompt_tokens": end.prompt_tokens,
        "completion_tokens": end.completion_tokens,
        "total_tokens": end.prompt_tokens + end.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": end.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": end.reasoning_tokens},
    })
}

/// Runs a reply to its end, feeding `answer`; the reply's end.
pub(super) async fn collect(reply: &mut Reply, answer: &mut Answer) -> Result<ReplyEnd, ApiError> {
    let mut end = None;
    while let Some(events) = reply.next().await {
        for event in events? {
            if let ReplyEvent::Done(e) = &event {
                end = Some(e.clone());
            }
            if answer.take(event).1 {
                reply.cancel();
            }
        }
    }
    answer.flush();
    end.ok_or_else(|| {
        ApiError::from(kestrel::reply::ReplyError::Backend(
            kestrel::backend::BackendError::Lost,
        ))
    })
}

/// A complete answer as the assistant message of a chat completion.
pub(super) fn message_of(answer: &Answer) -> Value {
    let mut message = json!({
        "role": "assistant",
        "content": if answer.content.is_empty() && !answer.calls.is_empty() {
            Value::Null
        } else {
            json!(answer.content)
        },
    });
    if !answer.reasoning.is_empty() {
        message["reasoning_content"] = json!(answer.reasoning);
        message["reasoning"] = json!(answer.reasoning);
    }
    if !answer.calls.is_empty() {
        message["tool_calls"] = json!(answer.calls);
    }
    message
}

/// The chat completion for `message`, the last answer and the token counts.
pub(super) fn completion(answer: &Answer, message: Value, end: &ReplyEnd) -> Value {
    json!({
        "id": answer.id,
        "object": "chat.completion",
        "created": answer.created,
        "model": answer.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": answer.logprobs.as_ref().map_or(Value::Null, |lp| {
                json!({"content": lp.all, "refusal": null})
            }),
            "finish_reason": answer.finish_reason(end),
        }],
        "usage": usage(end),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_sequences_cut_the_content_and_hold_a_possible_start() {
        let server_less = |stop: &[&str]| {
            let stop = stop.iter().map(|s| s.to_string()).collect();
            Answer::named("chatcmpl-1".into(), "m".into(), 0, true, stop)
        };
        let mut answer = server_less(&["END"]);
        assert_eq!(
            answer.take(ReplyEvent::Content("abc E".into())),
            (Some(json!({"content": "abc "})), false)
        );
        assert_eq!(
            answer.take(ReplyEvent::Content("Nd".into())),
            (Some(json!({"content": "ENd"})), false)
        );
        assert_eq!(
            answer.take(ReplyEvent::Content("xEN".into())),
            (Some(json!({"content": "x"})), false)
        );
        assert_eq!(answer.take(ReplyEvent::Content("D!".into())), (None, true));
        assert_eq!(answer.content, "abc ENdx");
        assert_eq!(answer.matched_stop.as_deref(), Some("END"));
        assert_eq!(
            answer.take(ReplyEvent::Content("more".into())),
            (None, false)
        );
    }
}
