//! Chat Completions on the wire: the request a turn becomes, and the text Qwen writes rebuilt
//! from the reply's fields.
//!
//! What is sent besides OpenAI's fields depends on the server ([`ChatDialect`]). The engine hands
//! back reasoning, answer text and calls as separate fields; [`QwenText`] puts
//! them back in the order and markup the model wrote them (`<think>...\n</think>\n\n`, the
//! answer, `<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>`), markup to be tokenized
//! as special tokens and the model's text as plain text, so the agent's parser reads a chat-mode
//! reply exactly as a token-mode one. A call is passed on once the next one starts or the reply
//! ends (its arguments arrive in pieces). When the engine closes the thinking at its budget with
//! Qwen's early-stop message, the message is recognised and marked forced, as the embedded
//! engine reports it.

use kestrel_engine::SamplingParams;
use kestrel_prompts::answer_format::AnswerFormat;
use kestrel_prompts::constrain::ToolChoice;
use kestrel_prompts::thinking::EARLY_STOP_TEXT;
use serde_json::{Value, json};

use crate::backend::Conversation;

/// The part of Qwen's early-stop text that precedes `</think>`: what an engine enforcing the
/// budget is asked to write before it closes the thinking.
pub(crate) fn early_stop_message() -> &'static str {
    EARLY_STOP_TEXT
        .split("</think>")
        .next()
        .unwrap_or(EARLY_STOP_TEXT)
}

/// A piece of rebuilt text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Piece {
    /// The model's own text (tokenized as plain text).
    Text(String),
    /// Protocol markup (`<think>`, `<tool_call>`: tokenized as special tokens).
    Markup(String),
    /// Text the model did not choose (the budget's early-stop text).
    Forced(String),
}

/// A call being received.
#[derive(Debug, Default)]
struct PartialCall {
    name: String,
    arguments: String,
}

/// Rebuilds Qwen's text from a reply's reasoning, content and calls.
#[derive(Debug)]
pub(crate) struct QwenText {
    /// Inside `<think>`.
    thinking: bool,
    /// Something after the thinking was written.
    answered: bool,
    /// Reasoning held back while it may be the start of the budget's message.
    held: String,
    /// The engine's budget message, when it was asked to write one.
    message: Option<String>,
    /// Calls received, by index; those before `sent` were passed on.
    calls: Vec<PartialCall>,
    sent: usize,
    /// The budget's message closed the thinking.
    pub(crate) stopped_by_budget: bool,
}

impl QwenText {
    /// `starts_in_thinking` when the prompt opened `<think>`; `message` when the engine was
    /// asked to close the thinking with it at the budget.
    pub(crate) fn new(starts_in_thinking: bool, message: Option<String>) -> Self {
        Self {
            thinking: starts_in_thinking,
            answered: false,
            held: String::new(),
            message,
            calls: Vec::new(),
            sent: 0,
            stopped_by_budget: false,
        }
    }

    /// A reasoning delta.
    pub(crate) fn reasoning(&mut self, delta: &str) -> Vec<Piece> {
        let mut out = Vec::new();
        if delta.is_empty() {
            return out;
        }
        if !self.thinking && !self.answered {
            // The reasoning as the engine gives it (engines strip the newline Qwen writes here).
            out.push(Piece::Markup("<think>".into()));
            self.thinking = true;
        }
        if !self.thinking {
            // Reasoning after the answer began: not Qwen's form; kept as answer text.
            out.push(Piece::Text(delta.to_string()));
            return out;
        }
        self.held.push_str(delta);
        let keep = self.held_from();
        let ready: String = self.held.drain(..keep).collect();
        if !ready.is_empty() {
            out.push(Piece::Text(ready));
        }
        out
    }

    /// Where the held reasoning may start the budget's message (its length when it cannot).
    fn held_from(&self) -> usize {
        let Some(message) = &self.message else {
            return self.held.len();
        };
        self.held
            .char_indices()
            .map(|(at, _)| at)
            .find(|&at| {
                let rest = &self.held[at..];
                message.starts_with(rest) || rest.starts_with(message.as_str())
            })
            .unwrap_or(self.held.len())
    }

