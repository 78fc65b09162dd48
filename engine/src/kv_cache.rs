//! The key/value cache as an explicit value, owned by the caller and passed to every forward call.
//!
//! Each layer holds its positions in fixed pages of [`PAGE`] positions, allocated as the sequence
//! grows: growing never copies what is held (a doubling buffer copies its whole content at every
//! doubling and holds up to twice what it needs). Truncating moves the length and hands whole
//! pages past it back to the model's [`PagePool`], where any other sequence of the model takes
//! them; a dropped cache hands back all of its pages. So a prompt sharing a prefix with the cached
//! one rewinds to the prefix and prefills the rest, and memory freed by one sequence serves the
//! next.
//!
//! Pages hold keys and values in the cache's element type ([`KvType`]): f32, f16 or bf16 as
//! tensors `(1, kv_heads, PAGE, head_dim)` on the model's device, or Q8_0 blocks (GGML's layout,
//! CPU only) indexed `[kv_head][position][block]`. Attention reads them where they are (see the
//! attention module); nothing converts the whole cache.
//!
//! A snapshot is a deep copy of the filled part, restorable later (for example, a shared system
//! prompt reused by many tasks).

use std::sync::{Arc, Mutex};

use candle_core::quantized::GgmlType;
use candle_core::quantized::k_quants::BlockQ8_0;
use candle_core::{DType, Device, Storage, Tensor};

use std::fmt;
use std::str::FromStr;

use crate::error::{EngineError, Result};

/// Element type of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvType {
    /// 32-bit floats.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// Blocks of 32 int8 values with one f16 scale (GGML's Q8_0 layout, 34 bytes per 32).
    Q8_0,
}

impl KvType {
    /// Every type, in the order help texts list them.
    pub const ALL: [KvType; 4] = [Self::F32, Self::F16, Self::Bf16, Self::Q8_0];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Q8_0 => "q8_0",
        }
    }

    /// The default on `device`: f16 on CPUs (Kestrel's attention reads it directly), bf16 on GPUs.
    pub fn default_for(device: &Device) -> Self {
        if device.is_cpu() {
            Self::F16
        } else {
            Self::Bf16
        }
    }

    /// Bytes taken by `elements` values (a multiple of 32 for Q8_0; head widths are).
    pub fn bytes(self, elements: usize) -> usize {
        match self {
            Self::F32 => elements * 4,
            Self::F16 | Self::Bf16 => elements * 2,
            Self::Q8_0 => elements.div_ceil(32) * 34,
        }
    }

    /// The candle dtype a tensor of this type has, when there is one.
    pub fn dtype(self) -> Option<DType> {
        match self {
            Self::F32 => Some(DType::F32),
            Self::F16 => Some(DType::F16),
            Self::Bf16 => Some(DType::BF16),
            Self::Q8_0 => None,
        }
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KvType {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.to_ascii_lowercase().replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|t| t.name() == wanted || (wanted == "q8" && *t == Self::Q8_0))
            .ok_or_else(|| {
                EngineError::InvalidRequest(format!(
                    "KV cache type {s:?}: expected f32, f16, bf16 or q8_0"
                ))
            })
    }
}

/// Positions per page.
pub const PAGE: usize = 256;

/// Values per Q8_0 block.
const Q8_BLOCK: usize = 32;

/// One page of one layer: keys and values of [`PAGE`] positions of every kv head.
#[derive(Debug)]
pub(crate) enum Page {
    /// f32, f16 or bf16 tensors `(1, kv_heads, PAGE, head_dim)`.
    Dense {
        /// Keys.
        keys: Tensor,
        /// Values.
        values: Tensor,
    },
    /// Q8_0 blocks, `[kv_head][position][head_dim / 32]`.
    Q8 {
        /// Keys.
        keys: Vec<BlockQ8_0>,
        /// Values.
        values: Vec<BlockQ8_0>,
    },
}

impl Page {
    fn deep_copy(&self) -> Result<Self> {
        Ok(match self {
            Self::Dense { keys, values } => Self::Dense {
                keys: keys.copy()?,
                values: values.copy()?,
            },
            Self::Q8 { keys, values } => Self::Q8 {
                keys: keys.clone(),
                values: values.clone(),
            },
        })
    }
}

