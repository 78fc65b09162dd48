//! The choosing half of a generation, apart from running the model: given the logits of the next
//! position it asks the hook, samples or takes the hook's forced run, tells which tokens the model
//! must see before the next choice, and decides when the generation ends.
//!
//! The types a caller meets (the request, the hook and its actions, a generated token, why it
//! ended) live here too, since they are what choosing is made of.
//!
//! A [`crate::Session`]'s streaming generation and the batching scheduler both drive one, so a
//! sequence makes the same choices alone or in company; only who runs the forward passes
//! differs.

use std::time::Instant;

use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::sampling::{Sampler, SamplingParams, TokenLogprobs};
use crate::tokenizer::{TextStream, Tokenizer};

/// What a [`StepHook`] decides before a token is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepAction {
    /// Sample from the (possibly masked) logits.
    Sample,
    /// Emit these tokens as they are, without sampling, fed to the model in one pass.
    Force(Vec<u32>),
    /// End the generation now.
    Stop,
}

/// A per-step hook: masking, forcing, stopping.
pub trait StepHook {
    /// Called before each token is chosen, with the tokens generated so far and the logits of the
    /// next position (set entries to `f32::NEG_INFINITY` to forbid them).
    fn before_step(&mut self, generated: &[u32], logits: &mut [f32]) -> StepAction;

    /// Called once per accepted token, sampled or forced.
    fn on_token(&mut self, _id: u32, _forced: bool) {}
}

/// One generated token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GeneratedToken {
    /// The token id.
    pub id: u32,
    /// Text that became complete with this token (empty while a character is incomplete).
    pub text: String,
    /// Whether a hook forced this token rather than the sampler choosing it.
    pub forced: bool,
    /// Its log-probability, when the request asked for them and the model scored this position
    /// (a forced run's tokens after its first were never scored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<TokenLogprobs>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason", content = "token")]
pub enum FinishReason {
    /// A stop token (EOS) was produced; it is the last token.
    Stop(u32),
    /// `max_tokens` were produced.
    MaxTokens,
    /// A hook returned [`StepAction::Stop`].
    Hook,
    /// The context window is full.
    ContextFull,
    /// The caller cancelled it (batching engine).
    Cancelled,
}

/// A generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Most tokens to generate (forced ones included).
    pub max_tokens: usize,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// Tokens that end generation; `None` uses the model's EOS ids, `Some(vec![])` never stops early.
    pub stop_ids: Option<Vec<u32>>,
}

/// Per-sequence choice state.
pub(crate) struct Decoder {
    max_tokens: usize,
    stop_ids: Vec<u32>,
    sampler: Sampler,
    generated: Vec<u32>,
    /// Accepted tokens the model has not seen yet.
    unfed: Vec<u32>,
    text: TextStream,
    finish: Option<FinishReason>,
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
}

impl Decoder {
    /// A decoder for `request`; `eos_ids` stop it when the request names no stop ids.
    pub fn new(request: &GenerateRequest, eos_ids: &[u32]) -> Result<Self> {
        Ok(Self {
            max_tokens: request.max_tokens,
            stop_ids: request.stop_ids.clone().unwrap_or_else(|| eos_ids.to_vec()),
            sampler: Sampler::new(request.sampling.clone())?,
            generated: Vec::new(),
            unfed: Vec::new(),
            text: TextStream::new(),
            finish: None,
            first_token_at: None,
            last_token_at: None,
        })
    }

    /// Why it ended (`None` while it runs).
    pub fn finish(&self) -> Option<FinishReason> {
        self.finish
    }

    /// Ends it (a caller's cancellation).
    pub fn set_finish(&mut self, reason: FinishReason) {
        self.finish.get_or_insert(reason);
    }

    /// Generated ids so far.
    pub fn generated(&self) -> &[u32] {
        &self.generated
    }

    /// When the first and the last token were accepted.
    pub fn token_times(&self) -> (Option<Instant>, Option<Instant>) {
        (self.first_token_at, self.last_token_at)
    }

