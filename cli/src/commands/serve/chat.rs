//! `POST /v1/chat/completions`, non-streaming and streaming (server-sent events).
//!
//! The body is read as JSON and checked field by field, so an error names the field. Messages
//! become Kestrel's [`ChatRequest`] (OpenAI's shape; `reasoning` is accepted for
//! `reasoning_content`, `developer` for `system`); tool calls come back in `message.tool_calls`,
//! never in `content`, and reasoning in both `reasoning_content` and `reasoning`, the two names
//! clients read. In a stream, a call is sent when it is complete: a first delta with its `id`,
//! `type` and name, then one with its arguments.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream;
use kestrel::backend::FinishReason;
use kestrel::prompts::constrain::{ToolChoice, ToolChoiceMode};
use kestrel::prompts::messages::{ChatRequest, Content, Message, Role};
use kestrel::prompts::thinking::preset;
use kestrel::reply::{ReplyEnd, ReplyEvent, ReplyRequest};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::{Server, unix_time};

/// Keys of a message that carry nothing Kestrel needs when null or empty (the SDKs echo them).
const IGNORED_MESSAGE_KEYS: [&str; 4] = ["refusal", "annotations", "audio", "function_call"];

/// Request fields this endpoint does not implement yet, refused by name rather than ignored.
const UNSUPPORTED: [&str; 5] = [
    "logprobs",
    "top_logprobs",
    "response_format",
    "logit_bias",
    "audio",
];

/// A parsed request: what to generate and how to answer.
struct Parsed {
    reply: ReplyRequest,
    stream: bool,
    include_usage: bool,
    parallel_tool_calls: bool,
    stop: Vec<String>,
}

pub(super) async fn completions(State(server): State<Arc<Server>>, body: Bytes) -> Response {
    let parsed = match parse(&body) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let reply = match server.replier.start(parsed.reply) {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let answer = Answer::new(&server, parsed.parallel_tool_calls, parsed.stop);
    if parsed.stream {
        stream_reply(reply, answer, parsed.include_usage)
    } else {
        whole_reply(reply, answer).await
    }
}

/// What one answer has said so far, and its identity.
struct Answer {
    id: String,
    model: String,
    created: u64,
    parallel_tool_calls: bool,
    stop: Vec<String>,
    reasoning: String,
    content: String,
    /// Content not yet sent: held while it could be the start of a stop sequence.
    held: String,
    stopped: bool,
    calls: Vec<Value>,
}

impl Answer {
    fn new(server: &Server, parallel_tool_calls: bool, stop: Vec<String>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self {
            id: format!("chatcmpl-{}", NEXT.fetch_add(1, Ordering::Relaxed)),
            model: server.model.clone(),
            created: unix_time(),
            parallel_tool_calls,
            stop,
            reasoning: String::new(),
            content: String::new(),
            held: String::new(),
            stopped: false,
            calls: Vec::new(),
        }
    }

    /// Takes one event; returns the delta to stream (None: nothing to send) and whether the
    /// generation should stop (a stop sequence, or the one call allowed is made).
    fn take(&mut self, event: ReplyEvent) -> (Option<Value>, bool) {
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
            ReplyEvent::ToolCall {
                index,
                name,
                arguments,
            } => {
                let call = json!({
                    "id": format!("call_{}_{index}", self.id.trim_start_matches("chatcmpl-")),
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                });
                self.calls.push(call.clone());
                let stop = !self.parallel_tool_calls;
                self.stopped = stop;
                (
                    Some(json!({"tool_calls": [call_delta(index, &call)]})),
                    stop,
                )
            }
            ReplyEvent::Done(_) => (None, false),
        }
    }

    /// Moves held content out, up to a stop sequence (then stopping) or up to the longest tail
    /// that could still begin one.
    fn release(&mut self) -> (Option<String>, bool) {
        if let Some(at) = self
            .stop
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
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
    fn flush(&mut self) -> Option<String> {
        let text = std::mem::take(&mut self.held);
        self.content.push_str(&text);
        (!text.is_empty()).then_some(text)
    }

    fn finish_reason(&self, end: &ReplyEnd) -> &'static str {
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

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
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

fn usage(end: &ReplyEnd) -> Value {
    json!({
        "prompt_tokens": end.prompt_tokens,
        "completion_tokens": end.completion_tokens,
        "total_tokens": end.prompt_tokens + end.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": end.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": end.reasoning_tokens},
    })
}

async fn whole_reply(mut reply: kestrel::reply::Reply, mut answer: Answer) -> Response {
    let mut end = None;
    while let Some(events) = reply.next().await {
        let events = match events {
            Ok(events) => events,
            Err(e) => return ApiError::from(e).into_response(),
        };
        for event in events {
            if let ReplyEvent::Done(e) = &event {
                end = Some(e.clone());
            }
            if answer.take(event).1 {
                reply.cancel();
            }
        }
    }
    answer.flush();
    let Some(end) = end else {
        return ApiError::from(kestrel::reply::ReplyError::Backend(
            kestrel::backend::BackendError::Lost,
        ))
        .into_response();
    };
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
    axum::Json(json!({
        "id": answer.id,
        "object": "chat.completion",
        "created": answer.created,
        "model": answer.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": answer.finish_reason(&end),
        }],
        "usage": usage(&end),
    }))
    .into_response()
}

