//! Continuous batching: one engine thread runs the next tokens of every active sequence in one
//! forward pass.
//!
//! An [`Engine`] is a cheap handle (clone it freely, call it from any thread or from async code)
//! to a thread that owns the model's compute. Each [`Engine::submit`] brings a prompt, sampling,
//! and its own per-token hook; tokens go back through the caller's sink as they are chosen. Every
//! step the scheduler gathers the sequences' pending rows: each decoding sequence's accepted but
//! unseen tokens (one sampled token, or a hook's forced run), then chunks of waiting prompts up
//! to [`EngineOptions::step_tokens`] rows in all (chunked prefill: a long prompt goes in pieces
//! between decode steps instead of stalling them). The projections read the weights once for all
//! rows; attention stays per sequence, each on its own paged cache; each sequence's hook sees its
//! own row of logits and its choices are made by the same [`Decoder`] a lone
//! [`crate::Session`] uses, so a sequence chooses alike alone or in company.
//!
//! Shared prefixes: a new sequence whose prompt starts like one a running sequence is
//! prefilling (the system prompt and tool schemas of a batch) waits for that prefix and copies
//! its pages instead of computing them again; one that starts like a finished sequence's tokens
//! (a conversation's next turn) takes over that sequence's cache, kept until the budget needs it.
//!
//! Admission by memory: a sequence is admitted when its prompt plus `max_tokens` (capped by the
//! context) fits what the admitted ones leave of the KV budget; otherwise it waits, in order.
//! One that could never fit fails at once with the arithmetic. Finished or cancelled sequences
//! keep their caches for a prompt that continues them until the budget needs the room; then
//! their pages go back to the model's pool for the next.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crate::decoder::Decoder;
use crate::error::{EngineError, Result};
use crate::generation::{FinishReason, GenerateRequest, GeneratedToken, StepHook, Timings};
use crate::kv_cache::KvCache;
use crate::model::Model;
use crate::models::qwen::BatchItem;
use crate::plan::PREFILL_CHUNK;

/// How the scheduler shares the engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Most sequences decoding together.
    pub max_sequences: usize,
    /// Most rows (decode rows and prefill chunks together) in one forward pass.
    pub step_tokens: usize,
    /// KV positions the admitted sequences may reserve in all (default: what the model was
    /// loaded for, its context times its sequences).
    pub kv_budget: Option<usize>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_sequences: 8,
            step_tokens: PREFILL_CHUNK,
            kv_budget: None,
        }
    }
}

/// What comes back for a submitted generation.
#[derive(Debug)]
pub enum Event {
    /// A token was chosen (sampled or forced).
    Token(GeneratedToken),
    /// The generation ended; no event follows.
    Finished {
        /// Why.
        reason: FinishReason,
        /// Every generated id.
        generated: Vec<u32>,
        /// Text held back until the end (an incomplete character).
        tail: String,
        /// Where the time went.
        timings: Timings,
    },
    /// The generation failed; no event follows.
    Failed(EngineError),
}

/// A submitted generation: cancel it, or let it run.
#[derive(Debug, Clone)]
pub struct Ticket {
    cancelled: Arc<AtomicBool>,
}

impl Ticket {
    /// Ends the generation at its next step (its sink then gets [`FinishReason::Cancelled`]).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

/// Receives a generation's events on the engine thread.
pub trait Sink: Send {
    /// Takes one event; `false` cancels the generation (the receiver is gone).
    fn send(&mut self, event: Event) -> bool;

