//! Attention on the CPU: decode (one new position against the cached keys and values, read page
//! by page in the cache's own type) and causal prefill in blocks of query positions, one kv head
//! at a time.
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
use crate::kv_cache::{LayerKv, PAGE, page_rows_f32};

/// Attention of one position's queries `q` (`(1, heads, 1, head_dim)`) over every position
/// `layer` holds, as `(1, 1, heads * head_dim)`. Keys and values are read page by page in the
/// cache's own type (f16 and Q8_0 rows converted as they stream through, never the whole cache).
/// `None` when `q` is not f32 on the CPU (the caller takes candle's path).
pub fn decode(q: &Tensor, layer: &LayerKv, scale: f32) -> Result<Option<Tensor>> {
    if !matches!(q.device(), Device::Cpu) || q.dtype() != DType::F32 {
        return Ok(None);
    }
    let (b, heads, t, d) = q.dims4()?;
    let (kv_heads, kd) = layer.head_shape();
    let len = layer.len();
    if b != 1 || t != 1 || kd != d || kv_heads == 0 || len == 0 {
        return Ok(None);
    }
    let q = q.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let pages: Vec<_> = layer.filled_pages().collect();
    let rep = heads / kv_heads;
    let mut out = vec![0f32; heads * d];
    let head = |(g, out): (usize, &mut [f32])| -> Result<()> {
        let q = &q[g * rep * d..][..rep * d];
        let mut rows = vec![0f32; PAGE * d];
        let mut part = vec![0f32; rep * PAGE];
        let mut scores = vec![0f32; rep * len];
        for (i, &(page, filled)) in pages.iter().enumerate() {
            page_rows_f32(page, g, 0, filled, d, &mut rows[..filled * d], true)?;
            attention_scores(q, &rows[..filled * d], d, scale, &mut part[..rep * filled]);
            for r in 0..rep {
                scores[r * len + i * PAGE..][..filled]
                    .copy_from_slice(&part[r * filled..][..filled]);
            }
        }
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
        let mut sum = vec![0f32; rep * d];
        for (i, &(page, filled)) in pages.iter().enumerate() {
            page_rows_f32(page, g, 0, filled, d, &mut rows[..filled * d], false)?;
            for r in 0..rep {
                part[r * filled..][..filled]
                    .copy_from_slice(&scores[r * len + i * PAGE..][..filled]);
            }
            attention_values(&part[..rep * filled], &rows[..filled * d], d, &mut sum);
            for (o, s) in out.iter_mut().zip(&sum) {
                *o += s;
            }
        }
        Ok(())
    };
    let failures = std::sync::Mutex::new(Vec::new());
    crate::parallel::for_each(out.chunks_mut(rep * d).enumerate().collect(), |task| {
        if let Err(e) = head(task)
            && let Ok(mut f) = failures.lock()
        {
            f.push(e);
        }
    });
    if let Some(e) = failures.into_inner().ok().and_then(|mut f| f.pop()) {
        return Err(e);
    }
    Ok(Some(Tensor::from_vec(
        out,
        (1, 1, heads * d),
        &Device::Cpu,
    )?))
}

/// Query positions per block in [`prefill`]: the matmuls stay large while the share of masked
/// work they do falls to about `(blocks + 1) / (2 * blocks)` of the square.
pub(crate) const PREFILL_BLOCK: usize = 128;

