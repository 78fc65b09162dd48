//! The engine interface the agent talks to.
//!
//! A [`Backend`] takes a [`Submission`] (prompt ids, limits, sampling, and the per-token hooks
//! that constrain it, owned and `Send`, since the generation may run on another thread or
//! another machine) and streams the tokens back as a [`TokenStream`], which ends with one
//! [`Finished`]. A stream can be cancelled at any step, and dropping it cancels it. The agent loop
//! knows nothing else about the engine: the embedded one ([`Embedded`], which batches every
//! generation submitted to it), or a serving engine over HTTP ([`Remote`]).
//!
//! The tokenizer stays on the agent's side for every backend: prompts are rendered and tokenized
//! here (only the template's markup may become special tokens), so a backend receives ids, never
//! text.

mod embedded;
mod remote;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kestrel_engine::{
    EngineError, EngineStats, GeneratedToken, SamplingParams, StepHook, Timings, Tokenizer,
};
use kestrel_prompts::answer_format::AnswerFormatHook;
use kestrel_prompts::constrain::{ToolCallHook, ToolChoice};
use kestrel_prompts::messages::ChatRequest;
use kestrel_prompts::thinking::ThinkingBudgetHook;
use serde::Serialize;
use tokio::sync::mpsc;

pub use embedded::Embedded;
pub use remote::{ChatEngine, EngineInfo, Remote, RemoteError, RemoteOptions};

/// A per-token hook a backend may run on any thread.
pub type Hook = Box<dyn StepHook + Send>;

/// One generation to run.
pub struct Submission {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Most tokens to generate (forced ones included).
    pub max_tokens: usize,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// Tokens that end generation; `None` uses the model's EOS ids.
    pub stop_ids: Option<Vec<u32>>,
    /// The thinking budget, run first. A backend whose engine cannot run hooks token by token
    /// enforces it by generating in segments that end where the budget must be checked.
    pub thinking: Option<ThinkingBudgetHook>,
    /// The tool-call constraint, run second. Such a backend hands the engine its grammar form
    /// instead (`kestrel_prompts::gbnf::tool_call_constraint`).
    pub tool_calls: Option<ToolCallHook>,
    /// The answer's format, run third (a backend that cannot run it hands the engine its grammar
    /// form, `kestrel_prompts::gbnf::answer_constraint`, which covers the calls too).
    pub answer_format: Option<AnswerFormatHook>,
    /// Further hooks, run in order after those (each may mask; the first to force or stop
    /// decides) and told of each accepted token. Only engines that run hooks take them.
    pub hooks: Vec<Hook>,
    /// What `prompt` was rendered from, for engines that take messages instead of ids (chat
    /// mode); a generation without it (a raw prompt) needs an engine that takes ids.
    pub conversation: Option<Conversation>,
}

/// The messages and tools a prompt was rendered from, with the turn's tool choice.
#[derive(Debug, Clone)]
pub struct Conversation {
    /// Messages, tools and the thinking switch.
    pub request: ChatRequest,
    /// The turn's `tool_choice`.
    pub tool_choice: ToolChoice,
}

impl Submission {
    /// A plain generation: no hooks.
    pub fn new(prompt: Vec<u32>, max_tokens: usize, sampling: SamplingParams) -> Self {
        Self {
            prompt,
            max_tokens,
            sampling,
            stop_ids: None,
            thinking: None,
            tool_calls: None,
            answer_format: None,
            hooks: Vec::new(),
            conversation: None,
        }
    }

    /// Every hook, in the order they run.
    pub(crate) fn all_hooks(self) -> (GenerateParts, Hooks) {
        let mut hooks: Vec<Hook> = Vec::new();
        if let Some(budget) = self.thinking {
            hooks.push(Box::new(budget));
        }
        if let Some(constraint) = self.tool_calls {
            hooks.push(Box::new(constraint));
        }
        if let Some(format) = self.answer_format {
            hooks.push(Box::new(format));
        }
        hooks.extend(self.hooks);
        let parts = GenerateParts {
            prompt: self.prompt,
            max_tokens: self.max_tokens,
            sampling: self.sampling,
            stop_ids: self.stop_ids,
        };
        (parts, Hooks(hooks))
    }
}

/// A submission's generation parameters, without its hooks.
pub(crate) struct GenerateParts {
    pub(crate) prompt: Vec<u32>,
    pub(crate) max_tokens: usize,
    pub(crate) sampling: SamplingParams,
    pub(crate) stop_ids: Option<Vec<u32>>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token (EOS) was produced.
    Stop,
    /// `max_tokens` were produced.
    MaxTokens,
    /// A hook ended the generation.
    Hook,
    /// The context window is full.
    ContextFull,
    /// The stream was cancelled.
    Cancelled,
}

impl From<kestrel_engine::FinishReason> for FinishReason {
    fn from(reason: kestrel_engine::FinishReason) -> Self {
        use kestrel_engine::FinishReason as F;
        match reason {
            F::Stop(_) => Self::Stop,
            F::MaxTokens => Self::MaxTokens,
            F::Hook => Self::Hook,
            F::ContextFull => Self::ContextFull,
            F::Cancelled => Self::Cancelled,
        }
    }
}

/// How a generation ended.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Why.
    pub reason: FinishReason,
    /// Every generated id, forced ones included.
    pub generated: Vec<u32>,
    /// Text held back until the end (an incomplete character at the cut).
    pub tail: String,
    /// Tokens and time.
    pub timings: Timings,
}

