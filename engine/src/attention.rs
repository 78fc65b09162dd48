//! Decode attention on the CPU: one new position against the cached keys and values, read where
//! the cache holds them.
//!
//! The general path (a matmul per kv head, softmax, a second matmul) pays a matrix multiply's
//! set-up for a single query row per head and copies the values out of the cache's preallocated
//! buffer at every step. For one position the work is two passes over the cache, so it is written
//! as two passes: scores of the `rep` query heads that share a kv head against each key, then the
//! weighted sum of values, each key and value row read once for all of them. Kv heads run in
//! parallel.

use candle_core::{DType, Device, Storage, Tensor};

use crate::error::Result;

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
        for (pos, key) in k.chunks_exact(d).enumerate() {
            for r in 0..rep {
                scores[r * len + pos] = dot(&q[(g * rep + r) * d..][..d], key) * scale;
            }
        }
        for row in scores.chunks_exact_mut(len) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let mut total = 0.0;
            for s in row.iter_mut() {
                *s = (*s - max).exp();
                total += *s;
            }
            for s in row.iter_mut() {
                *s /= total;
            }
        }
        for (pos, value) in v.chunks_exact(d).enumerate() {
            for (r, o) in out.chunks_exact_mut(d).enumerate() {
                let p = scores[r * len + pos];
                for (o, v) in o.iter_mut().zip(value) {
                    *o += p * v;
                }
            }
        }
    };
    crate::parallel::for_each(out.chunks_mut(rep * d).enumerate().collect(), head);
    Ok(Some(Tensor::from_vec(
        out,
        (1, 1, heads * d),
        &Device::Cpu,
    )?))
}

/// A dot product in eight independent lanes (a single running sum cannot be vectorised).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    #[test]
    fn matches_matmul_softmax_matmul_on_a_cache_view() {
        let dev = Device::Cpu;
        let (heads, kv_heads, d, len, capacity) = (6, 2, 16, 13, 32);
        let q = Tensor::randn(0f32, 1.0, (1, heads, 1, d), &dev).expect("q");
        let k_buf = Tensor::randn(0f32, 1.0, (1, kv_heads, capacity, d), &dev).expect("k");
        let v_buf = Tensor::randn(0f32, 1.0, (1, kv_heads, capacity, d), &dev).expect("v");
        let (k, v) = (
            k_buf.narrow(2, 0, len).expect("k view"),
            v_buf.narrow(2, 0, len).expect("v view"),
        );
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
}