    /// An answer delta.
    pub(crate) fn content(&mut self, delta: &str) -> Vec<Piece> {
        if delta.is_empty() {
            return Vec::new();
        }
        let mut out = self.close_thinking();
        out.push(Piece::Text(delta.to_string()));
        out
    }

    /// A piece of call `index`.
    pub(crate) fn call(&mut self, index: usize, name: Option<&str>, arguments: &str) -> Vec<Piece> {
        let mut out = self.close_thinking();
        // A later index means the earlier calls are complete.
        while self.sent < index.min(self.calls.len()) {
            out.extend(self.send_call());
        }
        while self.calls.len() <= index {
            self.calls.push(PartialCall::default());
        }
        let call = &mut self.calls[index];
        if let Some(name) = name {
            call.name.push_str(name);
        }
        call.arguments.push_str(arguments);
        out
    }

    /// The end of the reply: what is held, and the calls not yet passed on.
    pub(crate) fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        if self.sent < self.calls.len() {
            out.extend(self.close_thinking());
        }
        while self.sent < self.calls.len() {
            out.extend(self.send_call());
        }
        if !self.held.is_empty() {
            out.push(Piece::Text(std::mem::take(&mut self.held)));
        }
        out
    }

    fn close_thinking(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        if self.thinking {
            self.thinking = false;
            let held = std::mem::take(&mut self.held);
            let message = self.message.as_deref().unwrap_or_default();
            if !message.is_empty() && held.trim_end() == message.trim_end() {
                self.stopped_by_budget = true;
                out.push(Piece::Forced(held));
                out.push(Piece::Forced("</think>\n\n".into()));
            } else {
                if !held.is_empty() {
                    out.push(Piece::Text(held));
                }
                out.push(Piece::Text("\n".into()));
                out.push(Piece::Markup("</think>".into()));
                out.push(Piece::Text("\n\n".into()));
            }
        }
        self.answered = true;
        out
    }

    fn send_call(&mut self) -> Vec<Piece> {
        let call = &self.calls[self.sent];
        self.sent += 1;
        // Arguments that are not JSON are passed on as they are: the parser names the problem.
        let arguments = match serde_json::from_str::<Value>(&call.arguments) {
            Ok(value) => value.to_string(),
            Err(_) if call.arguments.trim().is_empty() => "{}".into(),
            Err(_) => call.arguments.clone(),
        };
        let name = Value::String(call.name.clone());
        vec![
            Piece::Text("\n".into()),
            Piece::Markup("<tool_call>".into()),
            Piece::Text(format!(
                "\n{{\"name\": {name}, \"arguments\": {arguments}}}\n"
            )),
            Piece::Markup("</tool_call>".into()),
        ]
    }
}

/// The kind of server behind a Chat Completions endpoint, for the fields it reads beyond
/// OpenAI's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChatDialect {
    /// llama.cpp's llama-server (`--jinja`).
    LlamaServer,
    /// vLLM.
    Vllm,
    /// SGLang.
    Sglang,
    /// Anything else: only OpenAI's fields are sent.
    OpenAi,
}

impl ChatDialect {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::LlamaServer => "llama-server",
            Self::Vllm => "vLLM",
            Self::Sglang => "SGLang",
            Self::OpenAi => "an OpenAI-compatible server",
        }
    }
}

/// What a reply is asked for.
pub(crate) struct ChatRequestParts<'a> {
    pub(crate) dialect: ChatDialect,
    pub(crate) model: &'a str,
    pub(crate) conversation: &'a Conversation,
    pub(crate) sampling: &'a SamplingParams,
    pub(crate) max_tokens: usize,
    /// The thinking budget, for an engine that enforces one.
    pub(crate) budget: Option<usize>,
    pub(crate) format: Option<&'a AnswerFormat>,
}