/// The shape and type of a model's pages, and the pages no sequence holds.
#[derive(Debug)]
pub struct PagePool {
    kv_type: KvType,
    kv_heads: usize,
    head_dim: usize,
    device: Device,
    free: Mutex<Vec<Page>>,
}

impl PagePool {
    /// A pool of pages for `kv_heads` heads of `head_dim` values in `kv_type` on `device`. Q8_0
    /// is refused off the CPU, where no attention kernel reads it.
    pub fn new(kv_type: KvType, kv_heads: usize, head_dim: usize, device: &Device) -> Result<Self> {
        if kv_type == KvType::Q8_0 && !device.is_cpu() {
            return Err(EngineError::InvalidRequest(
                "a q8_0 KV cache runs only on the CPU's attention kernels; use f16 or bf16 on a GPU"
                    .into(),
            ));
        }
        if kv_type == KvType::Q8_0 && !head_dim.is_multiple_of(Q8_BLOCK) {
            return Err(EngineError::InvalidRequest(format!(
                "a q8_0 KV cache needs a head width that is a multiple of 32 (this model's is {head_dim})"
            )));
        }
        Ok(Self {
            kv_type,
            kv_heads,
            head_dim,
            device: device.clone(),
            free: Mutex::new(Vec::new()),
        })
    }

    /// The element type.
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Bytes of one page (keys and values).
    pub fn page_bytes(&self) -> usize {
        2 * self.kv_type.bytes(self.kv_heads * PAGE * self.head_dim)
    }

    /// Pages waiting for a sequence.
    pub fn free_pages(&self) -> usize {
        self.free.lock().map_or(0, |f| f.len())
    }

    fn take(&self) -> Result<Page> {
        if let Some(page) = self.free.lock().ok().and_then(|mut f| f.pop()) {
            return Ok(page);
        }
        let (h, d) = (self.kv_heads, self.head_dim);
        Ok(match self.kv_type.dtype() {
            Some(dtype) => Page::Dense {
                keys: Tensor::zeros((1, h, PAGE, d), dtype, &self.device)?,
                values: Tensor::zeros((1, h, PAGE, d), dtype, &self.device)?,
            },
            None => Page::Q8 {
                keys: vec![BlockQ8_0::zeros(); h * PAGE * d / Q8_BLOCK],
                values: vec![BlockQ8_0::zeros(); h * PAGE * d / Q8_BLOCK],
            },
        })
    }

    fn give_back(&self, pages: impl IntoIterator<Item = Page>) {
        if let Ok(mut free) = self.free.lock() {
            free.extend(pages);
        }
    }
}

/// Keys and values of one attention layer.
#[derive(Debug)]
pub struct LayerKv {
    pages: Vec<Page>,
    len: usize,
    pool: Arc<PagePool>,
}

impl LayerKv {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The element type.
    pub fn kv_type(&self) -> KvType {
        self.pool.kv_type
    }

    /// Kv heads and head width.
    pub(crate) fn head_shape(&self) -> (usize, usize) {
        (self.pool.kv_heads, self.pool.head_dim)
    }

    /// The pages holding positions `0..len`, each with the positions it holds.
    pub(crate) fn filled_pages(&self) -> impl Iterator<Item = (&Page, usize)> {
        let len = self.len;
        self.pages
            .iter()
            .enumerate()
            .map(move |(i, p)| (p, len.saturating_sub(i * PAGE).min(PAGE)))
            .take_while(|(_, n)| *n > 0)
    }

