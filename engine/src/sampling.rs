//! Choosing the next token from logits.
//!
//! The order follows transformers' logits processors: repetition penalty (over prompt and output),
//! presence and frequency penalties (output only, as OpenAI and vLLM define them), temperature,
//! then the top-k,
//! top-p and min-p filters, then a draw from a seeded generator. Temperature 0 is greedy.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// Sampling parameters. `Default` is Qwen's non-thinking preset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: no limit).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1: no limit).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0: off).
    pub min_p: f32,
    /// Subtracted once from the logit of every token already generated (0: off).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated (0: off).
    pub frequency_penalty: f32,
    /// Divides positive (multiplies negative) logits of tokens seen in prompt or output (1: off).
    pub repetition_penalty: f32,
    /// Seed for reproducible draws; `None` draws a seed from the OS.
    pub seed: Option<u64>,
    /// Report each chosen token's log-probability with this many most likely alternatives
    /// (`None`: no log-probabilities; at most [`MAX_TOP_LOGPROBS`]).
    pub logprobs: Option<usize>,
}

/// The most alternatives [`SamplingParams::logprobs`] may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A chosen token's log-probability under the model's own distribution (the logits before any
/// hook, penalty or temperature, as vLLM reports them), with the most likely alternatives.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprobs {
    /// The chosen token's log-probability.
    pub logprob: f32,
    /// The most likely tokens and their log-probabilities, most likely first.
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprobs {
    /// `id`'s log-probability in `logits`, with the `top` most likely alternatives.
    pub fn of(logits: &[f32], id: u32, top: usize) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
        let log_total = max + sum.ln();
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
        if top > 0 {
            for (i, &l) in logits.iter().enumerate() {
                if best.len() < top || best.last().is_some_and(|&(_, b)| l > b) {
                    let at = best.partition_point(|&(_, b)| b >= l);
                    best.insert(at, (i as u32, l));
                    best.truncate(top);
                }
            }
        }
        let logit = logits
            .get(id as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY);
        Self {
            logprob: logit - log_total,
            top: best.into_iter().map(|(i, l)| (i, l - log_total)).collect(),
        }
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_k: 20,
            top_p: 0.8,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            seed: None,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            ..Self::default()
        }
    }

    /// Rejects values that have no meaning, naming the parameter.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(EngineError::InvalidRequest(m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        if !self.presence_penalty.is_finite() {
            return bad(format!(
                "presence_penalty must be finite, got {}",
                self.presence_penalty
            ));
        }
        if !self.frequency_penalty.is_finite() {
            return bad(format!(
                "frequency_penalty must be finite, got {}",
                self.frequency_penalty
            ));
        }
        if let Some(n) = self.logprobs.filter(|n| *n > MAX_TOP_LOGPROBS) {
            return bad(format!(
                "logprobs may ask for at most {MAX_TOP_LOGPROBS} alternatives, got {n}"
            ));
        }
        Ok(())
    }
}

