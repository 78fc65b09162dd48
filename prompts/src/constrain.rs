//! Schema-constrained tool calls (llguidance) and `tool_choice`.
//!
//! Generation is free until the model writes `<tool_call>` (a lazy trigger: text and thinking
//! are never constrained). From there llguidance masks the logits so the body can only be
//! `\n{"name": <an offered tool>, "arguments": <that tool's schema>}`; when the object is complete
//! the hook forces `\n</tool_call>` and generation is free again. A call written without tags
//! (an answer segment that starts `{"name": "<offered tool>"`, which the parser takes as a call,
//! see [`crate::untagged`]) is constrained from there on in the same way, in the model's layout.
//! `tool_choice` adds: `none` forbids `<tool_call>` and the tokens that would start an untagged
//! call, `required` (or a named tool) makes the answer start with one (a turn that may think
//! still thinks first). Arguments admit only the properties a schema declares, unless it says
//! `additionalProperties` ([`strict_arguments`]): an invented argument is never generated, and
//! the agent rejects one written without the constraint.
//!
//! A model whose template teaches Qwen3-Coder's XML form ([`crate::xml_calls`]) gets the same
//! constraint in that form: the body after `<tool_call>` is an offered `<function=NAME>` with its
//! required parameters and typed values ([`crate::xml_calls::xml_call_lark`]); untagged calls are
//! a JSON habit and are not looked for.
//!
//! A constraint that fails (llguidance cannot build or advance the grammar) does not end the
//! turn: the call goes on unconstrained and the failure is kept in [`ConstraintErrors`], for the
//! agent to report.

use std::sync::{Arc, Mutex};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use kestrel_engine::{StepAction, StepHook, Tokenizer};

use crate::phase::{ThinkState, ThinkToken};
use crate::untagged::{UntaggedStart, untagged_start};
use crate::xml_calls::{CallFormat, xml_call_lark};

/// Errors setting up constrained decoding.
#[derive(Debug, thiserror::Error)]
pub enum ConstraintError {
    /// The tokenizer lacks a token the protocol needs.
    #[error("the tokenizer has no `{0}` token, so tool calls cannot be constrained")]
    MissingToken(&'static str),
    /// llguidance could not use the tokenizer or a schema.
    #[error("tool-call grammar: {0}")]
    Grammar(String),
    /// A named `tool_choice` is not among the offered tools.
    #[error("tool_choice names `{0}`, which is not an offered tool")]
    UnknownTool(String),
    /// The engine failed to tokenize.
    #[error(transparent)]
    Engine(#[from] kestrel_engine::EngineError),
}

/// OpenAI's `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    /// `"auto"`, `"none"` or `"required"`.
    Mode(ToolChoiceMode),
    /// `{"type": "function", "function": {"name": ...}}`.
    Named {
        /// Always `function`.
        #[serde(rename = "type")]
        kind: String,
        /// The tool.
        function: NamedFunction,
    },
    /// Not given: `auto` (`null` in JSON).
    #[default]
    #[serde(skip_deserializing)]
    Unset,
}

/// The string forms of `tool_choice`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolChoiceMode {
    /// The model decides.
    Auto,
    /// No call may start.
    None,
    /// The answer must start with a call.
    Required,
}

/// A named tool in `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedFunction {
    /// Tool name.
    pub name: String,
}

/// The tokenizer prepared for llguidance, built once per model and shared by all turns.
#[derive(Clone)]
pub struct GrammarTokenizer {
    pub(crate) factory: Arc<ParserFactory>,
    env: TokEnv,
    pub(crate) call_open: u32,
    call_close: u32,
    call_close_ids: Vec<u32>,
    pub(crate) think_open: Option<u32>,
    pub(crate) think_close: Option<u32>,
    layout_ids: Vec<u32>,
}

impl std::fmt::Debug for GrammarTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarTokenizer")
            .field("call_open", &self.call_open)
            .finish()
    }
}

