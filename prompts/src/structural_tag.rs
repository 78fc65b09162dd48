//! The tool-call constraint as a structural tag: the form vLLM's structured outputs (xgrammar)
//! take for a lazily applied constraint. Each tool the turn may call is a tag whose begin is
//! Qwen's call prefix with the tool's name, whose content is the tool's parameters schema, and
//! whose end closes the call; the tags are triggered by `<tool_call>`, and at least one is
//! required when the answer must start with a call. Qwen3-Coder's XML calls have no tag form
//! here: they go unconstrained on such an engine and are validated after the fact, as every call
//! is.

use serde_json::{Value, json};

use crate::constrain::ToolCallHook;
use crate::xml_calls::CallFormat;

/// The structural tag for `hook`'s calls; `None` when no call may be made (the caller bans
/// `<tool_call>` then) or the call form has no tag form.
pub fn tool_call_structural_tag(hook: &ToolCallHook) -> Option<Value> {
    let (tools, only) = hook.calls_offered()?;
    if hook.call_format() == CallFormat::Xml {
        return None;
    }
    let tags: Vec<Value> = tools
        .iter()
        .filter_map(|tool| {
            let function = &tool["function"];
            let name = function["name"].as_str()?;
            if only.is_some_and(|only| only != name) {
                return None;
            }
            let schema = function
                .get("parameters")
                .filter(|p| p.is_object())
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"}));
            Some(json!({
                "begin": format!("<tool_call>\n{{\"name\": {}, \"arguments\": ", Value::from(name)),
                "content": {"type": "json_schema", "json_schema": schema},
                "end": "}\n</tool_call>",
            }))
        })
        .collect();
    if tags.is_empty() {
        return None;
    }
    Some(json!({
        "type": "structural_tag",
        "format": {
            "type": "triggered_tags",
            "triggers": ["<tool_call>"],
            "tags": tags,
            "at_least_one": hook.calls_first(),
            "stop_after_first": false,
        },
    }))
}
