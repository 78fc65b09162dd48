//! `kestrel bench --batch B`: B sequences through the batched forward pass, as
//! llama-batched-bench measures them: each sequence's own prompt prefilled in shared passes (at
//! most 512 rows a pass, split evenly), then greedy decode with one row per sequence in every
//! pass. Reported rates are aggregates (all sequences' tokens over the wall time).

use std::time::Instant;

use anyhow::bail;
use kestrel_engine::plan::PREFILL_CHUNK;
use kestrel_engine::{BatchItem, KvCache, Model, argmax};
use serde_json::json;

use super::bench::{median, random_prompt};
use crate::args::BenchArgs;
use crate::loading::peak_rss_bytes;

/// Runs the batched benchmark.
pub fn run(model: &Model, args: &BenchArgs, vocab: u64) -> anyhow::Result<()> {
    let b = args.batch;
    if model.context() < args.prompt_tokens + args.gen_tokens {
        bail!("--prompt-tokens + --gen-tokens exceed the model's context");
    }
    let prompts: Vec<Vec<u32>> = (0..b)
        .map(|i| random_prompt(vocab, args.prompt_tokens, i as u64))
        .collect();
    // Warm-up: first touch of the weights and pools.
    let mut warm = model.qwen().new_cache();
    model.qwen().forward_batch(&mut [BatchItem {
        tokens: &prompts[0][..prompts[0].len().min(16)],
        cache: &mut warm,
    }])?;
    drop(warm);

    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    let mut kv_bytes = 0;
    for _ in 0..args.reps {
        let mut caches: Vec<KvCache> = (0..b).map(|_| model.qwen().new_cache()).collect();
        let started = Instant::now();
        let per_pass = (PREFILL_CHUNK / b).max(1);
        let mut logits = Vec::new();
        for start in (0..args.prompt_tokens).step_by(per_pass) {
            let end = (start + per_pass).min(args.prompt_tokens);
            let mut items: Vec<BatchItem> = caches
                .iter_mut()
                .zip(&prompts)
                .map(|(cache, p)| BatchItem {
                    tokens: &p[start..end],
                    cache,
                })
                .collect();
            logits = model.qwen().forward_batch(&mut items)?.to_vec2::<f32>()?;
        }
        let prefill_secs = started.elapsed().as_secs_f64();
        let started = Instant::now();
        for _ in 0..args.gen_tokens {
            let next: Vec<[u32; 1]> = logits
                .iter()
                .map(|row| argmax(row).map(|id| [id]))
                .collect::<Option<_>>()
                .ok_or_else(|| anyhow::anyhow!("empty logits"))?;
            let mut items: Vec<BatchItem> = caches
                .iter_mut()
                .zip(&next)
                .map(|(cache, id)| BatchItem { tokens: id, cache })
                .collect();
            logits = model.qwen().forward_batch(&mut items)?.to_vec2::<f32>()?;
        }
        let decode_secs = started.elapsed().as_secs_f64();
        prefill.push((b * args.prompt_tokens) as f64 / prefill_secs);
        decode.push((b * args.gen_tokens) as f64 / decode_secs);
        kv_bytes = caches.iter().map(KvCache::allocated_bytes).sum();
    }
    let (prefill, decode) = (median(&mut prefill), median(&mut decode));
    if args.json {
        let value = json!({
            "model": model.path(),
            "format": format!("{:?}", model.format()),
            "threads": args.model.threads,
            "batch": b,
            "prompt_tokens": args.prompt_tokens,
            "gen_tokens": args.gen_tokens,
            "reps": args.reps,
            "prompt_tokens_per_s": prefill,
            "decode_tokens_per_s": decode,
            "peak_rss_bytes": peak_rss_bytes(),
            "kv_cache_bytes": kv_bytes,
        });
        println!("{value}");
    } else {
        println!(
            "model        {} ({:?})",
            model.path().display(),
            model.format()
        );
        println!("batch        {b} sequences");
        println!(
            "prefill      {prefill:.1} tok/s aggregate ({b} x {} tokens)",
            args.prompt_tokens
        );
        println!(
            "decode       {decode:.1} tok/s aggregate ({b} x {} tokens after the prompts)",
            args.gen_tokens
        );
    }
    Ok(())
}