impl ChatRequestParts<'_> {
    /// The Chat Completions body.
    pub(crate) fn body(&self) -> Value {
        let dialect = self.dialect;
        let messages: Vec<Value> = self
            .conversation
            .request
            .messages
            .iter()
            .map(|m| wire_message(m, dialect))
            .collect();
        let s = self.sampling;
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": self.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
        });
        let map = body.as_object_mut().expect("a JSON object");
        if let Some(seed) = s.seed {
            map.insert("seed".into(), json!(seed % (1 << 53)));
        }
        if s.presence_penalty != 0.0 {
            map.insert("presence_penalty".into(), json!(s.presence_penalty));
        }
        if s.frequency_penalty != 0.0 {
            map.insert("frequency_penalty".into(), json!(s.frequency_penalty));
        }
        let tools = &self.conversation.request.tools;
        if !tools.is_empty() {
            map.insert("tools".into(), json!(tools));
            if self.conversation.tool_choice != ToolChoice::Unset {
                map.insert("tool_choice".into(), json!(self.conversation.tool_choice));
            }
        }
        match self.format {
            Some(AnswerFormat::JsonObject) => {
                map.insert("response_format".into(), json!({"type": "json_object"}));
            }
            Some(AnswerFormat::JsonSchema(schema)) => {
                map.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}),
                );
            }
            None => {}
        }
        if dialect == ChatDialect::OpenAi {
            return body;
        }
        // Fields the serving engines read beyond OpenAI's.
        if s.top_k > 0 {
            map.insert("top_k".into(), json!(s.top_k));
        }
        map.insert("min_p".into(), json!(s.min_p));
        if let Some(enable) = self.conversation.request.enable_thinking {
            map.insert(
                "chat_template_kwargs".into(),
                json!({"enable_thinking": enable}),
            );
        }
        match dialect {
            ChatDialect::LlamaServer => {
                map.insert("repeat_penalty".into(), json!(s.repetition_penalty));
                map.insert("cache_prompt".into(), json!(true));
                map.insert("reasoning_format".into(), json!("deepseek"));
                if let Some(budget) = self.budget {
                    map.insert("reasoning_budget_tokens".into(), json!(budget));
                    map.insert(
                        "reasoning_budget_message".into(),
                        json!(early_stop_message()),
                    );
                }
            }
            ChatDialect::Vllm => {
                map.insert("repetition_penalty".into(), json!(s.repetition_penalty));
                if let Some(budget) = self.budget {
                    map.insert("thinking_token_budget".into(), json!(budget));
                }
            }
            ChatDialect::Sglang => {
                map.insert("repetition_penalty".into(), json!(s.repetition_penalty));
                map.insert("separate_reasoning".into(), json!(true));
            }
            ChatDialect::OpenAi => {}
        }
        body
    }
}

