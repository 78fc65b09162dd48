//! The key/value cache as an explicit value, owned by the caller and passed to every forward call.
//!
//! Each layer keeps preallocated key and value buffers of shape `(batch, kv_heads, capacity,
//! head_dim)` and a length. Appending writes in place (no concatenation copy per step); the buffer
//! doubles when full. Truncating only moves the length, so a prompt that shares a prefix with the
//! cached one rewinds to the shared prefix and prefills the rest. A snapshot is a deep copy of the
//! filled part, restorable later (for example, a shared system prompt reused by many tasks).

use candle_core::Tensor;

use crate::error::{EngineError, Result};

/// Keys and values of one attention layer.
#[derive(Debug, Clone)]
pub struct LayerKv {
    keys: Option<Tensor>,
    values: Option<Tensor>,
    len: usize,
}

impl LayerKv {
    fn empty() -> Self {
        Self {
            keys: None,
            values: None,
            len: 0,
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn capacity(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.dims()[2])
    }

    /// Appends `k`, `v` of shape `(batch, kv_heads, new, head_dim)` and returns views of all
    /// keys and values held, `(batch, kv_heads, len, head_dim)`.
    pub fn append(&mut self, k: &Tensor, v: &Tensor, max_len: usize) -> Result<(Tensor, Tensor)> {
        let new = k.dim(2)?;
        let needed = self.len + new;
        if needed > self.capacity() {
            self.grow(k, needed, max_len)?;
        }
        let (keys, values) = match (&self.keys, &self.values) {
            (Some(keys), Some(values)) => (keys, values),
            _ => return Err(EngineError::InvalidRequest("kv cache not allocated".into())),
        };
        keys.slice_set(&k.contiguous()?, 2, self.len)?;
        values.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = needed;
        Ok((keys.narrow(2, 0, self.len)?, values.narrow(2, 0, self.len)?))
    }

    /// Reallocates to hold at least `needed` positions (doubling, capped at `max_len`), keeping
    /// what is held.
    fn grow(&mut self, like: &Tensor, needed: usize, max_len: usize) -> Result<()> {
        let capacity = needed
            .max(self.capacity() * 2)
            .max(64)
            .min(max_len.max(needed));
        let (b, h, _, d) = like.dims4()?;
        let keys = Tensor::zeros((b, h, capacity, d), like.dtype(), like.device())?;
        let values = Tensor::zeros((b, h, capacity, d), like.dtype(), like.device())?;
        if let (Some(old_k), Some(old_v)) = (&self.keys, &self.values)
            && self.len > 0
        {
            keys.slice_set(&old_k.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
            values.slice_set(&old_v.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
        }
        self.keys = Some(keys);
        self.values = Some(values);
        Ok(())
    }
}

/// The whole model's cache: one [`LayerKv`] per layer, all of the same length.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    max_len: usize,
}

/// A deep copy of a cache's filled part, see [`KvCache::snapshot`].
#[derive(Debug, Clone)]
pub struct KvSnapshot {
    layers: Vec<Option<(Tensor, Tensor)>>,
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
    /// An empty cache for `num_layers` layers that will never hold more than `max_len` positions.
    pub fn new(num_layers: usize, max_len: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| LayerKv::empty()).collect(),
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

    /// The cache of layer `i`.
    pub fn layer_mut(&mut self, i: usize) -> Option<&mut LayerKv> {
        self.layers.get_mut(i)
    }

    /// Forgets every position at or after `len`; the buffers stay allocated for reuse.
    pub fn truncate(&mut self, len: usize) {
        for layer in &mut self.layers {
            layer.len = layer.len.min(len);
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// A deep copy of the positions held now.
    pub fn snapshot(&self) -> Result<KvSnapshot> {
        let len = self.len();
        let layers = self
            .layers
            .iter()
            .map(|l| match (&l.keys, &l.values) {
                (Some(k), Some(v)) if len > 0 => Ok(Some((
                    k.narrow(2, 0, len)?.copy()?,
                    v.narrow(2, 0, len)?.copy()?,
                ))),
                _ => Ok(None),
            })
            .collect::<Result<_>>()?;
        Ok(KvSnapshot { layers, len })
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
        for (layer, saved) in self.layers.iter_mut().zip(&snapshot.layers) {
            layer.len = 0;
            if let Some((k, v)) = saved {
                layer.append(k, v, self.max_len)?;
            }
        }
        Ok(())
    }

    /// Bytes the allocated buffers take.
    pub fn allocated_bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| [&l.keys, &l.values])
            .flatten()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn step(start: f32, n: usize) -> Tensor {
        let data: Vec<f32> = (0..n * 2).map(|i| start + i as f32).collect();
        Tensor::from_vec(data, (1, 1, n, 2), &Device::Cpu).expect("tensor")
    }

    #[test]
    fn append_truncate_extend_and_snapshot() {
        let mut cache = KvCache::new(1, 1000);
        let layer = cache.layer_mut(0).expect("layer");
        let (k, _) = layer
            .append(&step(0.0, 3), &step(0.0, 3), 1000)
            .expect("append");
        assert_eq!(k.dims(), &[1, 1, 3, 2]);
        assert_eq!(cache.len(), 3);
        let snap = cache.snapshot().expect("snapshot");
        cache.truncate(1);
        assert_eq!(cache.len(), 1);
        let layer = cache.layer_mut(0).expect("layer");
        // Growing past the initial capacity keeps the held prefix.
        let (k, _) = layer
            .append(&step(100.0, 70), &step(100.0, 70), 1000)
            .expect("append");
        let flat: Vec<f32> = k.flatten_all().expect("flat").to_vec1().expect("vec");
        assert_eq!(&flat[..4], &[0.0, 1.0, 100.0, 101.0]);
        assert_eq!(cache.len(), 71);
        cache.restore(&snap).expect("restore");
        assert_eq!(cache.len(), 3);
        let layer = cache.layer_mut(0).expect("layer");
        let (k, _) = layer
            .append(&step(50.0, 1), &step(50.0, 1), 1000)
            .expect("append");
        let flat: Vec<f32> = k.flatten_all().expect("flat").to_vec1().expect("vec");
        assert_eq!(flat, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 50.0, 51.0]);
    }
}
