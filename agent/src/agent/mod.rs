//! The agent: render -> generate -> parse -> dispatch -> append results -> generate again.
//!
//! One [`Agent`] owns a backend (with the embedded engine, a KV session) and shares an
//! [`McpHost`]. A task is a loop of turns, and this module is that loop: it decides, in one place,
//! the limits (rounds, tokens, wall time, thinking budget), the tool choice and the prompt of each
//! turn, and what the turn's output adds to the conversation. A [`turn`](self) is one generation
//! (hooks, parser, dispatch of its calls as they complete); `dispatch` takes calls to their
//! servers, resolved against the tools the task was offered. Each turn renders the whole
//! conversation with the model's template; the backend keeps the longest common token prefix, so
//! a turn prefills only what is new, and [`TurnStats`] says how many tokens were reused.
//!
//! The loop ends when a turn calls no tool, or a limit is hit; then the model is asked once more
//! with tool calls disabled, so a task always ends with an answer. A turn that ends without
//! one (it spent its tokens thinking, or stopped after `</think>`) is asked again once, without
//! thinking or tools.
//!
//! Thinking follows Qwen's rules: on by default for a thinking model's template, off with the
//! hard switch; while the hard switch is not off, the latest `/think` or `/no_think` in a user or
//! system message decides. Unless the options fix the sampling, each turn samples with Qwen's
//! preset for its mode. Generation runs on the
//! backend's threads; MCP calls on the tokio runtime the agent is given; the loop itself is
//! synchronous, on the caller's thread.

mod cancel;
mod dispatch;
mod events;
mod final_request;
mod mcp_sampling;
mod policy;
mod turn;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kestrel_engine::{EngineOptions, Model, SamplingParams};
use kestrel_prompts::constrain::{GrammarTokenizer, ToolChoice, ToolChoiceMode};
use kestrel_prompts::messages::{ChatRequest, Content, FunctionCall, Message, Role, ToolCall};
use kestrel_prompts::template::ChatTemplate;
use kestrel_prompts::thinking::ThinkingBudget;
use kestrel_prompts::thinking::{greedy_thinking_warning, preset, soft_switch_in};
use serde_json::Value;
use tokio::runtime::Handle;

pub use cancel::Cancel;
pub use events::{AgentEvent, TaskOutcome, TurnRecord, TurnStats};
pub use mcp_sampling::{MAX_SAMPLING_TOKENS, ModelSamplingHandler};
pub use policy::{Approval, ApprovalPolicy, ApprovalRequest, Approver};

use crate::backend::{Backend, BackendError, Embedded, FinishReason};
use crate::mcp::McpHost;
pub(crate) use dispatch::check_arguments;
use dispatch::{Dispatcher, RepeatGuard};
pub use final_request::final_request;
use turn::Turn;

/// Limits and settings for a task.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentOptions {
    /// Most turns that call tools; then the model must answer.
    pub max_rounds: usize,
    /// Most generated tokens over the whole task.
    pub max_total_tokens: usize,
    /// Most generated tokens in one turn (the thinking is closed early enough to leave room for
    /// an answer).
    pub max_turn_tokens: usize,
    /// Most wall time for the task: the turn running when it runs out is cut there (a remote
    /// engine's retries and silences included), and the answer turn that follows gets
    /// [`answer_grace`] more.
    pub max_wall: Option<Duration>,
    /// Qwen3's hard thinking switch (`None`: the template's default, and the soft switches).
    pub thinking: Option<bool>,
    /// Thinking budgets.
    pub budget: ThinkingBudget,
    /// Sampling for every turn (`None`: Qwen's preset for each turn's thinking mode).
    pub sampling: Option<SamplingParams>,
    /// The seed for Qwen's presets (when `sampling` is `None`).
    pub seed: Option<u64>,
    /// `tool_choice` for the first turn.
    pub first_tool_choice: ToolChoice,
    /// `tool_choice` for the turns after it (except the final, tool-free one).
    pub later_tool_choice: ToolChoice,
    /// How many times in a row the same call (same tool, same arguments) is sent; one more is
    /// refused and ends the tool rounds.
    pub max_repeats: usize,
    /// Send a call that repeats the one just before it even when that one was answered (with a
    /// result or the tool's error). Off by default: the answer is right above, and a model that
    /// asks again is looping. A call that got no answer (a timeout, a crash) may always be retried
    /// up to `max_repeats`.
    pub resend_answered: bool,
    /// The system prompt (`None`: the chat template's own default, which is what the model was
    /// trained with; Qwen2.5's names the model, Qwen3's has none).
    pub system: Option<String>,
    /// Which tools may run.
    pub approval: ApprovalPolicy,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            max_rounds: 8,
            max_total_tokens: 8192,
            max_turn_tokens: 8192,
            max_wall: None,
            thinking: None,
            budget: ThinkingBudget::default(),
            sampling: None,
            seed: None,
            first_tool_choice: ToolChoice::Unset,
            later_tool_choice: ToolChoice::Unset,
            max_repeats: 2,
            resend_answered: false,
            system: None,
            approval: ApprovalPolicy::default(),
        }
    }
}

