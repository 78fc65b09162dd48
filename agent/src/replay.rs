//! Replaying a task's recorded turns: is the run reproducible, and where does it stop being so?
//!
//! Each [`TurnRecord`] holds what its prompt was rendered from, the prompt's ids, the sampling,
//! and every generated id (which of them a hook forced). A replay renders each request again with
//! the model's template and compares the ids; then it runs the turns through one KV session, as
//! the agent did, so each turn reuses the cache the way the run did and prefill and decode see the
//! same rows: the recorded ids are fed back (sampled ones one at a time through the sampler with
//! every other token masked, forced runs in one pass). For greedy turns it checks, at every
//! sampled position, that the model still prefers the recorded token among those the turn's
//! tool-call constraint allowed (rebuilt from the record), and reports the first one where it
//! does not, with the margin between the two. Two hook forces in a row are replayed as one pass
//! (a record does not tell them apart).

use std::sync::Arc;

use kestrel_engine::{
    GenerateRequest, Model, SamplingParams, Session, StepAction, StepHook, Tokenizer,
};
use kestrel_prompts::constrain::{ConstraintError, GrammarTokenizer, ToolCallHook, ToolChoice};
use kestrel_prompts::template::{ChatTemplate, PromptError};
use serde::Serialize;

use crate::agent::TurnRecord;

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] kestrel_engine::EngineError),
    /// A turn's tool-call constraint could not be rebuilt.
    #[error(transparent)]
    Constraint(#[from] ConstraintError),
    /// A recorded request could not be rendered.
    #[error("turn {turn}: {source}")]
    Prompt {
        /// The turn.
        turn: usize,
        /// Why.
        source: PromptError,
    },
}

/// What a replay found for one turn.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TurnCheck {
    /// The turn.
    pub turn: usize,
    /// The first prompt position where the re-rendered ids differ, if any.
    pub prompt_differs_at: Option<usize>,
    /// Prompt ids reused from the cache: in the run, and now.
    pub reused: (usize, usize),
    /// Whether the turn was greedy, so its sampled tokens are checked.
    pub greedy: bool,
    /// The first sampled token the model no longer prefers (greedy turns only).
    pub divergence: Option<Divergence>,
    /// The first position whose recorded token the tool-call constraint, as rebuilt here, does
    /// not allow (a turn generated under another engine's grammar, or where the constraint
    /// failed); the rest of the turn is followed without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outside_constraint_at: Option<usize>,
}

impl TurnCheck {
    /// Whether the turn replayed exactly.
    pub fn matches(&self) -> bool {
        self.prompt_differs_at.is_none()
            && self.reused.0 == self.reused.1
            && self.divergence.is_none()
            && self.outside_constraint_at.is_none()
    }
}

/// A sampled position where the model now prefers another token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Divergence {
    /// Position in the turn's generated ids.
    pub position: usize,
    /// The recorded token.
    pub recorded: u32,
    /// The token the model prefers now.
    pub preferred: u32,
    /// Logit of the preferred token minus the recorded one's (how far from a tie).
    pub margin: f32,
}

/// Replays `records` (one task's or one chat's turns, in order) on `model`.
pub fn replay(model: Arc<Model>, records: &[TurnRecord]) -> Result<Vec<TurnCheck>, ReplayError> {
    let tokenizer = model.require_tokenizer()?.clone();
    let template =
        ChatTemplate::of(&tokenizer).map_err(|source| ReplayError::Prompt { turn: 0, source })?;
    let grammar = GrammarTokenizer::new(&tokenizer, model.config().vocab_size)?;
    let mut session = Session::new(model);
    records
        .iter()
        .map(|record| replay_turn(&mut session, &template, &grammar, &tokenizer, record))
        .collect()
}

fn replay_turn(
    session: &mut Session,
    template: &ChatTemplate,
    grammar: &GrammarTokenizer,
    tokenizer: &Tokenizer,
    record: &TurnRecord,
) -> Result<TurnCheck, ReplayError> {
    let prompt = template
        .prompt(&record.request, tokenizer)
        .map_err(|source| ReplayError::Prompt {
            turn: record.turn,
            source,
        })?;
    let prompt_differs_at = first_difference(&prompt.ids, &record.prompt_ids);
    let greedy = record.sampling.temperature == 0.0;
    let constraint = ToolCallHook::for_format(
        template.call_format(),
        grammar,
        &record.request.tools,
        record.tool_choice.as_ref().unwrap_or(&ToolChoice::Unset),
        prompt.text.ends_with("<think>\n"),
        record.may_think,
    )?;
    let mut follower = Follower {
        recorded: &record.generated_ids,
        forced: &record.forced,
        check: greedy,
        divergence: None,
        constraint: Some(Box::new(constraint)),
        outside_constraint_at: None,
    };
    let request = GenerateRequest {
        prompt: record.prompt_ids.clone(),
        max_tokens: record.generated_ids.len(),
        sampling: SamplingParams {
            temperature: 0.0,
            ..record.sampling.clone()
        },
        // The recorded ids end where the run ended; none stops it earlier.
        stop_ids: Some(Vec::new()),
    };
    let mut generation = session.generate(request, Some(&mut follower));
    for token in generation.by_ref() {
        token?;
    }
    let reused = generation.timings().reused_tokens;
    drop(generation);
    Ok(TurnCheck {
        turn: record.turn,
        prompt_differs_at,
        reused: (record.reused_tokens, reused),
        greedy,
        divergence: follower.divergence,
        outside_constraint_at: follower.outside_constraint_at,
    })
}