    /// Appends `k`, `v` of shape `(1, kv_heads, new, head_dim)` after what is held, allocating
    /// pages from the pool as needed.
    pub fn append(&mut self, k: &Tensor, v: &Tensor, max_len: usize) -> Result<()> {
        let new = k.dim(2)?;
        if self.len + new > max_len {
            return Err(EngineError::ContextOverflow {
                prompt_tokens: self.len + new,
                context: max_len,
            });
        }
        while self.pages.len() * PAGE < self.len + new {
            self.pages.push(self.pool.take()?);
        }
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        let mut done = 0;
        while done < new {
            let at = self.len + done;
            let (page, slot) = (at / PAGE, at % PAGE);
            let n = (PAGE - slot).min(new - done);
            let (k_part, v_part) = (k.narrow(2, done, n)?, v.narrow(2, done, n)?);
            match &mut self.pages[page] {
                Page::Dense { keys, values } => {
                    keys.slice_set(&k_part.to_dtype(keys.dtype())?.contiguous()?, 2, slot)?;
                    values.slice_set(&v_part.to_dtype(values.dtype())?.contiguous()?, 2, slot)?;
                }
                Page::Q8 { keys, values } => {
                    let d = self.pool.head_dim;
                    quantize_rows(&k_part, keys, slot, d)?;
                    quantize_rows(&v_part, values, slot, d)?;
                }
            }
            done += n;
        }
        self.len += new;
        Ok(())
    }

    /// Keys and values of positions `start..start + n` (within one page) as dense tensors
    /// `(1, kv_heads, n, head_dim)` in `dtype` (candle's path; Q8_0 has none).
    pub(crate) fn dense_range(&self, start: usize, n: usize) -> Result<(Tensor, Tensor)> {
        let page = self
            .pages
            .get(start / PAGE)
            .ok_or_else(|| EngineError::InvalidRequest("kv range past the cache".into()))?;
        let slot = start % PAGE;
        match page {
            Page::Dense { keys, values } => {
                Ok((keys.narrow(2, slot, n)?, values.narrow(2, slot, n)?))
            }
            Page::Q8 { .. } => Err(EngineError::InvalidRequest(
                "a q8_0 KV cache is read only by the CPU's attention kernels".into(),
            )),
        }
    }

    /// Keys and values of kv head `head`, positions `0..n`, as f32 rows (`n * head_dim` each),
    /// converted page by page (CPU only).
    pub(crate) fn head_rows_f32(&self, head: usize, n: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let d = self.pool.head_dim;
        let (mut keys, mut values) = (vec![0f32; n * d], vec![0f32; n * d]);
        for (i, (page, filled)) in self.filled_pages().enumerate() {
            let start = i * PAGE;
            if start >= n {
                break;
            }
            let rows = filled.min(n - start);
            let span = start * d..(start + rows) * d;
            page_rows_f32(page, head, 0, rows, d, &mut keys[span.clone()], true)?;
            page_rows_f32(page, head, 0, rows, d, &mut values[span], false)?;
        }
        Ok((keys, values))
    }
}

/// Writes rows `first..first + rows` of kv head `head` of `page`'s keys (or values) into `out`
/// (`rows * d` f32).
pub(crate) fn page_rows_f32(
    page: &Page,
    head: usize,
    first: usize,
    rows: usize,
    d: usize,
    out: &mut [f32],
    keys: bool,
) -> Result<()> {
    match page {
        Page::Dense { keys: k, values: v } => {
            let t = if keys { k } else { v };
            let (storage, layout) = t.storage_and_layout();
            let Storage::Cpu(cpu) = &*storage else {
                return Err(EngineError::InvalidRequest(
                    "f32 rows of a KV page are read on the CPU only".into(),
                ));
            };
            let at = layout.start_offset() + (head * PAGE + first) * d;
            let span = at..at + rows * d;
            match t.dtype() {
                DType::F32 => out.copy_from_slice(&cpu.as_slice::<f32>()?[span]),
                DType::F16 => {
                    use half::slice::HalfFloatSliceExt;
                    cpu.as_slice::<half::f16>()?[span].convert_to_f32_slice(out);
                }
                DType::BF16 => {
                    use half::slice::HalfFloatSliceExt;
                    cpu.as_slice::<half::bf16>()?[span].convert_to_f32_slice(out);
                }
                other => {
                    return Err(EngineError::InvalidRequest(format!(
                        "KV page of type {other:?}"
                    )));
                }
            }
        }
        Page::Q8 { keys: k, values: v } => {
            let blocks = d / Q8_BLOCK;
            let at = (head * PAGE + first) * blocks;
            let src = if keys { k } else { v };
            BlockQ8_0::to_float(&src[at..at + rows * blocks], out);
        }
    }
    Ok(())
}

