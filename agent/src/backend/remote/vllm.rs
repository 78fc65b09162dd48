//! vLLM on the wire in token mode: its `/v1/completions` takes the prompt as token ids and, with
//! `return_token_ids`, streams each generated token's id; its `/tokenize` checks that it tokenizes
//! as Kestrel does; its structured outputs take the tool-call constraint as a structural tag
//! (`kestrel_prompts::structural_tag`). The answers are read into llama-server's [`Chunk`]
//! shape, so the driver reads one kind of event.

use kestrel_engine::{SamplingParams, Tokenizer};
use serde_json::{Value, json};

use super::llama_server::{Alternative, Chunk, ChunkTimings, Props, TokenProbability};
use super::{PROBE, RemoteError, TokenDialect, check_tokens, get_json, post_json};

/// One segment's request body.
pub(crate) struct VllmSegment<'a> {
    pub(crate) model: &'a str,
    pub(crate) prompt: &'a [u32],
    pub(crate) max_tokens: usize,
    pub(crate) sampling: &'a SamplingParams,
    /// Ids that end the generation (returned with it).
    pub(crate) stop_ids: &'a [u32],
    /// The tool-call constraint, when calls are constrained.
    pub(crate) structural_tag: Option<&'a Value>,
    /// `<tool_call>`, to ban when no call may be made.
    pub(crate) ban: Option<u32>,
}

impl VllmSegment<'_> {
    pub(crate) fn body(&self) -> Value {
        let s = self.sampling;
        let mut body = json!({
            "model": self.model,
            "prompt": self.prompt,
            "max_tokens": self.max_tokens,
            "stream": true,
            "stream_options": {"include_usage": true},
            "return_token_ids": true,
            "skip_special_tokens": false,
            "temperature": s.temperature,
            "top_p": s.top_p,
            // vLLM's "no top-k" is -1.
            "top_k": if s.top_k == 0 { -1 } else { s.top_k as i64 },
            "min_p": s.min_p,
            "repetition_penalty": s.repetition_penalty,
            "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty,
            "stop_token_ids": self.stop_ids,
        });
        let map = body.as_object_mut().expect("a JSON object");
        if let Some(seed) = s.seed {
            map.insert("seed".into(), json!(seed % (1 << 53)));
        }
        if let Some(tag) = self.structural_tag {
            map.insert(
                "structured_outputs".into(),
                json!({"structural_tag": tag.to_string()}),
            );
        }
        if let Some(top) = s.logprobs {
            // Alternatives named by id ("token_id:N"), as Kestrel's tokenizer reads them.
            map.insert("logprobs".into(), json!(top.max(1)));
            map.insert("return_tokens_as_token_ids".into(), json!(true));
        }
        if let Some(id) = self.ban {
            map.insert("logit_bias".into(), json!({ id.to_string(): -100 }));
        }
        body
    }
}

/// Reads one streamed event into a [`Chunk`]. The reply's end comes in two events: the last
/// tokens with `finish_reason` (kept in `finish`), then the usage, which ends the chunk stream.
pub(crate) fn chunk(event: &Value, finish: &mut Option<String>) -> Chunk {
    let mut chunk = Chunk {
        tokens: Vec::new(),
        stop: false,
        stop_type: None,
        timings: None,
        completion_probabilities: Vec::new(),
    };
    if let Some(choice) = event["choices"].get(0) {
        chunk.tokens = choice["token_ids"]
            .as_array()
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| id.as_u64().map(|id| id as u32))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(reason) = choice["finish_reason"].as_str() {
            *finish = Some(reason.to_string());
        }
        chunk.completion_probabilities = probabilities(&choice["logprobs"]);
    }
    let usage = &event["usage"];
    if usage.is_object() {
        let prompt = usage["prompt_tokens"].as_u64().unwrap_or(0) as usize;
        let cached = usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0) as usize;
        chunk.stop = true;
        chunk.stop_type = Some(match finish.as_deref() {
            Some("stop") => "eos".into(),
            _ => "limit".into(),
        });
        chunk.timings = Some(ChunkTimings {
            cache_n: cached,
            prompt_n: prompt.saturating_sub(cached),
            prompt_ms: 0.0,
        });
    }
    chunk
}

/// The entry of `/v1/models` to use when the server is vLLM (`--engine-model`'s, or the first).
pub(super) fn served_model<'a>(models: &'a Value, wanted: Option<&str>) -> Option<&'a Value> {
    let entries = models["data"].as_array()?;
    let entry = match wanted {
        Some(name) => entries.iter().find(|m| m["id"].as_str() == Some(name))?,
        None => entries.first()?,
    };
    (entry["owned_by"].as_str() == Some("vllm")).then_some(entry)
}

/// vLLM: what it serves (its model id, context and version) and whether it tokenizes as Kestrel.
pub(super) async fn probe(
    client: &reqwest::Client,
    root: &str,
    tokenizer: &Tokenizer,
    entry: &Value,
) -> Result<(Props, usize, TokenDialect), RemoteError> {
    let build = get_json(client, &format!("{root}/version"))
        .await
        .ok()
        .and_then(|v| v["version"].as_str().map(|v| format!("vLLM {v}")));
    let props = Props {
        n_ctx: entry["max_model_len"].as_u64().unwrap_or(32_768) as usize,
        slots: 0,
        model: entry["id"].as_str().unwrap_or_default().to_string(),
        build,
    };
    let answer = post_json(
        client,
        &format!("{root}/tokenize"),
        &json!({"model": props.model, "prompt": PROBE, "add_special_tokens": false}),
    )
    .await?;
    check_tokens(root, &props, tokenizer, &answer)?;
    let vocab = tokenizer.inner().get_vocab_size(true);
    Ok((props, vocab, TokenDialect::Vllm))
}

