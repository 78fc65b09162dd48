//! Rendering a chat request with the model's own Jinja template, and tokenizing the result so that
//! only the template's own markup can become special tokens.
//!
//! Rendering matches Hugging Face's `apply_chat_template`: minijinja with `trim_blocks` and
//! `lstrip_blocks`, Python's string methods, and a `tojson` that writes what Python's `json.dumps`
//! writes (`", "`/`": "` separators, non-ASCII kept, `<`, `>`, `&` not escaped, key order kept).
//!
//! Tokenizing: Hugging Face tokenizes the rendered string as a whole, so a tool result containing
//! `<|im_end|>` becomes a real end-of-turn token. Kestrel renders a second time with every
//! special-token spelling inside the request's data replaced by a private-use placeholder
//! character. If that rendering, placeholders mapped back, is byte-for-byte the first one (the
//! template's logic did not depend on the replaced text), the special tokens left in it are exactly
//! the template's markup: those become special ids, everything between them is tokenized as plain
//! text. When the template's logic does look at special text in the data (Qwen3 splits assistant
//! content on `</think>`), only the chat-structure tokens (`<|...|>`) are replaced; if even that
//! changes the output, the prompt is tokenized as Hugging Face does, with a warning.

use minijinja::value::{Kwargs, Value as JinjaValue};
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde_json::{Map, Value};

use kestrel_engine::Tokenizer;

use crate::messages::{ChatRequest, Message};
use crate::xml_calls::CallFormat;

/// Qwen3's official chat template, used when a model carries none.
pub const QWEN3_TEMPLATE: &str = include_str!("../qwen3_chat_template.jinja");

/// Errors from rendering or tokenizing a prompt.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// The template does not compile.
    #[error("chat template does not compile: {0:#}")]
    Compile(JinjaError),
    /// Rendering failed (the template raised, or used something unsupported).
    #[error("chat template failed to render: {0:#}")]
    Render(JinjaError),
    /// Tokenizing the rendered prompt failed.
    #[error(transparent)]
    Tokenize(#[from] kestrel_engine::EngineError),
}

/// A rendered prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The exact prompt text.
    pub text: String,
    /// Its token ids, with content tokenized as plain text.
    pub ids: Vec<u32>,
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    thinks: bool,
    call_format: CallFormat,
}

const NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles a Jinja chat template.
    pub fn new(source: &str) -> Result<Self, PromptError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(PromptError::Compile)?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(NAME, source.to_owned())
            .map_err(PromptError::Compile)?;
        // Qwen3's hybrid templates take `enable_thinking`; thinking-only ones open `<think>`.
        let thinks = source.contains("enable_thinking") || source.contains("<think>");
        Ok(Self {
            env,
            thinks,
            call_format: CallFormat::of_template(source),
        })
    }

    /// How the template writes tool calls, so how the model writes them (Qwen3-Coder: XML).
    pub fn call_format(&self) -> CallFormat {
        self.call_format
    }

    /// Whether the template is a thinking model's (Qwen3's), whose default is to think; Qwen2.5's
    /// is not.
    pub fn thinks(&self) -> bool {
        self.thinks
    }

    /// Qwen3's template (the fallback for models without one).
    pub fn qwen3() -> Self {
        // The shipped template is tested to compile; a failure here is a build defect.
        Self::new(QWEN3_TEMPLATE).unwrap_or_else(|e| panic!("shipped Qwen3 template: {e}"))
    }

    /// The template `tokenizer` ships (`chat_template`), or Qwen3's when it has none.
    pub fn of(tokenizer: &Tokenizer) -> Result<Self, PromptError> {
        match tokenizer.chat_template() {
            Some(source) => Self::new(source),
            None => Ok(Self::qwen3()),
        }
    }

    /// Renders the request to prompt text.
    pub fn render(&self, request: &ChatRequest) -> Result<String, PromptError> {
        self.render_context(&context(request, self.call_format, &|s: &str| s.to_owned()))
    }

    fn render_context(&self, ctx: &Value) -> Result<String, PromptError> {
        let template = self.env.get_template(NAME).map_err(PromptError::Render)?;
        template
            .render(minijinja::value::Serde(ctx))
            .map_err(PromptError::Render)
    }

    /// Renders and tokenizes the request (see the module comment for how content stays text).
    pub fn prompt(
        &self,
        request: &ChatRequest,
        tokenizer: &Tokenizer,
    ) -> Result<Prompt, PromptError> {
        let text = self.render(request)?;
        let markup = Markup::new(tokenizer);
        for structural_only in [false, true] {
            let defuse = |s: &str| markup.defuse(s, structural_only);
            let guarded = self.render_context(&context(request, self.call_format, &defuse))?;
            if markup.restore(&guarded) == text {
                let ids = markup.tokenize(&guarded, tokenizer)?;
                return Ok(Prompt { text, ids });
            }
        }
        tracing::warn!(
            "the chat template inspects special-token text inside messages; tokenizing as Hugging Face does"
        );
        let ids = tokenizer.encode_raw(&text)?;
        Ok(Prompt { text, ids })
    }
}

