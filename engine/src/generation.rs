//! Streaming generation over a session that owns a KV cache and knows which tokens it holds.
//!
//! A [`Session`] pairs a model with one [`KvCache`] and the token sequence that cache holds. A new
//! prompt is compared with that sequence: the longest common prefix is kept, the cache is truncated
//! to it, and only the remaining tokens are prefilled. [`Generation`] is an iterator of tokens with
//! UTF-8-safe text deltas. Before each choice a [`StepHook`] may mask logits, force a run of tokens
//! (fed to the model in one pass) or stop; constrained decoding and the thinking budget are hooks.
//!
//! Tokens are fed lazily: a sampled token enters the cache only when the next one is needed, so
//! a generation that stops never pays for a forward pass whose logits nobody reads.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::decoder::Decoder;
pub use crate::decoder::{FinishReason, GenerateRequest, GeneratedToken, StepAction, StepHook};
use crate::error::{EngineError, Result};
use crate::kv_cache::KvCache;
use crate::model::Model;
use crate::models::qwen::LogitsFor;
use crate::plan::PREFILL_CHUNK;

/// Time spent and tokens processed by one generation.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the cache.
    pub reused_tokens: usize,
    /// Prompt tokens run through the model.
    pub prefilled_tokens: usize,
    /// Seconds spent prefilling.
    pub prefill_secs: f64,
    /// Seconds from the call to the first generated token.
    pub time_to_first_token_secs: f64,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Seconds from the first generated token to the last.
    pub decode_secs: f64,
}

impl Timings {
    /// Prefill throughput.
    pub fn prompt_tokens_per_s(&self) -> f64 {
        rate(self.prefilled_tokens, self.prefill_secs)
    }

    /// Decode throughput: tokens after the first, over the time after the first.
    pub fn decode_tokens_per_s(&self) -> f64 {
        rate(self.generated_tokens.saturating_sub(1), self.decode_secs)
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// A model plus a KV cache and the token sequence it holds.
#[derive(Debug)]
pub struct Session {
    model: Arc<Model>,
    cache: KvCache,
    tokens: Vec<u32>,
}

impl Session {
    /// A session with an empty cache.
    pub fn new(model: Arc<Model>) -> Self {
        let cache = model.qwen().new_cache();
        Self {
            model,
            cache,
            tokens: Vec::new(),
        }
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The tokens whose keys and values the cache holds, in order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The cache.
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// Drops cached positions from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.tokens.truncate(len);
        self.cache.truncate(len);
    }

    /// Runs `tokens` after what the cache holds and returns the logits of the last one. Long
    /// runs go in chunks of [`PREFILL_CHUNK`] positions, so activations stay bounded.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut last = None;
        for chunk in tokens.chunks(PREFILL_CHUNK) {
            let logits = self
                .model
                .qwen()
                .forward(chunk, &mut self.cache, LogitsFor::Last);
            match logits {
                Ok(l) => {
                    self.tokens.extend_from_slice(chunk);
                    last = Some(l);
                }
                Err(e) => {
                    // A failed pass may have written some layers: rewind to the known state.
                    self.cache.truncate(self.tokens.len());
                    return Err(e);
                }
            }
        }
        match last {
            Some(l) => Ok(l.to_vec1()?),
            None => Err(EngineError::InvalidRequest("no tokens to run".into())),
        }
    }

    /// Makes the cache hold exactly `prompt`, keeping the longest prefix it shares with what is
    /// cached, and returns the last position's logits and how many tokens were reused.
    pub fn prefill(&mut self, prompt: &[u32]) -> Result<(Vec<f32>, usize)> {
        if prompt.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        let context = self.model.context();
        if prompt.len() > context {
            return Err(EngineError::ContextOverflow {
                prompt_tokens: prompt.len(),
                context,
            });
        }
        let common = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        // The last prompt token is always run: its logits are the ones generation needs.
        let reused = common.min(prompt.len() - 1);
        self.truncate(reused);
        let logits = self.feed(&prompt[reused..])?;
        Ok((logits, reused))
    }

    /// Starts a streaming generation. Nothing runs until the iterator is polled.
    pub fn generate<'a>(
        &'a mut self,
        request: GenerateRequest,
        hook: Option<&'a mut dyn StepHook>,
    ) -> Generation<'a> {
        Generation {
            session: self,
            request,
            hook,
            decoder: None,
            logits: None,
            ready: VecDeque::new(),
            started: None,
            timings: Timings::default(),
            failed: false,
        }
    }
}

