//! One turn: one generation, from the prompt to what the model wrote and the calls it made.
//!
//! A [`Turn`] builds the turn's per-token hooks (the thinking budget, the tool-call constraint),
//! submits the prompt to the backend with them, feeds the streamed text to the output parser,
//! reports thinking and answer text as events, and hands each completed call to the dispatcher at
//! once. It stops early when the model loops (too many calls, a refused repeat) or the task is
//! cancelled. What to do next (limits, the next prompt) is the task loop's business.
//!
//! A turn never ends inside its thinking for lack of tokens: the budget hook closes the thinking
//! (with Qwen's early-stop text) early enough to leave room for an answer, and that forced text
//! after `</think>` is not shown as the model's answer. A call the token limit cuts is not
//! repaired into a guess: the model is told it was cut.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use kestrel_engine::SamplingParams;
use kestrel_prompts::constrain::{GrammarTokenizer, ToolCallHook, ToolChoice, ToolChoiceMode};
use kestrel_prompts::messages::ChatRequest;
use kestrel_prompts::parser::{CUT_OFF, OutputParser, ParseEvent, ParserConfig};
use kestrel_prompts::template::Prompt;
use kestrel_prompts::thinking::{ThinkingBudgetHook, thinking_room};
use kestrel_prompts::xml_calls::{CallFormat, parameter_schemas};
use serde_json::{Map, Value};

use super::cancel::Cancel;
use super::dispatch::{Call, Dispatcher, Pending, abort};
use super::{AgentError, AgentEvent, TurnRecord, TurnStats};
use crate::backend::{Backend, Conversation, FinishReason, StreamItem, Submission};

/// Most calls in one turn; a model writing more is cut off (it is usually looping).
const MAX_CALLS_PER_TURN: usize = 16;

/// What one turn is asked to do.
pub(crate) struct Turn<'a> {
    /// Turn number, from 1.
    pub(crate) number: usize,
    pub(crate) prompt: Prompt,
    /// What `prompt` was rendered from (for the record).
    pub(crate) request: ChatRequest,
    pub(crate) max_tokens: usize,
    pub(crate) sampling: SamplingParams,
    pub(crate) choice: ToolChoice,
    /// Most thinking tokens, when budgeted.
    pub(crate) thinking_limit: Option<usize>,
    /// The turn may think (the prompt leaves thinking on).
    pub(crate) may_think: bool,
    /// The tools in the prompt, in OpenAI's form (for the constraint).
    pub(crate) tools: &'a [Value],
    /// No tools may be called (the parser then knows none).
    pub(crate) final_turn: bool,
    /// The form the model writes calls in (its template's).
    pub(crate) call_format: CallFormat,
    /// When the task's wall time runs out: the generation is cut then, wherever it is (even
    /// while a remote engine is silent or being retried).
    pub(crate) deadline: Option<Instant>,
}

/// What a turn did.
pub(crate) struct TurnOutput {
    pub(crate) reasoning: String,
    pub(crate) content: String,
    pub(crate) calls: Vec<Call>,
    /// Ended early: too many calls, or a refused repeat.
    pub(crate) cut_short: bool,
    /// The budget closed the thinking.
    pub(crate) thinking_stopped: bool,
    /// The task's wall time ran out during the turn.
    pub(crate) timed_out: bool,
    pub(crate) stats: TurnStats,
    pub(crate) record: TurnRecord,
}