/// The template context: messages and tools as JSON, every string passed through `map`. A
/// template of the XML form walks each call's arguments as a mapping, so arguments given as a
/// JSON string are passed to it parsed.
fn context(request: &ChatRequest, format: CallFormat, map: &dyn Fn(&str) -> String) -> Value {
    let messages: Vec<Value> = request
        .messages
        .iter()
        .map(|m| message_value(m, format, map))
        .collect();
    let mut ctx = Map::new();
    ctx.insert("messages".into(), Value::Array(messages));
    if !request.tools.is_empty() {
        ctx.insert(
            "tools".into(),
            Value::Array(request.tools.iter().map(|t| map_strings(t, map)).collect()),
        );
    }
    if let Some(thinking) = request.enable_thinking {
        ctx.insert("enable_thinking".into(), Value::Bool(thinking));
    }
    ctx.insert(
        "add_generation_prompt".into(),
        Value::Bool(request.add_generation_prompt),
    );
    Value::Object(ctx)
}

fn message_value(m: &Message, format: CallFormat, map: &dyn Fn(&str) -> String) -> Value {
    let mut o = Map::new();
    o.insert(
        "role".into(),
        serde_json::to_value(m.role).unwrap_or(Value::Null),
    );
    // Templates concatenate `content`; a null content (tool-calls-only message) renders as "".
    let content = m.content.as_ref().map(|c| c.text()).unwrap_or_default();
    o.insert("content".into(), Value::String(map(&content)));
    if let Some(r) = &m.reasoning_content {
        o.insert("reasoning_content".into(), Value::String(map(r)));
    }
    if !m.tool_calls.is_empty() {
        let calls = m
            .tool_calls
            .iter()
            .map(|c| {
                let mut f = Map::new();
                f.insert("name".into(), Value::String(map(&c.function.name)));
                let parsed = match (&c.function.arguments, format) {
                    (Value::String(s), CallFormat::Xml) => serde_json::from_str::<Value>(s)
                        .ok()
                        .filter(Value::is_object),
                    _ => None,
                };
                let arguments = parsed.as_ref().unwrap_or(&c.function.arguments);
                f.insert("arguments".into(), map_strings(arguments, map));
                let mut call = Map::new();
                if let Some(id) = &c.id {
                    call.insert("id".into(), Value::String(id.clone()));
                }
                call.insert("type".into(), Value::String(c.kind.clone()));
                call.insert("function".into(), Value::Object(f));
                Value::Object(call)
            })
            .collect();
        o.insert("tool_calls".into(), Value::Array(calls));
    }
    if let Some(id) = &m.tool_call_id {
        o.insert("tool_call_id".into(), Value::String(id.clone()));
    }
    if let Some(name) = &m.name {
        o.insert("name".into(), Value::String(map(name)));
    }
    Value::Object(o)
}