fn stream_reply(
    mut reply: kestrel::reply::Reply,
    mut answer: Answer,
    include_usage: bool,
) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(64);
    // The generation runs on its own task; when the client goes, the body (and `rx`) is dropped,
    // the next send fails and dropping the reply cancels the generation.
    tokio::spawn(async move {
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
                    send(ApiError::from(e).body()).await;
                    return;
                }
            };
            for event in events {
                if let ReplyEvent::Done(end) = &event {
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

/// Reads and checks the body.
fn parse(body: &[u8]) -> Result<Parsed, ApiError> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("", format!("the body is not valid JSON: {e}")))?;
    let Value::Object(body) = body else {
        return Err(ApiError::invalid("", "the body must be a JSON object"));
    };
    for key in UNSUPPORTED {
        if body
            .get(key)
            .is_some_and(|v| !v.is_null() && v != &json!(false))
        {
            return Err(ApiError::invalid(
                key,
                format!("`{key}` is not supported by this server yet"),
            ));
        }
    }
    if let Some(n) = body.get("n").filter(|v| !v.is_null())
        && n != &json!(1)
    {
        return Err(ApiError::invalid("n", "only `n: 1` is supported"));
    }
    if let Some(model) = body.get("model")
        && !model.is_string()
    {
        return Err(ApiError::invalid("model", "`model` must be a string"));
    }
    let messages = match body.get("messages") {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, m)| message(i, m))
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::Array(_)) => return Err(ApiError::invalid("messages", "`messages` is empty")),
        _ => {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must be an array of messages",
            ));
        }
    };
    let tools = match body.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => {
            for (i, tool) in tools.iter().enumerate() {
                check_tool(i, tool)?;
            }
            tools.clone()
        }
        Some(_) => return Err(ApiError::invalid("tools", "`tools` must be an array")),
    };
    let tool_choice = match body.get("tool_choice") {
        None | Some(Value::Null) => ToolChoice::Unset,
        Some(v) => serde_json::from_value::<ToolChoice>(v.clone()).map_err(|_| {
            ApiError::invalid(
                "tool_choice",
                "`tool_choice` must be \"auto\", \"none\", \"required\" or \
                 {\"type\": \"function\", \"function\": {\"name\": ...}}",
            )
        })?,
    };
    if let ToolChoice::Named { function, .. } = &tool_choice
        && !tools
            .iter()
            .any(|t| t.pointer("/function/name") == Some(&json!(function.name)))
    {
        return Err(ApiError::invalid(
            "tool_choice",
            format!(
                "`tool_choice` names `{}`, which is not in `tools`",
                function.name
            ),
        ));
    }
    if tool_choice == ToolChoice::Mode(ToolChoiceMode::Required) && tools.is_empty() {
        return Err(ApiError::invalid(
            "tool_choice",
            "`tool_choice: required` needs `tools`",
        ));
    }
    let kwargs = body.get("chat_template_kwargs");
    let enable_thinking = match kwargs.and_then(|k| k.get("enable_thinking")) {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            return Err(ApiError::invalid(
                "chat_template_kwargs.enable_thinking",
                "`enable_thinking` must be true or false",
            ));
        }
    };
    let thinking_budget = ["thinking_token_budget", "max_thinking_tokens"]
        .into_iter()
        .find_map(|k| count(&body, k).transpose())
        .transpose()?;
    let max_tokens = ["max_completion_tokens", "max_tokens"]
        .into_iter()
        .find_map(|k| count(&body, k).transpose())
        .transpose()?;
    if max_tokens == Some(0) {
        return Err(ApiError::invalid(
            "max_tokens",
            "`max_tokens` must be at least 1",
        ));
    }
    let mut sampling = preset(enable_thinking != Some(false), None);
    if let Some(t) = number(&body, "temperature", 0.0, 2.0)? {
        sampling.temperature = t;
    }
    if let Some(p) = number(&body, "top_p", 0.0, 1.0)? {
        sampling.top_p = p;
    }
    if let Some(p) = number(&body, "min_p", 0.0, 1.0)? {
        sampling.min_p = p;
    }
    if let Some(p) = number(&body, "presence_penalty", -2.0, 2.0)? {
        sampling.presence_penalty = p;
    }
    if let Some(p) = number(&body, "frequency_penalty", -2.0, 2.0)?
        && p != 0.0
    {
        // Kestrel's sampler has presence and repetition penalties; a frequency penalty would
        // be silently different.
        let _ = p;
        return Err(ApiError::invalid(
            "frequency_penalty",
            "`frequency_penalty` is not supported; use `presence_penalty` or `repetition_penalty`",
        ));
    }
    if let Some(p) = number(&body, "repetition_penalty", 0.0, 10.0)? {
        if p == 0.0 {
            return Err(ApiError::invalid(
                "repetition_penalty",
                "`repetition_penalty` must be above 0",
            ));
        }
        sampling.repetition_penalty = p;
    }
    if let Some(k) = count(&body, "top_k")? {
        sampling.top_k = k;
    }
    match body.get("seed") {
        None | Some(Value::Null) => {}
        Some(v) => {
            sampling.seed = Some(v.as_u64().ok_or_else(|| {
                ApiError::invalid("seed", "`seed` must be a non-negative integer")
            })?)
        }
    }
    let stop = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.len() <= 4 => items
            .iter()
            .map(|s| s.as_str().filter(|s| !s.is_empty()).map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::invalid("stop", "`stop` entries must be non-empty strings"))?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "`stop` must be a string or up to 4 strings",
            ));
        }
    };
    let stream = flag(&body, "stream")?.unwrap_or(false);
    let include_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => flag(o, "include_usage")?.unwrap_or(false),
        Some(_) => {
            return Err(ApiError::invalid(
                "stream_options",
                "`stream_options` must be an object",
            ));
        }
    };
    Ok(Parsed {
        reply: ReplyRequest {
            chat: ChatRequest {
                messages,
                tools,
                enable_thinking,
                add_generation_prompt: true,
            },
            tool_choice,
            max_tokens,
            thinking_budget,
            sampling,
        },
        stream,
        include_usage,
        parallel_tool_calls: flag(&body, "parallel_tool_calls")?.unwrap_or(true),
        stop,
    })
}

