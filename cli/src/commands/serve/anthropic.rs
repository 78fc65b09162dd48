//! Reading an Anthropic Messages request (`POST /v1/messages`) into a [`ReplyRequest`].
//!
//! Anthropic's blocks map onto the chat Kestrel renders: `system` becomes the system message and
//! each turn of `messages` one or more chat messages (`anthropic_turns.rs`: tool results, signed
//! thinking, text and tool use). `thinking` off is the default, as in Anthropic's API;
//! `{"type": "enabled", "budget_tokens": N}` turns Qwen3's thinking on with that budget. What the
//! server cannot do (images, documents, Anthropic's server tools) is refused by name.

use kestrel::prompts::constrain::{NamedFunction, ToolChoice, ToolChoiceMode};
use kestrel::prompts::messages::{ChatRequest, Message, Role};
use kestrel::reply::ReplyRequest;
use serde_json::{Map, Value, json};

use super::anthropic_turns::{text_of, turn};
use super::error::ApiError;
use super::format::{Shape, answer_format};
use super::request::{count, flag, sampling};
use super::signature::Signer;

/// Top-level fields this endpoint reads; anything else is refused by name.
const KNOWN: [&str; 15] = [
    "model",
    "messages",
    "system",
    "max_tokens",
    "tools",
    "tool_choice",
    "thinking",
    "output_config",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "stream",
    // Prompt caching is automatic here: a cache breakpoint changes nothing.
    "cache_control",
    "metadata",
];

/// Fields about Anthropic's own accounts and routing: accepted, with nothing to do here.
const ROUTING: [&str; 5] = [
    "service_tier",
    "inference_geo",
    "speed",
    "user_profile_id",
    "workspace_id",
];

/// Thinking budgets for `output_config.effort` (`max`: as much as the reply leaves room for).
const EFFORT_BUDGETS: [(&str, Option<usize>); 5] = [
    ("low", Some(1024)),
    ("medium", Some(4096)),
    ("high", Some(16384)),
    ("xhigh", Some(32768)),
    ("max", None),
];

/// A parsed Messages request.
pub(super) struct Parsed {
    pub(super) reply: ReplyRequest,
    pub(super) stream: bool,
    pub(super) parallel_tool_calls: bool,
    pub(super) stop: Vec<String>,
}

/// Reads and checks the body.
pub(super) fn parse(body: &[u8], signer: &Signer) -> Result<Parsed, ApiError> {
    let (chat, body) = parse_chat(body, signer)?;
    let max_tokens = match count(&body, "max_tokens")? {
        None => return Err(ApiError::invalid("max_tokens", "`max_tokens` is required")),
        Some(0) => {
            return Err(ApiError::invalid(
                "max_tokens",
                "`max_tokens` must be at least 1",
            ));
        }
        Some(n) => n,
    };
    let (tool_choice, parallel_tool_calls) = tool_choice(&body, &chat.tools)?;
    let thinking = chat.enable_thinking == Some(true);
    let thinking_budget = match body.get("thinking") {
        Some(Value::Object(t)) if thinking => count(t, "budget_tokens")?,
        _ => None,
    };
    let answer_format = answer_format(
        body.get("output_config").and_then(|c| c.get("format")),
        "output_config.format",
        Shape::Flat,
    )?;
    let thinking_budget = match effort(&body)? {
        Some(budget) if thinking_budget.is_none() => budget,
        _ => thinking_budget,
    };
    let mut fields = body.clone();
    if let Some(t) = fields.get("temperature").and_then(Value::as_f64)
        && !(0.0..=1.0).contains(&t)
    {
        return Err(ApiError::invalid(
            "temperature",
            "`temperature` must be a number from 0 to 1",
        ));
    }
    // Anthropic has no other penalties or seed; the shared reader takes the rest.
    fields.retain(|k, _| matches!(k.as_str(), "temperature" | "top_p" | "top_k"));
    let sampling = sampling(&fields, thinking)?;
    let stop = match body.get("stop_sequences") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| s.as_str().filter(|s| !s.is_empty()).map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ApiError::invalid(
                    "stop_sequences",
                    "`stop_sequences` entries must be non-empty strings",
                )
            })?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop_sequences",
                "`stop_sequences` must be an array of strings",
            ));
        }
    };
    Ok(Parsed {
        reply: ReplyRequest {
            chat,
            tool_choice,
            max_tokens: Some(max_tokens),
            thinking_budget,
            sampling,
            answer_format,
        },
        stream: flag(&body, "stream")?.unwrap_or(false),
        parallel_tool_calls,
        stop,
    })
}

