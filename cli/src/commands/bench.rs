//! `kestrel bench`: prefill and decode throughput, greedy, on pseudo-random prompt tokens (as
//! llama.cpp's llama-bench does), so that the figures compare with llama-bench's `pp`/`tg`.
//!
//! `--synthetic CONFIG` benchmarks random weights of a configuration's shapes made on the device
//! (a 14B model where no weights can be downloaded); `--roofline` measures the device's limits in
//! the same run and reports how close each phase comes (see `kestrel_engine::roofline`).
//! `--batch B` runs B sequences together through the batched forward pass and reports aggregate
//! rates, as llama.cpp's llama-batched-bench does.

use anyhow::bail;
use kestrel_engine::roofline::{
    copy_bandwidth, decode_bytes_per_token, matmul_flops, prefill_flops_per_token,
};
use std::time::Instant;

use kestrel_engine::plan::PREFILL_CHUNK;
use kestrel_engine::{
    BatchItem, DType, GenerateRequest, KvCache, Model, ModelFormat, SamplingParams, Session, argmax,
};
use serde_json::json;

use crate::args::BenchArgs;
use crate::loading::{load_model, load_synthetic, peak_rss_bytes};

/// Runs the command.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.prompt_tokens == 0 || args.gen_tokens == 0 || args.reps == 0 || args.batch == 0 {
        bail!("--prompt-tokens, --gen-tokens, --reps and --batch must be at least 1");
    }
    if args.quant.is_some() && args.synthetic.is_none() {
        bail!("--quant applies to --synthetic models only (a model file keeps its own weights)");
    }
    let model = match &args.synthetic {
        Some(config) => load_synthetic(&args.model, config, args.quant.as_deref())?,
        None => load_model(&args.model)?,
    };
    let context = model.context();
    if args.prompt_tokens + args.gen_tokens > context {
        bail!(
            "--prompt-tokens {} + --gen-tokens {} exceed the model's context of {context} tokens",
            args.prompt_tokens,
            args.gen_tokens
        );
    }
    let vocab = model.config().vocab_size as u64;
    if args.batch > 1 {
        return run_batched(&model, args, vocab);
    }
    let prompt = random_prompt(vocab, args.prompt_tokens, 0);

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
    // Which code ran: the CPU's choice, or the GPU's one path.
    let ops = if model.qwen().device().is_cpu() {
        clap::ValueEnum::to_possible_value(&args.model.cpu_ops)
            .map_or_else(String::new, |v| v.get_name().to_string())
    } else {
        "candle (GPU)".to_string()
    };
    let roofline = if args.roofline {
        Some(Roofline::measure(&model, args, prefill, decode)?)
    } else {
        None
    };
    if args.json {
        let value = json!({
            "roofline": roofline,
            "model": model.path(),
            "format": format!("{:?}", model.format()),
            "synthetic": matches!(model.format(), ModelFormat::Synthetic(_)),
            "threads": threads,
            "ops": ops,
            "batch": 1,
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
        println!("ops          {ops}");
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
        if let Some(r) = roofline {
            println!(
                "bandwidth    {:.1} GB/s measured (copy); decode reads {:.2} GB/token: {:.1}% of the bound ({:.1} tok/s)",
                r.copy_bytes_per_s / 1e9,
                r.decode_bytes_per_token / 1e9,
                100.0 * r.decode_bandwidth_share,
                r.copy_bytes_per_s / r.decode_bytes_per_token
            );
            println!(
                "matmul       {:.1} GFLOP/s measured ({:?}); prefill does {:.3} GFLOP/token: {:.1}% of it",
                r.matmul_flops_per_s / 1e9,
                r.matmul_dtype,
                r.prefill_flops_per_token / 1e9,
                100.0 * r.prefill_matmul_share
            );
        }
    }
    Ok(())
}

/// The device's measured limits and the run's share of them.
#[derive(Debug, serde::Serialize)]
struct Roofline {
    copy_bytes_per_s: f64,
    matmul_flops_per_s: f64,
    #[serde(serialize_with = "as_debug")]
    matmul_dtype: DType,
    decode_bytes_per_token: f64,
    decode_bandwidth_share: f64,
    prefill_flops_per_token: f64,
    prefill_matmul_share: f64,
}

fn as_debug<S: serde::Serializer>(v: &DType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:?}"))
}

impl Roofline {
    fn measure(
        model: &kestrel_engine::Model,
        args: &BenchArgs,
        prefill: f64,
        decode: f64,
    ) -> anyhow::Result<Self> {
        let device = model.qwen().device().clone();
        let gpu = !device.is_cpu();
        // Big enough to leave the caches far behind; a GPU copy of 4 GiB takes about a
        // millisecond on current parts.
        let copy_bytes = if gpu { 4 << 30 } else { 1 << 30 };
        let copy_bytes_per_s = copy_bandwidth(&device, copy_bytes, 5)?;
        let dtype = model.qwen().dtype();
        // Quantized models multiply in f32 on a CPU and in their matmul dtype on a GPU; the peak
        // that matters for prefill is the dense one of the activations' dtype.
        let matmul_dtype = if gpu && dtype == DType::F32 {
            DType::BF16
        } else {
            dtype
        };
        let size = if gpu { 8192 } else { 1024 };
        let matmul_flops_per_s = matmul_flops(&device, matmul_dtype, size, 5)?;
        let config = model.config();
        let context = args.prompt_tokens + args.gen_tokens / 2;
        let decode_bytes = decode_bytes_per_token(config, model.weight_bytes(), context, dtype);
        let prefill_flops = prefill_flops_per_token(config, args.prompt_tokens);
        Ok(Self {
            copy_bytes_per_s,
            matmul_flops_per_s,
            matmul_dtype,
            decode_bytes_per_token: decode_bytes,
            decode_bandwidth_share: decode * decode_bytes / copy_bytes_per_s,
            prefill_flops_per_token: prefill_flops,
            prefill_matmul_share: prefill * prefill_flops / matmul_flops_per_s,
        })
    }
}

/// `n` pseudo-random token ids below `vocab`, the same for the same `seed` (splitmix64: a fixed,
/// well-spread sequence, as llama-bench's random prompts are).
fn random_prompt(vocab: u64, n: usize, seed: u64) -> Vec<u32> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64.wrapping_mul(seed + 1);
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) % vocab) as u32
        })
        .collect()
}

/// The median (the upper one of an even count).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `--batch B`: B sequences through the batched forward pass, as llama-batched-bench measures
/// them: each sequence's own prompt prefilled in shared passes (at most 512 rows a pass, split
/// evenly), then greedy decode with one row per sequence in every pass. Rates are aggregates
/// (all sequences' tokens over the wall time).
fn run_batched(model: &Model, args: &BenchArgs, vocab: u64) -> anyhow::Result<()> {
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