impl Turn<'_> {
    /// Runs the turn. A cancelled turn drops its calls in flight and is an
    /// [`AgentError::Cancelled`].
    pub(crate) fn run(
        self,
        backend: &dyn Backend,
        grammar: &GrammarTokenizer,
        dispatcher: &mut Dispatcher,
        cancel: &Cancel,
        on_event: &mut dyn FnMut(&AgentEvent),
    ) -> Result<TurnOutput, AgentError> {
        let tokenizer = backend.tokenizer();
        let starts_in_thinking = self.prompt.text.ends_with("<think>\n");
        let mut budget = ThinkingBudgetHook::new(tokenizer, None, starts_in_thinking)?;
        let room = thinking_room(self.max_tokens, budget.early_stop_ids().len());
        budget.set_limit(Some(self.thinking_limit.map_or(room, |l| l.min(room))));
        let thinking_tokens = budget.thinking_count();
        let constraint = ToolCallHook::for_format(
            self.call_format,
            grammar,
            self.tools,
            &self.choice,
            starts_in_thinking,
            self.may_think,
        )?;
        let constraint_errors = constraint.errors();
        let no_calls =
            self.final_turn || matches!(self.choice, ToolChoice::Mode(ToolChoiceMode::None));
        let mut parser = OutputParser::new(ParserConfig {
            starts_in_thinking,
            known_tools: dispatcher.snapshot.names(),
            no_calls,
            parameter_schemas: parameter_schemas(self.tools),
            ..ParserConfig::default()
        });
        let think_close = tokenizer.token_id("</think>");
        let mut stream = backend.submit(Submission {
            prompt: self.prompt.ids.clone(),
            max_tokens: self.max_tokens,
            sampling: self.sampling.clone(),
            stop_ids: None,
            thinking: Some(budget),
            tool_calls: Some(constraint),
            answer_format: None,
            hooks: Vec::new(),
            conversation: Some(Conversation {
                request: self.request.clone(),
                tool_choice: self.choice.clone(),
            }),
        })?;
        // A cancelled task stops its generation even while the engine sends nothing (a remote
        // one may be silent): the stream is cancelled from the runtime, not only between tokens.
        let timed_out = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (cancel, stream) = (cancel.clone(), stream.canceller());
            let (deadline, timed_out) = (self.deadline, timed_out.clone());
            dispatcher.runtime.spawn(async move {
                match deadline {
                    Some(deadline) => tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = tokio::time::sleep_until(deadline.into()) => {
                            timed_out.store(true, Ordering::SeqCst);
                        }
                    },
                    None => cancel.cancelled().await,
                }
                stream.cancel();
            })
        };
        let _stop_watching = AbortOnDrop(watcher);
        let mut out = Collected {
            max_tokens: self.max_tokens,
            ..Collected::default()
        };
        let mut cut_short = false;
        let mut thinking_stopped = false;
        let mut in_early_stop_tail = false;
        let mut forced = Vec::new();
        let mut position = 0;
        let finished = loop {
            let item = stream
                .next_blocking()
                .ok_or(crate::backend::BackendError::Lost)??;
            let token = match item {
                StreamItem::Finished(finished) => break finished,
                StreamItem::Token(token) => token,
            };
            if token.forced {
                forced.push(position);
            }
            position += 1;
            if cancel.is_cancelled() {
                stream.cancel();
                continue;
            }
            if cut_short {
                continue;
            }
            // Only the budget forces `</think>`; the forced text after it (`.\n\n`) is the end of
            // Qwen's early-stop sentence, not the start of the answer.
            if token.forced && Some(token.id) == think_close {
                thinking_stopped = true;
                in_early_stop_tail = true;
            } else if in_early_stop_tail && token.forced {
                continue;
            } else {
                in_early_stop_tail = false;
            }
            out.take(parser.push(&token.text), self.number, dispatcher, on_event);
            if out.calls.len() >= MAX_CALLS_PER_TURN || out.calls.iter().any(|c| c.repeated) {
                cut_short = true;
                stream.cancel();
            }
        };
        if cancel.is_cancelled() {
            abort(out.calls);
            return Err(AgentError::Cancelled);
        }
        let reason = if cut_short {
            FinishReason::Cancelled
        } else {
            finished.reason
        };
        if !cut_short {
            out.take(
                parser.push(&finished.tail),
                self.number,
                dispatcher,
                on_event,
            );
            let end = match reason {
                FinishReason::MaxTokens | FinishReason::ContextFull => parser.finish_truncated(),
                FinishReason::Cancelled if timed_out.load(Ordering::SeqCst) => {
                    parser.finish_truncated()
                }
                _ => parser.finish(),
            };
            out.take(end, self.number, dispatcher, on_event);
        }
        for error in constraint_errors.take() {
            on_event(&AgentEvent::Note {
                message: format!(
                    "turn {}: the tool-call constraint failed ({error}); that call went on unconstrained",
                    self.number
                ),
            });
        }
        let timings = finished.timings;
        let stats = TurnStats {
            turn: self.number,
            prompt_tokens: timings.prompt_tokens,
            reused_tokens: timings.reused_tokens,
            prefilled_tokens: timings.prefilled_tokens,
            generated_tokens: timings.generated_tokens,
            thinking_tokens: thinking_tokens.get(),
            prompt_tokens_per_s: timings.prompt_tokens_per_s(),
            decode_tokens_per_s: timings.decode_tokens_per_s(),
            tool_calls: out.calls.len(),
            finish_reason: reason,
        };
        Ok(TurnOutput {
            reasoning: out.reasoning,
            content: out.content,
            calls: out.calls,
            cut_short,
            thinking_stopped,
            timed_out: timed_out.load(Ordering::SeqCst),
            stats,
            record: TurnRecord {
                turn: self.number,
                request: self.request,
                prompt_ids: self.prompt.ids,
                reused_tokens: timings.reused_tokens,
                sampling: self.sampling,
                tool_choice: match self.choice {
                    ToolChoice::Unset => None,
                    choice => Some(choice),
                },
                may_think: self.may_think,
                generated_ids: finished.generated,
                forced,
            },
        })
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the parser's events add up to so far.
#[derive(Default)]
struct Collected {
    reasoning: String,
    content: String,
    calls: Vec<Call>,
    /// The turn's token limit (to tell the model why a call was cut).
    max_tokens: usize,
}