/// Why a task could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] kestrel_engine::EngineError),
    /// The backend could not run a generation.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The prompt could not be rendered.
    #[error(transparent)]
    Prompt(#[from] kestrel_prompts::template::PromptError),
    /// The tool constraint could not be built.
    #[error(transparent)]
    Constraint(#[from] kestrel_prompts::constrain::ConstraintError),
    /// The task was cancelled (see [`Agent::canceller`]).
    #[error("cancelled")]
    Cancelled,
    /// Even with every tool result dropped, the prompt does not fit.
    #[error(
        "the conversation needs {needed} tokens but the context holds {context} (with {reserve} kept for the answer), even with every tool result dropped"
    )]
    ContextFull {
        /// Tokens needed.
        needed: usize,
        /// The model's context.
        context: usize,
        /// Tokens kept free for generation.
        reserve: usize,
    },
}

/// Runs tasks with one backend and one MCP host.
pub struct Agent {
    backend: Arc<dyn Backend>,
    template: ChatTemplate,
    grammar: GrammarTokenizer,
    host: Arc<McpHost>,
    runtime: Handle,
    options: AgentOptions,
    approver: Option<Approver>,
    cancel: Cancel,
}

impl Agent {
    /// An agent over an engine of its own for `model` and `host`; MCP calls run on `runtime`,
    /// which must not be the thread that calls [`Agent::run`].
    pub fn new(
        model: Arc<Model>,
        host: Arc<McpHost>,
        runtime: Handle,
        options: AgentOptions,
    ) -> Result<Self, AgentError> {
        let backend = Embedded::start(model, EngineOptions::default())?;
        Self::with_backend(Arc::new(backend), host, runtime, options)
    }

    /// An agent over any backend.
    pub fn with_backend(
        backend: Arc<dyn Backend>,
        host: Arc<McpHost>,
        runtime: Handle,
        options: AgentOptions,
    ) -> Result<Self, AgentError> {
        let tokenizer = backend.tokenizer();
        let template = ChatTemplate::of(tokenizer)?;
        let grammar = GrammarTokenizer::new(tokenizer, backend.vocab_size())?;
        Ok(Self {
            backend,
            template,
            grammar,
            host,
            runtime,
            options,
            approver: None,
            cancel: Cancel::new(),
        })
    }

    /// Makes the agent interactive: `ask` decisions go to `approver` instead of being denials.
    pub fn set_approver(&mut self, approver: Approver) {
        self.approver = Some(approver);
    }

    /// A handle that cancels the running task: generation stops at the next token, tool calls
    /// in flight are dropped (their servers are told), and the task returns
    /// [`AgentError::Cancelled`]. Raised while no task runs, it cancels the next one at once.
    pub fn canceller(&self) -> Cancel {
        self.cancel.clone()
    }

    /// The options in use.
    pub fn options_mut(&mut self) -> &mut AgentOptions {
        &mut self.options
    }