/// A running generation; iterate to get tokens, then read [`Generation::finish_reason`] and
/// [`Generation::timings`].
pub struct Generation<'a> {
    session: &'a mut Session,
    request: GenerateRequest,
    hook: Option<&'a mut dyn StepHook>,
    decoder: Option<Decoder>,
    logits: Option<Vec<f32>>,
    /// Accepted tokens not yet handed out (the rest of a forced run).
    ready: VecDeque<GeneratedToken>,
    started: Option<Instant>,
    timings: Timings,
    failed: bool,
}

impl Generation<'_> {
    /// Why the generation ended (`None` while it runs).
    pub fn finish_reason(&self) -> Option<FinishReason> {
        match &self.decoder {
            Some(d) if self.ready.is_empty() => d.finish(),
            _ => None,
        }
    }

    /// Timings so far.
    pub fn timings(&self) -> Timings {
        let mut t = self.timings.clone();
        if let Some(d) = &self.decoder {
            t.generated_tokens = d.generated().len();
            if let (Some(a), Some(b)) = d.token_times() {
                t.decode_secs = (b - a).as_secs_f64();
            }
            if let (Some(first), Some(s)) = (d.token_times().0, self.started) {
                t.time_to_first_token_secs = (first - s).as_secs_f64();
            }
        }
        t
    }

    /// Generated ids so far.
    pub fn generated(&self) -> &[u32] {
        self.decoder.as_ref().map_or(&[], |d| d.generated())
    }

    /// Text still held back at the end (call after the iterator is done).
    pub fn flush_text(&mut self) -> Result<String> {
        let tokenizer = self.session.model.tokenizer();
        match &mut self.decoder {
            Some(d) => d.flush_text(tokenizer),
            None => Ok(String::new()),
        }
    }

    fn start(&mut self) -> Result<()> {
        let started = Instant::now();
        self.started = Some(started);
        self.decoder = Some(Decoder::new(&self.request, self.session.model.eos_ids())?);
        let (logits, reused) = self.session.prefill(&self.request.prompt)?;
        self.timings.prompt_tokens = self.request.prompt.len();
        self.timings.reused_tokens = reused;
        self.timings.prefilled_tokens = self.request.prompt.len() - reused;
        self.timings.prefill_secs = started.elapsed().as_secs_f64();
        self.logits = Some(logits);
        Ok(())
    }

    fn step(&mut self) -> Result<Option<GeneratedToken>> {
        if self.decoder.is_none() {
            self.start()?;
        }
        if let Some(token) = self.ready.pop_front() {
            return Ok(Some(token));
        }
        let session = &mut *self.session;
        let decoder = self
            .decoder
            .as_mut()
            .ok_or_else(|| EngineError::InvalidRequest("generation has no decoder".into()))?;
        loop {
            decoder.check_limits(session.tokens.len(), session.model.context());
            if decoder.finish().is_some() {
                return Ok(None);
            }
            // Accepted tokens enter the cache only now that the next choice needs them.
            let unfed = decoder.take_unfed();
            if !unfed.is_empty() {
                self.logits = Some(session.feed(&unfed)?);
            }
            let logits = self
                .logits
                .take()
                .ok_or_else(|| EngineError::InvalidRequest("generation has no logits".into()))?;
            let accepted = decoder.choose(
                logits,
                &session.tokens,
                self.hook.as_deref_mut(),
                session.model.tokenizer(),
                session.model.config().vocab_size,
            )?;
            self.ready.extend(accepted);
            if let Some(token) = self.ready.pop_front() {
                return Ok(Some(token));
            }
        }
    }
}

impl Iterator for Generation<'_> {
    type Item = Result<GeneratedToken>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(Some(t)) => Some(Ok(t)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
