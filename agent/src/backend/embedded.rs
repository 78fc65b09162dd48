//! The embedded engine as a [`Backend`]: a model loaded in this process and one KV session.
//!
//! Each submission runs on a thread of its own (generation owns a CPU; the caller may be async
//! code) and holds the session while it runs, so an `Embedded` serves one generation at a time;
//! its clones share the session and so its cache: consecutive turns of a conversation prefill
//! only what is new. Separate `Embedded`s over one model have separate caches.

use std::sync::{Arc, Mutex};

use kestrel_engine::{GenerateRequest, Model, Session, Tokenizer};

use super::{
    Backend, BackendError, FinishReason, Finished, Hooks, StreamItem, StreamSender, Submission,
    TokenStream,
};

/// A loaded model with one KV session.
#[derive(Clone)]
pub struct Embedded {
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    session: Arc<Mutex<Session>>,
}

impl Embedded {
    /// A backend over `model`, which must have a tokenizer.
    pub fn new(model: Arc<Model>) -> Result<Self, BackendError> {
        let tokenizer = Arc::new(model.require_tokenizer()?.clone());
        let session = Arc::new(Mutex::new(Session::new(model.clone())));
        Ok(Self {
            model,
            tokenizer,
            session,
        })
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }
}

impl Backend for Embedded {
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn context_len(&self) -> usize {
        self.model.context()
    }

    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }

    fn submit(&self, submission: Submission) -> Result<TokenStream, BackendError> {
        let (sender, stream) = TokenStream::channel();
        let session = self.session.clone();
        std::thread::Builder::new()
            .name("kestrel-generate".into())
            .spawn(move || {
                // A generation that panicked leaves the cache as it was after its last whole
                // step: still a consistent prefix.
                let mut session = session.lock().unwrap_or_else(|e| e.into_inner());
                generate(&mut session, submission, &sender);
            })
            .map_err(BackendError::Spawn)?;
        Ok(stream)
    }
}

fn generate(session: &mut Session, submission: Submission, sender: &StreamSender) {
    let request = GenerateRequest {
        prompt: submission.prompt,
        max_tokens: submission.max_tokens,
        sampling: submission.sampling,
        stop_ids: submission.stop_ids,
    };
    let mut hooks = Hooks(submission.hooks);
    let mut generation = session.generate(request, Some(&mut hooks));
    let mut cancelled = false;
    for token in generation.by_ref() {
        let sent = match token {
            Ok(token) => sender.send(Ok(StreamItem::Token(token))),
            Err(e) => {
                sender.send(Err(e.into()));
                return;
            }
        };
        if !sent || sender.cancelled() {
            cancelled = true;
            break;
        }
    }
    let tail = match generation.flush_text() {
        Ok(tail) => tail,
        Err(e) => {
            sender.send(Err(e.into()));
            return;
        }
    };
    let reason = match generation.finish_reason() {
        _ if cancelled => FinishReason::Cancelled,
        Some(reason) => reason.into(),
        None => FinishReason::Cancelled,
    };
    sender.send(Ok(StreamItem::Finished(Finished {
        reason,
        generated: generation.generated().to_vec(),
        tail,
        timings: generation.timings(),
    })));
}