/// A message as Chat Completions takes it: call arguments as JSON text, call ids present, and
/// no reasoning for a server that may not know the field.
fn wire_message(message: &kestrel_prompts::messages::Message, dialect: ChatDialect) -> Value {
    let mut value = serde_json::to_value(message).unwrap_or(Value::Null);
    let Some(map) = value.as_object_mut() else {
        return value;
    };
    if dialect == ChatDialect::OpenAi {
        map.remove("reasoning_content");
    }
    if let Some(Value::Array(calls)) = map.get_mut("tool_calls") {
        for (i, call) in calls.iter_mut().enumerate() {
            if call.get("id").is_none() {
                call["id"] = json!(format!("call_{i}"));
            }
            let arguments = &mut call["function"]["arguments"];
            if !arguments.is_string() {
                *arguments = Value::String(arguments.to_string());
            }
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(pieces: &[Piece]) -> String {
        pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) | Piece::Markup(t) | Piece::Forced(t) => t.as_str(),
            })
            .collect()
    }

    #[test]
    fn reasoning_answer_and_calls_come_back_in_qwens_form() {
        let mut text = QwenText::new(false, None);
        let mut out = text.reasoning("Let me");
        out.extend(text.reasoning(" check."));
        out.extend(text.content("Checking."));
        out.extend(text.call(0, Some("get_time"), "{\"zone\":"));
        out.extend(text.call(0, None, " \"UTC\"}"));
        out.extend(text.call(1, Some("ping"), ""));
        out.extend(text.finish());
        assert_eq!(
            joined(&out),
            "<think>Let me check.\n</think>\n\nChecking.\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\":\"UTC\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"ping\", \"arguments\": {}}\n</tool_call>"
        );
        assert!(out.contains(&Piece::Markup("<think>".into())));
        assert!(!text.stopped_by_budget);
    }

    #[test]
    fn a_call_is_passed_on_when_the_next_begins() {
        let mut text = QwenText::new(false, None);
        assert!(joined(&text.call(0, Some("a"), "{}")).is_empty());
        let out = text.call(1, Some("b"), "{");
        assert!(joined(&out).contains("\"name\": \"a\""), "{out:?}");
        assert!(!joined(&out).contains("\"b\""));
    }

    #[test]
    fn arguments_that_are_not_json_are_passed_on_as_they_are() {
        let mut text = QwenText::new(false, None);
        text.call(0, Some("a"), "{\"x\": ");
        assert!(joined(&text.finish()).contains("\"arguments\": {\"x\": }"));
    }

    #[test]
    fn an_answer_after_a_prompt_that_opened_the_thinking_closes_it() {
        let mut text = QwenText::new(true, None);
        let mut out = text.reasoning("hmm");
        out.extend(text.content("Hi"));
        assert_eq!(joined(&out), "hmm\n</think>\n\nHi");
        let mut text = QwenText::new(true, None);
        assert_eq!(joined(&text.content("Hi")), "\n</think>\n\nHi");
    }

    #[test]
    fn the_engines_budget_message_is_recognised_as_forced() {
        let message = early_stop_message();
        let mut text = QwenText::new(false, Some(message.to_string()));
        let mut out = text.reasoning("Hmm, let me think ");
        // The message arrives in pieces; nothing of it is shown as the model's until it is whole.
        let (a, b) = message.split_at(10);
        out.extend(text.reasoning(a));
        assert_eq!(joined(&out), "<think>Hmm, let me think ");
        out.extend(text.reasoning(b));
        out.extend(text.content("The answer"));
        assert!(text.stopped_by_budget);
        assert!(out.contains(&Piece::Forced(message.to_string())), "{out:?}");
        assert!(out.contains(&Piece::Forced("</think>\n\n".into())));
        // Reasoning that only starts like the message is the model's.
        let mut text = QwenText::new(false, Some(message.to_string()));
        let mut out = text.reasoning("Considering the options");
        out.extend(text.content("x"));
        assert!(!text.stopped_by_budget);
        assert!(out.contains(&Piece::Text("Considering the options".into())));
    }

    #[test]
    fn the_body_carries_tools_choice_switch_and_the_engines_budget() {
        use kestrel_prompts::constrain::ToolChoiceMode;
        use kestrel_prompts::messages::{ChatRequest, FunctionCall, Message, Role, ToolCall};
        let mut call = Message::text(Role::Assistant, "");
        call.tool_calls = vec![ToolCall {
            id: None,
            kind: "function".into(),
            function: FunctionCall {
                name: "t".into(),
                arguments: json!({"a": 1}),
            },
        }];
        call.reasoning_content = Some("thought".into());
        let conversation = Conversation {
            request: ChatRequest {
                messages: vec![Message::text(Role::User, "hi"), call],
                tools: vec![json!({"type": "function", "function": {"name": "t"}})],
                enable_thinking: Some(false),
                add_generation_prompt: true,
            },
            tool_choice: ToolChoice::Mode(ToolChoiceMode::Required),
        };
        let sampling = SamplingParams::default();
        let parts = |dialect| ChatRequestParts {
            dialect,
            model: "m",
            conversation: &conversation,
            sampling: &sampling,
            max_tokens: 64,
            budget: Some(10),
            format: None,
        };
        let body = parts(ChatDialect::LlamaServer).body();
        assert_eq!(body["tool_choice"], "required");
        assert_eq!(body["chat_template_kwargs"]["enable_thinking"], false);
        assert_eq!(body["reasoning_budget_tokens"], 10);
        assert_eq!(body["reasoning_budget_message"], early_stop_message());
        let sent = &body["messages"][1]["tool_calls"][0];
        assert_eq!(sent["function"]["arguments"], "{\"a\":1}");
        assert_eq!(sent["id"], "call_0");
        assert_eq!(body["messages"][1]["reasoning_content"], "thought");
        let body = parts(ChatDialect::Vllm).body();
        assert_eq!(body["thinking_token_budget"], 10);
        // A server of unknown kind gets OpenAI's fields only.
        let body = parts(ChatDialect::OpenAi).body();
        for field in [
            "top_k",
            "min_p",
            "chat_template_kwargs",
            "reasoning_budget_tokens",
        ] {
            assert!(body.get(field).is_none(), "{field}: {body}");
        }
        assert!(body["messages"][1].get("reasoning_content").is_none());
    }
}
