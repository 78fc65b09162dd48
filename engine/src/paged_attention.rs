//! Attention over the paged KV cache with candle's ops: the code a GPU runs (and the CPU with
//! `--cpu-ops candle`).
//!
//! Keys are visited in tiles (one page in decode; in prefill as many pages as keep a tile's scores
//! within [`SCORE_TILE_BYTES`], up to [`KEY_TILE`] keys) and the softmax is merged
//! across tiles by log-sum-exp (the running maximum, the running sum of exponentials, and the
//! running weighted sum of values, rescaled whenever the maximum grows). So nothing of the size of
//! (queries x context) is ever made, decode reads each page where it lies instead of copying the
//! cache into one buffer, and the causal mask exists only for the tiles that cross the diagonal.
//! Scores, maxima and sums are f32 whatever the activations' type.

use candle_core::{D, DType, Tensor};

use crate::error::{EngineError, Result};
use crate::kv_cache::{LayerKv, PAGE};

/// Most keys per tile in prefill (eight pages).
pub(crate) const KEY_TILE: usize = PAGE * 8;

/// Most bytes of one tile's f32 scores in prefill. A tile's softmax makes a few tensors of this
/// size (scores, masked, shifted, exponentials), so this bounds attention's scratch; smaller
/// tiles only mean more, cheaper passes.
pub(crate) const SCORE_TILE_BYTES: usize = 16 << 20;

/// Keys per tile for `rows` query rows (all heads together): whole pages, at least one.
pub(crate) fn key_tile(rows: usize) -> usize {
    if rows <= 1 {
        return PAGE;
    }
    let pages = SCORE_TILE_BYTES / (rows * 4 * PAGE);
    (pages.max(1) * PAGE).min(KEY_TILE)
}

/// Causal attention of the `t` newest positions' queries `q` (`(1, heads, t, head_dim)`, in the
/// activations' dtype) over every position `layer` holds, as `(1, t, heads * head_dim)`.
pub fn attend(q: &Tensor, layer: &LayerKv, scale: f64) -> Result<Tensor> {
    let (_, heads, t, d) = q.dims4()?;
    let (kv_heads, _) = layer.head_shape();
    let len = layer.len();
    if len < t || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(EngineError::InvalidRequest(format!(
            "attention of {t} queries over {len} cached positions"
        )));
    }
    let (act, rep, offset) = (q.dtype(), heads / kv_heads, len - t);
    // The `rep` query heads of a kv head stacked along the rows: one matmul per kv head.
    let q = q.contiguous()?.reshape((1, kv_heads, rep * t, d))?;
    let tile = if t == 1 { PAGE } else { key_tile(heads * t) };
    let mut state: Option<(Tensor, Tensor, Tensor)> = None; // (max, sum, weighted values)
    for start in (0..len).step_by(tile) {
        let n = tile.min(len - start);
        let (k, v) = keys_and_values(layer, start, n, act)?;
        let mut scores = (q.matmul(&k.t()?)? * scale)?.to_dtype(DType::F32)?;
        // Keys past the first query's position are hidden from some queries.
        if start + n > offset + 1 {
            let mask = causal_mask(t, start, n, offset, q.device())?;
            scores = scores
                .reshape((1, kv_heads, rep, t, n))?
                .broadcast_add(&mask)?
                .reshape((1, kv_heads, rep * t, n))?;
        }
        let tile_max = scores.max_keepdim(D::Minus1)?;
        let max = match &state {
            Some((m, _, _)) => m.maximum(&tile_max)?,
            None => tile_max,
        };
        let p = scores.broadcast_sub(&max)?.exp()?;
        let sum = p.sum_keepdim(D::Minus1)?;
        let pv = p
            .to_dtype(v.dtype())?
            .matmul(&v.contiguous()?)?
            .to_dtype(DType::F32)?;
        state = Some(match state {
            None => (max, sum, pv),
            Some((old_max, old_sum, old_pv)) => {
                let alpha = (old_max - &max)?.exp()?;
                let sum = (old_sum.broadcast_mul(&alpha)? + sum)?;
                let pv = (old_pv.broadcast_mul(&alpha)? + pv)?;
                (max, sum, pv)
            }
        });
    }
    let (_, sum, pv) =
        state.ok_or_else(|| EngineError::InvalidRequest("attention over an empty cache".into()))?;
    Ok(pv
        .broadcast_div(&sum)?
        .to_dtype(act)?
        .reshape((1, heads, t, d))?
        .transpose(1, 2)?
        .reshape((1, t, heads * d))?)
}

/// Keys and values of positions `start..start + n` as `(1, kv_heads, n, head_dim)` in `dtype`:
/// views of one page, or the pages of a prefill tile put side by side.
fn keys_and_values(
    layer: &LayerKv,
    start: usize,
    n: usize,
    dtype: DType,
) -> Result<(Tensor, Tensor)> {
    let mut keys = Vec::new();
    let mut values = Vec::new();
    let mut at = start;
    while at < start + n {
        let take = (PAGE - at % PAGE).min(start + n - at);
        let (k, v) = layer.dense_range(at, take)?;
        keys.push(k);
        values.push(v);
        at += take;
    }
    let (k, v) = if keys.len() == 1 {
        (keys.remove(0), values.remove(0))
    } else {
        (Tensor::cat(&keys, 2)?, Tensor::cat(&values, 2)?)
    };
    Ok((k.to_dtype(dtype)?, v.to_dtype(dtype)?))
}

/// `(t, n)` additive mask of keys `start..start + n` for queries at positions `offset..offset + t`:
/// query `i` sees key `j` when `start + j <= offset + i`.
fn causal_mask(
    t: usize,
    start: usize,
    n: usize,
    offset: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let data: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..n).map(move |j| {
                if start + j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(data, (t, n), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_hides_keys_after_each_query() {
        // Queries at positions 5 and 6, keys 4..8.
        let m: Vec<Vec<f32>> = causal_mask(2, 4, 4, 5, &candle_core::Device::Cpu)
            .expect("mask")
            .to_vec2()
            .expect("rows");
        assert_eq!(m[0][..2], [0.0, 0.0]);
        assert!(m[0][2].is_infinite() && m[0][3].is_infinite());
        assert_eq!(m[1][..3], [0.0, 0.0, 0.0]);
        assert!(m[1][3].is_infinite());
    }
}
