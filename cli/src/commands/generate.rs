//! `kestrel generate`: raw completion of a prompt, streamed or as one JSON object.

use std::io::Write;

use anyhow::Context;

use kestrel::backend::{FinishReason, StreamItem, Submission};
use kestrel_engine::{GenerateRequest, SamplingParams, Session, Timings};
use serde_json::json;

use crate::args::GenerateArgs;
use crate::loading::{connect_engine, load_model};

/// Runs the command.
pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.engine.engine {
        return run_remote(args, url);
    }
    let model = load_model(&args.model)?;
    let prompt = match (&args.prompt_ids, &args.prompt) {
        (Some(ids), _) => ids.clone(),
        (None, Some(text)) => model.require_tokenizer()?.encode_raw(text)?,
        (None, None) => anyhow::bail!("give --prompt or --prompt-ids"),
    };
    let sampling = sampling_params(args, model.sampling_defaults());
    let request = GenerateRequest {
        prompt: prompt.clone(),
        max_tokens: args.max_tokens,
        sampling,
        stop_ids: None,
    };
    let mut session = Session::new(model.clone());
    if let Some(path) = &args.logits {
        // The generation below reuses this prefill's cache.
        let (logits, _) = session.prefill(&prompt)?;
        let bytes: Vec<u8> = logits.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut generation = session.generate(request, None);
    let mut ids = Vec::new();
    let mut text = String::new();
    let mut out = std::io::stdout().lock();
    for token in generation.by_ref() {
        let token = token?;
        ids.push(token.id);
        text.push_str(&token.text);
        if !args.json {
            out.write_all(token.text.as_bytes())?;
            out.flush()?;
        }
    }
    let tail = generation.flush_text()?;
    text.push_str(&tail);
    let finish = serde_json::to_value(generation.finish_reason())?;
    drop(out);
    report(
        args,
        &prompt,
        &ids,
        &text,
        &tail,
        finish,
        &generation.timings(),
    )
}

/// The same generation on `--engine`: the prompt's ids go over the wire as they are.
fn run_remote(args: &GenerateArgs, url: &str) -> anyhow::Result<()> {
    if args.logits.is_some() {
        anyhow::bail!("--logits needs the embedded engine: a remote engine does not return logits");
    }
    let backend = connect_engine(&args.model, &args.engine, url)?;
    let prompt = match (&args.prompt_ids, &args.prompt) {
        (Some(ids), _) => ids.clone(),
        (None, Some(text)) => backend.tokenizer().encode_raw(text)?,
        (None, None) => anyhow::bail!("give --prompt or --prompt-ids"),
    };
    let sampling = sampling_params(args, &SamplingParams::default());
    let mut stream = backend.submit(Submission::new(prompt.clone(), args.max_tokens, sampling))?;
    let mut ids = Vec::new();
    let mut text = String::new();
    let mut out = std::io::stdout().lock();
    let finished = loop {
        match stream.next_blocking().context("the engine stopped")?? {
            StreamItem::Token(token) => {
                ids.push(token.id);
                text.push_str(&token.text);
                if !args.json {
                    out.write_all(token.text.as_bytes())?;
                    out.flush()?;
                }
            }
            StreamItem::Finished(finished) => break finished,
        }
    };
    text.push_str(&finished.tail);
    // The embedded engine's form: a stop names its token.
    let finish = match (finished.reason, ids.last()) {
        (FinishReason::Stop, Some(id)) => json!({"reason": "stop", "token": id}),
        (reason, _) => json!({"reason": reason}),
    };
    drop(out);
    report(
        args,
        &prompt,
        &ids,
        &text,
        &finished.tail,
        finish,
        &finished.timings,
    )
}

/// Prints a finished generation: one JSON object, or the held-back text and the figures.
fn report(
    args: &GenerateArgs,
    prompt: &[u32],
    ids: &[u32],
    text: &str,
    tail: &str,
    finish: serde_json::Value,
    timings: &Timings,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if args.json {
        let value = json!({
            "prompt_ids": prompt,
            "ids": ids,
            "text": text,
            "finish_reason": finish,
            "prompt_tokens": timings.prompt_tokens,
            "reused_tokens": timings.reused_tokens,
            "generated_tokens": timings.generated_tokens,
            "prompt_tokens_per_s": timings.prompt_tokens_per_s(),
            "decode_tokens_per_s": timings.decode_tokens_per_s(),
            "time_to_first_token_s": timings.time_to_first_token_secs,
        });
        writeln!(out, "{value}")?;
    } else {
        writeln!(out, "{tail}")?;
        eprintln!(
            "[{} prompt tokens ({} from a cache) at {:.1} tok/s, {} generated at {:.1} tok/s, first token after {:.3}s]",
            timings.prompt_tokens,
            timings.reused_tokens,
            timings.prompt_tokens_per_s(),
            timings.generated_tokens,
            timings.decode_tokens_per_s(),
            timings.time_to_first_token_secs
        );
    }
    Ok(())
}

fn sampling_params(args: &GenerateArgs, defaults: &SamplingParams) -> SamplingParams {
    let mut p = defaults.clone();
    if let Some(t) = args.temperature {
        p.temperature = t;
    }
    if let Some(k) = args.top_k {
        p.top_k = k;
    }
    if let Some(v) = args.top_p {
        p.top_p = v;
    }
    if let Some(v) = args.min_p {
        p.min_p = v;
    }
    if let Some(v) = args.presence_penalty {
        p.presence_penalty = v;
    }
    if let Some(v) = args.frequency_penalty {
        p.frequency_penalty = v;
    }
    if let Some(v) = args.repetition_penalty {
        p.repetition_penalty = v;
    }
    p.seed = args.seed;
    p
}