    /// Runs one task to its answer, reporting events as they happen.
    pub fn run(
        &mut self,
        task: &str,
        on_event: &mut dyn FnMut(&AgentEvent),
    ) -> Result<TaskOutcome, AgentError> {
        let mut messages = Vec::new();
        if let Some(system) = &self.options.system {
            messages.push(Message::text(Role::System, system));
        }
        messages.push(Message::text(Role::User, task));
        self.run_messages(messages, on_event)
    }

    /// Continues a conversation (its last message is the user's) to an answer.
    pub fn run_messages(
        &mut self,
        messages: Vec<Message>,
        on_event: &mut dyn FnMut(&AgentEvent),
    ) -> Result<TaskOutcome, AgentError> {
        let result = self.run_task(messages, on_event);
        if matches!(result, Err(AgentError::Cancelled)) {
            self.cancel.reset();
        }
        result
    }

    fn run_task(
        &mut self,
        mut messages: Vec<Message>,
        on_event: &mut dyn FnMut(&AgentEvent),
    ) -> Result<TaskOutcome, AgentError> {
        // Every log line and trace span of the task names it; each turn is a child span, and so
        // is each tool call of the turn (see `dispatch`).
        static TASKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let task_id = TASKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let task_span = tracing::info_span!("task", id = task_id);
        let _task = task_span.enter();
        // The tools of the whole task: the prompt's tool list stays the same from turn to turn
        // (so does the KV cache behind it), and every call is resolved against it.
        let snapshot = self.runtime.block_on(self.host.snapshot());
        let tools: Vec<Value> = snapshot.to_openai();
        let mut dispatcher = Dispatcher {
            host: self.host.clone(),
            runtime: self.runtime.clone(),
            snapshot,
            policy: self.options.approval.clone(),
            approver: self.approver.clone(),
            max_repeats: self.options.max_repeats,
            resend_answered: self.options.resend_answered,
            repeats: RepeatGuard::default(),
            events: self.host.subscribe(),
        };
        let mut task = TaskState {
            started: Some(Instant::now()),
            ..TaskState::default()
        };
        loop {
            if task.limited_by.is_none()
                && let Some(limit) = task.limit_reached(&self.options)
            {
                on_event(&AgentEvent::Note {
                    message: format!(
                        "limit reached ({limit}): asking for a final answer without tools"
                    ),
                });
                // Only appended: the cached prefix stays valid (a thinking model's template may
                // drop earlier reasoning after a user message; the backend then reuses the
                // longest common prefix).
                if messages.last().is_some_and(|m| m.role == Role::Tool) {
                    messages.push(final_request(&messages));
                }
                task.limited_by = Some(limit);
            }
            let opts = &self.options;
            let final_turn = task.limited_by.is_some() || task.answer_retry;
            let choice = if final_turn {
                ToolChoice::Mode(ToolChoiceMode::None)
            } else if task.turns.is_empty() {
                opts.first_tool_choice.clone()
            } else {
                opts.later_tool_choice.clone()
            };
            let thinking = self.thinking(&messages, &task);
            let thinks = thinking != Some(false) && self.template.thinks();
            let sampling = (opts.sampling.clone()).unwrap_or_else(|| preset(thinks, opts.seed));
            if let Some(warning) = greedy_thinking_warning(thinks, &sampling)
                && !std::mem::replace(&mut task.warned_greedy, true)
            {
                on_event(&AgentEvent::Note {
                    message: format!("warning: {warning}"),
                });
            }
            let thinking_limit = opts.budget.turn_limit(task.thinking_used);
            let max_tokens = opts.max_turn_tokens.min(
                opts.max_total_tokens
                    .saturating_sub(task.generated)
                    .max(256),
            );
            let (prompt, request) =
                self.fit_prompt(&mut messages, &tools, thinking, max_tokens, on_event)?;
            // What the context has left bounds the turn too, so it ends by its own limit (with
            // room kept for the answer) rather than by a full context.
            let room = self.backend.context_len().saturating_sub(prompt.ids.len());
            let turn = Turn {
                number: task.turns.len() + 1,
                prompt,
                request,
                max_tokens: max_tokens.min(room).max(1),
                sampling,
                choice,
                thinking_limit,
                may_think: thinks,
                tools: &tools,
                final_turn,
                call_format: self.template.call_format(),
                deadline: task.deadline(opts.max_wall, final_turn),
            };
            let turn_tokens = turn.max_tokens;
            let number = turn.number;
            let turn_span = tracing::info_span!("turn", number);
            let _turn = turn_span.enter();
            let output = turn.run(
                self.backend.as_ref(),
                &self.grammar,
                &mut dispatcher,
                &self.cancel,
                on_event,
            )?;
            task.records.push(output.record);
            let reason = output.stats.finish_reason;
            tracing::info!(
                prompt_tokens = output.stats.prompt_tokens,
                reused_tokens = output.stats.reused_tokens,
                generated_tokens = output.stats.generated_tokens,
                tool_calls = output.stats.tool_calls,
                finish = ?reason,
                "turn done"
            );
            // A model told it repeats itself and doing it again gets no more tools.
            let repeating = output.calls.iter().any(|c| c.repeated);
            if output.cut_short {
                on_event(&AgentEvent::Note {
                    message: format!(
                        "turn {number} cut after {} tool calls: the model repeats itself",
                        output.calls.len()
                    ),
                });
            }
            task.generated += output.stats.generated_tokens;
            task.thinking_used += output.stats.thinking_tokens;
            on_event(&AgentEvent::Turn(output.stats.clone()));
            task.turns.push(output.stats);

            let content = output.content.trim().to_string();
            let reasoning = output.reasoning.trim().to_string();
            let reasoning = (!reasoning.is_empty()).then_some(reasoning);
            if output.timed_out {
                on_event(&AgentEvent::Note {
                    message: format!(
                        "turn {number} cut: the task's wall time (--max-time) ran out"
                    ),
                });
            }
            if output.thinking_stopped {
                on_event(&AgentEvent::Note {
                    message: format!(
                        "turn {number}: thinking closed early (thinking budget, or room kept for the answer in {turn_tokens} tokens)"
                    ),
                });
            }
            if matches!(reason, FinishReason::MaxTokens | FinishReason::ContextFull) {
                on_event(&AgentEvent::Note {
                    message: format!(
                        "turn {number} stopped at its limit of {turn_tokens} tokens ({})",
                        if reason == FinishReason::ContextFull {
                            "the context is full"
                        } else {
                            "--max-turn-tokens, or what the task's tokens have left"
                        }
                    ),
                });
            }
            if (output.calls.is_empty() || final_turn) && content.is_empty() && !task.answer_retry {
                on_event(&AgentEvent::Note {
                    message: format!(
                        "turn {number} ended without an answer: asking again, without thinking or tools"
                    ),
                });
                task.answer_retry = true;
                // A model that stops right after a tool result is told what is wanted (the
                // same turn again would most likely end the same way).
                if messages.last().is_some_and(|m| m.role == Role::Tool) {
                    messages.push(final_request(&messages));
                }
                continue;
            }
            if output.calls.is_empty() || final_turn {
                messages.push(Message {
                    role: Role::Assistant,
                    content: Some(Content::Text(content.clone())),
                    reasoning_content: reasoning,
                    tool_calls: Vec::new(),
                    tool_call_id: None,
                    name: None,
                });
                on_event(&AgentEvent::Final {
                    text: content.clone(),
                });
                return Ok(TaskOutcome {
                    answer: content,
                    messages,
                    turns: task.turns,
                    limited_by: task.limited_by,
                    records: task.records,
                });
            }
            // A refused repeat and what follows it stay out of the conversation: the model
            // already holds that call's result, and a small model shown its own refused repeat
            // apologised instead of answering from the result above it.
            let kept = (output.calls.iter())
                .position(|c| c.repeated)
                .unwrap_or(output.calls.len());
            if kept > 0 {
                messages.push(Message {
                    role: Role::Assistant,
                    content: (!content.is_empty()).then_some(Content::Text(content)),
                    reasoning_content: reasoning,
                    tool_calls: output.calls[..kept]
                        .iter()
                        .filter(|c| !c.name.is_empty())
                        .map(|c| ToolCall {
                            id: Some(call_id(number, c.index)),
                            kind: "function".into(),
                            function: FunctionCall {
                                name: c.name.clone(),
                                arguments: Value::Object(c.arguments.clone()),
                            },
                        })
                        .collect(),
                    tool_call_id: None,
                    name: None,
                });
            }
            let Some(results) = dispatcher.collect(output.calls, &self.cancel, on_event) else {
                return Err(AgentError::Cancelled);
            };
            for (position, result) in results.into_iter().enumerate() {
                on_event(&AgentEvent::ToolResult {
                    turn: number,
                    index: result.index,
                    name: result.name,
                    text: result.text.clone(),
                    is_error: result.is_error,
                    elapsed_ms: result.elapsed.as_millis() as u64,
                });
                if position < kept {
                    messages.push(Message {
                        role: Role::Tool,
                        content: Some(Content::Text(result.text)),
                        reasoning_content: None,
                        tool_calls: Vec::new(),
                        tool_call_id: Some(call_id(number, result.index)),
                        name: None,
                    });
                }
            }
            task.rounds += 1;
            if repeating && task.limited_by.is_none() {
                let limit = "the model repeated a call".to_string();
                on_event(&AgentEvent::Note {
                    message: format!(
                        "{limit} (left out of the conversation): asking for a final answer without tools"
                    ),
                });
                messages.push(final_request(&messages));
                task.limited_by = Some(limit);
            }
        }
    }

