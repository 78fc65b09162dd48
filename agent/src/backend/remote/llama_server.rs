//! llama.cpp's `llama-server` on the wire: its native `/completion` endpoint, which takes the
//! prompt as token ids and streams each generated token's id (`return_tokens`), its `/props`
//! (context size, model) and its `/tokenize` (to check that it tokenizes as Kestrel does).
//!
//! Only the shapes of the requests and answers live here; what to send when is the driver's.

use kestrel_engine::{SamplingParams, TokenLogprobs};
use kestrel_prompts::gbnf::GbnfConstraint;
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// What `/props` says about the server.
#[derive(Debug, Clone)]
pub(crate) struct Props {
    /// Positions per slot.
    pub(crate) n_ctx: usize,
    /// Slots (sequences it decodes at once).
    pub(crate) slots: usize,
    /// The model file it serves.
    pub(crate) model: String,
    /// Its build, when it says.
    pub(crate) build: Option<String>,
}

impl Props {
    /// Reads `/props`; `None` when the answer is not llama-server's.
    pub(crate) fn parse(body: &Value) -> Option<Self> {
        let settings = body.get("default_generation_settings")?;
        let n_ctx = settings
            .get("n_ctx")
            .or_else(|| body.get("n_ctx"))
            .and_then(Value::as_u64)?;
        Some(Self {
            n_ctx: n_ctx as usize,
            slots: body.get("total_slots").and_then(Value::as_u64).unwrap_or(1) as usize,
            model: body
                .get("model_path")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            build: body
                .get("build_info")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }
}

/// One segment's request: generate up to `n_predict` tokens after `prompt`.
pub(crate) struct SegmentRequest<'a> {
    pub(crate) prompt: &'a [u32],
    pub(crate) n_predict: usize,
    pub(crate) sampling: &'a SamplingParams,
    /// The tool-call grammar to apply, if any.
    pub(crate) constraint: Option<&'a GbnfConstraint>,
    /// The `<tool_call>` token (for `NoCalls`).
    pub(crate) call_open: Option<u32>,
    /// `--engine-model`, for servers that serve several.
    pub(crate) model: Option<&'a str>,
}

impl SegmentRequest<'_> {
    /// The request body.
    pub(crate) fn body(&self) -> Value {
        let s = self.sampling;
        let mut body = json!({
            "prompt": self.prompt,
            "n_predict": self.n_predict,
            "stream": true,
            "return_tokens": true,
            "cache_prompt": true,
            "temperature": s.temperature,
            "top_k": s.top_k,
            "top_p": s.top_p,
            "min_p": s.min_p,
            "typical_p": 1.0,
            "repeat_penalty": s.repetition_penalty,
            "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty,
            // Kestrel's penalties see the whole sequence, not a window.
            "repeat_last_n": self.prompt.len() + self.n_predict,
            // The chosen token's log-probability comes with the alternatives: ask for one at
            // least when any is wanted.
            "n_probs": s.logprobs.map_or(0, |n| n.max(1)),
            "post_sampling_probs": false,
        });
        let map = body.as_object_mut().expect("a JSON object");
        if let Some(seed) = s.seed {
            // llama.cpp's seeds are 32-bit, and u32::MAX means "draw one".
            map.insert("seed".into(), json!((seed % u64::from(u32::MAX)) as u32));
        }
        if let Some(model) = self.model {
            map.insert("model".into(), json!(model));
        }
        match self.constraint {
            None => {}
            Some(GbnfConstraint::NoCalls) => {
                if let Some(id) = self.call_open {
                    map.insert("logit_bias".into(), json!([[id, false]]));
                }
            }
            Some(GbnfConstraint::Lazy(grammar)) => {
                // Type 3 is a pattern over the whole output so far, applied from its group on.
                lazy_grammar(
                    map,
                    grammar,
                    json!([
                        {"type": 1, "value": "<tool_call>"},
                        {"type": 3, "value": kestrel_prompts::gbnf::UNTAGGED_TRIGGER},
                    ]),
                );
            }
            Some(GbnfConstraint::LazyAtTag(grammar)) => {
                lazy_grammar(map, grammar, json!([{"type": 1, "value": "<tool_call>"}]));
            }
            Some(GbnfConstraint::AfterThinking { lazy, .. }) => {
                lazy_grammar(map, lazy, json!([{"type": 1, "value": "</think>"}]));
            }
            Some(GbnfConstraint::Whole(grammar)) => {
                map.insert("grammar".into(), json!(grammar));
            }
        }
        body
    }
}

/// A grammar that applies from the first of `triggers` on. Type 1 is a trigger word; a word
/// that is one token must be a preserved token, and the server then triggers on the token
/// itself.
fn lazy_grammar(map: &mut Map<String, Value>, grammar: &str, triggers: Value) {
    let preserved: Vec<&str> = triggers
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["type"] == 1)
        .filter_map(|t| t["value"].as_str())
        .collect();
    map.insert("preserved_tokens".into(), json!(preserved));
    map.insert("grammar".into(), json!(grammar));
    map.insert("grammar_lazy".into(), json!(true));
    map.insert("grammar_triggers".into(), triggers);
}

