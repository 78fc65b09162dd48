//! How close a run comes to the hardware's limits.
//!
//! Decoding one token reads every weight matrix once (the embedding table only for its one row,
//! unless it doubles as the output projection; of a mixture of experts, only the chosen experts)
//! plus the KV cache so far, so its bound is memory bandwidth; prefill is bound by matrix-multiply throughput. Both limits are measured on the device
//! in the same run (a device-to-device copy, a large matmul) rather than taken from a datasheet, so
//! a share is a ratio of two measurements on the same machine.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::config::ModelConfig;
use crate::error::Result;

/// Bytes moved per second by a device-to-device copy of `bytes` into memory allocated beforehand
/// (read plus write), best of `reps`.
pub fn copy_bandwidth(device: &Device, bytes: usize, reps: usize) -> Result<f64> {
    let n = bytes / 4;
    let src = Tensor::ones(n, DType::F32, device)?;
    let dst = Tensor::zeros(n, DType::F32, device)?;
    // The first copy touches every page of the destination; it is not timed.
    dst.slice_set(&src, 0, 0)?;
    device.synchronize()?;
    let mut best = f64::MAX;
    for _ in 0..reps.max(1) {
        let started = Instant::now();
        dst.slice_set(&src, 0, 0)?;
        device.synchronize()?;
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n * 4) as f64 / best)
}

/// Floating-point operations per second of an `(m, k) x (k, n)` matmul in `dtype`, best of `reps`.
pub fn matmul_flops(device: &Device, dtype: DType, size: usize, reps: usize) -> Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (size, size), device)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1.0, (size, size), device)?.to_dtype(dtype)?;
    let _ = a.matmul(&b)?;
    device.synchronize()?;
    let mut best = f64::MAX;
    for _ in 0..reps.max(1) {
        let started = Instant::now();
        let c = a.matmul(&b)?;
        device.synchronize()?;
        best = best.min(started.elapsed().as_secs_f64());
        drop(c);
    }
    Ok(2.0 * (size as f64).powi(3) / best)
}

/// Bytes of the embedding table (`vocab x hidden`) within `weight_bytes`, for a model whose
/// matrices all take `bytes_per_weight` on average.
fn embedding_bytes(c: &ModelConfig, weight_bytes: u64) -> f64 {
    (c.vocab_size * c.hidden_size) as f64 * bytes_per_weight(c, weight_bytes)
}

/// Average bytes of one matrix weight.
fn bytes_per_weight(c: &ModelConfig, weight_bytes: u64) -> f64 {
    let params = matrix_params(c, true, false) + (c.vocab_size * c.hidden_size) as f64;
    weight_bytes as f64 / params.max(1.0)
}

/// Weights in the matrices of the layers (projections, MLP or router and experts) and the output
/// head when `with_head`; of a mixture of experts, only the `k` a token goes through when
/// `active`, else all of them.
fn matrix_params(c: &ModelConfig, with_head: bool, active: bool) -> f64 {
    let (h, d) = (c.hidden_size as f64, c.head_dim as f64);
    let attn = h * d * (2.0 * c.num_heads as f64 + 2.0 * c.num_kv_heads as f64);
    let mlp = |layer: usize| match &c.moe {
        Some(m) if m.is_sparse(layer) => {
            let experts = if active {
                m.experts_per_token
            } else {
                m.num_experts
            };
            h * m.num_experts as f64 + 3.0 * h * (m.expert_intermediate_size * experts) as f64
        }
        _ => 3.0 * h * c.intermediate_size as f64,
    };
    let head = if with_head && !c.tie_word_embeddings {
        c.vocab_size as f64 * h
    } else {
        0.0
    };
    (0..c.num_layers).map(|l| attn + mlp(l)).sum::<f64>() + head
}

/// Bytes one decode step reads at `context` tokens: every weight (the embedding table only when it
/// is also the output head) plus the K and V cache of every layer.
pub fn decode_bytes_per_token(
    c: &ModelConfig,
    weight_bytes: u64,
    context: usize,
    kv_dtype: DType,
) -> f64 {
    // The experts no token chose are not read.
    let unread = matrix_params(c, true, false) - matrix_params(c, true, true);
    let mut bytes = weight_bytes as f64 - unread * bytes_per_weight(c, weight_bytes);
    if !c.tie_word_embeddings {
        // Untied: the table is read one row per token, the separate head in full.
        bytes -= embedding_bytes(c, weight_bytes);
    }
    let kv_per_token = 2.0 * (c.num_layers * c.num_kv_heads * c.head_dim) as f64;
    bytes + kv_per_token * context as f64 * kv_dtype.size_in_bytes() as f64
}

/// Floating-point operations per prompt token when prefilling `prompt` tokens: the layers'
/// matrices, plus causal attention (scores and weighted values) over half the prompt on average.
/// The output head runs for the last position only, so it is left out.
pub fn prefill_flops_per_token(c: &ModelConfig, prompt: usize) -> f64 {
    let attention = 4.0 * (c.num_layers * c.num_heads * c.head_dim) as f64 * (prompt as f64 / 2.0);
    2.0 * matrix_params(c, false, true) + attention
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Qwen3-30B-A3B in bf16: a decode step reads its 3.35B active parameters less the untied
    /// embedding table but for one row, about 6.1 GB, not the 61 GB of all its weights.
    #[test]
    fn a_mixture_of_experts_reads_only_the_chosen_experts() {
        let json = r#"{"model_type":"qwen3_moe","vocab_size":151936,"hidden_size":2048,
            "intermediate_size":6144,"moe_intermediate_size":768,"num_experts":128,
            "num_experts_per_tok":8,"norm_topk_prob":true,"num_hidden_layers":48,
            "num_attention_heads":32,"num_key_value_heads":4,"head_dim":128,
            "max_position_embeddings":40960,"tie_word_embeddings":false}"#;
        let c = ModelConfig::from_hf_json(json, std::path::Path::new("config.json")).expect("c");
        let (total, active) = crate::plan::parameter_counts(&c);
        let bytes = decode_bytes_per_token(&c, 2 * total, 0, DType::BF16);
        let expected = 2.0 * (active - 151_936 * 2048) as f64;
        assert!(
            (bytes / expected - 1.0).abs() < 0.001,
            "{bytes} vs {expected}"
        );
        // Prefill: two operations per active matrix weight, 2.73B of them (the embedding and
        // the head left out).
        let flops = prefill_flops_per_token(&c, 1);
        assert!((5.4e9..5.5e9).contains(&flops), "{flops}");
    }

    #[test]
    fn a_cpu_measures_something_plausible() {
        let bw = copy_bandwidth(&Device::Cpu, 8 << 20, 3).expect("copy");
        assert!(bw > 1e8, "{bw}");
        let flops = matmul_flops(&Device::Cpu, DType::F32, 128, 3).expect("matmul");
        assert!(flops > 1e7, "{flops}");
    }
}
