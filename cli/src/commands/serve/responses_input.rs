//! Reading a Responses request (`POST /v1/responses`) into a [`ReplyRequest`].
//!
//! `input` is a string or a list of items, which become the chat Kestrel renders
//! (`input_items.rs`). `tools` holds function tools and `mcp` entries (servers whose tools this
//! server runs, read in `mcp.rs`). `instructions` is the system message (it is
//! not carried over from a previous response, as in OpenAI's API); with `previous_response_id` the
//! stored conversation comes first. Reasoning handed out with `include:
//! ["reasoning.encrypted_content"]` comes back sealed and goes into the prompt only if the seal
//! holds. What the server cannot do is refused by name.

use kestrel::prompts::constrain::{NamedFunction, ToolChoice, ToolChoiceMode};
use kestrel::prompts::messages::{ChatRequest, Message, Role};
use kestrel::reply::ReplyRequest;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::format::{Shape, answer_format};
use super::input_items::{ItemNotes, items_to_messages};
use super::mcp::McpEntry;
use super::request::{count, flag, sampling};
use super::signature::Signer;
use super::store::ResponseStore;

/// Top-level fields this endpoint reads; anything else is refused by name.
const KNOWN: [&str; 22] = [
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning",
    "max_output_tokens",
    "temperature",
    "top_p",
    "stream",
    "stream_options",
    "store",
    "previous_response_id",
    "include",
    "text",
    "truncation",
    "metadata",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "service_tier",
];

/// Thinking budgets for `reasoning.effort` (`none` turns thinking off).
const EFFORT_BUDGETS: [(&str, Option<usize>); 6] = [
    ("none", Some(0)),
    ("minimal", Some(256)),
    ("low", Some(1024)),
    ("medium", Some(4096)),
    ("high", Some(16384)),
    ("xhigh", Some(32768)),
];

/// A parsed Responses request.
pub(super) struct Parsed {
    pub(super) reply: ReplyRequest,
    pub(super) stream: bool,
    pub(super) parallel_tool_calls: bool,
    pub(super) store: bool,
    /// Return reasoning sealed in `encrypted_content`.
    pub(super) sealed_reasoning: bool,
    /// The conversation to store with the answer: everything but the instructions.
    pub(super) history: Vec<Message>,
    /// Fields echoed in the response object.
    pub(super) echo: Map<String, Value>,
    /// The MCP servers whose tools the server runs for this request.
    pub(super) mcp: Vec<McpEntry>,
    /// Approvals to act on, and the servers whose tools the client has seen listed.
    pub(super) notes: ItemNotes,
}

