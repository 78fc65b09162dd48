//! The agent: render -> generate -> parse -> dispatch -> append results -> generate again.
//!
//! One [`Agent`] owns a model session (its KV cache) and shares an [`McpHost`]. A task is a loop of
//! turns. Each turn renders the whole conversation with the model's template; the session keeps
//! the longest common token prefix, so a turn prefills only what is new (tool results, the next
//! assistant header), and [`TurnStats`] says how many tokens were reused and prefilled.
//!
//! Tool calls are dispatched the moment the parser completes them, while the model may still be
//! writing the next call; their results are appended in call order once the turn ends. The loop
//! ends when a turn calls no tool, or a limit (rounds, tokens, wall time) is hit; then the model is
//! asked once more with tool calls disabled, so a task always ends with an answer. Generation is
//! synchronous (it owns the CPU); MCP calls run on the tokio runtime the agent is given.

mod cancel;
mod mcp_sampling;
mod policy;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kestrel_engine::{
    GenerateRequest, Model, SamplingParams, Session, StepAction, StepHook, Tokenizer,
};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

pub use cancel::Cancel;
pub use mcp_sampling::{MAX_SAMPLING_TOKENS, ModelSamplingHandler};
pub use policy::{Approval, ApprovalPolicy, ApprovalRequest, Approver};

use crate::mcp::{CallError, McpHost, ToolOutcome, ToolSnapshot};
use kestrel_prompts::constrain::{GrammarTokenizer, ToolCallHook, ToolChoice, ToolChoiceMode};
use kestrel_prompts::messages::{ChatRequest, Content, FunctionCall, Message, Role, ToolCall};
use kestrel_prompts::parser::{OutputParser, ParseEvent, ParserConfig};
use kestrel_prompts::template::ChatTemplate;
use kestrel_prompts::thinking::{ThinkingBudget, ThinkingBudgetHook};

/// Limits and settings for a task.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Most turns that call tools; then the model must answer.
    pub max_rounds: usize,
    /// Most generated tokens over the whole task.
    pub max_total_tokens: usize,
    /// Most generated tokens in one turn.
    pub max_turn_tokens: usize,
    /// Most wall time for the task (checked between turns).
    pub max_wall: Option<Duration>,
    /// Qwen3's thinking switch (`None`: the template's default).
    pub thinking: Option<bool>,
    /// Thinking budgets.
    pub budget: ThinkingBudget,
    /// Sampling for every turn.
    pub sampling: SamplingParams,
    /// `tool_choice` for the first turn.
    pub first_tool_choice: ToolChoice,
    /// `tool_choice` for the turns after it (except the final, tool-free one).
    pub later_tool_choice: ToolChoice,
    /// Identical consecutive calls dispatched before the model is told to stop repeating.
    pub max_repeats: usize,
    /// The system prompt (default [`DEFAULT_SYSTEM_PROMPT`]; `None` for none).
    pub system: Option<String>,
    /// Which tools may run.
    pub approval: ApprovalPolicy,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            max_rounds: 8,
            max_total_tokens: 8192,
            max_turn_tokens: 2048,
            max_wall: None,
            thinking: None,
            budget: ThinkingBudget::default(),
            sampling: SamplingParams::default(),
            first_tool_choice: ToolChoice::Unset,
            later_tool_choice: ToolChoice::Unset,
            max_repeats: 2,
            system: Some(DEFAULT_SYSTEM_PROMPT.trim_end().to_string()),
            approval: ApprovalPolicy::default(),
        }
    }
}

/// What a task reports as it runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AgentEvent {
    /// Thinking text.
    Thinking {
        /// The text.
        text: String,
    },
    /// Answer text.
    Text {
        /// The text.
        text: String,
    },
    /// A tool call the model made (dispatched at once unless refused).
    ToolCall {
        /// Turn number (from 1).
        turn: usize,
        /// Index within the turn.
        index: usize,
        /// Tool name as offered.
        name: String,
        /// Arguments.
        arguments: Value,
    },
    /// A tool call's result, as the model will read it.
    ToolResult {
        /// Turn number.
        turn: usize,
        /// Index within the turn.
        index: usize,
        /// Tool name.
        name: String,
        /// The text.
        text: String,
        /// Whether it is an error (tool error, refusal, failure).
        is_error: bool,
        /// Milliseconds the call took (0 when it was not dispatched).
        elapsed_ms: u64,
    },
    /// Statistics of a finished turn.
    Turn(TurnStats),
    /// Something the agent did on its own (a limit hit, context shrunk).
    Note {
        /// What happened.
        message: String,
    },
    /// The final answer.
    Final {
        /// The answer text.
        text: String,
    },
}

