//! Attention on the CPU: decode (one new position against the cached keys and values, read where
//! the cache holds them) and causal prefill in blocks of query positions.
//!
//! The general path (a matmul per kv head, softmax, a second matmul) pays a matrix multiply's
//! set-up for a single query row per head and copies the values out of the cache's preallocated
//! buffer at every step. For one position the work is two passes over the cache, so it is written
//! as two passes: scores of the `rep` query heads that share a kv head against each key, then the
//! weighted sum of values, each key and value row read once for all of them. Kv heads run in
//! parallel.
//!
//! Prefill keeps candle's matmuls for scores and values but skips what the causal mask throws
//! away: queries go in blocks, each against the keys up to its last position only, and scaling,
//! mask and softmax are one pass per row (the general path makes three full-size tensors and
//! calls libm's `exp` for every entry, the masked half included; here the masked entries are
//! written as zeros without being computed, and `exp` is [`exp_nonpositive`]).

use candle_core::{DType, Device, Storage, Tensor};

use crate::error::Result;
use crate::fused::exp_nonpositive;
use crate::kernels::vector::{attention_scores, attention_values};

/// Attention of one position's queries `q` (`(1, heads, 1, head_dim)`, contiguous) over `keys` and
/// `values` (`(1, kv_heads, len, head_dim)` views of the cache), as `(1, 1, heads * head_dim)`.
/// `None` when the tensors are not f32 on the CPU in that layout (the caller keeps its general
/// path).
pub fn decode(q: &Tensor, keys: &Tensor, values: &Tensor, scale: f32) -> Result<Option<Tensor>> {
    if !matches!(q.device(), Device::Cpu)
        || [q, keys, values].iter().any(|t| t.dtype() != DType::F32)
    {
        return Ok(None);
    }
    let (b, heads, t, d) = q.dims4()?;
    let (kb, kv_heads, len, kd) = keys.dims4()?;
    if b != 1 || t != 1 || kb != 1 || kd != d || values.dims() != keys.dims() || kv_heads == 0 {
        return Ok(None);
    }
    let q = q.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let (k_store, k_layout) = keys.storage_and_layout();
    let (v_store, v_layout) = values.storage_and_layout();
    let (Storage::Cpu(k_cpu), Storage::Cpu(v_cpu)) = (&*k_store, &*v_store) else {
        return Ok(None);
    };
    let (k_all, v_all) = (k_cpu.as_slice::<f32>()?, v_cpu.as_slice::<f32>()?);
    // Rows of one head must be `head_dim` apart and the values laid out as the keys.
    let (ks, vs) = (k_layout.stride(), v_layout.stride());
    if ks[3] != 1 || ks[2] != d || ks != vs {
        return Ok(None);
    }
    let (k_off, v_off, head_stride) = (k_layout.start_offset(), v_layout.start_offset(), ks[1]);
    let rep = heads / kv_heads;
    let mut out = vec![0f32; heads * d];
    let head = |(g, out): (usize, &mut [f32])| {
        let k = &k_all[k_off + g * head_stride..][..len * d];
        let v = &v_all[v_off + g * head_stride..][..len * d];
        let mut scores = vec![0f32; rep * len];
        let q = &q[g * rep * d..][..rep * d];
        attention_scores(q, k, d, scale, &mut scores);
        for row in scores.chunks_exact_mut(len) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let mut total = 0.0;
            for s in row.iter_mut() {
                *s = exp_nonpositive(*s - max);
                total += *s;
            }
            for s in row.iter_mut() {
                *s /= total;
            }
        }
        attention_values(&scores, v, d, out);
    };
    crate::parallel::for_each(out.chunks_mut(rep * d).enumerate().collect(), head);
    Ok(Some(Tensor::from_vec(
        out,
        (1, 1, heads * d),
        &Device::Cpu,
    )?))
}

/// Query positions per block in [`prefill`]: the matmuls stay large while the share of masked
/// work they do falls to about `(blocks + 1) / (2 * blocks)` of the square.
const PREFILL_BLOCK: usize = 128;