/// What a stream yields.
#[derive(Debug)]
pub enum StreamItem {
    /// One generated token.
    Token(GeneratedToken),
    /// The end; nothing follows.
    Finished(Finished),
}

/// Why a backend could not run a generation.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// No thread could be started for the generation.
    #[error("cannot start a generation thread: {0}")]
    Spawn(std::io::Error),
    /// The backend stopped without finishing the stream.
    #[error("the engine stopped without finishing the generation")]
    Lost,
    /// The engine cannot run what the generation needs.
    #[error("{0}")]
    Unsupported(String),
    /// A remote engine failed the generation (the message names it and what it said).
    #[error("{0}")]
    Remote(String),
}

/// An engine the agent can submit generations to; cheap to share between tasks.
pub trait Backend: Send + Sync {
    /// The tokenizer prompts are made with.
    fn tokenizer(&self) -> &Tokenizer;
    /// The name the model answers to (a reply's `model`).
    fn model_name(&self) -> &str;
    /// The model's context window, in tokens.
    fn context_len(&self) -> usize;
    /// The model's vocabulary size (the logits' length hooks see).
    fn vocab_size(&self) -> usize;
    /// Starts a generation.
    fn submit(&self, submission: Submission) -> Result<TokenStream, BackendError>;
    /// What the engine is doing, when the backend can tell (for metrics).
    fn stats(&self) -> Option<EngineStats> {
        None
    }
}

/// The tokens of one generation, as they come. Dropping it cancels the generation.
pub struct TokenStream {
    items: mpsc::UnboundedReceiver<Result<StreamItem, BackendError>>,
    cancel: Arc<AtomicBool>,
    finished: bool,
}

/// Cancels a [`TokenStream`] from elsewhere; see [`TokenStream::canceller`].
#[derive(Debug, Clone)]
pub struct StreamCanceller(Arc<AtomicBool>);

impl StreamCanceller {
    /// Asks the backend to stop the stream.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The backend's end of a [`TokenStream`].
pub(crate) struct StreamSender {
    items: mpsc::UnboundedSender<Result<StreamItem, BackendError>>,
    cancel: Arc<AtomicBool>,
}

impl StreamSender {
    /// Sends an item; `false` when the stream is gone (the generation should stop).
    pub(crate) fn send(&self, item: Result<StreamItem, BackendError>) -> bool {
        self.items.send(item).is_ok()
    }

    /// Whether the stream was cancelled or dropped.
    pub(crate) fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst) || self.items.is_closed()
    }
}

impl TokenStream {
    /// A connected pair: the backend sends into the first, the agent reads the second.
    pub(crate) fn channel() -> (StreamSender, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let sender = StreamSender {
            items: tx,
            cancel: cancel.clone(),
        };
        let stream = Self {
            items: rx,
            cancel,
            finished: false,
        };
        (sender, stream)
    }

    /// Asks the backend to stop; the stream then ends with [`FinishReason::Cancelled`].
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// A handle that cancels this stream from elsewhere (another thread or task), for a reader
    /// blocked waiting for its next item.
    pub fn canceller(&self) -> StreamCanceller {
        StreamCanceller(self.cancel.clone())
    }

    /// The next item, waiting on this thread (not from async code). `None` after the end.
    pub fn next_blocking(&mut self) -> Option<Result<StreamItem, BackendError>> {
        if self.finished {
            return None;
        }
        let item = self
            .items
            .blocking_recv()
            .unwrap_or(Err(BackendError::Lost));
        self.finished = !matches!(item, Ok(StreamItem::Token(_)));
        Some(item)
    }

    /// The next item. `None` after the end.
    pub async fn next(&mut self) -> Option<Result<StreamItem, BackendError>> {
        if self.finished {
            return None;
        }
        let item = self.items.recv().await.unwrap_or(Err(BackendError::Lost));
        self.finished = !matches!(item, Ok(StreamItem::Token(_)));
        Some(item)
    }
}

impl Drop for TokenStream {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Several hooks as one: each may mask; the first to force or stop decides the step.
pub(crate) struct Hooks(pub(crate) Vec<Hook>);

impl StepHook for Hooks {
    fn before_step(&mut self, generated: &[u32], logits: &mut [f32]) -> kestrel_engine::StepAction {
        for hook in self.0.iter_mut() {
            let action = hook.before_step(generated, logits);
            if action != kestrel_engine::StepAction::Sample {
                return action;
            }
        }
        kestrel_engine::StepAction::Sample
    }

    fn on_token(&mut self, id: u32, forced: bool) {
        for hook in self.0.iter_mut() {
            hook.on_token(id, forced);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel_engine::StepAction;

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
        let mut logits = vec![0.0; 3];
        let mut hooks = Hooks(vec![Box::new(Forbid(0)), Box::new(Forbid(2))]);
        assert_eq!(hooks.before_step(&[], &mut logits), StepAction::Sample);
        assert_eq!(logits, [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY]);
        let mut hooks = Hooks(vec![Box::new(ForceOne), Box::new(Forbid(1))]);
        assert_eq!(
            hooks.before_step(&[], &mut logits),
            StepAction::Force(vec![1])
        );
        assert_eq!(logits[1], 0.0, "a hook after the decision does not run");
    }
}
