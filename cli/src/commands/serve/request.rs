//! Reading a Chat Completions request: the JSON body checked field by field, so that an error
//! names the field, into a [`ReplyRequest`] and how to answer it.
//!
//! Messages become Kestrel's [`ChatRequest`] (OpenAI's shape; `reasoning` is accepted for
//! `reasoning_content`, `developer` for `system`, and the empty fields the SDKs echo back are
//! dropped); what the server does not implement yet is refused by name rather than ignored.

use kestrel::prompts::constrain::{ToolChoice, ToolChoiceMode};
use kestrel::prompts::messages::{ChatRequest, Content, Message, Role};
use kestrel::prompts::thinking::preset;
use kestrel::reply::ReplyRequest;
use kestrel_engine::{MAX_TOP_LOGPROBS, SamplingParams};
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::format::{Shape, answer_format};
use super::mcp::McpEntry;

/// Keys of a message that carry nothing Kestrel needs when null or empty (the SDKs echo them).
const IGNORED_MESSAGE_KEYS: [&str; 4] = ["refusal", "annotations", "audio", "function_call"];

/// Request fields this endpoint does not implement yet, refused by name rather than ignored.
const UNSUPPORTED: [&str; 2] = ["logit_bias", "audio"];

/// A parsed request: what to generate and how to answer.
pub(super) struct Parsed {
    pub(super) reply: ReplyRequest,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    pub(super) parallel_tool_calls: bool,
    pub(super) stop: Vec<String>,
    /// Whether the answer's token log-probabilities are asked for.
    pub(super) logprobs: bool,
    /// The MCP servers whose tools the server runs for this request.
    pub(super) mcp: Vec<McpEntry>,
}

/// Reads and checks the body.
pub(super) fn parse(body: &[u8]) -> Result<Parsed, ApiError> {
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
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut messages = Vec::new();
            for (i, m) in items.iter().enumerate() {
                messages.extend(message(i, m)?);
            }
            messages
        }
        Some(Value::Array(_)) => return Err(ApiError::invalid("messages", "`messages` is empty")),
        _ => {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must be an array of messages",
            ));
        }
    };
    let (mut tools, mut mcp) = (Vec::new(), Vec::new());
    match body.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(entries)) => {
            for (i, tool) in entries.iter().enumerate() {
                if tool.get("type") == Some(&json!("mcp")) {
                    mcp.push(super::mcp::entry(&format!("tools[{i}]"), tool, false)?);
                } else {
                    check_tool(i, tool)?;
                    tools.push(tool.clone());
                }
            }
        }
        Some(_) => return Err(ApiError::invalid("tools", "`tools` must be an array")),
    }
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
    if tool_choice == ToolChoice::Mode(ToolChoiceMode::Required)
        && tools.is_empty()
        && mcp.is_empty()
    {
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
    let mut sampling = sampling(&body, enable_thinking != Some(false))?;
    let logprobs = flag(&body, "logprobs")?.unwrap_or(false);
    match count(&body, "top_logprobs")? {
        Some(n) if n > MAX_TOP_LOGPROBS => {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("`top_logprobs` must be at most {MAX_TOP_LOGPROBS}"),
            ));
        }
        Some(_) if !logprobs => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "`top_logprobs` needs `logprobs: true`",
            ));
        }
        top => sampling.logprobs = logprobs.then_some(top.unwrap_or(0)),
    }
    let answer_format = answer_format(
        body.get("response_format"),
        "response_format",
        Shape::Nested,
    )?;
    let stop = stop_sequences(&body)?;
    let (stream, include_usage) = streaming(&body)?;
    if stream && !mcp.is_empty() {
        return Err(ApiError::invalid(
            "stream",
            "`stream` with `mcp` tools is not supported in Chat Completions; the Responses API streams the server's calls as items",
        ));
    }
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
            answer_format,
        },
        stream,
        include_usage,
        parallel_tool_calls: flag(&body, "parallel_tool_calls")?.unwrap_or(true),
        stop,
        logprobs,
        mcp,
    })
}