/// Applies [`SamplingParams`] step after step with its own random generator.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    /// A sampler; validates the parameters.
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Ok(Self { params, rng })
    }

    /// The parameters in use.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks a token. `context` is prompt plus output (for the repetition penalty), `output` the
    /// generated part (for the presence penalty). Masked logits (-inf) are never picked unless
    /// every logit is masked, which is an error.
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32], output: &[u32]) -> Result<u32> {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            for &id in dedup(context).iter() {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.presence_penalty != 0.0 {
            for &id in dedup(output).iter() {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l -= p.presence_penalty;
                }
            }
        }
        if p.frequency_penalty != 0.0 {
            for &id in output {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l -= p.frequency_penalty;
                }
            }
        }
        if logits.iter().all(|l| *l == f32::NEG_INFINITY) || logits.iter().any(|l| l.is_nan()) {
            return Err(EngineError::InvalidRequest(
                "no token can be sampled: every logit is masked or NaN".into(),
            ));
        }
        if p.temperature == 0.0 {
            return argmax(logits)
                .ok_or_else(|| EngineError::InvalidRequest("empty logits".into()));
        }

        // Candidates sorted by logit, best first; filters cut the tail.
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| **l > f32::NEG_INFINITY)
            .map(|(i, l)| (i as u32, *l / p.temperature))
            .collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1));
        if p.top_k > 0 {
            cand.truncate(p.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|(_, l)| (l - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs
                .iter()
                .position(|q| {
                    acc += q;
                    acc >= p.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p;
            let keep = probs.iter().take_while(|q| **q >= floor).count().max(1);
            probs.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut u = self.rng.random::<f32>() * total;
        for (i, q) in probs.iter().enumerate() {
            u -= q;
            if u <= 0.0 {
                return Ok(cand[i].0);
            }
        }
        Ok(cand[probs.len() - 1].0)
    }
}

fn dedup(ids: &[u32]) -> Vec<u32> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// The index of the largest logit (first one on ties).
pub fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_a_log_softmax_with_the_best_alternatives_first() {
        let logits = [1.0f32, 3.0, f32::NEG_INFINITY, 2.0, 3.0];
        let lp = TokenLogprobs::of(&logits, 3, 3);
        let total: f32 = logits.iter().map(|l| l.exp()).sum();
        assert!((lp.logprob - (2.0 - total.ln())).abs() < 1e-6, "{lp:?}");
        let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 4, 3], "ties keep the first; best first");
        let mass: f32 = logits.iter().map(|l| (l - total.ln()).exp()).sum();
        assert!((mass - 1.0).abs() < 1e-6);
        assert_eq!(TokenLogprobs::of(&logits, 2, 0).logprob, f32::NEG_INFINITY);
        assert!(TokenLogprobs::of(&logits, 0, 0).top.is_empty());
    }

    #[test]
    fn argmax_takes_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), Some(1));
        assert_eq!(argmax(&[]), None);
    }

    fn sampler(p: SamplingParams) -> Sampler {
        Sampler::new(p).expect("valid params")
    }

    #[test]
    fn greedy_is_argmax_after_penalties() {
        let mut s = sampler(SamplingParams {
            repetition_penalty: 4.0,
            ..SamplingParams::greedy()
        });
        // Token 0 wins unpenalised; seen in the context, 2.0 / 4 = 0.5 < 1.5.
        assert_eq!(
            s.sample(&mut [2.0, 1.5, 0.1], &[0], &[]).expect("sample"),
            1
        );
        let mut s = sampler(SamplingParams {
            presence_penalty: 1.0,
            ..SamplingParams::greedy()
        });
        assert_eq!(
            s.sample(&mut [2.0, 1.5, 0.1], &[], &[0]).expect("sample"),
            1
        );
        // Frequency counts: token 0 once (2.0 - 0.3 beats 1.5), then twice (1.4 loses).
        let mut s = sampler(SamplingParams {
            frequency_penalty: 0.3,
            ..SamplingParams::greedy()
        });
        assert_eq!(
            s.sample(&mut [2.0, 1.5, 0.1], &[], &[0]).expect("sample"),
            0
        );
        assert_eq!(
            s.sample(&mut [2.0, 1.5, 0.1], &[], &[0, 0])
                .expect("sample"),
            1
        );
    }

    #[test]
    fn top_k_one_is_greedy_and_filters_hold() {
        let mut s = sampler(SamplingParams {
            temperature: 1.0,
            top_k: 1,
            seed: Some(1),
            ..Default::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [0.0, 3.0, 2.9], &[], &[]).expect("sample"), 1);
        }
        // min_p 0.5 keeps only tokens at least half as likely as the best: 0 and 1 here.
        let mut s = sampler(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.5,
            seed: Some(2),
            ..Default::default()
        });
        for _ in 0..50 {
            let id = s.sample(&mut [1.0, 1.0, -5.0], &[], &[]).expect("sample");
            assert!(id < 2);
        }
        // top_p 0.5 over [0.6, 0.3, 0.1] keeps just the first.
        let l = [0.6f32.ln(), 0.3f32.ln(), 0.1f32.ln()];
        let mut s = sampler(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            seed: Some(3),
            ..Default::default()
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&mut l.clone(), &[], &[]).expect("sample"), 0);
        }
    }

    #[test]
    fn same_seed_same_draws_and_masks_respected() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: Some(7),
            ..Default::default()
        };
        let draw = |p: &SamplingParams| {
            let mut s = sampler(p.clone());
            (0..30)
                .map(|_| {
                    s.sample(&mut [0.0, 0.1, f32::NEG_INFINITY, 0.2], &[], &[])
                        .expect("s")
                })
                .collect::<Vec<_>>()
        };
        let a = draw(&p);
        assert_eq!(a, draw(&p));
        assert!(!a.contains(&2));
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 1);
    }

    #[test]
    fn bad_params_and_fully_masked_logits_are_errors() {
        assert!(
            Sampler::new(SamplingParams {
                temperature: -1.0,
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            Sampler::new(SamplingParams {
                top_p: 0.0,
                ..Default::default()
            })
            .is_err()
        );
        let mut s = sampler(SamplingParams::greedy());
        assert!(s.sample(&mut [f32::NEG_INFINITY; 3], &[], &[]).is_err());
    }
}