/// One message, OpenAI's shape, checked.
fn message(i: usize, value: &Value) -> Result<Message, ApiError> {
    let param = format!("messages[{i}]");
    let Value::Object(object) = value else {
        return Err(ApiError::invalid(
            &param,
            format!("`{param}` must be an object"),
        ));
    };
    let mut object = object.clone();
    for key in IGNORED_MESSAGE_KEYS {
        if object.get(key).is_some_and(is_empty) {
            object.remove(key);
        }
    }
    if object.get("role") == Some(&json!("developer")) {
        object.insert("role".into(), json!("system"));
    }
    // `reasoning` is the other name clients use for the thinking.
    if let Some(reasoning) = object.remove("reasoning")
        && !reasoning.is_null()
        && object.get("reasoning_content").is_none_or(Value::is_null)
    {
        object.insert("reasoning_content".into(), reasoning);
    }
    if let Some(Value::Array(parts)) = object.get("content") {
        for (j, part) in parts.iter().enumerate() {
            let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
            if kind != "text" {
                return Err(ApiError::invalid(
                    &format!("{param}.content[{j}]"),
                    format!("content parts of type `{kind}` are not supported (only `text`)"),
                ));
            }
        }
    }
    let message: Message = serde_json::from_value(Value::Object(object))
        .map_err(|e| ApiError::invalid(&param, format!("`{param}`: {e}")))?;
    if message.role == Role::Tool
        && message
            .content
            .as_ref()
            .is_none_or(|c| matches!(c, Content::Text(t) if t.is_empty()))
    {
        // An empty result is still a result; the template needs its text.
        return Ok(Message {
            content: Some(Content::Text(String::new())),
            ..message
        });
    }
    Ok(message)
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn check_tool(i: usize, tool: &Value) -> Result<(), ApiError> {
    let param = format!("tools[{i}]");
    if tool.get("type") != Some(&json!("function")) {
        return Err(ApiError::invalid(
            &param,
            format!("`{param}.type` must be \"function\""),
        ));
    }
    match tool.pointer("/function/name") {
        Some(Value::String(name)) if !name.is_empty() => Ok(()),
        _ => Err(ApiError::invalid(
            &format!("{param}.function.name"),
            format!("`{param}.function.name` must be a non-empty string"),
        )),
    }
}

/// An optional non-negative integer field.
fn count(body: &Map<String, Value>, key: &str) -> Result<Option<usize>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(key, format!("`{key}` must be a non-negative integer"))
            }),
    }
}