    /// The thinking switch a turn renders with. Qwen's soft switches work while the hard switch
    /// is not off; a spent budget or an answer retry turns thinking off.
    fn thinking(&self, messages: &[Message], task: &TaskState) -> Option<bool> {
        let opts = &self.options;
        if task.answer_retry
            || opts.thinking == Some(false)
            || opts.budget.disables_thinking(task.thinking_used)
        {
            return Some(false);
        }
        soft_switch_in(messages).or(opts.thinking)
    }

    /// Renders the prompt, dropping the oldest tool results while it does not leave `reserve`
    /// tokens free in the context.
    fn fit_prompt(
        &self,
        messages: &mut [Message],
        tools: &[Value],
        thinking: Option<bool>,
        reserve: usize,
        on_event: &mut dyn FnMut(&AgentEvent),
    ) -> Result<(kestrel_prompts::template::Prompt, ChatRequest), AgentError> {
        let context = self.backend.context_len();
        let reserve = reserve.min(context / 2);
        let mut dropped = 0;
        loop {
            let request = ChatRequest {
                messages: messages.to_vec(),
                tools: tools.to_vec(),
                enable_thinking: thinking,
                add_generation_prompt: true,
            };
            let prompt = self.template.prompt(&request, self.backend.tokenizer())?;
            if prompt.ids.len() + reserve <= context {
                if dropped > 0 {
                    on_event(&AgentEvent::Note {
                        message: format!(
                            "dropped {dropped} old tool result(s) to fit the {context}-token context"
                        ),
                    });
                }
                return Ok((prompt, request));
            }
            let Some(oldest) = messages.iter_mut().find(|m| {
                m.role == Role::Tool
                    && !m
                        .content
                        .as_ref()
                        .is_some_and(|c| c.text().starts_with(DROPPED))
            }) else {
                return Err(AgentError::ContextFull {
                    needed: prompt.ids.len(),
                    context,
                    reserve,
                });
            };
            let bytes = oldest.content.as_ref().map(|c| c.text().len()).unwrap_or(0);
            oldest.content = Some(Content::Text(format!(
                "{DROPPED}: {bytes} bytes, removed to fit the context window]"
            )));
            dropped += 1;
        }
    }
}