fn first_difference(a: &[u32], b: &[u32]) -> Option<usize> {
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    (common < a.len().max(b.len())).then_some(common)
}

/// Feeds the recorded ids back: forced runs forced, sampled ones through the masked sampler.
struct Follower<'a> {
    recorded: &'a [u32],
    forced: &'a [usize],
    check: bool,
    divergence: Option<Divergence>,
    /// The turn's constraint: its masks apply before the check, its state follows the tokens.
    constraint: Option<Box<dyn StepHook + 'a>>,
    /// Where the recorded tokens left what the constraint allows.
    outside_constraint_at: Option<usize>,
}

impl StepHook for Follower<'_> {
    fn before_step(&mut self, generated: &[u32], logits: &mut [f32]) -> StepAction {
        let at = generated.len();
        let Some(&recorded) = self.recorded.get(at) else {
            return StepAction::Stop;
        };
        if let Some(constraint) = self.constraint.as_mut() {
            // Its own forces were recorded as forced and are replayed below.
            let mut masked = logits.to_vec();
            constraint.before_step(generated, &mut masked);
            let forced_here = self.forced.binary_search(&at).is_ok();
            if forced_here || masked.get(recorded as usize).is_some_and(|l| l.is_finite()) {
                logits.copy_from_slice(&masked);
            } else {
                // The record left the constraint: follow it without (its state is lost).
                self.outside_constraint_at = Some(at);
                self.constraint = None;
            }
        }
        if self.forced.binary_search(&at).is_ok() {
            let run = (at..)
                .take_while(|i| self.forced.binary_search(i).is_ok() && *i < self.recorded.len())
                .count();
            return StepAction::Force(self.recorded[at..at + run].to_vec());
        }
        if self.check
            && self.divergence.is_none()
            && let Some(preferred) = kestrel_engine::argmax(logits)
            && preferred != recorded
        {
            let logit = |id: u32| {
                logits
                    .get(id as usize)
                    .copied()
                    .unwrap_or(f32::NEG_INFINITY)
            };
            self.divergence = Some(Divergence {
                position: at,
                recorded,
                preferred,
                margin: logit(preferred) - logit(recorded),
            });
        }
        for (id, logit) in logits.iter_mut().enumerate() {
            if id as u32 != recorded {
                *logit = f32::NEG_INFINITY;
            }
        }
        StepAction::Sample
    }

    fn on_token(&mut self, id: u32, forced: bool) {
        if let Some(constraint) = self.constraint.as_mut() {
            constraint.on_token(id, forced);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_found_at_the_first_position() {
        assert_eq!(first_difference(&[1, 2, 3], &[1, 2, 3]), None);
        assert_eq!(first_difference(&[1, 2, 3], &[1, 5, 3]), Some(1));
        assert_eq!(first_difference(&[1, 2], &[1, 2, 3]), Some(2));
    }

    #[test]
    fn a_recorded_token_the_constraint_forbids_is_followed_without_it() {
        struct ForbidAll;
        impl StepHook for ForbidAll {
            fn before_step(&mut self, _: &[u32], logits: &mut [f32]) -> StepAction {
                logits.fill(f32::NEG_INFINITY);
                StepAction::Sample
            }
        }
        let recorded = [2, 3];
        let mut f = Follower {
            recorded: &recorded,
            forced: &[],
            check: true,
            divergence: None,
            constraint: Some(Box::new(ForbidAll)),
            outside_constraint_at: None,
        };
        let mut logits = vec![0.0, 0.0, 1.0, 0.0];
        assert_eq!(f.before_step(&[], &mut logits), StepAction::Sample);
        assert_eq!(f.outside_constraint_at, Some(0));
        assert!(f.constraint.is_none());
        assert!(
            logits[2].is_finite(),
            "the recorded token can still be sampled"
        );
    }

    #[test]
    fn the_follower_forces_recorded_runs_and_reports_the_first_divergence() {
        let recorded = [7, 8, 9, 3];
        let mut f = Follower {
            recorded: &recorded,
            forced: &[1, 2],
            check: true,
            divergence: None,
            constraint: None,
            outside_constraint_at: None,
        };
        let mut logits = vec![0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0];
        assert_eq!(f.before_step(&[], &mut logits), StepAction::Sample);
        assert_eq!(
            f.divergence,
            Some(Divergence {
                position: 0,
                recorded: 7,
                preferred: 3,
                margin: 0.5
            })
        );
        assert!(
            logits
                .iter()
                .enumerate()
                .all(|(i, l)| (i == 7) == l.is_finite())
        );
        assert_eq!(
            f.before_step(&[7], &mut [0.0; 10]),
            StepAction::Force(vec![8, 9])
        );
        assert_eq!(
            f.before_step(&[7, 8, 9, 3], &mut [0.0; 10]),
            StepAction::Stop
        );
    }
}