/// Quantizes `(1, kv_heads, n, d)` rows into `blocks` at page slot `slot`.
fn quantize_rows(rows: &Tensor, blocks: &mut [BlockQ8_0], slot: usize, d: usize) -> Result<()> {
    let (_, heads, n, _) = rows.dims4()?;
    let data = rows.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let per_row = d / Q8_BLOCK;
    for h in 0..heads {
        let src = &data[h * n * d..(h + 1) * n * d];
        let at = (h * PAGE + slot) * per_row;
        BlockQ8_0::from_float(src, &mut blocks[at..at + n * per_row]);
    }
    Ok(())
}

impl Drop for LayerKv {
    fn drop(&mut self) {
        self.pool.give_back(self.pages.drain(..));
    }
}

/// The whole model's cache: one [`LayerKv`] per layer, all of the same length.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    max_len: usize,
}

/// A deep copy of a cache's filled part, see [`KvCache::snapshot`].
#[derive(Debug)]
pub struct KvSnapshot {
    layers: Vec<Vec<Page>>,
    len: usize,
}

impl KvSnapshot {
    /// Positions held by the snapshot.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the snapshot holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl KvCache {
    /// An empty cache for `num_layers` layers that will never hold more than `max_len` positions,
    /// taking its pages from `pool`.
    pub fn new(num_layers: usize, max_len: usize, pool: Arc<PagePool>) -> Self {
        Self {
            layers: (0..num_layers)
                .map(|_| LayerKv {
                    pages: Vec::new(),
                    len: 0,
                    pool: pool.clone(),
                })
                .collect(),
            max_len,
        }
    }

    /// Positions held (the same in every layer).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerKv::len)
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most positions this cache may hold (the model's context window).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The element type.
    pub fn kv_type(&self) -> Option<KvType> {
        self.layers.first().map(LayerKv::kv_type)
    }

    /// The cache of layer `i`.
    pub fn layer_mut(&mut self, i: usize) -> Option<&mut LayerKv> {
        self.layers.get_mut(i)
    }

    /// Forgets every position at or after `len`; whole pages past it go back to the pool.
    pub fn truncate(&mut self, len: usize) {
        for layer in &mut self.layers {
            layer.len = layer.len.min(len);
            let keep = layer.len.div_ceil(PAGE);
            if layer.pages.len() > keep {
                let freed: Vec<Page> = layer.pages.drain(keep..).collect();
                layer.pool.give_back(freed);
            }
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// A deep copy of the positions held now.
    pub fn snapshot(&self) -> Result<KvSnapshot> {
        let layers = self
            .layers
            .iter()
            .map(|l| l.filled_pages().map(|(p, _)| p.deep_copy()).collect())
            .collect::<Result<_>>()?;
        Ok(KvSnapshot {
            layers,
            len: self.len(),
        })
    }

    /// Replaces the content with a snapshot taken from a cache of the same model.
    pub fn restore(&mut self, snapshot: &KvSnapshot) -> Result<()> {
        if snapshot.layers.len() != self.layers.len() {
            return Err(EngineError::InvalidRequest(format!(
                "snapshot has {} layers, cache has {}",
                snapshot.layers.len(),
                self.layers.len()
            )));
        }
        self.clear();
        for (layer, saved) in self.layers.iter_mut().zip(&snapshot.layers) {
            layer.pages = saved.iter().map(Page::deep_copy).collect::<Result<_>>()?;
            layer.len = snapshot.len;
        }
        Ok(())
    }

    /// A new cache (same pool) holding a copy of the first `len` positions of this one: how a
    /// sequence takes over a prefix another one computed.
    pub fn copy_prefix(&self, len: usize) -> Result<KvCache> {
        let len = len.min(self.len());
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let pages = l.pages[..len.div_ceil(PAGE)]
                    .iter()
                    .map(Page::deep_copy)
                    .collect::<Result<_>>()?;
                Ok(LayerKv {
                    pages,
                    len,
                    pool: l.pool.clone(),
                })
            })
            .collect::<Result<_>>()?;
        Ok(KvCache {
            layers,
            max_len: self.max_len,
        })
    }

    /// Bytes the pages held take.
    pub fn allocated_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.pages.len() * l.pool.page_bytes())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(start: f32, n: usize, heads: usize, d: usize) -> Tensor {
        let data: Vec<f32> = (0..heads * n * d).map(|i| start + i as f32).collect();
        Tensor::from_vec(data, (1, heads, n, d), &Device::Cpu).expect("tensor")
    }

