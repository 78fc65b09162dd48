//! Many sequences in one forward pass: each item's logits against the same tokens run alone,
//! with decode rows, prefill chunks and whole prompts mixed in one batch, on the tiny checkpoints
//! and the real GGUF; and greedy decoding of several sequences together against each alone.
//!
//! Tolerance: on a GGUF none. Kestrel's quantized kernels compute a row to the same bits
//! whatever the number of rows in the call, and its attention runs each position the same way
//! in decode and prefill, so a row's logits are bit-identical alone or batched, decoded or
//! prefilled (greedy tokens then agree at every step). On dense weights (candle's matmuls) a
//! row's logits depend on its company by float summation order (measured 5e-7 of the spread,
//! allowed 1e-5); with no quantized activations downstream, that difference is not amplified.
//! Greedy tokens must agree wherever the top-2 margin exceeds the allowance.

use kestrel_tests as common;

use std::path::Path;
use std::sync::Arc;

use kestrel_engine::{BatchItem, KvCache, KvType, LoadOptions, LogitsFor, Model, argmax};

fn load(path: &Path) -> Arc<Model> {
    let options = LoadOptions {
        kv_type: Some(KvType::F16),
        ..LoadOptions::default()
    };
    Arc::new(Model::load(path, &options).expect("load"))
}

fn solo(model: &Model, prefix: &[u32], tokens: &[u32]) -> Vec<f32> {
    let mut cache = model.qwen().new_cache();
    if !prefix.is_empty() {
        model
            .qwen()
            .forward(prefix, &mut cache, LogitsFor::Last)
            .expect("prefix");
    }
    model
        .qwen()
        .forward(tokens, &mut cache, LogitsFor::Last)
        .expect("solo")
        .to_vec1()
        .expect("vec")
}

fn relative_diff(a: &[f32], b: &[f32]) -> f32 {
    let spread = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / spread
}

fn prompts(vocab: u32) -> [Vec<u32>; 3] {
    let make = |n: u32, seed: u32| {
        (0..n)
            .map(|i| (i * 7919 + seed * 104_729) % vocab)
            .collect()
    };
    [make(30, 1), make(45, 2), make(20, 3)]
}

