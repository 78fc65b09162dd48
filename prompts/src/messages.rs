//! The chat request Kestrel takes: OpenAI's chat format plus Qwen's switches.
//!
//! Messages keep exactly what the user sent (the template sees them as JSON values, so key order in
//! tool schemas and argument objects survives); parsing only checks the shape and rejects what
//! would otherwise be silently dropped (an unknown role, a tool call without a name).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A request to render: messages, tools and the thinking switch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// Tools offered to the model, in OpenAI's `{"type": "function", "function": {...}}` form.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Value>,
    /// Qwen3's hard switch; `None` leaves the template's default (thinking on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_thinking: Option<bool>,
    /// Whether to end with the assistant header (default true).
    #[serde(default = "yes")]
    pub add_generation_prompt: bool,
}

fn yes() -> bool {
    true
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool result.
    Tool,
}

/// One message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// Author.
    pub role: Role,
    /// Text, or a list of `{"type": "text", "text": ...}` parts; may be null for an assistant
    /// message that only calls tools.
    #[serde(default)]
    pub content: Option<Content>,
    /// The assistant's thinking, kept apart from `content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Calls made by the assistant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For tool messages: the call this answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Optional author name (OpenAI field; templates may ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Message {
    /// A plain text message from `role`.
    pub fn text(role: Role, text: &str) -> Self {
        Self {
            role,
            content: Some(Content::Text(text.to_string())),
            reasoning_content: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }
}

/// Message content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts; only text parts are supported.
    Parts(Vec<ContentPart>),
}

/// A content part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// A text part.
    Text {
        /// The text.
        text: String,
    },
}

impl Content {
    /// The text, parts joined without separator (as OpenAI-compatible servers do).
    pub fn text(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::Parts(parts) => parts
                .iter()
                .map(|ContentPart::Text { text }| text.as_str())
                .collect(),
        }
    }
}

/// A tool call made by the assistant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    /// Call id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Always `function`.
    #[serde(default = "function_type", rename = "type")]
    pub kind: String,
    /// What is called.
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".into()
}

/// Name and arguments of a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionCall {
    /// Tool name.
    pub name: String,
    /// Arguments: a JSON object, or a string holding one (both are accepted, as by OpenAI).
    pub arguments: Value,
}

impl ChatRequest {
    /// Parses a request from JSON text, with an error that says where it is wrong.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openai_shapes() {
        let r = ChatRequest::from_json(
            r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "1", "type": "function",
             "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
            {"role": "tool", "tool_call_id": "1", "content": "ok"}], "enable_thinking": false}"#,
        )
        .expect("valid");
        assert_eq!(
            r.messages[0].content.as_ref().map(Content::text).as_deref(),
            Some("ab")
        );
        assert!(r.add_generation_prompt);
        assert_eq!(r.messages[1].tool_calls[0].function.name, "f");
    }

    #[test]
    fn rejects_unknown_roles_and_fields() {
        let e = ChatRequest::from_json(r#"{"messages": [{"role": "robot", "content": "x"}]}"#)
            .expect_err("role");
        assert!(e.to_string().contains("robot"), "{e}");
        let e = ChatRequest::from_json(r#"{"messages": [], "temprature": 1}"#).expect_err("field");
        assert!(e.to_string().contains("temprature"), "{e}");
        let e = ChatRequest::from_json(
            r#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}"#,
        );
        assert!(e.is_err());
    }
}