    /// Whether the receiver has given up; asked at every step, so a generation still waiting
    /// or prefilling is cancelled too.
    fn cancelled(&self) -> bool {
        false
    }
}

impl<F: FnMut(Event) -> bool + Send> Sink for F {
    fn send(&mut self, event: Event) -> bool {
        self(event)
    }
}

/// A per-token hook that can move to the engine thread.
pub type SendHook = Box<dyn StepHook + Send>;

struct Waiting {
    request: GenerateRequest,
    hook: Option<SendHook>,
    sink: Box<dyn Sink>,
    cancelled: Arc<AtomicBool>,
    submitted: Instant,
}

struct Shared {
    queue: Mutex<VecDeque<Waiting>>,
    wake: Condvar,
    shutdown: AtomicBool,
    /// What the engine thread last reported (read by [`Engine::stats`]).
    stats: Mutex<EngineStats>,
}

/// What the engine is doing, as of its last step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Sequences admitted (prefilling or decoding).
    pub running: usize,
    /// Sequences waiting to be admitted.
    pub waiting: usize,
    /// Rows (tokens of all sequences) in the last forward pass.
    pub batch_rows: usize,
    /// KV positions the running sequences hold.
    pub kv_used: usize,
    /// KV positions reserved: what the running sequences may grow to, plus finished prompts
    /// kept for reuse.
    pub kv_reserved: usize,
    /// KV positions the engine may reserve in all.
    pub kv_budget: usize,
}

/// Stops the engine thread when the last handle goes.
struct Owner {
    shared: Arc<Shared>,
    model: Arc<Model>,
    budget: usize,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
    }
}

/// A handle to the batching engine of one model.
#[derive(Clone)]
pub struct Engine {
    owner: Arc<Owner>,
}

impl Engine {
    /// Starts the engine thread for `model`.
    pub fn start(model: Arc<Model>, options: EngineOptions) -> Result<Self> {
        if options.max_sequences == 0 || options.step_tokens == 0 {
            return Err(EngineError::InvalidRequest(
                "the engine needs at least one sequence and one row per step".into(),
            ));
        }
        let budget = options
            .kv_budget
            .unwrap_or(model.context() * model.sequences());
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            stats: Mutex::new(EngineStats {
                kv_budget: budget,
                ..EngineStats::default()
            }),
        });
        let mut scheduler = Scheduler {
            model: model.clone(),
            shared: shared.clone(),
            options,
            budget,
            active: Vec::new(),
            retained: VecDeque::new(),
            next_id: 0,
        };
        std::thread::Builder::new()
            .name("kestrel-engine".into())
            .spawn(move || scheduler.run())
            .map_err(|e| EngineError::InvalidRequest(format!("cannot start the engine: {e}")))?;
        Ok(Self {
            owner: Arc::new(Owner {
                shared,
                model,
                budget,
            }),
        })
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model> {
        &self.owner.model
    }

    /// KV positions the admitted sequences may reserve in all.
    pub fn kv_budget(&self) -> usize {
        self.owner.budget
    }

    /// What the engine is doing, as of its last step (sequences waiting counted now).
    pub fn stats(&self) -> EngineStats {
        let shared = &self.owner.shared;
        let mut stats = *shared.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.waiting = shared.queue.lock().unwrap_or_else(|e| e.into_inner()).len();
        stats
    }

    /// Queues a generation; its events go to `sink` from the engine thread.
    pub fn submit(
        &self,
        request: GenerateRequest,
        hook: Option<SendHook>,
        sink: impl Sink + 'static,
    ) -> Ticket {
        let cancelled = Arc::new(AtomicBool::new(false));
        let waiting = Waiting {
            request,
            hook,
            sink: Box::new(sink),
            cancelled: cancelled.clone(),
            submitted: Instant::now(),
        };
        let shared = &self.owner.shared;
        shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(waiting);
        shared.wake.notify_all();
        Ticket { cancelled }
    }
}

/// Fewest shared positions worth copying from a running sequence instead of computing.
const MIN_SHARED: usize = 16;

/// A finished sequence's cache, kept for a later prompt that starts the same way.
struct Retained {
    tokens: Vec<u32>,
    cache: KvCache,
}

/// One admitted sequence.
struct Active {
    id: u64,
    /// A running sequence whose first positions this one copies once it has them.
    follows: Option<(u64, usize)>,
    /// Prompt positions that came from another sequence.
    reused: usize,
    waiting: Waiting,
    decoder: Decoder,
    cache: KvCache,
    /// Tokens the cache holds.
    tokens: Vec<u32>,
    /// Prompt tokens fed so far.
    prefilled: usize,
    reserved: usize,
    prefill_done_at: Option<Instant>,
}

