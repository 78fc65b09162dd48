//! One model reply to a chat request, with no tools run: what an OpenAI-style endpoint serves.
//!
//! A [`Replier`] holds what every request shares (the backend, the model's chat template, the
//! grammar tokenizer). [`Replier::start`] renders the conversation (injection-safe), builds the
//! turn's hooks (the thinking budget, the tool-call constraint under `tool_choice`) and submits
//! it; the [`Reply`] then turns streamed tokens into [`ReplyEvent`]s: reasoning and answer text as
//! it comes, each tool call once it is complete (arguments parsed, never left in the text), and a
//! last `Done` with the finish reason and token counts. The caller decides what to do with calls:
//! this module never runs one.
//!
//! As in the agent's turns, Qwen's early-stop text that the budget forces after `</think>` is not
//! shown as answer text, and a call the parser cannot read is returned as text, not dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kestrel_engine::{GeneratedToken, SamplingParams};
use kestrel_prompts::answer_format::{AnswerFormat, AnswerFormatHook};
use kestrel_prompts::call_stream::{CallPiece, CallScanner};
use kestrel_prompts::constrain::{ConstraintError, GrammarTokenizer, ToolCallHook, ToolChoice};
use kestrel_prompts::messages::ChatRequest;
use kestrel_prompts::parser::{OutputParser, ParseEvent, ParserConfig};
use kestrel_prompts::phase::{ThinkState, ThinkToken};
use kestrel_prompts::template::{ChatTemplate, PromptError};
use kestrel_prompts::thinking::{ThinkingBudgetHook, ThinkingCount, thinking_room};
use serde_json::Value;

use crate::backend::{
    Backend, BackendError, Conversation, FinishReason, StreamItem, Submission, TokenStream,
};

/// Why a reply could not start or went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// The conversation could not be rendered (a bad message, an unknown tool format).
    #[error(transparent)]
    Prompt(#[from] PromptError),
    /// The tool constraint could not be built (a schema llguidance cannot take).
    #[error(transparent)]
    Constraint(#[from] ConstraintError),
    /// The answer format could not be built (a schema llguidance cannot take).
    #[error("{0}")]
    Format(ConstraintError),
    /// The engine refused or failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] kestrel_engine::EngineError),
    /// The prompt leaves no room to answer.
    #[error("the prompt is {prompt} tokens but the context holds {context}")]
    ContextFull {
        /// Prompt tokens.
        prompt: usize,
        /// The model's context.
        context: usize,
    },
}

/// What a reply is asked for.
#[derive(Debug, Clone)]
pub struct ReplyRequest {
    /// The conversation, tools and thinking switch.
    pub chat: ChatRequest,
    /// Which calls may be made.
    pub tool_choice: ToolChoice,
    /// Most tokens to generate (default and cap: what the context leaves).
    pub max_tokens: Option<usize>,
    /// Most thinking tokens (`None`: as many as leave room for an answer).
    pub thinking_budget: Option<usize>,
    /// Sampling.
    pub sampling: SamplingParams,
    /// The answer's required format (`response_format`), if any.
    pub answer_format: Option<AnswerFormat>,
}

/// What a reply produces, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyEvent {
    /// More thinking text.
    Reasoning(String),
    /// More answer text.
    Content(String),
    /// An answer token's log-probability (when the sampling asked for them), in token order;
    /// the text it spells comes in [`ReplyEvent::Content`], possibly later.
    Logprob(ContentLogprob),
    /// A tool call has begun and named its tool; its arguments follow in pieces.
    ToolCallBegin {
        /// Index among this reply's calls, from 0 (the complete call's too).
        index: usize,
        /// Tool name.
        name: String,
    },
    /// More of a begun call's arguments, verbatim as the model writes them: a call's pieces put
    /// together are its arguments' JSON text (quoted arguments are not streamed; a call cut short
    /// or unreadable never completes).
    ToolCallArguments {
        /// The call's index.
        index: usize,
        /// The next piece.
        text: String,
    },
    /// A complete tool call.
    ToolCall {
        /// Index among this reply's calls, from 0 (a call begun and never completed keeps its).
        index: usize,
        /// Tool name.
        name: String,
        /// Arguments, as a JSON object's text.
        arguments: String,
    },
    /// The end; nothing follows.
    Done(ReplyEnd),
}