/// vLLM: its completions return token ids (`return_token_ids`, vLLM 0.10.2 and later), and
/// whether it takes a structural tag (its structured outputs).
pub(super) async fn probe_generation(
    client: &reqwest::Client,
    root: &str,
    prompt: &[u32],
    model: &str,
) -> Result<bool, RemoteError> {
    let url = format!("{root}/v1/completions");
    let mut body = json!({"model": model, "prompt": prompt, "max_tokens": 1,
                          "temperature": 0, "return_token_ids": true});
    let plain = post_json(client, &url, &body).await?;
    if plain["choices"][0]["token_ids"]
        .as_array()
        .is_none_or(|t| t.is_empty())
    {
        return Err(RemoteError::Unsupported {
            url: root.to_string(),
            found: "its /v1/completions does not return token ids (`return_token_ids`); vLLM 0.10.2 or newer is needed".into(),
        });
    }
    let tag = json!({"type": "structural_tag", "format": {
        "type": "triggered_tags", "triggers": ["<tool_call>"], "at_least_one": false,
        "stop_after_first": false,
        "tags": [{"begin": "<tool_call>\n", "end": "\n</tool_call>",
                  "content": {"type": "json_schema", "json_schema": {"type": "object"}}}]}});
    body["structured_outputs"] = json!({"structural_tag": tag.to_string()});
    match post_json(client, &url, &body).await {
        Ok(_) => Ok(true),
        Err(e) => {
            tracing::warn!(
                "engine {root} does not take structural tags ({e}): tool calls go unconstrained, validated after the fact"
            );
            Ok(false)
        }
    }
}

/// A chunk's log-probabilities (OpenAI's completions form, tokens as `token_id:N`): the chosen
/// token's, and the alternatives most likely first.
fn probabilities(logprobs: &Value) -> Vec<TokenProbability> {
    let chosen = logprobs["token_logprobs"].as_array();
    let tops = logprobs["top_logprobs"].as_array();
    let (Some(chosen), Some(tops)) = (chosen, tops) else {
        return Vec::new();
    };
    chosen
        .iter()
        .zip(tops)
        .map(|(logprob, top)| {
            let mut top_logprobs: Vec<Alternative> = top
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(token, logprob)| {
                    Some(Alternative {
                        id: token.strip_prefix("token_id:")?.parse().ok()?,
                        logprob: logprob.as_f64()? as f32,
                    })
                })
                .collect();
            top_logprobs.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
            TokenProbability {
                logprob: logprob.as_f64().unwrap_or(f64::NEG_INFINITY) as f32,
                top_logprobs,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_the_end_come_from_vllms_events() {
        let mut finish = None;
        let first = chunk(
            &json!({"choices": [{"token_ids": [5, 6], "finish_reason": null}]}),
            &mut finish,
        );
        assert_eq!(first.tokens, [5, 6]);
        assert!(!first.stop);
        let last = chunk(
            &json!({"choices": [{"token_ids": [7], "finish_reason": "stop", "stop_reason": 7}]}),
            &mut finish,
        );
        assert_eq!((last.tokens.as_slice(), last.stop), (&[7][..], false));
        let usage = chunk(
            &json!({"choices": [], "usage": {"prompt_tokens": 30, "prompt_tokens_details": {"cached_tokens": 16}}}),
            &mut finish,
        );
        assert!(usage.stop);
        assert_eq!(usage.stop_type.as_deref(), Some("eos"));
        let timings = usage.timings.expect("timings");
        assert_eq!((timings.cache_n, timings.prompt_n), (16, 14));
    }

    #[test]
    fn log_probabilities_are_read_by_token_id() {
        let mut finish = None;
        let event = json!({"choices": [{"token_ids": [5], "logprobs": {
            "tokens": ["token_id:5"], "token_logprobs": [-0.25],
            "top_logprobs": [{"token_id:9": -2.5, "token_id:5": -0.25}]}}]});
        let chunk = chunk(&event, &mut finish);
        let p = chunk.completion_probabilities[0].to_logprobs(2);
        assert_eq!(p.logprob, -0.25);
        assert_eq!(p.top, [(5, -0.25), (9, -2.5)]);
    }

    #[test]
    fn the_body_asks_for_ids_and_carries_the_constraint() {
        let sampling = SamplingParams::default();
        let tag = json!({"type": "structural_tag"});
        let body = VllmSegment {
            model: "m",
            prompt: &[1, 2],
            max_tokens: 8,
            sampling: &sampling,
            stop_ids: &[151645],
            structural_tag: Some(&tag),
            ban: Some(151657),
        }
        .body();
        assert_eq!(body["return_token_ids"], true);
        assert_eq!(body["prompt"], json!([1, 2]));
        assert_eq!(body["stop_token_ids"], json!([151645]));
        assert_eq!(body["logit_bias"]["151657"], -100);
        let tag_text = body["structured_outputs"]["structural_tag"]
            .as_str()
            .expect("a string");
        assert_eq!(serde_json::from_str::<Value>(tag_text).ok(), Some(tag));
    }
}