impl GrammarTokenizer {
    /// Prepares `tokenizer` (whose model has `vocab_size` logits) for llguidance.
    pub fn new(tokenizer: &Tokenizer, vocab_size: usize) -> Result<Self, ConstraintError> {
        let json: Value = serde_json::from_str(
            &tokenizer
                .inner()
                .to_string(false)
                .map_err(|e| ConstraintError::Grammar(e.to_string()))?,
        )
        .map_err(|e| ConstraintError::Grammar(e.to_string()))?;
        let mut words = llguidance::token_bytes_from_tokenizer_json(&json)
            .map_err(|e| ConstraintError::Grammar(e.to_string()))?;
        // The model may have more logits than the tokenizer has tokens: those rows are padding.
        words.resize(vocab_size.max(words.len()), Vec::new());
        let eos = tokenizer.eos_ids().first().copied().unwrap_or(0);
        let trie = TokTrie::from(&TokRxInfo::new(words.len() as u32, eos), &words);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| ConstraintError::Grammar(e.to_string()))?;
        factory.quiet();
        let call_open = tokenizer
            .token_id("<tool_call>")
            .ok_or(ConstraintError::MissingToken("<tool_call>"))?;
        let call_close = tokenizer
            .token_id("</tool_call>")
            .ok_or(ConstraintError::MissingToken("</tool_call>"))?;
        let layout_ids = ["\n", "\n\n"]
            .iter()
            .filter_map(|s| tokenizer.encode_plain(s).ok())
            .filter(|v| v.len() == 1)
            .map(|v| v[0])
            .collect();
        Ok(Self {
            factory: Arc::new(factory),
            env,
            call_open,
            call_close,
            call_close_ids: tokenizer.encode_raw("\n</tool_call>")?,
            think_open: tokenizer.token_id("<think>"),
            think_close: tokenizer.token_id("</think>"),
            layout_ids,
        })
    }
}

impl GrammarTokenizer {
    /// The token llguidance allows when a grammar is complete (the end of the turn).
    pub(crate) fn eos(&self) -> u32 {
        self.env.tok_trie().eos_token()
    }

    /// The bytes a token spells (a special token's name, such as `<|im_end|>`); empty for ids
    /// outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let trie = self.env.tok_trie();
        if id as usize >= trie.vocab_size() {
            return &[];
        }
        let bytes = trie.token(id);
        match bytes.split_first() {
            Some((&TokTrie::SPECIAL_TOKEN_MARKER, name)) => name,
            _ => bytes,
        }
    }

    /// Whether a token is markup (`<|im_end|>`, `<think>`, `<tool_call>`), not text.
    pub fn is_special(&self, id: u32) -> bool {
        let trie = self.env.tok_trie();
        (id as usize) < trie.vocab_size() && trie.is_special_token(id)
    }
}

/// A tool's argument schema that admits only the properties it declares: every object schema
/// with `properties` and no `additionalProperties` (JSON Schema's default is to admit anything)
/// gets `additionalProperties: false`, at any depth.
pub fn strict_arguments(schema: &Value) -> Value {
    let mut schema = schema.clone();
    close_objects(&mut schema);
    schema
}

fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (key, value) in map.iter_mut() {
                // `const`, `enum`, `default` and `examples` hold values, not schemas.
                if !matches!(key.as_str(), "const" | "enum" | "default" | "examples") {
                    close_objects(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// How a call is written: after `<tool_call>` (a newline, then the object, compact with Python's
/// separators, as Qwen's template writes calls), or without tags (the object alone or in a
/// ```` ```json ```` fence, in whatever layout the model chose).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    Tagged,
    Untagged,
}

/// The names a call may use.
fn offered_names(tools: &[Value], only: Option<&str>) -> Vec<String> {
    tools
        .iter()
        .filter_map(|t| t.get("function").unwrap_or(t).get("name")?.as_str())
        .filter(|name| only.is_none_or(|o| o == *name))
        .map(str::to_string)
        .collect()
}

/// The grammar of one call in `layout`.
fn call_grammar(
    tools: &[Value],
    only: Option<&str>,
    layout: Layout,
) -> Result<TopLevelGrammar, ConstraintError> {
    let mut variants = Vec::new();
    for tool in tools {
        let f = tool.get("function").unwrap_or(tool);
        let Some(name) = f.get("name").and_then(Value::as_str) else {
            continue;
        };
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let params = strict_arguments(f.get("parameters").unwrap_or(&json!({"type": "object"})));
        variants.push(json!({
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": params},
            "required": ["name", "arguments"],
            "additionalProperties": false
        }));
    }
    if let Some(name) = only
        && variants.is_empty()
    {
        return Err(ConstraintError::UnknownTool(name.to_string()));
    }
    let lark = match layout {
        Layout::Tagged => {
            let schema = json!({
                "anyOf": variants,
                "x-guidance": {"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}
            });
            format!("start: \"\\n\" call\ncall: %json {schema}\n")
        }
        Layout::Untagged => {
            // Whitespace in the model's layout, bounded: where a masked step leaves little
            // else, unbounded whitespace lets a model pad a call until the turn's limit.
            let schema = json!({"anyOf": variants, "x-guidance": {
                "whitespace_flexible": true, "whitespace_pattern": "[ \\t\\n\\r]{1,40}"}});
            format!(
                "start: WS? (FENCE WS?)? call\nWS: /[ \\t\\n]+/\nFENCE: \"```json\"\ncall: %json {schema}\n"
            )
        }
    };
    Ok(TopLevelGrammar::from_lark(lark))
}

/// The failures of a turn's constraint, shared with whoever reports them.
#[derive(Debug, Clone, Default)]
pub struct ConstraintErrors(Arc<Mutex<Vec<String>>>);

impl ConstraintErrors {
    /// Records a failure (for constraints applied elsewhere, such as by a remote engine).
    pub fn push(&self, error: String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(error);
    }

    /// The failures so far, oldest first; each call it hit went on unconstrained.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

enum State {
    Free,
    /// Inside a call: `tagged` when it opened with `<tool_call>` (and is closed by the hook).
    Constrained {
        matcher: Box<Matcher>,
        tagged: bool,
    },
}

/// Per-turn hook: lazy tool-call constraint plus `tool_choice`.
pub struct ToolCallHook {
    grammar_tokenizer: GrammarTokenizer,
    grammar: Option<TopLevelGrammar>,
    /// The grammar of a call written without tags (none under `tool_choice: none`).
    untagged: Option<TopLevelGrammar>,
    /// The tools a call may name; an answer segment that starts a bare call of one of them is
    /// constrained, or under `none`, cannot be written.
    names: Vec<String>,
    /// The tokens of the answer segment so far, while it may still become an untagged call.
    segment: Option<Vec<u32>>,
    mode: ToolChoiceMode,
    state: State,
    think: ThinkState,
    /// The turn may open `<think>` (and has not yet closed it).
    may_think: bool,
    calls_started: usize,
    layout_tokens: usize,
    errors: ConstraintErrors,
    constrained_steps: usize,
    constraint_time: std::time::Duration,
    /// The offered tools and the one `tool_choice` names, for a grammar of the calls.
    tools: Vec<Value>,
    only: Option<String>,
    /// The answer must start with a call, with no thinking before it.
    call_first: bool,
    /// The form calls are written in.
    format: CallFormat,
}

impl ToolCallHook {
    /// A hook for one turn over `tools` (OpenAI tool objects). `starts_in_thinking` when the
    /// prompt opened `<think>`; `may_think` when the turn may open it itself (thinking is on), so
    /// that `required` lets it think before its call.
    pub fn new(
        gt: &GrammarTokenizer,
        tools: &[Value],
        choice: &ToolChoice,
        starts_in_thinking: bool,
        may_think: bool,
    ) -> Result<Self, ConstraintError> {
        Self::for_format(
            CallFormat::Json,
            gt,
            tools,
            choice,
            starts_in_thinking,
            may_think,
        )
    }

    /// [`ToolCallHook::new`] for a model that writes its calls in `format`.
    pub fn for_format(
        format: CallFormat,
        gt: &GrammarTokenizer,
        tools: &[Value],
        choice: &ToolChoice,
        starts_in_thinking: bool,
        may_think: bool,
    ) -> Result<Self, ConstraintError> {
        let (mode, only) = match choice {
            ToolChoice::Unset => (ToolChoiceMode::Auto, None),
            ToolChoice::Mode(m) => (*m, None),
            ToolChoice::Named { function, .. } => {
                (ToolChoiceMode::Required, Some(function.name.as_str()))
            }
        };
        let names = offered_names(tools, only);
        let (grammar, untagged) = if tools.is_empty() || mode == ToolChoiceMode::None {
            (None, None)
        } else if format == CallFormat::Xml {
            let lark = xml_call_lark(tools, only).ok_or_else(|| {
                ConstraintError::UnknownTool(only.unwrap_or_default().to_string())
            })?;
            (Some(TopLevelGrammar::from_lark(lark)), None)
        } else {
            (
                Some(call_grammar(tools, only, Layout::Tagged)?),
                Some(call_grammar(tools, only, Layout::Untagged)?),
            )
        };
        // With nothing to call, `required` cannot be honoured: no call may start.
        let mode = if grammar.is_none() {
            ToolChoiceMode::None
        } else {
            mode
        };
        let names = if format == CallFormat::Xml {
            Vec::new()
        } else {
            names
        };
        let segment = (!names.is_empty() && !starts_in_thinking).then(Vec::new);
        let may_think = may_think && !starts_in_thinking && gt.think_open.is_some();
        let call_first = mode == ToolChoiceMode::Required && !may_think && !starts_in_thinking;
        Ok(Self {
            grammar_tokenizer: gt.clone(),
            grammar,
            untagged,
            names,
            segment,
            mode,
            state: State::Free,
            think: ThinkState::with_ids(gt.think_open, gt.think_close, starts_in_thinking),
            may_think,
            calls_started: 0,
            layout_tokens: 0,
            errors: ConstraintErrors::default(),
            constrained_steps: 0,
            constraint_time: std::time::Duration::ZERO,
            tools: tools.to_vec(),
            only: only.map(str::to_string),
            call_first,
            format,
        })
    }

    /// The form this turn's calls are written in.
    pub fn call_format(&self) -> CallFormat {
        self.format
    }

    /// The calls this turn may make (the offered tools, and the one `tool_choice` names), for
    /// a grammar of them; `None` when none may be made.
    pub(crate) fn calls_offered(&self) -> Option<(&[Value], Option<&str>)> {
        self.grammar
            .as_ref()
            .map(|_| (self.tools.as_slice(), self.only.as_deref()))
    }

    /// The answer must start with a call, with no thinking before it.
    pub(crate) fn calls_first(&self) -> bool {
        self.call_first
    }

    /// Tokens generated under the grammar, and the time spent computing their masks and
    /// advancing the grammar (what constrained decoding adds to each step).
    pub fn constraint_cost(&self) -> (usize, std::time::Duration) {
        (self.constrained_steps, self.constraint_time)
    }

    /// Grammar errors met during the turn (each call then continued unconstrained), readable
    /// while the hook is owned by a generation running elsewhere.
    pub fn errors(&self) -> ConstraintErrors {
        self.errors.clone()
    }

    /// Records a failure: the call in progress goes on unconstrained.
    fn fail(&mut self, error: impl std::fmt::Display) {
        self.errors.push(error.to_string());
        self.state = State::Free;
    }

    fn keep_only(logits: &mut [f32], allowed: &[u32]) {
        for (i, l) in logits.iter_mut().enumerate() {
            if !allowed.contains(&(i as u32)) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

impl StepHook for ToolCallHook {
    fn before_step(&mut self, _generated: &[u32], logits: &mut [f32]) -> StepAction {
        let gt = &self.grammar_tokenizer;
        match &mut self.state {
            State::Constrained { matcher, tagged } => {
                let started = std::time::Instant::now();
                if matcher.is_accepting().unwrap_or(false) {
                    let tagged = *tagged;
                    self.state = State::Free;
                    if tagged {
                        return StepAction::Force(gt.call_close_ids.clone());
                    }
                    // An untagged call ends with its object; what follows is a new segment.
                    self.segment = Some(Vec::new());
                    return StepAction::Sample;
                }
                match matcher.compute_mask() {
                    Ok(mask) => {
                        for (i, l) in logits.iter_mut().enumerate() {
                            if !mask.is_allowed(i as u32) {
                                *l = f32::NEG_INFINITY;
                            }
                        }
                    }
                    Err(e) => self.fail(e),
                }
                self.constrained_steps += 1;
                self.constraint_time += started.elapsed();
                StepAction::Sample
            }
            State::Free => {
                match self.mode {
                    ToolChoiceMode::None => {
                        if let Some(l) = logits.get_mut(gt.call_open as usize) {
                            *l = f32::NEG_INFINITY;
                        }
                        if !self.think.inside() {
                            self.forbid_untagged_calls(logits);
                        }
                    }
                    ToolChoiceMode::Required if !self.think.inside() && self.calls_started == 0 => {
                        let mut allowed = vec![gt.call_open];
                        if self.layout_tokens < 2 {
                            allowed.extend(&gt.layout_ids);
                        }
                        if self.may_think {
                            allowed.extend(gt.think_open);
                        }
                        Self::keep_only(logits, &allowed);
                    }
                    _ => {}
                }
                StepAction::Sample
            }
        }
    }

    fn on_token(&mut self, id: u32, _forced: bool) {
        let gt = &self.grammar_tokenizer;
        if let State::Constrained { matcher, .. } = &mut self.state {
            let started = std::time::Instant::now();
            let consumed = matcher.consume_token(id);
            self.constraint_time += started.elapsed();
            if let Err(e) = consumed {
                self.fail(e);
            }
            return;
        }
        let think = self.think.observe(id);
        if matches!(think, ThinkToken::Open | ThinkToken::Close) {
            // One thinking block per turn: after it, `required` wants the call.
            self.may_think = false;
            self.segment = (think == ThinkToken::Close && !self.names.is_empty()).then(Vec::new);
            return;
        }
        if id == gt.call_open && think == ThinkToken::Outside {
            self.calls_started += 1;
            self.segment = None;
            if let Some(grammar) = &self.grammar {
                match gt.factory.create_parser(grammar.clone()) {
                    Ok(parser) => {
                        self.state = State::Constrained {
                            matcher: Box::new(Matcher::new(Ok(parser))),
                            tagged: true,
                        }
                    }
                    Err(e) => self.errors.push(format!("the tool-call grammar: {e}")),
                }
            }
            return;
        }
        if id == gt.call_close && think == ThinkToken::Outside {
            self.segment = (!self.names.is_empty()).then(Vec::new);
            return;
        }
        if gt.layout_ids.contains(&id) {
            self.layout_tokens += 1;
        }
        if think == ThinkToken::Outside {
            self.follow_segment(id);
        }
    }
}

impl ToolCallHook {
    /// Follows the start of an answer segment: once it is an untagged call of an offered tool,
    /// the rest of that call is constrained like a tagged one.
    fn follow_segment(&mut self, id: u32) {
        let Some(segment) = &mut self.segment else {
            return;
        };
        segment.push(id);
        let trie = self.grammar_tokenizer.env.tok_trie();
        let bytes: Vec<u8> = segment
            .iter()
            .flat_map(|&t| trie.token(t).to_vec())
            .collect();
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        match untagged_start(&String::from_utf8_lossy(&bytes), &names) {
            UntaggedStart::Undecided => {}
            UntaggedStart::NotCall => self.segment = None,
            UntaggedStart::Call => {
                let tokens = self.segment.take().unwrap_or_default();
                // Under `none` such a token was masked; only a forced one gets here.
                let Some(grammar) = &self.untagged else {
                    return;
                };
                let parser = match self
                    .grammar_tokenizer
                    .factory
                    .create_parser(grammar.clone())
                {
                    Ok(parser) => parser,
                    Err(e) => {
                        self.errors.push(format!("the tool-call grammar: {e}"));
                        return;
                    }
                };
                let mut matcher = Matcher::new(Ok(parser));
                // A layout the grammar does not follow (rare) leaves the call unconstrained, as
                // it was before: the agent still checks its arguments.
                if tokens.iter().all(|&t| matcher.consume_token(t).is_ok()) {
                    self.calls_started += 1;
                    self.state = State::Constrained {
                        matcher: Box::new(matcher),
                        tagged: false,
                    };
                }
            }
        }
    }

    /// Under `none`, masks every token that would make the answer segment an untagged call: the
    /// turn cannot call, and a call written as text would be its answer. Runs only while the
    /// segment may still become one (its first tokens).
    fn forbid_untagged_calls(&self, logits: &mut [f32]) {
        let Some(segment) = &self.segment else {
            return;
        };
        let trie = self.grammar_tokenizer.env.tok_trie();
        let mut text: Vec<u8> = segment
            .iter()
            .flat_map(|&t| trie.token(t).to_vec())
            .collect();
        let start = text.len();
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        for (id, logit) in logits.iter_mut().enumerate() {
            if !logit.is_finite() {
                continue;
            }
            text.truncate(start);
            text.extend_from_slice(trie.token(id as u32));
            if untagged_start(&String::from_utf8_lossy(&text), &names) == UntaggedStart::Call {
                *logit = f32::NEG_INFINITY;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_choice_forms() {
        let parse = |s: &str| serde_json::from_str::<ToolChoice>(s).expect(s);
        assert_eq!(parse("\"auto\""), ToolChoice::Mode(ToolChoiceMode::Auto));
        assert_eq!(
            parse("\"required\""),
            ToolChoice::Mode(ToolChoiceMode::Required)
        );
        assert!(matches!(
            parse(r#"{"type": "function", "function": {"name": "f"}}"#),
            ToolChoice::Named { .. }
        ));
        assert!(serde_json::from_str::<ToolChoice>("\"sometimes\"").is_err());
    }

    #[test]
    fn arguments_admit_only_declared_properties_unless_the_schema_says_otherwise() {
        let schema = json!({
            "type": "object",
            "properties": {
                "timezone": {"type": "string"},
                "where": {"type": "object", "properties": {"city": {"type": "string", "default": {"properties": {}}}}},
                "extra": {"type": "object", "properties": {}, "additionalProperties": true}
            }
        });
        let strict = strict_arguments(&schema);
        assert_eq!(strict["additionalProperties"], json!(false));
        assert_eq!(
            strict["properties"]["where"]["additionalProperties"],
            json!(false)
        );
        assert_eq!(
            strict["properties"]["extra"]["additionalProperties"],
            json!(true)
        );
        assert_eq!(
            strict["properties"]["where"]["properties"]["city"]["default"],
            json!({"properties": {}}),
            "values are not schemas"
        );
        assert_eq!(
            strict_arguments(&json!({"type": "object"})),
            json!({"type": "object"})
        );
    }

    #[test]
    fn named_choice_must_be_offered() {
        let tools = vec![
            json!({"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}}),
        ];
        assert!(call_grammar(&tools, Some("a"), Layout::Tagged).is_ok());
        assert!(
            matches!(call_grammar(&tools, Some("b"), Layout::Untagged), Err(ConstraintError::UnknownTool(n)) if n == "b")
        );
    }
}