/// An answer token's log-probability under the model (see [`SamplingParams::logprobs`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ContentLogprob {
    /// The bytes the token spells (a character may span tokens).
    pub bytes: Vec<u8>,
    /// Its log-probability.
    pub logprob: f32,
    /// The most likely tokens at its position, as bytes with their log-probabilities, most
    /// likely first.
    pub top: Vec<(Vec<u8>, f32)>,
}

/// How a reply ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyEnd {
    /// Why generation stopped.
    pub reason: FinishReason,
    /// Tool calls made.
    pub tool_calls: usize,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens whose cache was reused.
    pub cached_tokens: usize,
    /// Generated tokens (forced ones included).
    pub completion_tokens: usize,
    /// Of those, thinking tokens.
    pub reasoning_tokens: usize,
}

impl ReplyEnd {
    /// Two replies in a row (rounds of one answer): their counts added, ending as `next` did.
    pub fn then(&self, next: &ReplyEnd) -> ReplyEnd {
        ReplyEnd {
            reason: next.reason,
            tool_calls: self.tool_calls + next.tool_calls,
            prompt_tokens: self.prompt_tokens + next.prompt_tokens,
            cached_tokens: self.cached_tokens + next.cached_tokens,
            completion_tokens: self.completion_tokens + next.completion_tokens,
            reasoning_tokens: self.reasoning_tokens + next.reasoning_tokens,
        }
    }
}

/// What every reply shares.
pub struct Replier {
    backend: Arc<dyn Backend>,
    template: ChatTemplate,
    grammar: GrammarTokenizer,
}