/// Where a task stands between turns.
#[derive(Debug, Default)]
struct TaskState {
    started: Option<Instant>,
    turns: Vec<TurnStats>,
    records: Vec<TurnRecord>,
    /// Tokens generated so far.
    generated: usize,
    /// Thinking tokens so far.
    thinking_used: usize,
    /// Turns that called tools.
    rounds: usize,
    /// The limit that ended the tool rounds.
    limited_by: Option<String>,
    /// A turn ended without an answer; the next one is asked without thinking or tools.
    answer_retry: bool,
    /// The greedy-thinking warning was given.
    warned_greedy: bool,
    /// When the answer turns after the wall time ran out must end.
    answer_deadline: Option<Instant>,
}

/// The time the answer turn gets after the task's wall time ran out: a tenth of it, at least 5
/// and at most 60 seconds, so that a task cut by time still answers, and soon.
pub fn answer_grace(max_wall: Duration) -> Duration {
    (max_wall / 10).clamp(Duration::from_secs(5), Duration::from_secs(60))
}

impl TaskState {
    /// When a turn must end: the task's wall time, or, for the answer turns after a limit, the
    /// grace after it (counted from when the first of them starts, if that is later).
    fn deadline(&mut self, max_wall: Option<Duration>, final_turn: bool) -> Option<Instant> {
        let wall = max_wall?;
        let end = self.started? + wall;
        if !final_turn {
            return Some(end);
        }
        Some(
            *self
                .answer_deadline
                .get_or_insert_with(|| end.max(Instant::now()) + answer_grace(wall)),
        )
    }