/// One streamed event of `/completion`.
#[derive(Debug, Deserialize)]
pub(crate) struct Chunk {
    /// Token ids generated since the previous event.
    #[serde(default)]
    pub(crate) tokens: Vec<u32>,
    /// The last event.
    #[serde(default)]
    pub(crate) stop: bool,
    /// Why it stopped: `eos`, `limit`, `word` or `none`.
    #[serde(default)]
    pub(crate) stop_type: Option<String>,
    /// Tokens and times of the segment (last event).
    #[serde(default)]
    pub(crate) timings: Option<ChunkTimings>,
    /// Each token's log-probability under the model's distribution, with the most likely
    /// alternatives (when `n_probs` asked).
    #[serde(default)]
    pub(crate) completion_probabilities: Vec<TokenProbability>,
}

/// One token's entry in `completion_probabilities`.
#[derive(Debug, Deserialize)]
pub(crate) struct TokenProbability {
    /// Its log-probability.
    pub(crate) logprob: f32,
    /// The most likely tokens, most likely first.
    #[serde(default)]
    pub(crate) top_logprobs: Vec<Alternative>,
}

/// An alternative in `top_logprobs`.
#[derive(Debug, Deserialize)]
pub(crate) struct Alternative {
    /// Token id.
    pub(crate) id: u32,
    /// Its log-probability.
    pub(crate) logprob: f32,
}

impl TokenProbability {
    /// Kestrel's form, with at most `top` alternatives.
    pub(crate) fn to_logprobs(&self, top: usize) -> TokenLogprobs {
        TokenLogprobs {
            logprob: self.logprob,
            top: self
                .top_logprobs
                .iter()
                .take(top)
                .map(|a| (a.id, a.logprob))
                .collect(),
        }
    }
}

/// llama-server's `timings`.
#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct ChunkTimings {
    /// Prompt tokens taken from its cache.
    #[serde(default)]
    pub(crate) cache_n: usize,
    /// Prompt tokens it computed.
    #[serde(default)]
    pub(crate) prompt_n: usize,
    /// Milliseconds computing them.
    #[serde(default)]
    pub(crate) prompt_ms: f64,
}

/// The message of an error body (`{"error": {"message": ...}}`), or the body itself.
pub(crate) fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            e.get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| e.as_str().map(str::to_string))
        })
        .unwrap_or_else(|| body.trim().chars().take(500).collect())
}

/// Splits a server-sent-events buffer into complete `data:` payloads, leaving a partial event in
/// `buffer`. Other fields (comments, `event:`) are skipped.
pub(crate) fn take_events(buffer: &mut String) -> Vec<String> {
    let mut events = Vec::new();
    while let Some(end) = buffer.find("\n\n") {
        let event: String = buffer.drain(..end + 2).collect();
        let data: Vec<&str> = event
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(str::trim_start)
            .collect();
        if !data.is_empty() {
            events.push(data.join("\n"));
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_at_blank_lines_and_partial_ones_wait() {
        let mut buffer = "data: {\"a\":1}\n\n: comment\n\ndata: {\"b\"".to_string();
        assert_eq!(take_events(&mut buffer), ["{\"a\":1}"]);
        assert_eq!(buffer, "data: {\"b\"");
        buffer.push_str(":2}\n\n");
        assert_eq!(take_events(&mut buffer), ["{\"b\":2}"]);
        assert!(buffer.is_empty());
    }

    #[test]
    fn the_body_carries_kestrels_sampling_and_the_lazy_grammar() {
        let sampling = SamplingParams {
            temperature: 0.0,
            seed: Some(7),
            ..SamplingParams::default()
        };
        let constraint = GbnfConstraint::Lazy("root ::= \"x\"".into());
        let body = SegmentRequest {
            prompt: &[1, 2],
            n_predict: 5,
            sampling: &sampling,
            constraint: Some(&constraint),
            call_open: Some(9),
            model: None,
        }
        .body();
        assert_eq!(body["prompt"], json!([1, 2]));
        assert_eq!(body["seed"], json!(7));
        assert_eq!(body["min_p"], json!(0.0));
        assert_eq!(body["grammar_lazy"], json!(true));
        assert_eq!(body["grammar_triggers"][0]["value"], json!("<tool_call>"));
        let none = GbnfConstraint::NoCalls;
        let body = SegmentRequest {
            constraint: Some(&none),
            prompt: &[1],
            n_predict: 1,
            sampling: &sampling,
            call_open: Some(9),
            model: Some("m"),
        }
        .body();
        assert_eq!(body["logit_bias"], json!([[9, false]]));
        assert_eq!(body["model"], json!("m"));
        assert!(body.get("grammar").is_none());
    }

    #[test]
    fn error_bodies_give_their_message() {
        assert_eq!(
            error_message(r#"{"error":{"code":400,"message":"bad grammar"}}"#),
            "bad grammar"
        );
        assert_eq!(error_message("plain text\n"), "plain text");
    }
}