/// An optional number field within `low..=high`.
fn number(
    body: &Map<String, Value>,
    key: &str,
    low: f32,
    high: f32,
) -> Result<Option<f32>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|x| x as f32)
            .filter(|x| (low..=high).contains(x))
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(
                    key,
                    format!("`{key}` must be a number from {low} to {high}"),
                )
            }),
    }
}

/// An optional boolean field.
fn flag(body: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(
            key,
            format!("`{key}` must be true or false"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(body: Value) -> Value {
        match parse(body.to_string().as_bytes()) {
            Ok(_) => panic!("accepted: {body}"),
            Err(e) => e.body()["error"].clone(),
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let user = json!([{"role": "user", "content": "hi"}]);
        let cases = [
            (json!({"messages": []}), "messages"),
            (json!({"messages": user, "temperature": 7}), "temperature"),
            (json!({"messages": user, "n": 2}), "n"),
            (json!({"messages": user, "logprobs": true}), "logprobs"),
            (
                json!({"messages": user, "tools": [{"type": "function", "function": {}}]}),
                "tools[0].function.name",
            ),
            (
                json!({"messages": user, "tool_choice": "required"}),
                "tool_choice",
            ),
            (json!({"messages": user, "stop": [1]}), "stop"),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"messages": [{"role": "wizard", "content": "x"}]}),
                "messages[0]",
            ),
        ];
        for (body, param) in cases {
            let e = error(body);
            assert_eq!(e["param"], param, "{e}");
            assert_eq!(e["type"], "invalid_request_error");
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }

    #[test]
    fn sdk_echoes_and_reasoning_are_accepted() {
        let body = json!({"messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "refusal": null, "annotations": [],
             "reasoning": "thought", "tool_calls": [{"id": "c1", "type": "function",
             "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "42"}]},
        ], "chat_template_kwargs": {"enable_thinking": false}, "max_completion_tokens": 9});
        let parsed = parse(body.to_string().as_bytes()).expect("accepted");
        let messages = &parsed.reply.chat.messages;
        assert_eq!(messages[0].role, Role::System);
        assert_eq!(messages[2].reasoning_content.as_deref(), Some("thought"));
        assert_eq!(parsed.reply.chat.enable_thinking, Some(false));
        assert_eq!(parsed.reply.max_tokens, Some(9));
        assert_eq!(
            parsed.reply.sampling.temperature,
            preset(false, None).temperature
        );
    }

    #[test]
    fn stop_sequences_cut_the_content_and_hold_a_possible_start() {
        let server_less = |stop: &[&str]| Answer {
            id: "chatcmpl-1".into(),
            model: "m".into(),
            created: 0,
            parallel_tool_calls: true,
            stop: stop.iter().map(|s| s.to_string()).collect(),
            reasoning: String::new(),
            content: String::new(),
            held: String::new(),
            stopped: false,
            calls: Vec::new(),
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
        assert_eq!(
            answer.take(ReplyEvent::Content("more".into())),
            (None, false)
        );
    }
}