impl Replier {
    /// Replies with `backend`, rendering with its tokenizer's chat template (Qwen3's when it has
    /// none).
    pub fn new(backend: Arc<dyn Backend>) -> Result<Self, ReplyError> {
        let tokenizer = backend.tokenizer();
        let template = ChatTemplate::of(tokenizer)?;
        let grammar = GrammarTokenizer::new(tokenizer, backend.vocab_size())?;
        Ok(Self {
            backend,
            template,
            grammar,
        })
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The bytes a token spells (a special token's name).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.grammar.token_bytes(id)
    }

    /// How many tokens `chat` renders to, generation prompt included.
    pub fn count_tokens(&self, chat: &ChatRequest) -> Result<usize, ReplyError> {
        Ok(self
            .template
            .prompt(chat, self.backend.tokenizer())?
            .ids
            .len())
    }

    /// Renders and submits `request`.
    pub fn start(&self, request: ReplyRequest) -> Result<Reply, ReplyError> {
        let tokenizer = self.backend.tokenizer();
        let prompt = self.template.prompt(&request.chat, tokenizer)?;
        let context = self.backend.context_len();
        let room = context.saturating_sub(prompt.ids.len());
        if room == 0 {
            return Err(ReplyError::ContextFull {
                prompt: prompt.ids.len(),
                context,
            });
        }
        let max_tokens = request.max_tokens.map_or(room, |m| m.min(room));
        let starts_in_thinking = prompt.text.ends_with("<think>\n");
        let may_think = request.chat.enable_thinking != Some(false) && self.template.thinks();
        let mut budget = ThinkingBudgetHook::new(tokenizer, None, starts_in_thinking)?;
        let room = thinking_room(max_tokens, budget.early_stop_ids().len());
        budget.set_limit(Some(request.thinking_budget.map_or(room, |l| l.min(room))));
        let thinking = budget.thinking_count();
        let constraint = ToolCallHook::for_format(
            self.template.call_format(),
            &self.grammar,
            &request.chat.tools,
            &request.tool_choice,
            starts_in_thinking,
            may_think,
        )?;
        let format = match &request.answer_format {
            None => None,
            Some(format) => {
                let calls = !request.chat.tools.is_empty()
                    && !matches!(
                        request.tool_choice,
                        ToolChoice::Mode(kestrel_prompts::constrain::ToolChoiceMode::None)
                    );
                Some(
                    AnswerFormatHook::new(
                        &self.grammar,
                        format,
                        starts_in_thinking,
                        may_think,
                        calls,
                    )
                    .map_err(ReplyError::Format)?,
                )
            }
        };
        let no_calls = matches!(
            request.tool_choice,
            ToolChoice::Mode(kestrel_prompts::constrain::ToolChoiceMode::None)
        ) || request.chat.tools.is_empty();
        let parser = OutputParser::new(ParserConfig {
            starts_in_thinking,
            known_tools: tool_names(&request.chat.tools),
            no_calls,
            parameter_schemas: kestrel_prompts::xml_calls::parameter_schemas(&request.chat.tools),
            ..ParserConfig::default()
        });
        let prompt_tokens = prompt.ids.len();
        let logprobs = request.sampling.logprobs.is_some();
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let generation = NEXT.fetch_add(1, Ordering::Relaxed);
        // A child of whatever the caller is doing (a server request); it ends with the reply.
        let span = tracing::info_span!(
            "generation",
            generation,
            prompt_tokens,
            max_tokens,
            completion_tokens = tracing::field::Empty,
            cached_tokens = tracing::field::Empty,
        );
        span.in_scope(|| tracing::debug!("generation queued"));
        let stream = self.backend.submit(Submission {
            prompt: prompt.ids,
            max_tokens,
            sampling: request.sampling,
            stop_ids: None,
            thinking: Some(budget),
            tool_calls: Some(constraint),
            answer_format: format,
            hooks: Vec::new(),
            conversation: Some(Conversation {
                request: request.chat.clone(),
                tool_choice: request.tool_choice.clone(),
            }),
        })?;
        Ok(Reply {
            stream,
            generation,
            span,
            prompt_tokens,
            parser,
            thinking,
            think_close: tokenizer.token_id("</think>"),
            in_early_stop_tail: false,
            writing: None,
            begun: 0,
            answer_tokens: logprobs.then(|| AnswerTokens {
                grammar: self.grammar.clone(),
                think: ThinkState::with_ids(
                    tokenizer.token_id("<think>"),
                    tokenizer.token_id("</think>"),
                    starts_in_thinking,
                ),
                in_call: false,
                call_open: tokenizer.token_id("<tool_call>"),
                call_close: tokenizer.token_id("</tool_call>"),
            }),
            calls: 0,
            done: false,
        })
    }
}

/// A reply in progress. Dropping it cancels the generation.
pub struct Reply {
    stream: TokenStream,
    /// This process's number for the generation, in its log lines.
    generation: u64,
    /// The generation's span, from submission to its last token.
    span: tracing::Span,
    prompt_tokens: usize,
    parser: OutputParser,
    thinking: ThinkingCount,
    think_close: Option<u32>,
    in_early_stop_tail: bool,
    /// Picks the answer's tokens out for their log-probabilities, when asked for.
    answer_tokens: Option<AnswerTokens>,
    /// The call being written: the parser's index for it, its own, and its scanner.
    writing: Option<(usize, usize, CallScanner)>,
    /// Calls begun.
    begun: usize,
    calls: usize,
    done: bool,
}

impl Reply {
    /// The prompt's length in tokens (known before anything is generated).
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// The next events (possibly none for a token that completes nothing); `None` after `Done`.
    pub async fn next(&mut self) -> Option<Result<Vec<ReplyEvent>, ReplyError>> {
        if self.done {
            return None;
        }
        let item = match self.stream.next().await? {
            Ok(item) => item,
            Err(e) => {
                self.done = true;
                return Some(Err(e.into()));
            }
        };
        Some(Ok(match item {
            StreamItem::Token(token) => {
                // Only the budget forces `</think>`; the forced text after it ends Qwen's
                // early-stop sentence and is not the answer's start.
                if token.forced && Some(token.id) == self.think_close {
                    self.in_early_stop_tail = true;
                } else if self.in_early_stop_tail && token.forced {
                    return Some(Ok(Vec::new()));
                } else {
                    self.in_early_stop_tail = false;
                }
                let events = self.parser.push(&token.text);
                let mut out = self.convert(events);
                let tail = self.in_early_stop_tail;
                if let Some(logprob) = self
                    .answer_tokens
                    .as_mut()
                    .and_then(|a| a.observe(&token, tail))
                {
                    out.push(ReplyEvent::Logprob(logprob));
                }
                out
            }
            StreamItem::Finished(finished) => {
                self.done = true;
                let mut events = self.parser.push(&finished.tail);
                events.extend(match finished.reason {
                    FinishReason::MaxTokens | FinishReason::ContextFull => {
                        self.parser.finish_truncated()
                    }
                    _ => self.parser.finish(),
                });
                let mut out = self.convert(events);
                let t = finished.timings;
                self.span
                    .record("completion_tokens", finished.generated.len());
                self.span.record("cached_tokens", t.reused_tokens);
                let _inside = self.span.enter();
                tracing::info!(
                    generation = self.generation,
                    finish = ?finished.reason,
                    prompt_tokens = t.prompt_tokens,
                    cached_tokens = t.reused_tokens,
                    completion_tokens = finished.generated.len(),
                    reasoning_tokens = self.thinking.get(),
                    tool_calls = self.calls,
                    ttft_ms = (t.time_to_first_token_secs * 1e3) as u64,
                    decode_tokens_per_s = t.decode_tokens_per_s(),
                    "generation done"
                );
                out.push(ReplyEvent::Done(ReplyEnd {
                    reason: finished.reason,
                    tool_calls: self.calls,
                    prompt_tokens: t.prompt_tokens,
                    cached_tokens: t.reused_tokens,
                    completion_tokens: finished.generated.len(),
                    reasoning_tokens: self.thinking.get(),
                }));
                out
            }
        }))
    }

