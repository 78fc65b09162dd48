//! `kestrel bench`: prefill and decode throughput, greedy, on pseudo-random prompt tokens (as
//! llama.cpp's llama-bench does), so that the figures compare with llama-bench's `pp`/`tg`.

use anyhow::bail;
use kestrel_engine::{GenerateRequest, SamplingParams, Session};
use serde_json::json;

use crate::cli::BenchArgs;
use crate::loading::{load_model, peak_rss_bytes};

/// Runs the command.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.prompt_tokens == 0 || args.gen_tokens == 0 || args.reps == 0 {
        bail!("--prompt-tokens, --gen-tokens and --reps must be at least 1");
    }
    let model = load_model(&args.model)?;
    let context = model.config().max_position_embeddings;
    if args.prompt_tokens + args.gen_tokens > context {
        bail!(
            "--prompt-tokens {} + --gen-tokens {} exceed the model's context of {context} tokens",
            args.prompt_tokens,
            args.gen_tokens
        );
    }
    let vocab = model.config().vocab_size as u64;
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let prompt: Vec<u32> = (0..args.prompt_tokens)
        .map(|_| {
            // splitmix64: a fixed, well-spread sequence of ids.
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) % vocab) as u32
        })
        .collect();

    // Warm-up: first-touch of the weights and the worker pools are not what we measure.
    let mut session = Session::new(model.clone());
    session.prefill(&prompt[..prompt.len().min(16)])?;

    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    let mut kv_bytes = 0;
    for _ in 0..args.reps {
        session.truncate(0);
        let request = GenerateRequest {
            prompt: prompt.clone(),
            max_tokens: args.gen_tokens,
            sampling: SamplingParams::greedy(),
            stop_ids: Some(Vec::new()),
        };
        let mut generation = session.generate(request, None);
        for token in generation.by_ref() {
            token?;
        }
        let t = generation.timings();
        prefill.push(t.prompt_tokens_per_s());
        decode.push(t.decode_tokens_per_s());
        kv_bytes = session.cache().allocated_bytes();
    }
    let (prefill, decode) = (median(&mut prefill), median(&mut decode));
    let threads = args
        .model
        .threads
        .map(|n| n.to_string())
        .unwrap_or_else(|| "default".into());
    if args.json {
        let value = json!({
            "model": model.path(),
            "format": format!("{:?}", model.format()),
            "threads": threads,
            "prompt_tokens": args.prompt_tokens,
            "gen_tokens": args.gen_tokens,
            "reps": args.reps,
            "prompt_tokens_per_s": prefill,
            "decode_tokens_per_s": decode,
            "peak_rss_bytes": peak_rss_bytes(),
            "weight_bytes": model.weight_bytes(),
            "kv_cache_bytes": kv_bytes,
        });
        println!("{value}");
    } else {
        println!(
            "model        {} ({:?})",
            model.path().display(),
            model.format()
        );
        println!("threads      {threads}");
        println!(
            "prefill      {prefill:.1} tok/s ({} tokens)",
            args.prompt_tokens
        );
        println!(
            "decode       {decode:.1} tok/s ({} tokens after the prompt)",
            args.gen_tokens
        );
        if let Some(rss) = peak_rss_bytes() {
            println!("peak memory  {:.0} MiB", rss as f64 / 1048576.0);
        }
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
