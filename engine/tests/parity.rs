//! The engine against transformers: tiny random Qwen3/Qwen3-MoE/Qwen2 checkpoints made by
//! scripts/oracle/make_tiny_models.py, with transformers' last-position logits and 24 greedy tokens.
//!
//! Each check runs twice: with Kestrel's CPU kernels and fused paths, and on candle's ops alone
//! ([`CpuOps::Candle`]), which is the code a GPU runs; the reduced-precision dtypes GPUs default to
//! are checked on that path too.

use kestrel_tests as common;

use std::path::Path;
use std::sync::Arc;

use kestrel_engine::{
    CpuOps, DType, GenerateRequest, KvType, LoadOptions, LogitsFor, Model, SamplingParams, Session,
};

const MODELS: [&str; 8] = [
    "qwen3-gqa-headdim-tied",
    "qwen3-mqa-untied",
    "qwen3-yarn",
    "qwen2-gqa-untied",
    "qwen2-mqa-tied",
    "qwen3-tiny-fullvocab",
    "qwen3moe-top2-norm-denselayer",
    "qwen3moe-top3-unnormed-step2",
];

const OPS: [CpuOps; 2] = [CpuOps::Kestrel, CpuOps::Candle];

fn load(name: &str) -> Arc<Model> {
    load_with(name, CpuOps::Kestrel, None)
}

fn load_with(name: &str, cpu_ops: CpuOps, dtype: Option<DType>) -> Arc<Model> {
    let dir = common::fixtures().join("models").join(name);
    // transformers computes in f32 throughout: so does the cache here (the reduced cache types
    // are checked against this one in kv_types.rs).
    let options = LoadOptions {
        cpu_ops,
        dtype,
        kv_type: Some(KvType::F32),
        ..LoadOptions::default()
    };
    Arc::new(Model::load(&dir, &options).unwrap_or_else(|e| panic!("{name}: {e}")))
}

