//! Attention on the CPU: decode (one new position against the cached keys and values, read page
//! by page in the cache's own type) and causal prefill, one kv head at a time.
//!
//! Both run one routine per query position ([`attend`]): the scores of the `rep` query heads that
//! share a kv head against each key, a softmax, then the weighted sum of values, page by page.
//! A position's output is therefore the same to the bit whether it was decoded alone, prefilled
//! among a whole prompt or in a chunk of one: with the matmul kernels' same guarantee (see
//! [`crate::kernels`]), a sequence's logits do not depend on how its prompt was split or what
//! shared its forward pass. Decode converts each page as it streams through (never the whole
//! cache); prefill converts one kv head's keys and values once and runs its positions in
//! parallel. Scores are computed only for the keys a position sees (no masked half), and `exp`
//! is [`exp_nonpositive`].

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::fused::exp_nonpositive;
use crate::kernels::vector::{attention_scores, attention_values};
use crate::kv_cache::{LayerKv, PAGE, Page, page_rows_f32};

/// One kv head's keys and values, page by page, as f32 rows.
trait HeadRows {
    /// The first `filled` rows (`d` values each) of page `page`: its keys, or its values.
    fn page(&mut self, page: usize, filled: usize, keys: bool) -> Result<&[f32]>;
}

/// A kv head's rows read from the cache's pages, converted as they stream through.
struct CachedRows<'a> {
    pages: &'a [(&'a Page, usize)],
    head: usize,
    d: usize,
    buf: Vec<f32>,
}

impl HeadRows for CachedRows<'_> {
    fn page(&mut self, page: usize, filled: usize, keys: bool) -> Result<&[f32]> {
        let Some(&(held, _)) = self.pages.get(page) else {
            return Err(EngineError::InvalidRequest(format!(
                "attention read page {page} of {}",
                self.pages.len()
            )));
        };
        self.buf.resize(PAGE * self.d, 0.0);
        let out = &mut self.buf[..filled * self.d];
        page_rows_f32(held, self.head, 0, filled, self.d, out, keys)?;
        Ok(out)
    }
}

/// A kv head's rows converted once (prefill reads them for every position).
struct GatheredRows<'a> {
    keys: &'a [f32],
    values: &'a [f32],
    d: usize,
}

impl HeadRows for GatheredRows<'_> {
    fn page(&mut self, page: usize, filled: usize, keys: bool) -> Result<&[f32]> {
        let rows = if keys { self.keys } else { self.values };
        Ok(&rows[page * PAGE * self.d..][..filled * self.d])
    }
}

/// Buffers [`attend`] reuses from one position to the next.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    part: Vec<f32>,
    sum: Vec<f32>,
}