/// The conversation, tools and thinking switch of a request (also all `count_tokens` needs);
/// returns the body for the remaining fields.
pub(super) fn parse_chat(
    body: &[u8],
    signer: &Signer,
) -> Result<(ChatRequest, Map<String, Value>), ApiError> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("", format!("the body is not valid JSON: {e}")))?;
    let Value::Object(body) = body else {
        return Err(ApiError::invalid("", "the body must be a JSON object"));
    };
    if let Some(key) = body
        .keys()
        .find(|k| !KNOWN.contains(&k.as_str()) && !ROUTING.contains(&k.as_str()))
    {
        return Err(ApiError::invalid(
            key,
            format!("`{key}` is not supported by this server"),
        ));
    }
    let mut messages = Vec::new();
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => messages.push(Message::text(Role::System, text)),
        Some(Value::Array(blocks)) => {
            let text = blocks
                .iter()
                .enumerate()
                .map(|(i, b)| text_of(b, &format!("system[{i}]")))
                .collect::<Result<Vec<_>, _>>()?
                .join("\n");
            messages.push(Message::text(Role::System, &text));
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "system",
                "`system` must be a string or an array of text blocks",
            ));
        }
    }
    match body.get("messages") {
        Some(Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                turn(i, item, signer, &mut messages)?;
            }
            if items.last().and_then(|m| m.get("role")) == Some(&json!("assistant")) {
                return Err(ApiError::invalid(
                    "messages",
                    "the last message is the assistant's: continuing it (prefill) is not \
                     supported; end with a user message",
                ));
            }
        }
        Some(Value::Array(_)) => return Err(ApiError::invalid("messages", "`messages` is empty")),
        _ => {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must be an array of messages",
            ));
        }
    }
    let tools = match body.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => tools
            .iter()
            .enumerate()
            .map(|(i, t)| tool(i, t))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::invalid("tools", "`tools` must be an array")),
    };
    let enable_thinking = match body.get("thinking") {
        None | Some(Value::Null) => false,
        Some(t) => {
            if t.get("display") == Some(&json!("omitted")) {
                return Err(ApiError::invalid(
                    "thinking.display",
                    "`thinking.display: omitted` is not supported: thinking is returned in full",
                ));
            }
            match t.get("type").and_then(Value::as_str) {
                Some("enabled" | "adaptive") => true,
                Some("disabled") => false,
                _ => {
                    return Err(ApiError::invalid(
                        "thinking",
                        "`thinking.type` must be \"enabled\" (with `budget_tokens`), \
                         \"adaptive\" or \"disabled\"",
                    ));
                }
            }
        }
    };
    let chat = ChatRequest {
        messages,
        tools,
        enable_thinking: Some(enable_thinking),
        add_generation_prompt: true,
    };
    Ok((chat, body))
}

/// The thinking budget `output_config.effort` asks for (`Some(None)`: no limit of its own).
fn effort(body: &Map<String, Value>) -> Result<Option<Option<usize>>, ApiError> {
    let Some(config) = body.get("output_config").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let Value::Object(config) = config else {
        return Err(ApiError::invalid(
            "output_config",
            "`output_config` must be an object",
        ));
    };
    if let Some(key) = config.keys().find(|k| *k != "effort" && *k != "format") {
        return Err(ApiError::invalid(
            &format!("output_config.{key}"),
            format!("`output_config.{key}` is not supported by this server"),
        ));
    }
    match config.get("effort") {
        None | Some(Value::Null) => Ok(None),
        Some(level) => EFFORT_BUDGETS
            .iter()
            .find(|(name, _)| level == name)
            .map(|(_, budget)| Some(*budget))
            .ok_or_else(|| {
                ApiError::invalid(
                    "output_config.effort",
                    "`output_config.effort` must be low, medium, high, xhigh or max",
                )
            }),
    }
}

/// An Anthropic tool as the OpenAI-shaped function tool the template renders.
fn tool(i: usize, tool: &Value) -> Result<Value, ApiError> {
    let param = format!("tools[{i}]");
    if let Some(kind) = tool.get("type").and_then(Value::as_str)
        && kind != "custom"
    {
        return Err(ApiError::invalid(
            &format!("{param}.type"),
            format!("`{param}`: Anthropic's server tool `{kind}` is not available here"),
        ));
    }
    let name = match tool.get("name") {
        Some(Value::String(name)) if !name.is_empty() => name,
        _ => {
            return Err(ApiError::invalid(
                &format!("{param}.name"),
                format!("`{param}.name` must be a non-empty string"),
            ));
        }
    };
    let schema = match tool.get("input_schema") {
        Some(schema @ Value::Object(_)) => schema.clone(),
        _ => {
            return Err(ApiError::invalid(
                &format!("{param}.input_schema"),
                format!("`{param}.input_schema` must be a JSON schema object"),
            ));
        }
    };
    let mut function = json!({"name": name, "parameters": schema});
    if let Some(description) = tool.get("description").and_then(Value::as_str) {
        function["description"] = json!(description);
    }
    Ok(json!({"type": "function", "function": function}))
}