/// One turn's numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TurnStats {
    /// Turn number (from 1).
    pub turn: usize,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the cache.
    pub reused_tokens: usize,
    /// Prompt tokens run through the model.
    pub prefilled_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Of which thinking.
    pub thinking_tokens: usize,
    /// Prefill rate.
    pub prompt_tokens_per_s: f64,
    /// Decode rate.
    pub decode_tokens_per_s: f64,
    /// Tool calls made.
    pub tool_calls: usize,
}

/// How a task ended.
#[derive(Debug, Clone)]
pub struct TaskOutcome {
    /// The final answer.
    pub answer: String,
    /// The whole conversation, tool calls and results included.
    pub messages: Vec<Message>,
    /// Per-turn statistics.
    pub turns: Vec<TurnStats>,
    /// The limit that ended the tool rounds, if one did.
    pub limited_by: Option<String>,
    /// Each turn's exact prompt and output tokens, for replay and audit.
    pub records: Vec<TurnRecord>,
}

/// One turn's tokens.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TurnRecord {
    /// Turn number.
    pub turn: usize,
    /// The prompt's token ids.
    pub prompt_ids: Vec<u32>,
    /// The generated token ids (forced ones included).
    pub generated_ids: Vec<u32>,
}

/// Why a task could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] kestrel_engine::EngineError),
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

/// Runs tasks with one model and one MCP host.
pub struct Agent {
    session: Session,
    template: ChatTemplate,
    grammar: GrammarTokenizer,
    host: Arc<McpHost>,
    runtime: Handle,
    options: AgentOptions,
    approver: Option<Approver>,
    cancel: Cancel,
}

/// Several hooks as one: each may mask; the first to force or stop decides the step.
struct Hooks<'a>(Vec<&'a mut dyn StepHook>);

impl StepHook for Hooks<'_> {
    fn before_step(&mut self, generated: &[u32], logits: &mut [f32]) -> StepAction {
        for hook in self.0.iter_mut() {
            let action = hook.before_step(generated, logits);
            if action != StepAction::Sample {
                return action;
            }
        }
        StepAction::Sample
    }

    fn on_token(&mut self, id: u32, forced: bool) {
        for hook in self.0.iter_mut() {
            hook.on_token(id, forced);
        }
    }
}

/// A call's result, now or later.
enum Pending {
    Now { text: String, is_error: bool },
    Later(JoinHandle<Result<ToolOutcome, CallError>>),
}

struct Call {
    index: usize,
    name: String,
    arguments: Map<String, Value>,
    pending: Pending,
    /// Refused as a repeat: the turn is cut here, the model is looping.
    repeated: bool,
}

/// Most calls in one turn; a model writing more is cut off (it is usually looping).
const MAX_CALLS_PER_TURN: usize = 16;