fn reference_logits(dir: &Path) -> Vec<f32> {
    let bytes = std::fs::read(dir.join("logits.f32")).expect("logits.f32");
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn last_position_logits_match_transformers() {
    for (name, ops) in MODELS.into_iter().flat_map(|n| OPS.map(|o| (n, o))) {
        let dir = common::fixtures().join("models").join(name);
        let reference = common::json(dir.join("reference.json"));
        let prompt = common::ids(&reference["prompt_ids"]);
        let model = load_with(name, ops, None);
        let mut session = Session::new(model);
        let (logits, reused) = session.prefill(&prompt).expect("prefill");
        assert_eq!(reused, 0);
        let diff = max_abs_diff(&logits, &reference_logits(&dir));
        assert!(
            diff < 1e-4,
            "{name} {ops:?}: max abs logit difference {diff}"
        );
    }
}

/// bf16 and f16 (what a GPU loads safetensors in) on candle's ops: the logits stay within what
/// 8 and 11 mantissa bits allow of transformers' f32 logits, relative to their spread.
#[test]
fn reduced_precision_logits_track_transformers() {
    for name in MODELS {
        let dir = common::fixtures().join("models").join(name);
        let prompt = common::ids(&common::json(dir.join("reference.json"))["prompt_ids"]);
        let reference = reference_logits(&dir);
        let spread = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
        for (dtype, bound) in [(DType::BF16, 0.05), (DType::F16, 0.008)] {
            let model = load_with(name, CpuOps::Candle, Some(dtype));
            assert_eq!(model.qwen().dtype(), dtype);
            let (logits, _) = Session::new(model).prefill(&prompt).expect("prefill");
            let diff = max_abs_diff(&logits, &reference) / spread;
            assert!(
                diff < bound,
                "{name} {dtype:?}: logits differ by {diff} of their spread"
            );
        }
    }
}

#[test]
fn greedy_tokens_match_transformers() {
    for (name, ops) in MODELS.into_iter().flat_map(|n| OPS.map(|o| (n, o))) {
        let dir = common::fixtures().join("models").join(name);
        let reference = common::json(dir.join("reference.json"));
        let expected = common::ids(&reference["greedy_ids"]);
        let mut session = Session::new(load_with(name, ops, None));
        let request = GenerateRequest {
            prompt: common::ids(&reference["prompt_ids"]),
            max_tokens: expected.len(),
            sampling: SamplingParams::greedy(),
            stop_ids: Some(Vec::new()),
        };
        let got: Vec<u32> = session
            .generate(request, None)
            .map(|t| t.expect("token").id)
            .collect();
        assert_eq!(got, expected, "{name} {ops:?}");
    }
}

#[test]
fn shared_prefix_is_reused_and_gives_cold_logits() {
    for (name, ops) in ["qwen3-yarn", "qwen2-gqa-untied"]
        .into_iter()
        .flat_map(|n| OPS.map(|o| (n, o)))
    {
        let model = load_with(name, ops, None);
        let dir = common::fixtures().join("models").join(name);
        let prompt = common::ids(&common::json(dir.join("reference.json"))["prompt_ids"]);
        let mut warm = Session::new(model.clone());
        warm.prefill(&prompt).expect("first prompt");
        // Same first 10 tokens, then a different continuation.
        let mut second = prompt[..10].to_vec();
        second.extend([5, 6, 7, 8, 9, 10, 11]);
        let (warm_logits, reused) = warm.prefill(&second).expect("second prompt");
        assert_eq!(reused, 10, "{name}: only the shared prefix is reused");
        assert_eq!(warm.tokens(), &second[..]);
        let mut cold = Session::new(model.clone());
        let (cold_logits, cold_reused) = cold.prefill(&second).expect("cold");
        assert_eq!(cold_reused, 0);
        let diff = max_abs_diff(&warm_logits, &cold_logits);
        assert!(
            diff < 1e-5,
            "{name} {ops:?}: warm vs cold logits differ by {diff}"
        );

        // Extending a cached prompt prefills only the appended tokens.
        let mut longer = second.clone();
        longer.extend([42, 43]);
        let (_, reused) = warm.prefill(&longer).expect("extend");
        assert_eq!(reused, second.len());
        // The same prompt again re-runs only its last token.
        let (again, reused) = warm.prefill(&longer).expect("same");
        assert_eq!(reused, longer.len() - 1);
        let (cold_again, _) = Session::new(model).prefill(&longer).expect("cold");
        assert!(max_abs_diff(&again, &cold_again) < 1e-5);
    }
}

#[test]
fn all_position_logits_agree_with_last_position() {
    let model = load("qwen3-mqa-untied");
    let dir = common::fixtures().join("models/qwen3-mqa-untied");
    let prompt = common::ids(&common::json(dir.join("reference.json"))["prompt_ids"]);
    let mut cache = model.qwen().new_cache();
    let all = model
        .qwen()
        .forward(&prompt, &mut cache, LogitsFor::All)
        .expect("all");
    assert_eq!(all.dims(), &[prompt.len(), model.config().vocab_size]);
    let last: Vec<f32> = all
        .get(prompt.len() - 1)
        .expect("row")
        .to_vec1()
        .expect("vec");
    assert!(max_abs_diff(&last, &reference_logits(&dir)) < 1e-4);
}

#[test]
fn kv_snapshot_restores_a_shared_prefix() {
    let model = load("qwen3-gqa-headdim-tied");
    let dir = common::fixtures().join("models/qwen3-gqa-headdim-tied");
    let prompt = common::ids(&common::json(dir.join("reference.json"))["prompt_ids"]);
    let mut cache = model.qwen().new_cache();
    model
        .qwen()
        .forward(&prompt[..12], &mut cache, LogitsFor::Last)
        .expect("prefix");
    let snapshot = cache.snapshot().expect("snapshot");
    let a = model
        .qwen()
        .forward(&prompt[12..], &mut cache, LogitsFor::Last)
        .expect("rest");
    let mut other = model.qwen().new_cache();
    other.restore(&snapshot).expect("restore");
    let b = model
        .qwen()
        .forward(&prompt[12..], &mut other, LogitsFor::Last)
        .expect("rest");
    let (a, b): (Vec<f32>, Vec<f32>) = (a.to_vec1().expect("a"), b.to_vec1().expect("b"));
    assert_eq!(a, b);
    assert!(max_abs_diff(&a, &reference_logits(&dir)) < 1e-4);
}

/// The shapes a synthetic model is made with are exactly those of real checkpoints (what
/// transformers saved for each fixture), so a synthetic benchmark measures the real model's work.
#[test]
fn synthetic_shapes_match_real_checkpoints() {
    use std::collections::BTreeMap;
    for name in MODELS {
        let dir = common::fixtures().join("models").join(name);
        let config = kestrel_engine::ModelConfig::from_hf_file(&dir.join("config.json"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected = kestrel_engine::tensor_shapes(&config);
        let mut actual = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|x| x != "safetensors") {
                continue;
            }
            let tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
                .expect("safetensors");
            for (tensor, value) in tensors {
                actual.insert(tensor, value.dims().to_vec());
            }
        }
        if config.tie_word_embeddings {
            actual.remove("lm_head.weight");
        }
        assert_eq!(actual, expected, "{name}");
    }
}