    /// Stops the generation; the reply then ends with [`FinishReason::Cancelled`].
    pub fn cancel(&self) {
        self.stream.cancel();
    }

    fn convert(&mut self, events: Vec<ParseEvent>) -> Vec<ReplyEvent> {
        let mut out = Vec::new();
        for event in events {
            match event {
                ParseEvent::ThinkingDelta { text } => out.push(ReplyEvent::Reasoning(text)),
                ParseEvent::TextDelta { text } => out.push(ReplyEvent::Content(text)),
                ParseEvent::ToolCallStarted { index } => {
                    self.writing = Some((index, self.begun, CallScanner::new()));
                    self.begun += 1;
                }
                ParseEvent::ToolCallDelta { index, text } => {
                    if let Some((_, own, scanner)) =
                        self.writing.as_mut().filter(|(at, ..)| *at == index)
                    {
                        out.extend(scanner.push(&text).into_iter().map(|piece| match piece {
                            CallPiece::Name(name) => {
                                ReplyEvent::ToolCallBegin { index: *own, name }
                            }
                            CallPiece::Arguments(text) => {
                                ReplyEvent::ToolCallArguments { index: *own, text }
                            }
                        }));
                    }
                }
                ParseEvent::ToolCallComplete {
                    index,
                    name,
                    arguments,
                    ..
                } => {
                    let own = match self.writing.take() {
                        Some((at, own, _)) if at == index => own,
                        _ => {
                            self.begun += 1;
                            self.begun - 1
                        }
                    };
                    out.push(ReplyEvent::ToolCall {
                        index: own,
                        name,
                        arguments: Value::Object(arguments).to_string(),
                    });
                    self.calls += 1;
                }
                // What could not be read as a call stays visible as text.
                ParseEvent::ParseError { raw, .. } => {
                    self.writing = None;
                    out.push(ReplyEvent::Content(raw));
                }
                ParseEvent::EndOfTurn => {}
            }
        }
        out
    }
}

/// Tells the answer's tokens from thinking, tool calls and markup, by their ids: a parser's text
/// events may lag a token, its ids do not.
struct AnswerTokens {
    grammar: GrammarTokenizer,
    think: ThinkState,
    in_call: bool,
    call_open: Option<u32>,
    call_close: Option<u32>,
}

impl AnswerTokens {
    /// The token's log-probability if it is part of the answer.
    fn observe(&mut self, token: &GeneratedToken, early_stop_tail: bool) -> Option<ContentLogprob> {
        let id = token.id;
        if self.think.observe(id) != ThinkToken::Outside || early_stop_tail {
            return None;
        }
        if Some(id) == self.call_open {
            self.in_call = true;
        }
        let in_call = self.in_call;
        if Some(id) == self.call_close {
            self.in_call = false;
        }
        if in_call || self.grammar.is_special(id) {
            return None;
        }
        let scored = token.logprobs.as_ref()?;
        Some(ContentLogprob {
            bytes: self.grammar.token_bytes(id).to_vec(),
            logprob: scored.logprob,
            top: scored
                .top
                .iter()
                .map(|&(t, lp)| (self.grammar.token_bytes(t).to_vec(), lp))
                .collect(),
        })
    }
}

/// The names of OpenAI-form tools.
fn tool_names(tools: &[Value]) -> Vec<String> {
    tools
        .iter()
        .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}
