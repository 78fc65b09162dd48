//! The batching engine as a [`Backend`]: every submission, from any task, goes to one engine
//! thread that decodes all running generations in the same forward passes (see
//! `kestrel_engine::scheduler`). N tasks of a batch are N sequences of one batch; prompts that
//! start alike (a batch's system prompt and tool schemas) share the computed prefix, and a task's
//! next turn takes over its previous turn's cache.

use std::sync::Arc;

use kestrel_engine::{Engine, Event, GenerateRequest, Sink, Tokenizer};

use super::{
    Backend, BackendError, Finished, Hooks, StreamItem, StreamSender, Submission, TokenStream,
};

/// A handle to the batching engine.
#[derive(Clone)]
pub struct Batched {
    engine: Engine,
    tokenizer: Arc<Tokenizer>,
}

impl Batched {
    /// A backend over `engine`, whose model must have a tokenizer.
    pub fn new(engine: Engine) -> Result<Self, BackendError> {
        let tokenizer = Arc::new(engine.model().require_tokenizer()?.clone());
        Ok(Self { engine, tokenizer })
    }
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

impl Backend for Batched {
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn context_len(&self) -> usize {
        self.engine.model().context()
    }

    fn vocab_size(&self) -> usize {
        self.engine.model().config().vocab_size
    }

    fn submit(&self, submission: Submission) -> Result<TokenStream, BackendError> {
        let (sender, stream) = TokenStream::channel();
        let request = GenerateRequest {
            prompt: submission.prompt,
            max_tokens: submission.max_tokens,
            sampling: submission.sampling,
            stop_ids: submission.stop_ids,
        };
        self.engine.submit(
            request,
            Some(Box::new(Hooks(submission.hooks))),
            Forward(sender),
        );
        Ok(stream)
    }
}