struct Scheduler {
    model: Arc<Model>,
    shared: Arc<Shared>,
    options: EngineOptions,
    budget: usize,
    active: Vec<Active>,
    retained: VecDeque<Retained>,
    next_id: u64,
}

/// How many leading tokens two sequences share.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Scheduler {
    fn run(&mut self) {
        loop {
            self.admit();
            self.report(0);
            if self.active.is_empty() {
                let queue = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                if self.shared.shutdown.load(Ordering::Relaxed) && queue.is_empty() {
                    return;
                }
                if queue.is_empty() {
                    drop(
                        self.shared
                            .wake
                            .wait(queue)
                            .unwrap_or_else(|e| e.into_inner()),
                    );
                }
                continue;
            }
            self.step();
        }
    }

    /// Publishes the engine's state for [`Engine::stats`].
    fn report(&self, batch_rows: usize) {
        let mut stats = self.shared.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.running = self.active.len();
        stats.kv_used = self.active.iter().map(|a| a.cache.len()).sum();
        stats.kv_reserved = self.reserved();
        if batch_rows > 0 || self.active.is_empty() {
            stats.batch_rows = batch_rows;
        }
    }

    /// Positions the admitted sequences may grow to, and those kept for reuse.
    fn reserved(&self) -> usize {
        self.active.iter().map(|a| a.reserved).sum::<usize>()
            + self.retained.iter().map(|r| r.cache.len()).sum::<usize>()
    }

    /// Admits waiting sequences in order while they fit.
    fn admit(&mut self) {
        let context = self.model.context();
        loop {
            if self.active.len() >= self.options.max_sequences {
                return;
            }
            let mut queue = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            let Some(front) = queue.front() else { return };
            if front.cancelled.load(Ordering::Relaxed) || front.sink.cancelled() {
                if let Some(mut gone) = queue.pop_front() {
                    drop(queue);
                    gone.sink.send(Event::Finished {
                        reason: FinishReason::Cancelled,
                        generated: Vec::new(),
                        tail: String::new(),
                        timings: Timings::default(),
                    });
                }
                continue;
            }
            let request = &front.request;
            let needs = (request.prompt.len() + request.max_tokens).min(context);
            let refusal = if request.prompt.is_empty() {
                Some(EngineError::InvalidRequest("the prompt is empty".into()))
            } else if request.prompt.len() > context {
                Some(EngineError::ContextOverflow {
                    prompt_tokens: request.prompt.len(),
                    context,
                })
            } else if needs > self.budget {
                Some(EngineError::Context(format!(
                    "a sequence of {needs} positions (prompt {} + max_tokens {}) cannot fit the KV budget of {} positions",
                    request.prompt.len(),
                    request.max_tokens,
                    self.budget
                )))
            } else {
                None
            };
            // Kept caches give way first; then the sequence waits for pages to come back.
            while refusal.is_none()
                && self.reserved() + needs > self.budget
                && self.retained.pop_front().is_some()
            {}
            if refusal.is_none() && self.reserved() + needs > self.budget {
                return;
            }
            let Some(mut waiting) = queue.pop_front() else {
                return;
            };
            drop(queue);
            let decoder = match refusal {
                Some(e) => Err(e),
                None => Decoder::new(&waiting.request, self.model.eos_ids()),
            };
            match decoder {
                Ok(decoder) => {
                    let seq = self.admitted(waiting, decoder, needs);
                    self.active.push(seq);
                }
                Err(e) => {
                    waiting.sink.send(Event::Failed(e));
                }
            }
        }
    }

    /// A sequence starting from the best shared prefix: a kept cache it takes over, or a running
    /// sequence's prompt it will copy from.
    fn admitted(&mut self, waiting: Waiting, decoder: Decoder, reserved: usize) -> Active {
        let prompt = &waiting.request.prompt;
        // The last prompt token always runs: its logits are the first choice's.
        let most = prompt.len() - 1;
        let kept = self
            .retained
            .iter()
            .enumerate()
            .map(|(i, r)| (i, common_prefix(&r.tokens, prompt).min(most)))
            .max_by_key(|&(_, n)| n);
        let running = self
            .active
            .iter()
            .map(|a| {
                (
                    a.id,
                    common_prefix(&a.waiting.request.prompt, prompt).min(most),
                )
            })
            .max_by_key(|&(_, n)| n);
        let id = self.next_id;
        self.next_id += 1;
        let mut seq = Active {
            id,
            follows: None,
            reused: 0,
            waiting,
            decoder,
            cache: self.model.qwen().new_cache(),
            tokens: Vec::new(),
            prefilled: 0,
            reserved,
            prefill_done_at: None,
        };
        let running_len = running.map_or(0, |(_, n)| n);
        match kept {
            // Taking a kept cache over costs nothing, however short the shared part.
            Some((i, n)) if n > 0 && n >= running_len => {
                if let Some(mut kept) = self.retained.remove(i) {
                    kept.cache.truncate(n);
                    seq.cache = kept.cache;
                    seq.tokens = seq.waiting.request.prompt[..n].to_vec();
                    seq.prefilled = n;
                    seq.reused = n;
                }
            }
            _ => {
                if let Some((leader, n)) = running.filter(|&(_, n)| n >= MIN_SHARED) {
                    seq.follows = Some((leader, n));
                }
            }
        }
        seq
    }

    /// Followers whose leader now holds the shared prefix copy it; those whose leader is gone
    /// compute it themselves.
    fn catch_up_followers(&mut self) {
        for i in 0..self.active.len() {
            let Some((leader, n)) = self.active[i].follows else {
                continue;
            };
            let copy = match self.active.iter().find(|a| a.id == leader) {
                None => None,
                Some(l) if l.cache.len() >= n => Some(l.cache.copy_prefix(n)),
                Some(_) => continue, // not there yet
            };
            let seq = &mut self.active[i];
            seq.follows = None;
            if let Some(Ok(cache)) = copy {
                seq.cache = cache;
                seq.tokens = seq.waiting.request.prompt[..n].to_vec();
                seq.prefilled = n;
                seq.reused = n;
            }
        }
    }

    /// One forward pass over every active sequence's pending rows, then each sequence's choice.
    fn step(&mut self) {
        self.catch_up_followers();
        // Rows of each sequence in this pass; `true` when its logits lead to a choice.
        let mut plan: Vec<(usize, Vec<u32>, bool)> = Vec::new();
        let mut rows = 0;
        for (i, seq) in self.active.iter_mut().enumerate() {
            if seq.prefilled == seq.waiting.request.prompt.len() {
                let unfed = seq.decoder.take_unfed();
                rows += unfed.len();
                plan.push((i, unfed, true));
            }
        }
        for (i, seq) in self.active.iter().enumerate() {
            let prompt = &seq.waiting.request.prompt;
            let left = self.options.step_tokens.saturating_sub(rows);
            if seq.follows.is_none()
                && seq.prefilled < prompt.len()
                && (left > 0 || plan.is_empty())
            {
                let n = (prompt.len() - seq.prefilled).min(left.max(1));
                rows += n;
                let chunk = prompt[seq.prefilled..seq.prefilled + n].to_vec();
                plan.push((i, chunk, seq.prefilled + n == prompt.len()));
            }
        }
        if plan.is_empty() {
            return;
        }
        self.report(rows);
        let before: Vec<usize> = plan
            .iter()
            .map(|(i, _, _)| self.active[*i].cache.len())
            .collect();
        let logits = {
            let mut caches: Vec<Option<&mut KvCache>> =
                self.active.iter_mut().map(|a| Some(&mut a.cache)).collect();
            let mut items: Vec<BatchItem> = Vec::with_capacity(plan.len());
            for (i, tokens, _) in &plan {
                if let Some(cache) = caches[*i].take() {
                    items.push(BatchItem { tokens, cache });
                }
            }
            self.model
                .qwen()
                .forward_batch(&mut items)
                .and_then(|l| Ok(l.to_vec2::<f32>()?))
        };
        let logits = match logits {
            Ok(l) => l,
            Err(e) => {
                // Every sequence of the pass fails with the pass; their caches are dropped.
                let message = e.to_string();
                let mut failed: Vec<usize> = plan.iter().map(|(i, _, _)| *i).collect();
                failed.sort_unstable();
                for (i, len) in plan.iter().map(|(i, _, _)| *i).zip(before) {
                    self.active[i].cache.truncate(len);
                }
                for &i in failed.iter().rev() {
                    let mut seq = self.active.remove(i);
                    seq.waiting
                        .sink
                        .send(Event::Failed(EngineError::InvalidRequest(format!(
                            "a forward pass failed: {message}"
                        ))));
                }
                return;
            }
        };
        let context = self.model.context();
        let vocab = self.model.config().vocab_size;
        for ((i, fed, choice), row) in plan.into_iter().zip(logits) {
            let seq = &mut self.active[i];
            seq.tokens.extend_from_slice(&fed);
            if seq.prefilled < seq.waiting.request.prompt.len() {
                seq.prefilled += fed.len();
            }
            if !choice {
                continue;
            }
            seq.prefill_done_at.get_or_insert_with(Instant::now);
            seq.decoder.check_limits(seq.tokens.len(), context);
            if seq.decoder.finish().is_some() {
                continue;
            }
            let accepted = seq.decoder.choose(
                row,
                &seq.tokens,
                seq.waiting
                    .hook
                    .as_deref_mut()
                    .map(|h| h as &mut dyn StepHook),
                self.model.tokenizer(),
                vocab,
            );
            match accepted {
                Ok(tokens) => {
                    for token in tokens {
                        if !seq.waiting.sink.send(Event::Token(token)) {
                            seq.decoder.set_finish(FinishReason::Cancelled);
                            break;
                        }
                    }
                    seq.decoder.check_limits(seq.tokens.len(), context);
                }
                Err(e) => {
                    seq.waiting.sink.send(Event::Failed(e));
                    seq.decoder.set_finish(FinishReason::Cancelled);
                    seq.waiting.sink = Box::new(|_: Event| false);
                }
            }
        }
        // Cancelled by their tickets, or finished: report and release.
        let mut i = 0;
        while i < self.active.len() {
            let seq = &mut self.active[i];
            if seq.waiting.cancelled.load(Ordering::Relaxed) || seq.waiting.sink.cancelled() {
                seq.decoder.set_finish(FinishReason::Cancelled);
            }
            match seq.decoder.finish() {
                Some(reason) => {
                    let mut seq = self.active.remove(i);
                    // A finished sequence's cache is kept for a prompt that continues it, and so
                    // is a cancelled one's: a turn cut short (a stop sequence, one call allowed,
                    // a repeat refused) is usually followed by the conversation's next turn.
                    // Kept caches go back to the pool as soon as an admission needs the room.
                    let held = seq.tokens.len().min(seq.cache.len());
                    seq.tokens.truncate(held);
                    seq.cache.truncate(held);
                    if seq.tokens.is_empty() {
                        seq.cache.clear();
                    } else {
                        let cache =
                            std::mem::replace(&mut seq.cache, self.model.qwen().new_cache());
                        self.retained.push_back(Retained {
                            tokens: std::mem::take(&mut seq.tokens),
                            cache,
                        });
                        if self.retained.len() > self.options.max_sequences {
                            self.retained.pop_front();
                        }
                    }
                    let tail = seq
                        .decoder
                        .flush_text(self.model.tokenizer())
                        .unwrap_or_default();
                    let timings = timings(&seq);
                    seq.waiting.sink.send(Event::Finished {
                        reason,
                        generated: seq.decoder.generated().to_vec(),
                        tail,
                        timings,
                    });
                }
                None => i += 1,
            }
        }
    }
}

fn timings(seq: &Active) -> Timings {
    let prompt = seq.waiting.request.prompt.len();
    let (first, last) = seq.decoder.token_times();
    let start = seq.waiting.submitted;
    Timings {
        prompt_tokens: prompt,
        reused_tokens: seq.reused,
        prefilled_tokens: prompt - seq.reused,
        prefill_secs: seq
            .prefill_done_at
            .map_or(0.0, |t| (t - start).as_secs_f64()),
        time_to_first_token_secs: first.map_or(0.0, |t| (t - start).as_secs_f64()),
        generated_tokens: seq.decoder.generated().len(),
        decode_secs: match (first, last) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => 0.0,
        },
    }
}