/// Causal attention of `t` new positions' queries `q` (`(1, heads, t, head_dim)`, contiguous)
/// over `keys` and `values` (`(1, kv_heads, len, head_dim)`, the last `t` positions being the new
/// ones), as `(1, t, heads * head_dim)`. `None` when the tensors are not f32 on the CPU in that
/// layout (the caller keeps its general path).
pub fn prefill(q: &Tensor, keys: &Tensor, values: &Tensor, scale: f32) -> Result<Option<Tensor>> {
    if !matches!(q.device(), Device::Cpu)
        || [q, keys, values].iter().any(|t| t.dtype() != DType::F32)
    {
        return Ok(None);
    }
    let (b, heads, t, d) = q.dims4()?;
    let (kb, kv_heads, len, kd) = keys.dims4()?;
    if b != 1
        || kb != 1
        || kd != d
        || values.dims() != keys.dims()
        || kv_heads == 0
        || !heads.is_multiple_of(kv_heads)
        || t == 0
        || len < t
    {
        return Ok(None);
    }
    let rep = heads / kv_heads;
    let offset = len - t;
    // The `rep` query heads of a kv head stacked along the rows: one matmul per kv head.
    let q = q.reshape((1, kv_heads, rep, t, d))?;
    let values = values.contiguous()?;
    let mut outs = Vec::with_capacity(t.div_ceil(PREFILL_BLOCK));
    for start in (0..t).step_by(PREFILL_BLOCK) {
        let n = PREFILL_BLOCK.min(t - start);
        let seen = offset + start + n;
        let q_block = q
            .narrow(3, start, n)?
            .contiguous()?
            .reshape((1, kv_heads, rep * n, d))?;
        let scores = q_block.matmul(&keys.narrow(2, 0, seen)?.t()?)?;
        let Some(probs) = causal_softmax(&scores, n, scale)? else {
            return Ok(None);
        };
        let out = probs.matmul(&values.narrow(2, 0, seen)?)?;
        outs.push(out.reshape((1, kv_heads, rep, n, d))?);
    }
    let out = Tensor::cat(&outs, 3)?
        .reshape((1, heads, t, d))?
        .transpose(1, 2)?
        .reshape((1, t, heads * d))?;
    Ok(Some(out))
}

/// `softmax(scale * scores)` under the causal mask, for prefill scores `(1, kv_heads, rep * t,
/// len)` (f32, contiguous, the `rep` query heads of a kv head stacked along the rows): row
/// `r * t + i` is query position `len - t + i`, which sees keys `0..=len - t + i`; the keys after
/// it get probability zero. `None` when `scores` is not laid out so (the caller keeps its general
/// path).
pub fn causal_softmax(scores: &Tensor, t: usize, scale: f32) -> Result<Option<Tensor>> {
    if !matches!(scores.device(), Device::Cpu) || scores.dtype() != DType::F32 {
        return Ok(None);
    }
    let (b, _, rows, len) = scores.dims4()?;
    if b != 1 || t == 0 || len < t || !rows.is_multiple_of(t) {
        return Ok(None);
    }
    let (storage, layout) = scores.storage_and_layout();
    let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        return Ok(None);
    };
    let input = &cpu.as_slice::<f32>()?[start..end];
    let offset = len - t;
    let mut out = vec![0f32; input.len()];
    // Enough chunks of whole rows to balance the pool (rows get longer down the triangle).
    let chunk = rows.div_ceil(crate::parallel::threads() * 4).max(1) * len;
    let tasks: Vec<_> = out
        .chunks_mut(chunk)
        .zip(input.chunks(chunk))
        .enumerate()
        .collect();
    crate::parallel::for_each(tasks, |(c, (out, input))| {
        let first = c * chunk / len;
        for (j, (o, s)) in out
            .chunks_exact_mut(len)
            .zip(input.chunks_exact(len))
            .enumerate()
        {
            let seen = offset + (first + j) % t + 1;
            softmax_into(&s[..seen], scale, &mut o[..seen]);
        }
    });
    drop(storage);
    Ok(Some(Tensor::from_vec(out, scores.shape(), &Device::Cpu)?))
}

/// `out = softmax(scale * s)`.
fn softmax_into(s: &[f32], scale: f32, out: &mut [f32]) {
    let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
    for (o, &x) in out.iter_mut().zip(s) {
        *o = exp_nonpositive(x * scale - max);
    }
    let total = sum(out);
    let inv = 1.0 / total;
    for o in out.iter_mut() {
        *o *= inv;
    }
}