    /// The first limit the task has reached, if any.
    fn limit_reached(&self, opts: &AgentOptions) -> Option<String> {
        let elapsed = self.started.map(|s| s.elapsed()).unwrap_or_default();
        if self.rounds >= opts.max_rounds {
            Some(format!("{} tool rounds", opts.max_rounds))
        } else if self.generated >= opts.max_total_tokens {
            Some(format!("{} generated tokens", opts.max_total_tokens))
        } else {
            opts.max_wall
                .filter(|w| elapsed >= *w)
                .map(|wall| format!("{} s of wall time", wall.as_secs_f64()))
        }
    }
}

/// The id a call gets in the conversation, which its result refers to.
fn call_id(turn: usize, index: usize) -> String {
    format!("call_{turn}_{index}")
}

const DROPPED: &str = "[tool result dropped";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_end_at_the_wall_time_and_the_answer_gets_a_grace() {
        assert_eq!(
            answer_grace(Duration::from_secs(10)),
            Duration::from_secs(5)
        );
        assert_eq!(
            answer_grace(Duration::from_secs(300)),
            Duration::from_secs(30)
        );
        assert_eq!(
            answer_grace(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
        let started = Instant::now();
        let mut task = TaskState {
            started: Some(started),
            ..TaskState::default()
        };
        let wall = Duration::from_secs(100);
        assert_eq!(task.deadline(None, false), None);
        assert_eq!(task.deadline(Some(wall), false), Some(started + wall));
        let answer = task.deadline(Some(wall), true);
        assert_eq!(answer, Some(started + wall + Duration::from_secs(10)));
        // A second answer turn (asked again without thinking) shares the same end.
        assert_eq!(task.deadline(Some(wall), true), answer);
    }

    #[test]
    fn limits_are_checked_in_order_and_name_themselves() {
        let opts = AgentOptions {
            max_rounds: 2,
            max_total_tokens: 100,
            max_wall: Some(Duration::from_secs(0)),
            ..AgentOptions::default()
        };
        let mut task = TaskState::default();
        assert_eq!(
            task.limit_reached(&opts).as_deref(),
            Some("0 s of wall time")
        );
        task.generated = 100;
        assert_eq!(
            task.limit_reached(&opts).as_deref(),
            Some("100 generated tokens")
        );
        task.rounds = 2;
        assert_eq!(task.limit_reached(&opts).as_deref(), Some("2 tool rounds"));
        let unlimited = AgentOptions::default();
        assert_eq!(TaskState::default().limit_reached(&unlimited), None);
    }
}
