//! A requested answer format (`response_format` in OpenAI's API): the answer, what follows the
//! thinking, is constrained by llguidance to JSON, any object or one matching a schema, and the
//! turn ends when the value is complete.
//!
//! Thinking stays free: the turn may open `<think>` first when thinking is on, and the grammar
//! starts after `</think>` (leading whitespace allowed, bounded so a model cannot pad the answer
//! to its limit). When tools may be called, the answer may instead start with `<tool_call>`:
//! the format then stands aside for the turn and the tool-call constraint takes over. A grammar
//! that fails while generating leaves the rest unconstrained and is recorded, as for tool calls.

use llguidance::Matcher;
use llguidance::api::TopLevelGrammar;
use serde_json::{Value, json};

use kestrel_engine::{StepAction, StepHook};

use crate::constrain::{ConstraintError, ConstraintErrors, GrammarTokenizer};
use crate::phase::{ThinkState, ThinkToken};

/// The format an answer must have.
#[derive(Debug, Clone, PartialEq)]
pub enum AnswerFormat {
    /// Any JSON object.
    JsonObject,
    /// JSON matching this schema.
    JsonSchema(Value),
}

impl AnswerFormat {
    /// The schema an answer must match.
    pub(crate) fn schema(&self) -> Result<Value, ConstraintError> {
        match self {
            AnswerFormat::JsonObject => Ok(json!({"type": "object"})),
            AnswerFormat::JsonSchema(schema @ Value::Object(_)) => Ok(schema.clone()),
            AnswerFormat::JsonSchema(_) => Err(ConstraintError::Grammar(
                "the answer's JSON schema must be an object".into(),
            )),
        }
    }

    fn grammar(&self) -> Result<TopLevelGrammar, ConstraintError> {
        let mut schema = self.schema()?;
        schema["x-guidance"] = json!({
            "whitespace_flexible": true,
            "whitespace_pattern": "[ \\t\\n\\r]{1,40}",
        });
        Ok(TopLevelGrammar::from_lark(format!(
            "start: WS? answer\nWS: /[ \\t\\n]{{1,8}}/\nanswer: %json {schema}\n"
        )))
    }
}

/// Per-turn hook for an [`AnswerFormat`].
pub struct AnswerFormatHook {
    gt: GrammarTokenizer,
    grammar: TopLevelGrammar,
    matcher: Option<Box<Matcher>>,
    think: ThinkState,
    /// The turn may still open `<think>` (thinking is on and nothing was written yet).
    may_think: bool,
    /// The answer may start with a tool call instead.
    calls: bool,
    /// Whether an answer token was taken.
    started: bool,
    /// A tool call took the answer, or the grammar failed: nothing more to do.
    aside: bool,
    errors: ConstraintErrors,
    format: AnswerFormat,
    /// The turn may think before its answer (the prompt opened `<think>`, or the turn may).
    thinking: bool,
}

impl AnswerFormatHook {
    /// A hook for one turn. `starts_in_thinking` when the prompt opened `<think>`, `may_think`
    /// when the turn may open it, `calls` when tools may be called. Fails, naming the problem,
    /// when the format's grammar cannot be built.
    pub fn new(
        gt: &GrammarTokenizer,
        format: &AnswerFormat,
        starts_in_thinking: bool,
        may_think: bool,
        calls: bool,
    ) -> Result<Self, ConstraintError> {
        let grammar = format.grammar()?;
        // Built once here so that a schema llguidance cannot use is refused before generating.
        gt.factory
            .create_parser(grammar.clone())
            .map_err(|e| ConstraintError::Grammar(format!("the answer's JSON schema: {e}")))?;
        Ok(Self {
            gt: gt.clone(),
            grammar,
            matcher: None,
            think: ThinkState::with_ids(gt.think_open, gt.think_close, starts_in_thinking),
            may_think: may_think && !starts_in_thinking && gt.think_open.is_some(),
            calls,
            started: false,
            aside: false,
            errors: ConstraintErrors::default(),
            format: format.clone(),
            thinking: starts_in_thinking || (may_think && gt.think_open.is_some()),
        })
    }

    /// The format.
    pub fn format(&self) -> &AnswerFormat {
        &self.format
    }

    /// The turn may think before its answer.
    pub(crate) fn may_think_first(&self) -> bool {
        self.thinking
    }

    /// The answer may be tool calls instead.
    pub(crate) fn calls_allowed(&self) -> bool {
        self.calls
    }
    /// Grammar errors met during the turn.
    pub fn errors(&self) -> ConstraintErrors {
        self.errors.clone()
    }

    fn fail(&mut self, error: impl std::fmt::Display) {
        self.errors.push(format!("the answer's format: {error}"));
        self.aside = true;
        self.matcher = None;
    }

    fn matcher(&mut self) -> Option<&mut Matcher> {
        if self.matcher.is_none() && !self.aside {
            match self.gt.factory.create_parser(self.grammar.clone()) {
                Ok(parser) => self.matcher = Some(Box::new(Matcher::new(Ok(parser)))),
                Err(e) => self.fail(e),
            }
        }
        self.matcher.as_deref_mut()
    }
}

impl StepHook for AnswerFormatHook {
    fn before_step(&mut self, _generated: &[u32], logits: &mut [f32]) -> StepAction {
        if self.aside || self.think.inside() {
            return StepAction::Sample;
        }
        let extra: Vec<u32> = if self.started {
            Vec::new()
        } else {
            let think = self.gt.think_open.filter(|_| self.may_think);
            let call = self.calls.then_some(self.gt.call_open);
            think.into_iter().chain(call).collect()
        };
        let eos = self.gt.eos();
        let Some(matcher) = self.matcher() else {
            return StepAction::Sample;
        };
        let accepting = matcher.is_accepting().unwrap_or(false);
        // A value nothing can extend (an object's closing brace) stops the parser.
        if accepting && matcher.is_stopped() {
            return StepAction::Stop;
        }
        match matcher.compute_mask() {
            Ok(mask) => {
                // Complete, and nothing may follow (a number could still grow): the turn ends.
                if accepting && (0..logits.len() as u32).all(|i| i == eos || !mask.is_allowed(i)) {
                    return StepAction::Stop;
                }
                for (i, l) in logits.iter_mut().enumerate() {
                    if !mask.is_allowed(i as u32) && !extra.contains(&(i as u32)) {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            Err(e) => self.fail(e),
        }
        StepAction::Sample
    }

    fn on_token(&mut self, id: u32, _forced: bool) {
        match self.think.observe(id) {
            ThinkToken::Open | ThinkToken::Close => {
                self.may_think = false;
                return;
            }
            ThinkToken::Inside => return,
            ThinkToken::Outside => {}
        }
        if self.aside {
            return;
        }
        if !self.started && self.calls && id == self.gt.call_open {
            self.aside = true;
            return;
        }
        self.started = true;
        self.may_think = false;
        let consumed = self.matcher().map(|m| m.consume_token(id));
        if let Some(Err(e)) = consumed {
            self.fail(e);
        }
    }
}