/// A sum in eight independent lanes (a single running sum cannot be vectorised).
fn sum(a: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let a8 = a.chunks_exact(8);
    let tail: f32 = a8.remainder().iter().sum();
    for x in a8 {
        for i in 0..8 {
            lanes[i] += x[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    /// Queries for `t` new positions, and keys and values as `len`-position views of a cache of
    /// `capacity` (as the KV cache hands them out).
    fn cache_views(
        heads: usize,
        kv_heads: usize,
        d: usize,
        t: usize,
        len: usize,
        capacity: usize,
    ) -> (Tensor, Tensor, Tensor) {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, heads, t, d), &dev).expect("q");
        let k_buf = Tensor::randn(0f32, 1.0, (1, kv_heads, capacity, d), &dev).expect("k");
        let v_buf = Tensor::randn(0f32, 1.0, (1, kv_heads, capacity, d), &dev).expect("v");
        let k = k_buf.narrow(2, 0, len).expect("k view");
        let v = v_buf.narrow(2, 0, len).expect("v view");
        (q, k, v)
    }

    /// The additive causal mask of `t` new positions over `len` keys.
    fn causal_mask(t: usize, len: usize) -> Tensor {
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| {
                (0..len).map(move |j| {
                    if j <= len - t + i {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        Tensor::from_vec(mask, (t, len), &Device::Cpu).expect("mask")
    }

    #[test]
    fn matches_matmul_softmax_matmul_on_a_cache_view() {
        let (heads, kv_heads, d, len, capacity) = (6, 2, 16, 13, 32);
        let (q, k, v) = cache_views(heads, kv_heads, d, 1, len, capacity);
        let scale = 0.25f32;
        let got = super::decode(&q, &k, &v, scale)
            .expect("decode")
            .expect("fast path taken");
        let rep = heads / kv_heads;
        let q = q.reshape((1, kv_heads, rep, d)).expect("reshape");
        let k = k.contiguous().expect("k");
        let v = v.contiguous().expect("v");
        let scores = (q.matmul(&k.t().expect("t")).expect("qk") * scale as f64).expect("scale");
        let probs = candle_nn::ops::softmax_last_dim(&scores).expect("softmax");
        let expected = probs.matmul(&v).expect("pv").flatten_all().expect("flat");
        let (got, expected): (Vec<f32>, Vec<f32>) = (
            got.flatten_all().and_then(|t| t.to_vec1()).expect("got"),
            expected.to_vec1().expect("expected"),
        );
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!((g - e).abs() < 1e-5, "{i}: {g} vs {e}");
        }
    }

    #[test]
    fn causal_softmax_matches_scale_mask_softmax() {
        let dev = Device::Cpu;
        // Two query heads per kv head, 5 new positions after 3 cached ones.
        let (kv_heads, rep, t, len) = (3, 2, 5, 8);
        let scores = Tensor::randn(0f32, 40.0, (1, kv_heads, rep * t, len), &dev).expect("scores");
        let mask = causal_mask(t, len);
        let flat = |x: &Tensor| {
            x.flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("flat")
        };
        // A negative scale too, over a spread wide enough that `exp` would overflow if the row
        // maximum were taken before scaling.
        for scale in [0.3f32, -0.3, -2.0] {
            let got = super::causal_softmax(&scores, t, scale)
                .expect("softmax")
                .expect("fast path taken");
            let masked = (&scores * scale as f64)
                .and_then(|s| s.reshape((1, kv_heads, rep, t, len)))
                .and_then(|s| s.broadcast_add(&mask))
                .and_then(|s| s.reshape((1, kv_heads, rep * t, len)))
                .expect("masked");
            let expected = candle_nn::ops::softmax_last_dim(&masked).expect("softmax");
            let (got, expected) = (flat(&got), flat(&expected));
            for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                assert!((g - e).abs() < 1e-6, "scale {scale}, {i}: {g} vs {e}");
            }
        }
    }

    #[test]
    fn causal_softmax_declines_what_it_cannot_read() {
        let dev = Device::Cpu;
        let scores = Tensor::zeros((1, 2, 6, 4), candle_core::DType::F32, &dev).expect("scores");
        // Rows that are not a whole number of query blocks, and more queries than keys.
        assert!(
            super::causal_softmax(&scores, 4, 1.0)
                .expect("checked")
                .is_none()
        );
        let scores = Tensor::zeros((1, 2, 6, 2), candle_core::DType::F32, &dev).expect("scores");
        assert!(
            super::causal_softmax(&scores, 3, 1.0)
                .expect("checked")
                .is_none()
        );
        let t = scores.t().expect("transposed");
        assert!(
            super::causal_softmax(&t, 1, 1.0)
                .expect("checked")
                .is_none()
        );
    }

    #[test]
    fn prefill_declines_zero_positions() {
        let (q, k, v) = cache_views(4, 2, 8, 0, 3, 8);
        assert!(super::prefill(&q, &k, &v, 1.0).expect("checked").is_none());
    }

    #[test]
    fn prefill_matches_masked_attention_across_blocks() {
        // More new positions than one block, after a cached prefix, in a cache view.
        let (heads, kv_heads, d, cached, t, capacity) = (4, 2, 8, 5, 300, 320);
        let len = cached + t;
        let (q, k, v) = cache_views(heads, kv_heads, d, t, len, capacity);
        let scale = 0.35f32;
        let got = super::prefill(&q, &k, &v, scale)
            .expect("prefill")
            .expect("fast path taken");
        assert_eq!(got.dims(), &[1, t, heads * d]);
        let rep = heads / kv_heads;
        let mask = causal_mask(t, len);
        let q = q.reshape((1, kv_heads, rep * t, d)).expect("stack");
        let k = k.contiguous().expect("k");
        let v = v.contiguous().expect("v");
        let expected = (q.matmul(&k.t().expect("t")).expect("qk") * scale as f64)
            .and_then(|s| s.reshape((1, kv_heads, rep, t, len)))
            .and_then(|s| s.broadcast_add(&mask))
            .and_then(|s| s.reshape((1, kv_heads, rep * t, len)))
            .and_then(|s| candle_nn::ops::softmax_last_dim(&s))
            .and_then(|p| p.matmul(&v))
            .and_then(|o| o.reshape((1, heads, t, d)))
            .and_then(|o| o.transpose(1, 2))
            .and_then(|o| o.reshape((1, t, heads * d)))
            .expect("reference");
        let flat = |x: &Tensor| {
            x.flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("flat")
        };
        for (i, (g, e)) in flat(&got).iter().zip(&flat(&expected)).enumerate() {
            assert!((g - e).abs() < 1e-5, "{i}: {g} vs {e}");
        }
    }
}
