//! Servers asking the host's model to write: `sampling/createMessage`.
//!
//! The host knows no model, so it offers the `sampling` capability only when it is given a
//! [`SamplingHandler`] (the agent layer implements one over the local model). Requests are turned
//! into plain [`SamplingRequest`] values here, so the handler never sees rmcp's types; content the local
//! model cannot read (images, audio) becomes a placeholder, and a server that asks for tool use
//! inside sampling gets a clear error rather than a silently tool-less answer.
#![allow(deprecated)]

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use rmcp::model::{
    CreateMessageRequestParams, CreateMessageResult, Role as McpRole, SamplingMessage,
    SamplingMessageContentBlock,
};

/// One message of a sampling request, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplingMessageText {
    /// `user` or `assistant`.
    pub role: String,
    /// The message's text.
    pub text: String,
}

/// A server's request, as the local model needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingRequest {
    /// The server's system prompt, if any.
    pub system: Option<String>,
    /// The conversation.
    pub messages: Vec<SamplingMessageText>,
    /// Most tokens to write.
    pub max_tokens: u32,
    /// Requested temperature.
    pub temperature: Option<f32>,
    /// Texts that end the answer.
    pub stop_sequences: Vec<String>,
}

impl SamplingRequest {
    /// The request's messages as one text (what a person approving it reads).
    pub fn transcript(&self) -> String {
        let mut out = String::new();
        if let Some(system) = &self.system {
            out.push_str(&format!("[system] {system}\n"));
        }
        for m in &self.messages {
            out.push_str(&format!("[{}] {}\n", m.role, m.text));
        }
        out
    }
}

/// Why the answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplingStop {
    /// The model finished.
    EndTurn,
    /// A stop sequence was written.
    StopSequence,
    /// `max_tokens` was reached.
    MaxTokens,
}

/// The local model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingReply {
    /// The answer text.
    pub text: String,
    /// The model's name.
    pub model: String,
    /// Why it ended.
    pub stop: SamplingStop,
}

/// Answers sampling requests; `Err` is a refusal or failure, sent to the server as an error.
pub trait SamplingHandler: Send + Sync {
    /// Writes an answer to `request` from `server`.
    fn create_message(
        &self,
        server: &str,
        request: SamplingRequest,
    ) -> BoxFuture<'static, Result<SamplingReply, String>>;
}

/// A shared [`SamplingHandler`] (a named type so host options stay `Debug` and `Clone`).
#[derive(Clone)]
pub struct SamplingHandle(pub Arc<dyn SamplingHandler>);

impl fmt::Debug for SamplingHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SamplingHandle")
    }
}

/// Converts rmcp's request; an error names what cannot be served.
pub(crate) fn request_from(params: CreateMessageRequestParams) -> Result<SamplingRequest, String> {
    if params.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err("sampling with tools is not supported by this host".into());
    }
    let messages = params.messages.into_iter().map(message_text).collect();
    Ok(SamplingRequest {
        system: params.system_prompt.filter(|s| !s.is_empty()),
        messages,
        max_tokens: params.max_tokens,
        temperature: params.temperature,
        stop_sequences: params.stop_sequences.unwrap_or_default(),
    })
}

fn message_text(message: SamplingMessage) -> SamplingMessageText {
    let role = match message.role {
        McpRole::Assistant => "assistant",
        _ => "user",
    };
    let parts: Vec<String> = message
        .content
        .into_vec()
        .into_iter()
        .map(|block| match block {
            SamplingMessageContentBlock::Text(t) => t.text,
            SamplingMessageContentBlock::Image(i) => format!("[image: {}]", i.mime_type),
            SamplingMessageContentBlock::Audio(a) => format!("[audio: {}]", a.mime_type),
            SamplingMessageContentBlock::ToolUse(u) => {
                format!(
                    "[tool call {}: {}]",
                    u.name,
                    serde_json::Value::Object(u.input)
                )
            }
            SamplingMessageContentBlock::ToolResult(r) => {
                format!("[tool result for {}]", r.tool_use_id)
            }
            _ => "[unsupported content]".to_string(),
        })
        .collect();
    SamplingMessageText {
        role: role.into(),
        text: parts.join("\n"),
    }
}

/// Converts the answer to rmcp's result.
pub(crate) fn result_from(reply: SamplingReply) -> CreateMessageResult {
    let stop = match reply.stop {
        SamplingStop::EndTurn => CreateMessageResult::STOP_REASON_END_TURN,
        SamplingStop::StopSequence => CreateMessageResult::STOP_REASON_END_SEQUENCE,
        SamplingStop::MaxTokens => CreateMessageResult::STOP_REASON_END_MAX_TOKEN,
    };
    CreateMessageResult::new(
        SamplingMessage::new(
            McpRole::Assistant,
            SamplingMessageContentBlock::text(reply.text),
        ),
        reply.model,
    )
    .with_stop_reason(stop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_become_text_and_answers_become_assistant_messages() {
        let params: CreateMessageRequestParams = serde_json::from_value(json!({
            "messages": [
                {"role": "user", "content": {"type": "text", "text": "Hi"}},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello"},
                                                  {"type": "image", "data": "AA==", "mimeType": "image/png"}]}
            ],
            "systemPrompt": "Be brief.",
            "maxTokens": 20,
            "temperature": 0.7
        }))
        .expect("params");
        let request = request_from(params).expect("request");
        assert_eq!(request.system.as_deref(), Some("Be brief."));
        assert_eq!(request.messages[1].text, "Hello\n[image: image/png]");
        assert_eq!(request.max_tokens, 20);
        assert!(request.transcript().contains("[user] Hi"));

        let result = result_from(SamplingReply {
            text: "Sure.".into(),
            model: "qwen3".into(),
            stop: SamplingStop::MaxTokens,
        });
        let wire = serde_json::to_value(&result).expect("json");
        assert_eq!(wire["role"], "assistant");
        assert_eq!(wire["content"]["text"], "Sure.");
        assert_eq!(wire["stopReason"], "maxTokens");
    }

    #[test]
    fn sampling_with_tools_is_refused_by_name() {
        let params: CreateMessageRequestParams = serde_json::from_value(json!({
            "messages": [{"role": "user", "content": {"type": "text", "text": "Hi"}}],
            "maxTokens": 5,
            "tools": [{"name": "t", "inputSchema": {"type": "object"}}]
        }))
        .expect("params");
        assert!(request_from(params).is_err_and(|e| e.contains("tools")));
    }
}