    fn pool(kv_type: KvType, heads: usize, d: usize) -> Arc<PagePool> {
        Arc::new(PagePool::new(kv_type, heads, d, &Device::Cpu).expect("pool"))
    }

    #[test]
    fn pages_hold_appends_across_boundaries_and_truncation_frees_them() {
        let pool = pool(KvType::F32, 2, 4);
        let mut cache = KvCache::new(1, 10_000, pool.clone());
        let layer = cache.layer_mut(0).expect("layer");
        let first = rows(0.0, 3, 2, 4);
        layer.append(&first, &first, 10_000).expect("append");
        // Across a page boundary.
        let big = rows(1000.0, PAGE + 10, 2, 4);
        layer.append(&big, &big, 10_000).expect("append");
        assert_eq!(cache.len(), PAGE + 13);
        assert_eq!(cache.allocated_bytes(), 2 * pool.page_bytes());
        let layer = cache.layer_mut(0).expect("layer");
        let (keys, _) = layer.head_rows_f32(1, PAGE + 13).expect("rows");
        // Head 1, position 0 is element 12 of the first append; position 3 is the big append's
        // head 1 row 0.
        assert_eq!(&keys[..4], &[12.0, 13.0, 14.0, 15.0]);
        let big_head1 = 1000.0 + ((PAGE + 10) * 4) as f32;
        assert_eq!(
            &keys[12..16],
            &[big_head1, big_head1 + 1.0, big_head1 + 2.0, big_head1 + 3.0]
        );

        let snapshot = cache.snapshot().expect("snapshot");
        cache.truncate(5);
        assert_eq!(cache.len(), 5);
        assert_eq!(
            pool.free_pages(),
            1,
            "the second page went back to the pool"
        );
        // Another sequence takes it.
        let mut other = KvCache::new(1, 10_000, pool.clone());
        other
            .layer_mut(0)
            .expect("layer")
            .append(&first, &first, 10_000)
            .expect("append");
        assert_eq!(pool.free_pages(), 0);
        drop(other);
        assert_eq!(pool.free_pages(), 1, "a dropped cache hands its pages back");

        cache.restore(&snapshot).expect("restore");
        assert_eq!(cache.len(), PAGE + 13);
        let (again, _) = cache.layers[0].head_rows_f32(1, PAGE + 13).expect("rows");
        assert_eq!(again, keys);
        let err = cache.layers[0]
            .append(&first, &first, PAGE + 14)
            .expect_err("past max_len");
        assert!(matches!(err, EngineError::ContextOverflow { .. }));
    }

    #[test]
    fn reduced_types_round_trip_within_their_precision() {
        let d = 64;
        let data: Vec<f32> = (0..2 * 5 * d)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let t = Tensor::from_vec(data.clone(), (1, 2, 5, d), &Device::Cpu).expect("tensor");
        for (kv_type, bound) in [
            (KvType::F32, 0.0),
            (KvType::F16, 1e-3),
            (KvType::Bf16, 8e-3),
            (KvType::Q8_0, 8e-3),
        ] {
            let mut cache = KvCache::new(1, 100, pool(kv_type, 2, d));
            let layer = cache.layer_mut(0).expect("layer");
            layer.append(&t, &t, 100).expect("append");
            for head in 0..2 {
                let (keys, values) = layer.head_rows_f32(head, 5).expect("rows");
                let expected = &data[head * 5 * d..(head + 1) * 5 * d];
                for (got, want) in keys.iter().chain(&values).zip(expected.iter().cycle()) {
                    assert!((got - want).abs() <= bound, "{kv_type}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn q8_0_is_refused_where_no_kernel_reads_it() {
        let err = PagePool::new(KvType::Q8_0, 2, 48, &Device::Cpu).expect_err("48 % 32");
        assert!(err.to_string().contains("48"), "{err}");
    }
}
