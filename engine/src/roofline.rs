//! How close a run comes to the hardware's limits.
//!
//! Decoding one token reads every weight matrix once (the embedding table only for its one row,
//! unless it doubles as the output projection) plus the KV cache so far, so its bound is memory
//! bandwidth; prefill is bound by matrix-multiply throughput. Both limits are measured on the device
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
    let params = matrix_params(c, true) + (c.vocab_size * c.hidden_size) as f64;
    let per_weight = weight_bytes as f64 / params.max(1.0);
    (c.vocab_size * c.hidden_size) as f64 * per_weight
}

/// Weights in the matrices a token goes through (projections, MLP, and the output head when
/// `with_head`).
fn matrix_params(c: &ModelConfig, with_head: bool) -> f64 {
    let (h, d) = (c.hidden_size as f64, c.head_dim as f64);
    let attn = h * d * (2.0 * c.num_heads as f64 + 2.0 * c.num_kv_heads as f64);
    let mlp = 3.0 * h * c.intermediate_size as f64;
    let head = if with_head && !c.tie_word_embeddings {
        c.vocab_size as f64 * h
    } else {
        0.0
    };
    c.num_layers as f64 * (attn + mlp) + head
}

/// Bytes one decode step reads at `context` tokens: every weight (the embedding table only when it
/// is also the output head) plus the K and V cache of every layer.
pub fn decode_bytes_per_token(
    c: &ModelConfig,
    weight_bytes: u64,
    context: usize,
    kv_dtype: DType,
) -> f64 {
    let mut bytes = weight_bytes as f64;
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
    2.0 * matrix_params(c, false) + attention
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_measures_something_plausible() {
        let bw = copy_bandwidth(&Device::Cpu, 8 << 20, 3).expect("copy");
        assert!(bw > 1e8, "{bw}");
        let flops = matmul_flops(&Device::Cpu, DType::F32, 128, 3).expect("matmul");
        assert!(flops > 1e7, "{flops}");
    }
}