/// Attention of a block of consecutive positions that share one kv head: `q` holds each
/// position's `rep` query rows in turn (`positions * rep * d`), and the block's position `p`
/// sees positions `0..seen + p` of `rows`. Written into `out` (shaped as `q`). Decode (one
/// position) and prefill (blocks of positions, so that a page of keys and values is read once
/// for all of them) both run this, and what a row computes does not depend on the block: each
/// score is its own key's, each row's softmax reads only its own scores, and each row's values
/// are summed page by page, then the pages added in order.
#[allow(clippy::too_many_arguments)]
fn attend(
    q: &[f32],
    seen: usize,
    rep: usize,
    d: usize,
    scale: f32,
    rows: &mut impl HeadRows,
    s: &mut Scratch,
    out: &mut [f32],
) -> Result<()> {
    let n_rows = q.len() / d;
    // What the block's last position sees; earlier rows' scores past their own end are unused.
    let len = seen + (n_rows / rep).saturating_sub(1);
    let sees = |r: usize| seen + r / rep;
    s.scores.resize(n_rows * len, 0.0);
    s.part.resize(n_rows * PAGE, 0.0);
    s.sum.resize(d, 0.0);
    let pages = len.div_ceil(PAGE);
    let filled = |i: usize, len: usize| PAGE.min(len - i * PAGE);
    for i in 0..pages {
        let n = filled(i, len);
        let keys = rows.page(i, n, true)?;
        attention_scores(q, keys, d, scale, &mut s.part[..n_rows * n]);
        for r in 0..n_rows {
            s.scores[r * len + i * PAGE..][..n].copy_from_slice(&s.part[r * n..][..n]);
        }
    }
    for r in 0..n_rows {
        let row = &mut s.scores[r * len..][..sees(r)];
        let max = lanes(row, f32::NEG_INFINITY, f32::max);
        for x in row.iter_mut() {
            *x = exp_nonpositive(*x - max);
        }
        let inv = 1.0 / lanes(row, 0.0, |a, b| a + b);
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
    out.fill(0.0);
    for i in 0..pages {
        let values = rows.page(i, filled(i, len), false)?;
        for (r, out) in out.chunks_exact_mut(d).enumerate() {
            if sees(r) <= i * PAGE {
                continue;
            }
            let n = filled(i, sees(r));
            let p = &s.scores[r * len + i * PAGE..][..n];
            attention_values(p, n, &values[..n * d], d, &mut s.sum);
            for (o, x) in out.iter_mut().zip(&s.sum) {
                *o += x;
            }
        }
    }
    Ok(())
}

/// `xs` folded by `op` in eight independent lanes, then across them (a single running fold is
/// one long dependency chain the compiler cannot vectorise); a fixed order, so the same row
/// gives the same bits.
fn lanes(xs: &[f32], start: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [start; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder().iter().fold(start, |a, &x| op(a, x));
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = op(*a, x);
        }
    }
    acc.into_iter().fold(tail, &op)
}

/// Runs `work` on each task over the CPU pool and returns the first error any of them met.
fn for_each_fallible<T: Send>(tasks: Vec<T>, work: impl Fn(T) -> Result<()> + Sync) -> Result<()> {
    let failures = std::sync::Mutex::new(Vec::new());
    crate::parallel::for_each(tasks, |task| {
        if let Err(e) = work(task)
            && let Ok(mut f) = failures.lock()
        {
            f.push(e);
        }
    });
    match failures.into_inner() {
        Ok(mut f) => f.pop().map_or(Ok(()), Err),
        Err(_) => Err(EngineError::InvalidRequest(
            "an attention task panicked".into(),
        )),
    }
}

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
    if b != 1 || t != 1 || kd != d || kv_heads == 0 || !heads.is_multiple_of(kv_heads) || len == 0 {
        return Ok(None);
    }
    let q = q.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let pages: Vec<_> = layer.filled_pages().collect();
    let rep = heads / kv_heads;
    let mut out = vec![0f32; heads * d];
    let tasks: Vec<_> = out.chunks_mut(rep * d).enumerate().collect();
    for_each_fallible(tasks, |(g, out)| {
        let mut rows = CachedRows {
            pages: &pages,
            head: g,
            d,
            buf: Vec::new(),
        };
        let q = &q[g * rep * d..][..rep * d];
        attend(
            q,
            len,
            rep,
            d,
            scale,
            &mut rows,
            &mut Scratch::default(),
            out,
        )
    })?;
    Ok(Some(Tensor::from_vec(
        out,
        (1, 1, heads * d),
        &Device::Cpu,
    )?))
}

/// Query positions per parallel task in [`prefill`]: each page of keys and values is read once
/// for all of them (from cache, not memory), and tasks stay many enough to balance (later
/// positions see more keys).
pub(crate) const PREFILL_TASK: usize = 16;