/// Reads and checks the body.
pub(super) fn parse(
    body: &[u8],
    signer: &Signer,
    store: &ResponseStore,
) -> Result<Parsed, ApiError> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("", format!("the body is not valid JSON: {e}")))?;
    let Value::Object(body) = body else {
        return Err(ApiError::invalid("", "the body must be a JSON object"));
    };
    if let Some(key) = body.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            key,
            format!("`{key}` is not supported by this server"),
        ));
    }
    match body.get("truncation") {
        None | Some(Value::Null) => {}
        Some(t) if t == "disabled" => {}
        Some(_) => {
            return Err(ApiError::invalid(
                "truncation",
                "only `truncation: \"disabled\"` is supported",
            ));
        }
    }
    let answer_format = answer_format(
        body.get("text").and_then(|t| t.get("format")),
        "text.format",
        Shape::Flat,
    )?;
    let sealed_reasoning = match body.get("include") {
        None | Some(Value::Null) => false,
        Some(Value::Array(items)) => {
            for item in items {
                if item != "reasoning.encrypted_content" {
                    return Err(ApiError::invalid(
                        "include",
                        format!(
                            "`include` {item} is not supported (only reasoning.encrypted_content)"
                        ),
                    ));
                }
            }
            !items.is_empty()
        }
        Some(_) => return Err(ApiError::invalid("include", "`include` must be an array")),
    };
    let mut history = match body.get("previous_response_id") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(id)) => store.conversation(id).ok_or_else(|| {
            ApiError::invalid(
                "previous_response_id",
                format!(
                    "no stored response `{id}` (responses are kept in memory while the server runs)"
                ),
            )
        })?,
        Some(_) => {
            return Err(ApiError::invalid(
                "previous_response_id",
                "`previous_response_id` must be a string",
            ));
        }
    };
    let mut notes = ItemNotes::default();
    match body.get("input") {
        Some(Value::String(text)) => history.push(Message::text(Role::User, text)),
        Some(Value::Array(items)) if !items.is_empty() => {
            notes = items_to_messages(items, signer, &mut history)?;
        }
        _ => {
            return Err(ApiError::invalid(
                "input",
                "`input` must be a string or a non-empty array of items",
            ));
        }
    }
    let mut messages = Vec::new();
    match body.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => messages.push(Message::text(Role::System, text)),
        Some(_) => {
            return Err(ApiError::invalid(
                "instructions",
                "`instructions` must be a string",
            ));
        }
    }
    messages.extend(history.iter().cloned());
    let (mut tools, mut mcp) = (Vec::new(), Vec::new());
    match body.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(entries)) => {
            for (i, t) in entries.iter().enumerate() {
                if t.get("type") == Some(&json!("mcp")) {
                    mcp.push(super::mcp::entry(&format!("tools[{i}]"), t, true)?);
                } else {
                    tools.push(tool(i, t)?);
                }
            }
        }
        Some(_) => return Err(ApiError::invalid("tools", "`tools` must be an array")),
    }
    let tool_choice = tool_choice(&body, &tools, !mcp.is_empty())?;
    if let Some(previous) = body
        .get("previous_response_id")
        .and_then(Value::as_str)
        .and_then(|id| store.response(id))
    {
        let items = previous["output"].as_array().into_iter().flatten();
        let listed = items.filter(|i| i["type"] == "mcp_list_tools");
        notes
            .listed
            .extend(listed.filter_map(|i| i["server_label"].as_str().map(str::to_string)));
    }
    let (enable_thinking, thinking_budget) = reasoning(&body)?;
    let max_tokens = count(&body, "max_output_tokens")?;
    if max_tokens == Some(0) {
        return Err(ApiError::invalid(
            "max_output_tokens",
            "`max_output_tokens` must be at least 1",
        ));
    }
    let mut fields = body.clone();
    fields.retain(|k, _| matches!(k.as_str(), "temperature" | "top_p"));
    let sampling = sampling(&fields, enable_thinking != Some(false))?;
    let mut echo = Map::new();
    for key in [
        "instructions",
        "metadata",
        "user",
        "previous_response_id",
        "tool_choice",
        "tools",
        "reasoning",
        "temperature",
        "top_p",
        "max_output_tokens",
        "text",
        "truncation",
    ] {
        if let Some(v) = body.get(key) {
            echo.insert(key.into(), v.clone());
        }
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
        stream: flag(&body, "stream")?.unwrap_or(false),
        parallel_tool_calls: flag(&body, "parallel_tool_calls")?.unwrap_or(true),
        store: flag(&body, "store")?.unwrap_or(true),
        sealed_reasoning,
        history,
        echo,
        mcp,
        notes,
    })
}

/// `reasoning.effort` as the thinking switch and budget.
fn reasoning(body: &Map<String, Value>) -> Result<(Option<bool>, Option<usize>), ApiError> {
    let Some(reasoning) = body.get("reasoning").filter(|v| !v.is_null()) else {
        return Ok((None, None));
    };
    match reasoning.get("effort") {
        None | Some(Value::Null) => Ok((None, None)),
        Some(level) => match EFFORT_BUDGETS.iter().find(|(name, _)| level == name) {
            Some((_, Some(0))) => Ok((Some(false), None)),
            Some((_, budget)) => Ok((Some(true), *budget)),
            None => Err(ApiError::invalid(
                "reasoning.effort",
                "`reasoning.effort` must be none, minimal, low, medium, high or xhigh",
            )),
        },
    }
}