/// The sampling fields, over Qwen's preset for thinking on or off.
pub(super) fn sampling(
    body: &Map<String, Value>,
    thinking: bool,
) -> Result<SamplingParams, ApiError> {
    let mut sampling = preset(thinking, None);
    if let Some(t) = number(body, "temperature", 0.0, 2.0)? {
        sampling.temperature = t;
    }
    if let Some(p) = number(body, "top_p", 0.0, 1.0)? {
        sampling.top_p = p;
    }
    if let Some(p) = number(body, "min_p", 0.0, 1.0)? {
        sampling.min_p = p;
    }
    if let Some(p) = number(body, "presence_penalty", -2.0, 2.0)? {
        sampling.presence_penalty = p;
    }
    if let Some(p) = number(body, "frequency_penalty", -2.0, 2.0)? {
        sampling.frequency_penalty = p;
    }
    if let Some(p) = number(body, "repetition_penalty", 0.0, 10.0)? {
        if p == 0.0 {
            return Err(ApiError::invalid(
                "repetition_penalty",
                "`repetition_penalty` must be above 0",
            ));
        }
        sampling.repetition_penalty = p;
    }
    if let Some(k) = count(body, "top_k")? {
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
    Ok(sampling)
}

/// `stop`: a string or up to four.
pub(super) fn stop_sequences(body: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    Ok(match body.get("stop") {
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
    })
}

/// `stream` and `stream_options.include_usage`.
pub(super) fn streaming(body: &Map<String, Value>) -> Result<(bool, bool), ApiError> {
    let stream = flag(body, "stream")?.unwrap_or(false);
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
    Ok((stream, include_usage))
}

/// One message, OpenAI's shape, checked; an assistant message with `mcp_rounds` (the server's
/// own calls, see `chat_mcp.rs`) comes first as those rounds.
fn message(i: usize, value: &Value) -> Result<Vec<Message>, ApiError> {
    let param = format!("messages[{i}]");
    let Value::Object(object) = value else {
        return Err(ApiError::invalid(
            &param,
            format!("`{param}` must be an object"),
        ));
    };
    let mut object = object.clone();
    let mut messages = match object.remove("mcp_rounds") {
        None | Some(Value::Null) => Vec::new(),
        Some(rounds) => super::mcp::rounds_to_messages(&rounds, &format!("{param}.mcp_rounds"))?,
    };
    messages.push(one_message(&param, object)?);
    Ok(messages)
}

fn one_message(param: &str, mut object: Map<String, Value>) -> Result<Message, ApiError> {
    let param = param.to_string();
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
    let mut message: Message = serde_json::from_value(Value::Object(object))
        .map_err(|e| ApiError::invalid(&param, format!("`{param}`: {e}")))?;
    // Clients send arguments back as the JSON string they received; templates that do not test
    // for a string (Qwen2.5's) would render it quoted, a call the model never wrote. As vLLM
    // does, an argument string is read back into its object.
    for (j, call) in message.tool_calls.iter_mut().enumerate() {
        if let Value::String(text) = &call.function.arguments {
            let arguments: Value = serde_json::from_str(text).map_err(|e| {
                let at = format!("{param}.tool_calls[{j}].function.arguments");
                ApiError::invalid(&at, format!("`{at}` is not JSON: {e}"))
            })?;
            call.function.arguments = arguments;
        }
    }
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
pub(super) fn count(body: &Map<String, Value>, key: &str) -> Result<Option<usize>, ApiError> {
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
pub(super) fn flag(body: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
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
            (
                json!({"messages": user, "logit_bias": {"1": 5}}),
                "logit_bias",
            ),
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
            (
                json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                       "function": {"name": "f", "arguments": "{oops"}}]}]}),
                "messages[0].tool_calls[0].function.arguments",
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
             "function": {"name": "f", "arguments": "{\"b\":1,\"a\":[2]}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "42"}]},
        ], "chat_template_kwargs": {"enable_thinking": false}, "max_completion_tokens": 9});
        let parsed = parse(body.to_string().as_bytes()).expect("accepted");
        let messages = &parsed.reply.chat.messages;
        assert_eq!(messages[0].role, Role::System);
        assert_eq!(messages[2].reasoning_content.as_deref(), Some("thought"));
        assert_eq!(
            messages[2].tool_calls[0].function.arguments.to_string(),
            r#"{"b":1,"a":[2]}"#,
            "an argument string is read back into its object, keys in order"
        );
        assert_eq!(parsed.reply.chat.enable_thinking, Some(false));
        assert_eq!(parsed.reply.max_tokens, Some(9));
        assert_eq!(
            parsed.reply.sampling.temperature,
            preset(false, None).temperature
        );
    }
}