impl Agent {
    /// An agent over `model` and `host`; MCP calls run on `runtime`, which must not be the thread
    /// that calls [`Agent::run`].
    pub fn new(
        model: Arc<Model>,
        host: Arc<McpHost>,
        runtime: Handle,
        options: AgentOptions,
    ) -> Result<Self, AgentError> {
        let tokenizer = model.require_tokenizer()?;
        let template = match tokenizer.chat_template() {
            Some(t) => ChatTemplate::new(t)?,
            None => ChatTemplate::qwen3(),
        };
        let grammar = GrammarTokenizer::new(tokenizer, model.config().vocab_size)?;
        Ok(Self {
            session: Session::new(model),
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

    fn tokenizer(&self) -> Result<&Tokenizer, AgentError> {
        Ok(self.session.model().require_tokenizer()?)
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
        let host = self.host.clone();
        // The tools of the whole task: the prompt's tool list stays the same from turn to turn
        // (so does the KV cache behind it), and every call is resolved against it.
        let snapshot = self.runtime.block_on(host.snapshot());
        let tools: Vec<Value> = snapshot.to_openai();
        let started = Instant::now();
        let mut turns = Vec::new();
        let mut records = Vec::new();
        let (mut generated_total, mut thinking_used, mut rounds) = (0usize, 0usize, 0usize);
        let mut limited_by: Option<String> = None;
        let mut repeats = RepeatGuard::default();
        loop {
            let opts = &self.options;
            if limited_by.is_none() {
                limited_by = if rounds >= opts.max_rounds {
                    Some(format!("{} tool rounds", opts.max_rounds))
                } else if generated_total >= opts.max_total_tokens {
                    Some(format!("{} generated tokens", opts.max_total_tokens))
                } else if opts.max_wall.is_some_and(|w| started.elapsed() >= w) {
                    Some(format!(
                        "{} s of wall time",
                        opts.max_wall.unwrap_or_default().as_secs_f64()
                    ))
                } else {
                    None
                };
                if let Some(limit) = &limited_by {
                    on_event(&AgentEvent::Note {
                        message: format!(
                            "limit reached ({limit}): asking for a final answer without tools"
                        ),
                    });
                    // Only appended: the cached prefix stays valid (a thinking model's template
                    // may drop earlier reasoning after a user message; the session then reuses
                    // the longest common prefix).
                    if messages.last().is_some_and(|m| m.role == Role::Tool) {
                        messages.push(Message::text(Role::User, FINAL_NOTE));
                    }
                }
            }
            let final_turn = limited_by.is_some();
            let choice = if final_turn {
                ToolChoice::Mode(ToolChoiceMode::None)
            } else if turns.is_empty() {
                opts.first_tool_choice.clone()
            } else {
                opts.later_tool_choice.clone()
            };
            let thinking = if opts.budget.disables_thinking(thinking_used) {
                Some(false)
            } else {
                opts.thinking
            };
            let turn_limit = opts.budget.turn_limit(thinking_used);
            let max_tokens = opts.max_turn_tokens.min(
                opts.max_total_tokens
                    .saturating_sub(generated_total)
                    .max(256),
            );
            let prompt = self.fit_prompt(&mut messages, &tools, thinking, max_tokens, on_event)?;
            let starts_in_thinking = prompt.text.ends_with("<think>\n");

            let tokenizer = self.tokenizer()?;
            let mut budget_hook =
                ThinkingBudgetHook::new(tokenizer, turn_limit, starts_in_thinking)?;
            let mut call_hook =
                ToolCallHook::new(&self.grammar, &tools, &choice, starts_in_thinking)?;
            let mut parser = OutputParser::new(ParserConfig {
                starts_in_thinking,
                known_tools: if final_turn {
                    Vec::new()
                } else {
                    snapshot.names()
                },
                ..ParserConfig::default()
            });
            let request = GenerateRequest {
                prompt: prompt.ids.clone(),
                max_tokens,
                sampling: self.options.sampling.clone(),
                stop_ids: None,
            };
            let turn = turns.len() + 1;
            let (runtime, options) = (self.runtime.clone(), self.options.clone());
            let approver = self.approver.clone();
            let (mut reasoning, mut content) = (String::new(), String::new());
            let mut calls: Vec<Call> = Vec::new();
            let mut dispatch = |events: Vec<ParseEvent>,
                                reasoning: &mut String,
                                content: &mut String,
                                calls: &mut Vec<Call>| {
                for event in events {
                    match event {
                        ParseEvent::ThinkingDelta { text } => {
                            on_event(&AgentEvent::Thinking { text: text.clone() });
                            reasoning.push_str(&text);
                        }
                        ParseEvent::TextDelta { text } => {
                            on_event(&AgentEvent::Text { text: text.clone() });
                            content.push_str(&text);
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
                            let (pending, repeated) = start_call(
                                (&host, &runtime, &options),
                                approver.as_ref(),
                                &snapshot,
                                &name,
                                &arguments,
                                &mut repeats,
                            );
                            calls.push(Call {
                                index,
                                name,
                                arguments,
                                pending,
                                repeated,
                            });
                        }
                        ParseEvent::ParseError {
                            index,
                            message,
                            raw,
                        } => {
                            calls.push(Call {
                                index,
                                name: String::new(),
                                arguments: Map::new(),
                                pending: Pending::Now {
                                    text: format!(
                                        "Error: the tool call could not be read ({message}): {raw}"
                                    ),
                                    is_error: true,
                                },
                                repeated: false,
                            });
                        }
                        ParseEvent::ToolCallStarted { .. }
                        | ParseEvent::ToolCallDelta { .. }
                        | ParseEvent::EndOfTurn => {}
                    }
                }
            };
            let mut hooks = Hooks(vec![&mut budget_hook, &mut call_hook]);
            let mut generation = self.session.generate(request, Some(&mut hooks));
            let mut cut_short = false;
            for token in generation.by_ref() {
                if self.cancel.is_cancelled() {
                    break;
                }
                let token = token?;
                dispatch(
                    parser.push(&token.text),
                    &mut reasoning,
                    &mut content,
                    &mut calls,
                );
                if calls.len() >= MAX_CALLS_PER_TURN || calls.iter().any(|c| c.repeated) {
                    cut_short = true;
                    break;
                }
            }
            let tail = generation.flush_text()?;
            let timings = generation.timings();
            records.push(TurnRecord {
                turn,
                prompt_ids: prompt.ids.clone(),
                generated_ids: generation.generated().to_vec(),
            });
            drop(generation);
            drop(hooks);
            if self.cancel.is_cancelled() {
                abort_calls(calls);
                return Err(AgentError::Cancelled);
            }
            if !cut_short {
                dispatch(parser.push(&tail), &mut reasoning, &mut content, &mut calls);
                dispatch(parser.finish(), &mut reasoning, &mut content, &mut calls);
            }
            // A model told it repeats itself and doing it again gets no more tools.
            let repeating = calls.iter().any(|c| c.repeated);
            if cut_short {
                on_event(&AgentEvent::Note {
                    message: format!(
                        "turn {turn} cut after {} tool calls: the model repeats itself",
                        calls.len()
                    ),
                });
            }

            generated_total += timings.generated_tokens;
            thinking_used += budget_hook.thinking_tokens();
            let stats = TurnStats {
                turn,
                prompt_tokens: timings.prompt_tokens,
                reused_tokens: timings.reused_tokens,
                prefilled_tokens: timings.prefilled_tokens,
                generated_tokens: timings.generated_tokens,
                thinking_tokens: budget_hook.thinking_tokens(),
                prompt_tokens_per_s: timings.prompt_tokens_per_s(),
                decode_tokens_per_s: timings.decode_tokens_per_s(),
                tool_calls: calls.len(),
            };
            on_event(&AgentEvent::Turn(stats.clone()));
            turns.push(stats);

            let content_text = content.trim().to_string();
            let reasoning_text = reasoning.trim().to_string();
            if calls.is_empty() || final_turn {
                messages.push(Message {
                    role: Role::Assistant,
                    content: Some(Content::Text(content_text.clone())),
                    reasoning_content: (!reasoning_text.is_empty()).then_some(reasoning_text),
                    tool_calls: Vec::new(),
                    tool_call_id: None,
                    name: None,
                });
                on_event(&AgentEvent::Final {
                    text: content_text.clone(),
                });
                return Ok(TaskOutcome {
                    answer: content_text,
                    messages,
                    turns,
                    limited_by,
                    records,
                });
            }
            messages.push(Message {
                role: Role::Assistant,
                content: (!content_text.is_empty()).then_some(Content::Text(content_text)),
                reasoning_content: (!reasoning_text.is_empty()).then_some(reasoning_text),
                tool_calls: calls
                    .iter()
                    .filter(|c| !c.name.is_empty())
                    .map(|c| ToolCall {
                        id: Some(format!("call_{turn}_{}", c.index)),
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
            let mut calls = calls.into_iter();
            while let Some(call) = calls.next() {
                let (text, is_error, elapsed) = match call.pending {
                    Pending::Now { text, is_error } => (text, is_error, Duration::ZERO),
                    Pending::Later(handle) => match self.wait_for(handle) {
                        None => {
                            abort_calls(calls.collect());
                            return Err(AgentError::Cancelled);
                        }
                        Some(Ok(Ok(out))) => {
                            let text = if out.rendered.is_error {
                                format!("Error: {}", out.rendered.text)
                            } else {
                                out.rendered.text
                            };
                            (text, out.rendered.is_error, out.elapsed)
                        }
                        Some(Ok(Err(e))) => (format!("Error: {e}"), true, Duration::ZERO),
                        Some(Err(e)) => (
                            format!("Error: the call was lost: {e}"),
                            true,
                            Duration::ZERO,
                        ),
                    },
                };
                on_event(&AgentEvent::ToolResult {
                    turn,
                    index: call.index,
                    name: call.name.clone(),
                    text: text.clone(),
                    is_error,
                    elapsed_ms: elapsed.as_millis() as u64,
                });
                messages.push(Message {
                    role: Role::Tool,
                    content: Some(Content::Text(text)),
                    reasoning_content: None,
                    tool_calls: Vec::new(),
                    tool_call_id: Some(format!("call_{turn}_{}", call.index)),
                    name: None,
                });
            }
            rounds += 1;
            if repeating && limited_by.is_none() {
                let limit = "the model repeated the same call".to_string();
                on_event(&AgentEvent::Note {
                    message: format!("{limit}: asking for a final answer without tools"),
                });
                messages.push(Message::text(Role::User, FINAL_NOTE));
                limited_by = Some(limit);
            }
        }
    }

    /// A call's result, or `None` when the task is cancelled first (the call is then dropped,
    /// which tells its server).
    fn wait_for(
        &self,
        mut handle: JoinHandle<Result<ToolOutcome, CallError>>,
    ) -> Option<Result<Result<ToolOutcome, CallError>, tokio::task::JoinError>> {
        let cancel = self.cancel.clone();
        self.runtime.block_on(async {
            tokio::select! {
                result = &mut handle => Some(result),
                () = cancel.cancelled() => {
                    handle.abort();
                    None
                }
            }
        })
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
    ) -> Result<kestrel_prompts::template::Prompt, AgentError> {
        let context = self.session.model().config().max_position_embeddings;
        let reserve = reserve.min(context / 2);
        let mut dropped = 0;
        loop {
            let request = ChatRequest {
                messages: messages.to_vec(),
                tools: tools.to_vec(),
                enable_thinking: thinking,
                add_generation_prompt: true,
            };
            let prompt = self.template.prompt(&request, self.tokenizer()?)?;
            if prompt.ids.len() + reserve <= context {
                if dropped > 0 {
                    on_event(&AgentEvent::Note {
                        message: format!(
                            "dropped {dropped} old tool result(s) to fit the {context}-token context"
                        ),
                    });
                }
                return Ok(prompt);
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

/// Drops the calls of a cancelled turn that are still in flight.
fn abort_calls(calls: Vec<Call>) {
    for call in calls {
        if let Pending::Later(handle) = call.pending {
            handle.abort();
        }
    }
}

/// Sends a call to its server now, unless it names no tool the turn offered, the policy refuses
/// it, or it repeats itself.
fn start_call(
    (host, runtime, options): (&Arc<McpHost>, &Handle, &AgentOptions),
    approver: Option<&Approver>,
    snapshot: &ToolSnapshot,
    name: &str,
    arguments: &Map<String, Value>,
    repeat_guard: &mut RepeatGuard,
) -> (Pending, bool) {
    let repeats = repeat_guard.record(name, arguments);
    if repeats > options.max_repeats {
        let pending = Pending::Now {
            text: format!(
                "Not called: this exact call ({name} with the same arguments) was already made {} times in a row, and its result is above. Use that result, call with different arguments, or answer.",
                repeats - 1
            ),
            is_error: true,
        };
        return (pending, true);
    }
    let tool = match snapshot.resolve(name) {
        Ok(tool) => tool,
        Err(e) => {
            let pending = Pending::Now {
                text: format!("Not called: {e}"),
                is_error: true,
            };
            return (pending, false);
        }
    };
    if let Err(reason) = ApprovalPolicy::settle(
        options.approval.decide(tool),
        approver,
        ApprovalRequest::Call {
            tool,
            arguments: &Value::Object(arguments.clone()),
        },
    ) {
        return (
            Pending::Now {
                text: format!("Not called: {reason}"),
                is_error: true,
            },
            false,
        );
    }
    let (host, tool) = (host.clone(), tool.clone());
    let arguments = Value::Object(arguments.clone());
    let call = runtime.spawn(async move { host.call_offered(&tool, arguments).await });
    (Pending::Later(call), false)
}

/// Counts identical consecutive calls (same tool, same arguments) over a task.
#[derive(Debug, Default)]
struct RepeatGuard {
    last: Option<(String, Map<String, Value>)>,
    count: usize,
}

impl RepeatGuard {
    /// Records a call; returns how many times in a row it has now been made.
    fn record(&mut self, name: &str, arguments: &Map<String, Value>) -> usize {
        match &self.last {
            Some((n, a)) if n == name && a == arguments => self.count += 1,
            _ => {
                self.last = Some((name.to_string(), arguments.clone()));
                self.count = 1;
            }
        }
        self.count
    }
}

const DROPPED: &str = "[tool result dropped";

/// The system prompt a task gets unless it brings its own.
pub const DEFAULT_SYSTEM_PROMPT: &str = include_str!("system_prompt.txt");

/// The user turn added when a limit ends the tool rounds.
const FINAL_NOTE: &str = "No more tool calls are possible. Answer my question now, in plain words, using the tool results above.";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_call_is_resolved_against_the_offered_tools_only() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let root = tempfile::tempdir().expect("tmp");
        let text = json!({"roots": [root.path()], "mcpServers": {"files": {"builtin": "fs"}}});
        let config = crate::mcp::McpConfig::parse(
            &text.to_string(),
            false,
            std::path::Path::new("agent.json"),
        )
        .expect("config");
        let options = crate::mcp::HostOptions::from_config(&config);
        let host = Arc::new(runtime.block_on(McpHost::start(&config, options)));
        let everything = runtime.block_on(host.snapshot());
        assert!(everything.resolve("list_directory").is_ok());
        let agent_options = AgentOptions::default();
        let start = |snapshot: &ToolSnapshot, name: &str| {
            let arguments = args(json!({"path": "."}));
            let (pending, _) = start_call(
                (&host, runtime.handle(), &agent_options),
                None,
                snapshot,
                name,
                &arguments,
                &mut RepeatGuard::default(),
            );
            match pending {
                Pending::Now { text, is_error } => (text, is_error),
                Pending::Later(call) => match runtime.block_on(call).expect("joined") {
                    Ok(outcome) => (outcome.rendered.text, outcome.rendered.is_error),
                    Err(e) => (e.to_string(), true),
                },
            }
        };
        let (text, is_error) = start(&everything, "list_directory");
        assert!(!is_error, "an offered tool runs: {text}");
        // The server has the tool, but this turn was not offered it: refused, not looked up.
        let (text, is_error) = start(&ToolSnapshot::default(), "list_directory");
        assert!(is_error);
        assert_eq!(
            text,
            "Not called: no tool named `list_directory` is offered (offered: none)"
        );
        runtime.block_on(host.shutdown());
    }

    #[test]
    fn repeats_count_identical_consecutive_calls_only() {
        let mut g = RepeatGuard::default();
        assert_eq!(g.record("t", &args(json!({"a": 1}))), 1);
        assert_eq!(g.record("t", &args(json!({"a": 1}))), 2);
        assert_eq!(g.record("t", &args(json!({"a": 1}))), 3);
        assert_eq!(g.record("t", &args(json!({"a": 2}))), 1, "other arguments");
        assert_eq!(g.record("u", &args(json!({"a": 2}))), 1, "other tool");
        assert_eq!(g.record("t", &args(json!({"a": 2}))), 1, "not in a row");
    }

    #[test]
    fn hooks_mask_in_order_and_the_first_decision_wins() {
        struct Forbid(usize);
        impl StepHook for Forbid {
            fn before_step(&mut self, _: &[u32], logits: &mut [f32]) -> StepAction {
                logits[self.0] = f32::NEG_INFINITY;
                StepAction::Sample
            }
        }
        struct ForceOne;
        impl StepHook for ForceOne {
            fn before_step(&mut self, _: &[u32], _: &mut [f32]) -> StepAction {
                StepAction::Force(vec![1])
            }
        }
        let (mut a, mut b, mut f) = (Forbid(0), Forbid(2), ForceOne);
        let mut logits = vec![0.0; 3];
        let mut hooks = Hooks(vec![&mut a, &mut b]);
        assert_eq!(hooks.before_step(&[], &mut logits), StepAction::Sample);
        assert_eq!(logits, [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY]);
        let mut hooks = Hooks(vec![&mut f, &mut a]);
        assert_eq!(
            hooks.before_step(&[], &mut logits),
            StepAction::Force(vec![1])
        );
    }
}