/// `tool_choice` and whether several calls may be made.
fn tool_choice(body: &Map<String, Value>, tools: &[Value]) -> Result<(ToolChoice, bool), ApiError> {
    let Some(choice) = body.get("tool_choice").filter(|v| !v.is_null()) else {
        return Ok((ToolChoice::Unset, true));
    };
    let parallel = !choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mode = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => ToolChoice::Mode(ToolChoiceMode::Auto),
        Some("none") => ToolChoice::Mode(ToolChoiceMode::None),
        Some("any") => ToolChoice::Mode(ToolChoiceMode::Required),
        Some("tool") => {
            let name = choice.get("name").and_then(Value::as_str).unwrap_or("");
            if !tools
                .iter()
                .any(|t| t.pointer("/function/name") == Some(&json!(name)))
            {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("`tool_choice` names `{name}`, which is not in `tools`"),
                ));
            }
            ToolChoice::Named {
                kind: "function".into(),
                function: NamedFunction { name: name.into() },
            }
        }
        _ => {
            return Err(ApiError::invalid(
                "tool_choice",
                "`tool_choice.type` must be \"auto\", \"any\", \"tool\" or \"none\"",
            ));
        }
    };
    if mode == ToolChoice::Mode(ToolChoiceMode::Required) && tools.is_empty() {
        return Err(ApiError::invalid(
            "tool_choice",
            "`tool_choice: any` needs `tools`",
        ));
    }
    Ok((mode, parallel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel::prompts::messages::Content;

    fn signer() -> Signer {
        Signer::with_key([5; 32])
    }

    fn error(body: Value) -> String {
        match parse(body.to_string().as_bytes(), &signer()) {
            Ok(_) => panic!("accepted: {body}"),
            Err(e) => e.anthropic_body()["error"]["message"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let user = json!([{"role": "user", "content": "hi"}]);
        for (body, named) in [
            (json!({"messages": user}), "`max_tokens` is required"),
            (json!({"messages": user, "max_tokens": 9, "n": 2}), "`n`"),
            (
                json!({"messages": user, "max_tokens": 9, "thinking": {"type": "sometimes"}}),
                "`thinking.type`",
            ),
            (
                json!({"messages": user, "max_tokens": 9, "output_config": {"effort": "huge"}}),
                "`output_config.effort`",
            ),
            (
                json!({"messages": user, "max_tokens": 9,
                       "tools": [{"type": "bash_20250124", "name": "bash"}]}),
                "server tool `bash_20250124`",
            ),
            (
                json!({"messages": user, "max_tokens": 9, "tools": [],
                       "tool_choice": {"type": "tool", "name": "nope"}}),
                "`nope`",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "document"}]}],
                       "max_tokens": 9}),
                "`messages[0].content[0]`: user blocks of type `document`",
            ),
            (
                json!({"messages": [{"role": "system", "content": "x"}], "max_tokens": 9}),
                "`messages[0].role`",
            ),
        ] {
            let message = error(body.clone());
            assert!(message.contains(named), "{body}: {message}");
        }
    }

    #[test]
    fn blocks_become_the_chat_kestrel_renders() {
        let signer = signer();
        let signature = signer.sign("Use the tool.");
        let body = json!({
            "max_tokens": 50,
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "Use the tool.", "signature": signature},
                    {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Oslo"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": true,
                     "content": [{"type": "text", "text": "timeout"}]},
                    {"type": "text", "text": "Try again?", "cache_control": {"type": "ephemeral"}},
                ]},
            ],
            "tools": [{"name": "w", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "thinking": {"type": "adaptive"},
            "output_config": {"effort": "low"},
            "service_tier": "auto",
        });
        let parsed = parse(body.to_string().as_bytes(), &signer).expect("accepted");
        let chat = &parsed.reply.chat;
        let roles: Vec<Role> = chat.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::System,
                Role::User,
                Role::Assistant,
                Role::Tool,
                Role::User
            ]
        );
        let text = |i: usize| chat.messages[i].content.as_ref().map(Content::text);
        assert_eq!(text(0).as_deref(), Some("Be brief.\nBe kind."));
        assert_eq!(
            chat.messages[2].reasoning_content.as_deref(),
            Some("Use the tool.")
        );
        assert_eq!(chat.messages[2].content, None);
        assert_eq!(
            chat.messages[2].tool_calls[0].function.arguments,
            json!({"city": "Oslo"})
        );
        assert_eq!(text(3).as_deref(), Some("Error: timeout"));
        assert_eq!(chat.messages[3].tool_call_id.as_deref(), Some("toolu_1"));
        assert_eq!(text(4).as_deref(), Some("Try again?"));
        assert_eq!(chat.tools[0]["function"]["name"], "w");
        assert_eq!(chat.enable_thinking, Some(true));
        assert_eq!(parsed.reply.thinking_budget, Some(1024));
        assert_eq!(
            parsed.reply.tool_choice,
            ToolChoice::Mode(ToolChoiceMode::Required)
        );
        assert!(!parsed.parallel_tool_calls);

        // The same history with its thinking changed is refused.
        let tampered = body
            .to_string()
            .replace("\"Use the tool.\"", "\"Do anything.\"");
        let e = match parse(tampered.as_bytes(), &signer) {
            Ok(_) => panic!("a changed thinking block was accepted"),
            Err(e) => e.anthropic_body().to_string(),
        };
        assert!(e.contains("messages[1].content[0].signature"), "{e}");
    }
}
