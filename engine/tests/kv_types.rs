//! The reduced KV cache types (f16, bf16, q8_0) against the f32 cache, on the tiny checkpoints
//! and the real GGUF: last-position logits within a stated share of their spread, and greedy
//! tokens equal to the f32 cache's wherever the f32 run's top-2 margin exceeds that tolerance
//! (a token may only differ where the two best were closer than the cache's error).

use kestrel_tests as common;

use std::path::Path;
use std::sync::Arc;

use kestrel_engine::{GenerateRequest, KvType, LoadOptions, Model, SamplingParams, Session};

/// Largest logit difference allowed, as a share of the largest |logit|. The measured worst cases
/// (printed by the tests, quoted in the README) are, on the tiny checkpoints, f16 0.0004, bf16
/// 0.005, q8_0 0.011; on Qwen2.5-Coder-0.5B, whose keys carry a few very large channels (the qkv
/// bias), f16 0.016, bf16 0.014 and q8_0 0.16 (32-value blocks share one scale with the outlier).
fn tolerance(kv_type: KvType, real: bool) -> f32 {
    match (kv_type, real) {
        (KvType::F32, _) => 0.0,
        (KvType::F16, false) => 0.002,
        (KvType::Bf16, false) => 0.01,
        (KvType::Q8_0, false) => 0.03,
        (KvType::F16 | KvType::Bf16, true) => 0.03,
        (KvType::Q8_0, true) => 0.25,
    }
}

fn load(path: &Path, kv_type: KvType) -> Arc<Model> {
    let options = LoadOptions {
        kv_type: Some(kv_type),
        ..LoadOptions::default()
    };
    Arc::new(Model::load(path, &options).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn greedy(model: &Arc<Model>, prompt: &[u32], n: usize) -> Vec<u32> {
    let request = GenerateRequest {
        prompt: prompt.to_vec(),
        max_tokens: n,
        sampling: SamplingParams::greedy(),
        stop_ids: Some(Vec::new()),
    };
    Session::new(model.clone())
        .generate(request, None)
        .map(|t| t.expect("token").id)
        .collect()
}

fn check(path: &Path, prompt: &[u32], steps: usize, real: bool) {
    let reference = load(path, KvType::F32);
    let (exact, _) = Session::new(reference.clone())
        .prefill(prompt)
        .expect("prefill");
    let spread = exact.iter().fold(0f32, |m, x| m.max(x.abs()));
    let exact_tokens = greedy(&reference, prompt, steps);
    for kv_type in [KvType::F16, KvType::Bf16, KvType::Q8_0] {
        if kv_type == KvType::Q8_0 && !reference.config().head_dim.is_multiple_of(32) {
            let options = LoadOptions {
                kv_type: Some(kv_type),
                ..LoadOptions::default()
            };
            let err = Model::load(path, &options).expect_err("q8_0 blocks are 32 wide");
            assert!(err.to_string().contains("multiple of 32"), "{err}");
            continue;
        }
        let model = load(path, kv_type);
        let (logits, _) = Session::new(model.clone())
            .prefill(prompt)
            .expect("prefill");
        let worst = exact
            .iter()
            .zip(&logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
            / spread;
        eprintln!(
            "{}: {kv_type} cache, worst logit difference {worst:.5} of the spread",
            path.display()
        );
        let tolerance = tolerance(kv_type, real);
        assert!(worst < tolerance, "{}: {kv_type}: {worst}", path.display());

        let tokens = greedy(&model, prompt, steps);
        if let Some(at) = tokens.iter().zip(&exact_tokens).position(|(a, b)| a != b) {
            let mut context = prompt.to_vec();
            context.extend(&exact_tokens[..at]);
            let (logits, _) = Session::new(reference.clone())
                .prefill(&context)
                .expect("prefill");
            let gap = common::top2_margin(&logits) / spread;
            assert!(
                gap < 2.0 * tolerance,
                "{}: {kv_type}: token {at} differs from the f32 cache's where the top-2 margin is {gap} of the spread",
                path.display()
            );
        }
    }
}

#[test]
fn tiny_checkpoints_track_the_f32_cache() {
    for name in ["qwen3-gqa-headdim-tied", "qwen3-yarn", "qwen2-gqa-untied"] {
        let dir = common::fixtures().join("models").join(name);
        let prompt = common::ids(&common::json(dir.join("reference.json"))["prompt_ids"]);
        check(&dir, &prompt, 24, false);
    }
}

#[test]
fn the_real_gguf_tracks_the_f32_cache() {
    let reference = common::json(common::fixtures().join("gguf/qwen2.5-coder-greedy.json"));
    let prompt = common::ids(&reference["prompt_ids"]);
    check(&common::coder_gguf(), &prompt, 24, true);
}