fn check(path: &Path, tolerance: f32) {
    let model = load(path);
    let vocab = model.config().vocab_size as u32;
    let [a, b, c] = prompts(vocab.min(150_000));
    // A decodes one token after its prompt, B prefills its second part after a first, C runs its
    // whole prompt: all in one pass.
    let mut cache_a = model.qwen().new_cache();
    let mut cache_b = model.qwen().new_cache();
    let mut cache_c = model.qwen().new_cache();
    model
        .qwen()
        .forward(&a[..29], &mut cache_a, LogitsFor::Last)
        .expect("a");
    model
        .qwen()
        .forward(&b[..20], &mut cache_b, LogitsFor::Last)
        .expect("b");
    let batched = model
        .qwen()
        .forward_batch(&mut [
            BatchItem {
                tokens: &a[29..],
                cache: &mut cache_a,
            },
            BatchItem {
                tokens: &b[20..],
                cache: &mut cache_b,
            },
            BatchItem {
                tokens: &c,
                cache: &mut cache_c,
            },
        ])
        .expect("batch");
    assert_eq!(batched.dims(), &[3, vocab as usize]);
    let rows: Vec<Vec<f32>> = batched.to_vec2().expect("rows");
    let expected = [
        solo(&model, &a[..29], &a[29..]),
        solo(&model, &b[..20], &b[20..]),
        solo(&model, &[], &c),
    ];
    for (i, (got, want)) in rows.iter().zip(&expected).enumerate() {
        let diff = relative_diff(want, got);
        eprintln!(
            "{}: item {i}: batched vs alone {diff:.6} of the spread",
            path.display()
        );
        assert!(diff <= tolerance, "{}: item {i}: {diff}", path.display());
    }
    assert_eq!([cache_a.len(), cache_b.len(), cache_c.len()], [30, 45, 20]);

    // Greedy decoding, the three together, against each alone.
    let steps = 12;
    // Alone: each step's token and the top-2 margin it was chosen by (relative to the spread).
    let decode_alone = |prompt: &[u32]| -> Vec<(u32, f32)> {
        let mut cache = model.qwen().new_cache();
        let mut logits: Vec<f32> = model
            .qwen()
            .forward(prompt, &mut cache, LogitsFor::Last)
            .and_then(|l| Ok(l.to_vec1()?))
            .expect("prompt");
        let mut out = Vec::new();
        for _ in 0..steps {
            let id = argmax(&logits).expect("a token");
            let spread = logits.iter().fold(0f32, |m, x| m.max(x.abs()));
            out.push((id, common::top2_margin(&logits) / spread));
            logits = model
                .qwen()
                .forward(&[id], &mut cache, LogitsFor::Last)
                .and_then(|l| Ok(l.to_vec1()?))
                .expect("step");
        }
        out
    };
    let alone: Vec<Vec<(u32, f32)>> = [&a, &b, &c].iter().map(|p| decode_alone(p)).collect();
    let mut caches: Vec<KvCache> = (0..3).map(|_| model.qwen().new_cache()).collect();
    let mut next: Vec<Vec<u32>> = vec![a.clone(), b.clone(), c.clone()];
    let mut together: Vec<Vec<u32>> = vec![Vec::new(); 3];
    for _ in 0..steps {
        let mut items: Vec<BatchItem> = caches
            .iter_mut()
            .zip(&next)
            .map(|(cache, tokens)| BatchItem { tokens, cache })
            .collect();
        let logits: Vec<Vec<f32>> = model
            .qwen()
            .forward_batch(&mut items)
            .and_then(|l| Ok(l.to_vec2()?))
            .expect("batch step");
        for (i, row) in logits.iter().enumerate() {
            let id = argmax(row).expect("a token");
            together[i].push(id);
            next[i] = vec![id];
        }
    }
    for (i, (together, alone)) in together.iter().zip(&alone).enumerate() {
        // Equal up to the first step whose choice was closer than the allowance.
        for (step, (&got, &(want, gap))) in together.iter().zip(alone).enumerate() {
            if gap <= 2.0 * tolerance {
                break;
            }
            assert_eq!(got, want, "{}: sequence {i}, step {step}", path.display());
        }
    }
}

#[test]
fn a_batch_gives_each_sequence_its_own_logits_on_a_tiny_checkpoint() {
    check(
        &common::fixtures().join("models/qwen3-gqa-headdim-tied"),
        1e-5,
    );
}

/// A mixture of experts: the rows of a batch are grouped by expert (each expert runs once on
/// the rows that chose it), and each sequence still gets its own logits, safetensors and GGUF.
#[test]
fn a_batch_gives_each_sequence_its_own_logits_through_experts() {
    check(
        &common::fixtures().join("models/qwen3moe-top2-norm-denselayer"),
        1e-5,
    );
    check(
        &common::fixtures().join("gguf/qwen3moe-tiny-q8_0.gguf"),
        0.0,
    );
}

#[test]
fn a_batch_gives_each_sequence_its_own_logits_on_the_real_gguf() {
    check(&common::coder_gguf(), 0.0);
}

#[test]
fn an_empty_batch_and_an_empty_item_are_refused() {
    let model = load(&common::fixtures().join("models/qwen3-mqa-untied"));
    let err = model.qwen().forward_batch(&mut []).expect_err("empty");
    assert!(err.to_string().contains("no sequences"), "{err}");
    let mut cache = model.qwen().new_cache();
    let err = model
        .qwen()
        .forward_batch(&mut [BatchItem {
            tokens: &[],
            cache: &mut cache,
        }])
        .expect_err("no tokens");
    assert!(err.to_string().contains("no tokens"), "{err}");
}