impl Collected {
    fn take(
        &mut self,
        events: Vec<ParseEvent>,
        turn: usize,
        dispatcher: &mut Dispatcher,
        on_event: &mut dyn FnMut(&AgentEvent),
    ) {
        for event in events {
            match event {
                ParseEvent::ThinkingDelta { text } => {
                    on_event(&AgentEvent::Thinking { text: text.clone() });
                    self.reasoning.push_str(&text);
                }
                ParseEvent::TextDelta { text } => {
                    on_event(&AgentEvent::Text { text: text.clone() });
                    self.content.push_str(&text);
                }
                ParseEvent::ToolCallComplete {
                    index,
                    name,
                    arguments,
                    ..
                } => {
                    on_event(&AgentEvent::ToolCall {
                        turn,
                        index,
                        name: name.clone(),
                        arguments: Value::Object(arguments.clone()),
                    });
                    self.calls.push(dispatcher.start(index, name, arguments));
                }
                ParseEvent::ParseError {
                    index,
                    message,
                    raw,
                } => {
                    let text = if message == CUT_OFF {
                        format!(
                            "Not called: this call was cut off at the turn's limit of {} tokens before it was complete. Make it again, shorter (think less first), or answer.",
                            self.max_tokens
                        )
                    } else {
                        format!("Error: the tool call could not be read ({message}): {raw}")
                    };
                    on_event(&AgentEvent::Note {
                        message: format!("turn {turn}: call {index} not made: {message}"),
                    });
                    self.calls.push(Call {
                        index,
                        name: String::new(),
                        arguments: Map::new(),
                        pending: Pending::Now {
                            text,
                            is_error: true,
                        },
                        repeated: false,
                    })
                }
                ParseEvent::ToolCallStarted { .. }
                | ParseEvent::ToolCallDelta { .. }
                | ParseEvent::EndOfTurn => {}
            }
        }
    }
}