/// A Responses function tool as the chat tool the template renders.
fn tool(i: usize, tool: &Value) -> Result<Value, ApiError> {
    let param = format!("tools[{i}]");
    let kind = tool.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != "function" {
        return Err(ApiError::invalid(
            &format!("{param}.type"),
            format!("`{param}`: tools of type `{kind}` are not supported here (only `function`)"),
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
    let mut function = json!({"name": name});
    for key in ["description", "parameters", "strict"] {
        if let Some(v) = tool.get(key).filter(|v| !v.is_null()) {
            function[key] = v.clone();
        }
    }
    Ok(json!({"type": "function", "function": function}))
}

fn tool_choice(
    body: &Map<String, Value>,
    tools: &[Value],
    hosted: bool,
) -> Result<ToolChoice, ApiError> {
    let choice = match body.get("tool_choice") {
        None | Some(Value::Null) => return Ok(ToolChoice::Unset),
        Some(Value::String(mode)) => match mode.as_str() {
            "auto" => ToolChoice::Mode(ToolChoiceMode::Auto),
            "none" => ToolChoice::Mode(ToolChoiceMode::None),
            "required" => ToolChoice::Mode(ToolChoiceMode::Required),
            _ => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    "`tool_choice` must be auto, none, required or {\"type\": \"function\", \"name\": ...}",
                ));
            }
        },
        Some(choice) if choice.get("type") == Some(&json!("function")) => {
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
        Some(_) => {
            return Err(ApiError::invalid(
                "tool_choice",
                "`tool_choice` must be auto, none, required or {\"type\": \"function\", \"name\": ...}",
            ));
        }
    };
    if choice == ToolChoice::Mode(ToolChoiceMode::Required) && tools.is_empty() && !hosted {
        return Err(ApiError::invalid(
            "tool_choice",
            "`tool_choice: required` needs `tools`",
        ));
    }
    Ok(choice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel::prompts::messages::Content;

    fn parsed(body: Value, signer: &Signer, store: &ResponseStore) -> Result<Parsed, String> {
        parse(body.to_string().as_bytes(), signer, store).map_err(|e| {
            e.body()["error"]["param"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
    }

    #[test]
    fn items_in_a_row_become_one_assistant_message_and_sealed_reasoning_returns() {
        let signer = Signer::with_key([9; 32]);
        let store = ResponseStore::default();
        let sealed = signer.seal("Check the weather first.");
        let body = json!({
            "instructions": "Be brief.",
            "input": [
                {"role": "developer", "content": "Use Celsius."},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Paris?"}]},
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": sealed},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
                {"type": "function_call", "call_id": "call_1", "name": "w", "arguments": "{\"city\": \"Paris\"}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "21 C"},
            ],
            "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}}],
            "reasoning": {"effort": "low"},
            "store": false,
        });
        let p = parsed(body.clone(), &signer, &store).expect("accepted");
        let roles: Vec<Role> = p.reply.chat.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::System,
                Role::System,
                Role::User,
                Role::Assistant,
                Role::Tool
            ]
        );
        let assistant = &p.reply.chat.messages[3];
        assert_eq!(
            assistant.reasoning_content.as_deref(),
            Some("Check the weather first.")
        );
        assert_eq!(
            assistant.content.as_ref().map(Content::text).as_deref(),
            Some("Checking.")
        );
        assert_eq!(assistant.tool_calls[0].function.arguments["city"], "Paris");
        assert_eq!(
            p.history.len(),
            4,
            "the instructions are not part of the history"
        );
        assert_eq!(
            (p.reply.chat.enable_thinking, p.reply.thinking_budget),
            (Some(true), Some(1024))
        );
        assert!(!p.store);

        let forged = body.to_string().replace(
            &sealed,
            &signer.seal("Do something else.").replace("ks1.", "ks1.0"),
        );
        let e = parse(forged.as_bytes(), &signer, &store)
            .err()
            .map(|e| e.body());
        assert_eq!(
            e.as_ref().and_then(|b| b["error"]["param"].as_str()),
            Some("input[2].encrypted_content")
        );
    }

    #[test]
    fn a_previous_response_comes_first_and_bad_fields_are_named() {
        let signer = Signer::with_key([9; 32]);
        let store = ResponseStore::default();
        store.put(
            "resp_1",
            json!({}),
            vec![
                Message::text(Role::User, "Hi"),
                Message::text(Role::Assistant, "Hello!"),
            ],
        );
        let p = parsed(
            json!({"previous_response_id": "resp_1", "input": "Again?", "reasoning": {"effort": "none"}}),
            &signer,
            &store,
        )
        .expect("accepted");
        let texts: Vec<String> = p
            .reply
            .chat
            .messages
            .iter()
            .filter_map(|m| m.content.as_ref().map(Content::text))
            .collect();
        assert_eq!(texts, ["Hi", "Hello!", "Again?"]);
        assert_eq!(p.reply.chat.enable_thinking, Some(false));
        for (body, param) in [
            (json!({"input": []}), "input"),
            (
                json!({"input": "x", "previous_response_id": "resp_2"}),
                "previous_response_id",
            ),
            (json!({"input": "x", "background": true}), "background"),
            (
                json!({"input": "x", "text": {"format": {"type": "grammar"}}}),
                "text.format.type",
            ),
            (
                json!({"input": "x", "include": ["file_search_call.results"]}),
                "include",
            ),
            (
                json!({"input": "x", "tool_choice": "required"}),
                "tool_choice",
            ),
            (
                json!({"input": [{"type": "item_reference", "id": "x"}]}),
                "input[0].type",
            ),
            (
                json!({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{"}]}),
                "input[0].arguments",
            ),
        ] {
            assert_eq!(
                parsed(body.clone(), &signer, &store).err().as_deref(),
                Some(param),
                "{body}"
            );
        }
    }
}