    /// The accepted tokens the model must run before the next choice (empty when none).
    pub fn take_unfed(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.unfed)
    }

    /// Checks the limits that end a generation before a choice: `max_tokens`, and a context with
    /// no room for what is still to be fed plus one more position. `held` is the number of
    /// positions the cache holds.
    pub fn check_limits(&mut self, held: usize, context: usize) {
        if self.finish.is_some() {
            return;
        }
        if self.generated.len() >= self.max_tokens {
            self.finish = Some(FinishReason::MaxTokens);
        } else if held + self.unfed.len() >= context {
            self.finish = Some(FinishReason::ContextFull);
        }
    }

    /// Chooses after `logits` (the next position's): the hook masks, forces or stops, else the
    /// sampler picks. `held` are the tokens the cache holds (what a repetition penalty reads).
    /// Returns the tokens accepted: one sampled, or a forced run (cut by `max_tokens` or a stop
    /// token), or none when the generation ends.
    pub fn choose(
        &mut self,
        mut logits: Vec<f32>,
        held: &[u32],
        hook: Option<&mut (dyn StepHook + '_)>,
        tokenizer: Option<&Tokenizer>,
        vocab: usize,
    ) -> Result<Vec<GeneratedToken>> {
        let mut hook = hook;
        // The model's own distribution, before a hook masks it or the sampler reshapes it.
        let scored = self
            .sampler
            .params()
            .logprobs
            .map(|top| (logits.clone(), top));
        let score = |id: u32| {
            scored
                .as_ref()
                .map(|(raw, top)| TokenLogprobs::of(raw, id, *top))
        };
        let action = match hook.as_mut() {
            Some(h) => h.before_step(&self.generated, &mut logits),
            None => StepAction::Sample,
        };
        let mut accepted = Vec::new();
        match action {
            StepAction::Stop => self.finish = Some(FinishReason::Hook),
            StepAction::Force(ids) if ids.is_empty() => {
                return Err(EngineError::InvalidRequest(
                    "a hook forced an empty token sequence".into(),
                ));
            }
            StepAction::Force(ids) => {
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(EngineError::InvalidRequest(format!(
                        "a hook forced token {bad}, outside the vocabulary"
                    )));
                }
                for (i, id) in ids.into_iter().enumerate() {
                    if self.generated.len() >= self.max_tokens {
                        self.finish = Some(FinishReason::MaxTokens);
                    }
                    if self.finish.is_some() {
                        break;
                    }
                    let logprobs = if i == 0 { score(id) } else { None };
                    let hook = hook.as_deref_mut();
                    accepted.push(self.accept(id, true, logprobs, hook, tokenizer)?);
                }
            }
            StepAction::Sample => {
                let context: Vec<u32> = if self.sampler.params().repetition_penalty != 1.0 {
                    held.iter().chain(&self.unfed).copied().collect()
                } else {
                    Vec::new()
                };
                let id = self
                    .sampler
                    .sample(&mut logits, &context, &self.generated)?;
                accepted.push(self.accept(id, false, score(id), hook, tokenizer)?);
            }
        }
        Ok(accepted)
    }

    fn accept(
        &mut self,
        id: u32,
        forced: bool,
        logprobs: Option<TokenLogprobs>,
        hook: Option<&mut (dyn StepHook + '_)>,
        tokenizer: Option<&Tokenizer>,
    ) -> Result<GeneratedToken> {
        let now = Instant::now();
        self.first_token_at.get_or_insert(now);
        self.last_token_at = Some(now);
        self.generated.push(id);
        self.unfed.push(id);
        if let Some(h) = hook {
            h.on_token(id, forced);
        }
        // A stop token ends the text; its own spelling (`<|im_end|>`) is not part of the answer.
        if self.stop_ids.contains(&id) {
            self.finish = Some(FinishReason::Stop(id));
            return Ok(GeneratedToken {
                id,
                text: String::new(),
                forced,
                logprobs,
            });
        }
        let text = match tokenizer {
            Some(tok) => self.text.push(tok, id)?,
            None => String::new(),
        };
        Ok(GeneratedToken {
            id,
            text,
            forced,
            logprobs,
        })
    }

    /// Text still held back (an incomplete character at the end).
    pub fn flush_text(&mut self, tokenizer: Option<&Tokenizer>) -> Result<String> {
        match tokenizer {
            Some(tok) => self.text.flush(tok),
            None => Ok(String::new()),
        }
    }
}