fn map_strings(v: &Value, map: &dyn Fn(&str) -> String) -> Value {
    match v {
        Value::String(s) => Value::String(map(s)),
        Value::Array(a) => Value::Array(a.iter().map(|x| map_strings(x, map)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (map(k), map_strings(x, map)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The tokenizer's added tokens and their placeholder characters.
struct Markup {
    /// `(id, text, placeholder)`, longest text first so that matching is leftmost-longest.
    tokens: Vec<(u32, String, char)>,
}

/// First code point of Supplementary Private Use Area-A: placeholders never collide with text a
/// tokenizer or a model would produce.
const PLACEHOLDER_BASE: u32 = 0xF0000;

impl Markup {
    fn new(tokenizer: &Tokenizer) -> Self {
        let mut tokens: Vec<(u32, String, char)> = tokenizer
            .added_tokens()
            .into_iter()
            .enumerate()
            .filter_map(|(i, (id, text))| {
                char::from_u32(PLACEHOLDER_BASE + i as u32).map(|c| (id, text, c))
            })
            .filter(|(_, text, _)| !text.is_empty())
            .collect();
        tokens.sort_by_key(|t| std::cmp::Reverse(t.1.len()));
        Self { tokens }
    }

    fn defuse(&self, s: &str, structural_only: bool) -> String {
        let mut out = s.to_owned();
        for (_, text, c) in &self.tokens {
            let structural = text.starts_with("<|") && text.ends_with("|>");
            if (!structural_only || structural) && out.contains(text.as_str()) {
                out = out.replace(text.as_str(), &c.to_string());
            }
        }
        out
    }

    fn restore(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for ch in s.chars() {
            match self.tokens.iter().find(|(_, _, c)| *c == ch) {
                Some((_, text, _)) => out.push_str(text),
                None => out.push(ch),
            }
        }
        out
    }

    /// Splits at the special tokens present (the template's), tokenizing the text between them
    /// (placeholders restored) as plain text.
    fn tokenize(&self, guarded: &str, tokenizer: &Tokenizer) -> Result<Vec<u32>, PromptError> {
        let mut ids = Vec::new();
        let mut plain_start = 0;
        let mut i = 0;
        while i < guarded.len() {
            let rest = &guarded[i..];
            if let Some((id, text, _)) = self
                .tokens
                .iter()
                .find(|(_, t, _)| rest.starts_with(t.as_str()))
            {
                if plain_start < i {
                    ids.extend(tokenizer.encode_plain(&self.restore(&guarded[plain_start..i]))?);
                }
                ids.push(*id);
                i += text.len();
                plain_start = i;
            } else {
                i += rest.chars().next().map_or(1, char::len_utf8);
            }
        }
        if plain_start < guarded.len() {
            ids.extend(tokenizer.encode_plain(&self.restore(&guarded[plain_start..]))?);
        }
        Ok(ids)
    }
}

/// `tojson` as Hugging Face's templates expect: Python's `json.dumps(x, ensure_ascii=False)`.
fn tojson(value: JinjaValue, kwargs: Kwargs) -> Result<JinjaValue, JinjaError> {
    let indent: Option<JinjaValue> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    if indent.as_ref().is_some_and(|i| !i.is_none()) {
        return Err(JinjaError::new(
            ErrorKind::InvalidOperation,
            "tojson: `indent` is not supported",
        ));
    }
    let json = serde_json::to_value(&value)
        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    Ok(JinjaValue::from_safe_string(python_json(&json)))
}

/// Serializes like Python's `json.dumps` with default separators and `ensure_ascii=False`.
pub fn python_json(value: &Value) -> String {
    struct PythonFormatter;
    impl serde_json::ser::Formatter for PythonFormatter {
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first { Ok(()) } else { w.write_all(b", ") }
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first { Ok(()) } else { w.write_all(b", ") }
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
        ) -> std::io::Result<()> {
            w.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    // Serializing a `Value` into memory cannot fail.
    let _ = serde::Serialize::serialize(value, &mut ser);
    String::from_utf8(out).unwrap_or_default()
}

fn raise_exception(message: String) -> Result<JinjaValue, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_json_matches_json_dumps() {
        let v: Value = serde_json::from_str(
            r#"{"b": [1, 2.5, true, null], "a": "Zürich <&> \"q\" \n\u0001"}"#,
        )
        .expect("json");
        assert_eq!(
            python_json(&v),
            r#"{"b": [1, 2.5, true, null], "a": "Zürich <&> \"q\" \n\u0001"}"#
        );
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}").expect("compiles");
        let r = ChatRequest {
            messages: vec![],
            tools: vec![],
            enable_thinking: None,
            add_generation_prompt: true,
        };
        let e = t.render(&r).expect_err("raises").to_string();
        assert!(e.contains("no system role"), "{e}");
        assert!(ChatTemplate::new("{% if %}").is_err());
    }

    #[test]
    fn qwen3_template_compiles() {
        let _ = ChatTemplate::qwen3();
    }
}