/// Causal attention of the `t` newest positions' queries `q` (`(1, heads, t, head_dim)`) over
/// every position `layer` holds (the last `t` being the new ones), as `(1, t, heads * head_dim)`.
/// One kv head at a time: its keys and values are converted to f32 rows once, then each position
/// runs [`attend`] over the keys it sees. `None` when `q` is not f32 on the CPU (the caller
/// takes candle's path).
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
    let q = q.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; t * heads * d];
    // One kv head's outputs, position-major (`t * rep * d`), before they go into `out`.
    let mut head_out = vec![0f32; t * rep * d];
    for g in 0..kv_heads {
        let (keys, values) = layer.head_rows_f32(g, len)?;
        let tasks: Vec<_> = head_out
            .chunks_mut(PREFILL_TASK * rep * d)
            .enumerate()
            .collect();
        for_each_fallible(tasks, |(c, dst)| {
            let mut rows = GatheredRows {
                keys: &keys,
                values: &values,
                d,
            };
            let first = c * PREFILL_TASK;
            let mut q_rows = vec![0f32; dst.len()];
            for (j, q_pos) in q_rows.chunks_exact_mut(rep * d).enumerate() {
                // Query heads `g * rep..` at position `first + j`, out of `(heads, t, d)`.
                for (r, q_row) in q_pos.chunks_exact_mut(d).enumerate() {
                    q_row.copy_from_slice(&q[((g * rep + r) * t + first + j) * d..][..d]);
                }
            }
            let seen = offset + first + 1;
            let mut scratch = Scratch::default();
            attend(&q_rows, seen, rep, d, scale, &mut rows, &mut scratch, dst)
        })?;
        for (i, src) in head_out.chunks_exact(rep * d).enumerate() {
            out[(i * heads + g * rep) * d..][..rep * d].copy_from_slice(src);
        }
    }
    Ok(Some(Tensor::from_vec(
        out,
        (1, t, heads * d),
        &Device::Cpu,
    )?))
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
    fn a_position_gets_the_same_bits_decoded_alone_or_prefilled() {
        // 70 new positions after 200 cached ones, across a page boundary: each position's output
        // from the whole prefill, from a prefill of a chunk ending there, and decoded alone
        // (the cache truncated to it) must be equal to the bit.
        let (heads, kv_heads, d, t, len) = (6, 2, 64, 70, 270);
        for kv_type in [KvType::F16, KvType::Q8_0] {
            let (q, _, _, mut cache) = cached(heads, kv_heads, d, t, len, kv_type);
            let whole = super::prefill(&q, cache.layer_mut(0).expect("layer"), 0.125)
                .expect("prefill")
                .expect("fast path taken");
            let whole: Vec<Vec<f32>> = whole.squeeze(0).and_then(|w| w.to_vec2()).expect("rows");
            // Latest first: truncating the cache keeps the positions before.
            for i in [69, 56, 55, 37, 1, 0] {
                let pos = len - t + i;
                cache.truncate(pos + 1);
                let layer = cache.layer_mut(0).expect("layer");
                let q_i = q.narrow(2, i, 1).expect("q_i");
                let alone = super::decode(&q_i, layer, 0.125)
                    .and_then(|o| Ok(o.expect("fast path taken").flatten_all()?.to_vec1()?))
                    .expect("decode");
                let q_chunk = q
                    .narrow(2, i.saturating_sub(20), i.min(20) + 1)
                    .expect("chunk");
                let chunk = super::prefill(&q_chunk, layer, 0.125)
                    .and_then(|o| Ok(o.expect("fast path taken").squeeze(0)?.to_vec2::<f32>()?))
                    .expect("chunk");
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                let name = kv_type.name();
                assert_eq!(
                    bits(&alone),
                    bits(&whole[i]),
                    "{name}: position {i} decoded"
                );
                let last = chunk.last().expect("a row");
                assert_eq!(
                    bits(last),
                    bits(&whole[i]),
                    "{name}: position {i} in a chunk"
                );
            }
        }
    }

    #[test]
    fn prefill_declines_zero_positions() {
        let (_, _, _, mut cache) = cached(4, 2, 32, 1, 3, KvType::F32);
        let q = Tensor::zeros((1, 4, 0, 32), candle_core::DType::F32, &Device::Cpu).expect("q");
        let layer = cache.layer_mut(0).expect("layer");
        assert!(super::prefill(&q, layer, 1.0).expect("checked").is_none());
    }
}