/// Causal attention of the `t` newest positions' queries `q` (`(1, heads, t, head_dim)`) over
/// every position `layer` holds (the last `t` being the new ones), as `(1, t, heads * head_dim)`.
/// One kv head at a time: its keys and values are gathered as f32 rows (what the matmuls read),
/// so the scores of one block of queries against one head's keys are the largest buffer. `None`
/// when `q` is not f32 on the CPU (the caller takes candle's path).
pub fn prefill(q: &Tensor, layer: &LayerKv, scale: f32) -> Result<Option<Tensor>> {
    if !matches!(q.device(), Device::Cpu) || q.dtype() != DType::F32 {
        return Ok(None);
    }
    let (b, heads, t, d) = q.dims4()?;
    let (kv_heads, kd) = layer.head_shape();
    let len = layer.len();
    if b != 1 || kd != d || kv_heads == 0 || !heads.is_multiple_of(kv_heads) || t == 0 || len < t {
        return Ok(None);
    }
    let rep = heads / kv_heads;
    let offset = len - t;
    let mut per_head = Vec::with_capacity(kv_heads);
    for g in 0..kv_heads {
        let (k_rows, v_rows) = layer.head_rows_f32(g, len)?;
        let keys = Tensor::from_vec(k_rows, (1, 1, len, d), &Device::Cpu)?;
        let values = Tensor::from_vec(v_rows, (1, 1, len, d), &Device::Cpu)?;
        // The `rep` query heads of this kv head stacked along the rows: one matmul for them all.
        let q = q.narrow(1, g * rep, rep)?.reshape((1, 1, rep, t, d))?;
        let mut outs = Vec::with_capacity(t.div_ceil(PREFILL_BLOCK));
        for start in (0..t).step_by(PREFILL_BLOCK) {
            let n = PREFILL_BLOCK.min(t - start);
            let seen = offset + start + n;
            let q_block = q
                .narrow(3, start, n)?
                .contiguous()?
                .reshape((1, 1, rep * n, d))?;
            let scores = q_block.matmul(&keys.narrow(2, 0, seen)?.t()?)?;
            let Some(probs) = causal_softmax(&scores, n, scale)? else {
                return Ok(None);
            };
            let out = probs.matmul(&values.narrow(2, 0, seen)?)?;
            outs.push(out.reshape((1, rep, n, d))?);
        }
        per_head.push(Tensor::cat(&outs, 2)?);
    }
    let out = Tensor::cat(&per_head, 1)?
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
    use std::sync::Arc;

    use candle_core::{Device, Tensor};

    use crate::kv_cache::KvType;
    use crate::kv_cache::{KvCache, PagePool};

    /// Queries for the last `t` of `len` positions, and a cache of `kv_type` holding random keys
    /// and values for all `len` (appended in two parts, so pages are crossed mid-append), with
    /// those keys and values as the cache holds them (after rounding to its type), f32.
    fn cached(
        heads: usize,
        kv_heads: usize,
        d: usize,
        t: usize,
        len: usize,
        kv_type: KvType,
    ) -> (Tensor, Tensor, Tensor, KvCache) {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, heads, t, d), &dev).expect("q");
        let k = Tensor::randn(0f32, 1.0, (1, kv_heads, len, d), &dev).expect("k");
        let v = Tensor::randn(0f32, 1.0, (1, kv_heads, len, d), &dev).expect("v");
        let pool = Arc::new(PagePool::new(kv_type, kv_heads, d, &dev).expect("pool"));
        let mut cache = KvCache::new(1, len, pool);
        let layer = cache.layer_mut(0).expect("layer");
        let first = len / 3;
        for (start, n) in [(0, first), (first, len - first)] {
            let (k, v) = (
                k.narrow(2, start, n).expect("k"),
                v.narrow(2, start, n).expect("v"),
            );
            layer.append(&k, &v, len).expect("append");
        }
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for g in 0..kv_heads {
            let (k, v) = layer.head_rows_f32(g, len).expect("rows");
            keys.extend(k);
            values.extend(v);
        }
        let stack =
            |all: Vec<f32>| Tensor::from_vec(all, (1, kv_heads, len, d), &dev).expect("stack");
        (q, stack(keys), stack(values), cache)
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

    /// Masked attention the plain way: `(1, t, heads * d)`.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Vec<f32> {
        let (_, heads, t, d) = q.dims4().expect("q");
        let (_, kv_heads, len, _) = k.dims4().expect("k");
        let rep = heads / kv_heads;
        let mask = causal_mask(t, len);
        let q = q.reshape((1, kv_heads, rep * t, d)).expect("stack");
        (q.matmul(&k.t().expect("t")).expect("qk") * scale as f64)
            .and_then(|s| s.reshape((1, kv_heads, rep, t, len)))
            .and_then(|s| s.broadcast_add(&mask))
            .and_then(|s| s.reshape((1, kv_heads, rep * t, len)))
            .and_then(|s| candle_nn::ops::softmax_last_dim(&s))
            .and_then(|p| p.matmul(v))
            .and_then(|o| o.reshape((1, heads, t, d)))
            .and_then(|o| o.transpose(1, 2))
            .and_then(|o| o.reshape((1, t, heads * d)))
            .and_then(|o| o.flatten_all())
            .and_then(|o| o.to_vec1())
            .expect("reference")
    }

    fn assert_close(got: &Tensor, expected: &[f32], what: &str) {
        let got: Vec<f32> = got.flatten_all().and_then(|t| t.to_vec1()).expect("flat");
        assert_eq!(got.len(), expected.len(), "{what}");
        for (i, (g, e)) in got.iter().zip(expected).enumerate() {
            assert!((g - e).abs() < 1e-5, "{what}, {i}: {g} vs {e}");
        }
    }

    #[test]
    fn decode_reads_every_cache_type_across_pages() {
        // Three pages, the last one partly filled; GQA 6/2.
        for kv_type in KvType::ALL {
            let (q, k, v, mut cache) = cached(6, 2, 32, 1, 600, kv_type);
            let layer = cache.layer_mut(0).expect("layer");
            let got = super::decode(&q, layer, 0.25)
                .expect("decode")
                .expect("fast path taken");
            assert_close(&got, &reference(&q, &k, &v, 0.25), kv_type.name());
        }
    }

    #[test]
    fn prefill_reads_every_cache_type_across_blocks_and_pages() {
        // More new positions than one query block, after a cached prefix, across a page.
        for kv_type in KvType::ALL {
            let (q, k, v, mut cache) = cached(4, 2, 32, 300, 305, kv_type);
            let layer = cache.layer_mut(0).expect("layer");
            let got = super::prefill(&q, layer, 0.35)
                .expect("prefill")
                .expect("fast path taken");
            assert_eq!(got.dims(), &[1, 300, 4 * 32]);
            assert_close(&got, &reference(&q, &k, &v, 0.35), kv_type.name());
        }
    }

    #[test]
    fn candles_path_merges_tiles_exactly() {
        // Decode over three pages; prefill whose queries straddle the end of the first
        // eight-page tile, so the mask applies in the second.
        for (t, len) in [(1, 600), (40, 2100)] {
            for kv_type in [KvType::F32, KvType::F16, KvType::Bf16] {
                let (q, k, v, mut cache) = cached(4, 2, 32, t, len, kv_type);
                let layer = cache.layer_mut(0).expect("layer");
                let got = crate::paged_attention::attend(&q, layer, 0.3).expect("attend");
                let what = format!("{kv_type} t={t}");
                assert_close(&got, &reference(&q, &k, &v, 0.3), &what);
            }
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
        let (_, _, _, mut cache) = cached(4, 2, 32, 1, 3, KvType::F32);
        let q = Tensor::zeros((1, 4, 0, 32), candle_core::DType::F32, &Device::Cpu).expect("q");
        let layer = cache.layer_mut(0).expect("layer");
        assert!(super::prefill(&q, layer, 1.0).expect("checked").is_none());
    }
}
