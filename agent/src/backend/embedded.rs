//! The embedded engine as a [`Backend`]: every submission, from any task, goes to one engine
//! thread that decodes all running generations in the same forward passes (see
//! `kestrel_engine::scheduler`). N tasks of a batch are N sequences of one batch; prompts that
//! start alike (a batch's system prompt and tool schemas) share the computed prefix, and a
//! conversation's next turn takes over its previous turn's cache, so it prefills only what is new.
//! A server's sampling request is one more sequence beside the agent's.

use std::sync::Arc;

use kestrel_engine::{
    Engine, EngineOptions, EngineStats, Event, GenerateRequest, Model, Sink, Tokenizer,
};

use super::{Backend, BackendError, Finished, StreamItem, StreamSender, Submission, TokenStream};

/// A handle to the embedded engine; clones share it.
#[derive(Clone)]
pub struct Embedded {
    engine: Engine,
    tokenizer: Arc<Tokenizer>,
    name: Arc<str>,
}

impl Embedded {
    /// A backend over `engine`, whose model must have a tokenizer.
    pub fn new(engine: Engine) -> Result<Self, BackendError> {
        let tokenizer = Arc::new(engine.model().require_tokenizer()?.clone());
        let name = model_name(engine.model()).into();
        Ok(Self {
            engine,
            tokenizer,
            name,
        })
    }

    /// Starts an engine over `model` with `options` and a backend over it.
    pub fn start(model: Arc<Model>, options: EngineOptions) -> Result<Self, BackendError> {
        Self::new(Engine::start(model, options)?)
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// The name a model answers to: its file or folder name, without `.gguf`.
fn model_name(model: &Model) -> String {
    model
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_string())
        .unwrap_or_else(|| "kestrel-local".into())
}

/// Forwards the engine's events into a token stream.
struct Forward(StreamSender);

impl Sink for Forward {
    fn send(&mut self, event: Event) -> bool {
        match event {
            Event::Token(token) => self.0.send(Ok(StreamItem::Token(token))) && !self.0.cancelled(),
            Event::Finished {
                reason,
                generated,
                tail,
                timings,
            } => self.0.send(Ok(StreamItem::Finished(Finished {
                reason: reason.into(),
                generated,
                tail,
                timings,
            }))),
            Event::Failed(e) => self.0.send(Err(e.into())),
        }
    }

    fn cancelled(&self) -> bool {
        self.0.cancelled()
    }
}

impl Backend for Embedded {
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn model_name(&self) -> &str {
        &self.name
    }

    fn context_len(&self) -> usize {
        self.engine.model().context()
    }

    fn vocab_size(&self) -> usize {
        self.engine.model().config().vocab_size
    }

    fn stats(&self) -> Option<EngineStats> {
        Some(self.engine.stats())
    }

    fn submit(&self, submission: Submission) -> Result<TokenStream, BackendError> {
        let (sender, stream) = TokenStream::channel();
        let (parts, hooks) = submission.all_hooks();
        let request = GenerateRequest {
            prompt: parts.prompt,
            max_tokens: parts.max_tokens,
            sampling: parts.sampling,
            stop_ids: parts.stop_ids,
        };
        self.engine
            .submit(request, Some(Box::new(hooks)), Forward(sender));
        Ok(stream)
    }
}
