//! Where tensors come from: memory-mapped safetensors (one file or shards with an index), a GGUF
//! file, or random values of given shapes (to benchmark a model's shapes where its weights cannot
//! be downloaded).
//!
//! The model code asks for tensors by their Hugging Face names; a GGUF source translates them to
//! llama.cpp's names (`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight`). Matrices
//! come back as [`QMatMul`], which is either a dense tensor or a quantized one, so one model file
//! serves both formats.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, gguf_file};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};

/// Standard deviation of synthetic weights (the initialiser range of Qwen's configurations).
const RANDOM_STD: f32 = 0.02;

/// `n` values uniform in a range of standard deviation [`RANDOM_STD`], drawn on the CPU pool in
/// streams seeded by `name` and `stream` (the same tensor gets the same values in every run).
fn random_values(name: &str, n: usize, stream: u64) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let mut values = vec![0f32; n];
    let tasks: Vec<(usize, &mut [f32])> = values.chunks_mut(CHUNK).enumerate().collect();
    crate::parallel::for_each(tasks, |(i, out)| {
        fill_random(name, (stream << 32) ^ i as u64, out)
    });
    values
}

/// Fills `out` with values uniform in a range of standard deviation [`RANDOM_STD`], seeded by
/// `name` and `stream`.
fn fill_random(name: &str, stream: u64, out: &mut [f32]) {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    // FNV-1a: a stable hash of the name (std's hasher may change between releases).
    let name_hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut rng = StdRng::seed_from_u64(name_hash ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let bound = RANDOM_STD * 3f32.sqrt();
    out.iter_mut()
        .for_each(|v| *v = rng.random_range(-bound..bound));
}

/// An embedding table, dense or quantized (looked up row by row without expanding it).
#[derive(Debug, Clone)]
pub enum Embedding {
    /// A dense `(vocab, hidden)` matrix.
    Dense(Tensor),
    /// A quantized `(vocab, hidden)` matrix.
    Quantized(Arc<QTensor>),
}

impl Embedding {
    /// Rows for `ids`, shape `ids.dims() + [hidden]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Dense(table) => {
                let mut dims = ids.dims().to_vec();
                dims.push(table.dim(1)?);
                table.index_select(&ids.flatten_all()?, 0)?.reshape(dims)?
            }
            Self::Quantized(table) => table.embedding(ids)?,
        })
    }

    /// The same matrix as an output projection (tied embeddings).
    pub fn as_matmul(&self) -> Result<QMatMul> {
        Ok(match self {
            Self::Dense(t) => QMatMul::Tensor(t.clone()),
            Self::Quantized(q) => QMatMul::from_arc(q.clone())?,
        })
    }
}

/// A source of named tensors.
pub enum Weights {
    /// Hugging Face safetensors, memory-mapped; tensors are converted to `dtype` on `device`.
    Safetensors {
        /// The mapped files.
        files: MmapedSafetensors,
        /// Names of all tensors, for presence checks.
        names: BTreeSet<String>,
        /// The model directory (for messages).
        dir: PathBuf,
        /// Activation/weight dtype.
        dtype: DType,
        /// Target device.
        device: Device,
    },
    /// A GGUF file; matrices stay quantized, vectors are dequantized to f32.
    Gguf {
        /// Parsed header.
        content: gguf_file::Content,
        /// Open file, for reading tensor data.
        file: File,
        /// The file path (for messages).
        path: PathBuf,
        /// Target device.
        device: Device,
    },
    /// Random weights: matrices of standard deviation 0.02 (normal, drawn on a GPU; uniform, drawn
    /// on the CPU pool, for CPU and quantized matrices), unit norms, zero biases.
    Synthetic {
        /// Each tensor's shape, by Hugging Face name.
        shapes: BTreeMap<String, Vec<usize>>,
        /// Dtype of dense weights and activations.
        dtype: DType,
        /// Quantize matrices to this type (activations are then f32, as with GGUF).
        quant: Option<GgmlDType>,
        /// Target device.
        device: Device,
    },
}

impl Weights {
    /// Random weights with these shapes (see [`Weights::Synthetic`]).
    pub fn synthetic(
        shapes: BTreeMap<String, Vec<usize>>,
        dtype: DType,
        quant: Option<GgmlDType>,
        device: &Device,
    ) -> Self {
        Self::Synthetic {
            shapes,
            dtype,
            quant,
            device: device.clone(),
        }
    }

    /// Maps the safetensors of a model directory: `model.safetensors`, or the shards listed in
    /// `model.safetensors.index.json`.
    pub fn open_safetensors(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let paths: Vec<PathBuf> = if index.exists() {
            shard_paths(&index, dir)?
        } else if single.exists() {
            vec![single]
        } else {
            return Err(EngineError::Weights {
                path: dir.to_path_buf(),
                message: "no model.safetensors or model.safetensors.index.json".into(),
            });
        };
        for p in &paths {
            if !p.exists() {
                return Err(EngineError::Weights {
                    path: p.clone(),
                    message: "shard listed in the index is missing".into(),
                });
            }
        }
        // SAFETY: the files are mapped read-only and the model never writes through the map. The
        // only hazard is another process truncating a file while it is mapped (SIGBUS), which
        // every mmap-based loader (transformers, llama.cpp) accepts as the price of not copying
        // many gigabytes of weights.
        #[allow(unsafe_code)]
        let files =
            unsafe { MmapedSafetensors::multi(&paths) }.map_err(|e| EngineError::Weights {
                path: dir.to_path_buf(),
                message: format!("cannot read safetensors ({}): {e}", describe(&paths)),
            })?;
        let names = files.tensors().into_iter().map(|(n, _)| n).collect();
        Ok(Self::Safetensors {
            files,
            names,
            dir: dir.to_path_buf(),
            dtype,
            device: device.clone(),
        })
    }

    /// Opens a GGUF file and reads its header (metadata and tensor index, not the data).
    pub fn open_gguf(path: &Path, device: &Device) -> Result<Self> {
        let mut file = File::open(path).map_err(|error| EngineError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| EngineError::Weights {
            path: path.to_path_buf(),
            message: format!("not a readable GGUF file: {e}"),
        })?;
        let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        // Check the tensor index against the file size now, so that a truncated download fails
        // at load time with a clear message instead of deep inside a read.
        for (name, info) in &content.tensor_infos {
            let elems = info.shape.elem_count();
            let bytes = elems / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
            let end = content.tensor_data_offset + info.offset + bytes as u64;
            if end > file_len {
                return Err(EngineError::Weights {
                    path: path.to_path_buf(),
                    message: format!(
                        "file is truncated: tensor `{name}` ends at byte {end} but the file has {file_len}"
                    ),
                });
            }
        }
        Ok(Self::Gguf {
            content,
            file,
            path: path.to_path_buf(),
            device: device.clone(),
        })
    }

    /// The GGUF header, when this is a GGUF source.
    pub fn gguf_content(&self) -> Option<&gguf_file::Content> {
        match self {
            Self::Gguf { content, .. } => Some(content),
            Self::Safetensors { .. } | Self::Synthetic { .. } => None,
        }
    }

    /// The dtype activations use with these weights.
    pub fn dtype(&self) -> DType {
        match self {
            Self::Safetensors { dtype, .. } => *dtype,
            Self::Synthetic {
                dtype, quant: None, ..
            } => *dtype,
            Self::Gguf { .. } | Self::Synthetic { .. } => DType::F32,
        }
    }

    /// The device tensors are loaded onto.
    pub fn device(&self) -> &Device {
        match self {
            Self::Safetensors { device, .. }
            | Self::Gguf { device, .. }
            | Self::Synthetic { device, .. } => device,
        }
    }

    /// Whether a tensor with this Hugging Face name exists.
    pub fn contains(&self, hf_name: &str) -> bool {
        match self {
            Self::Safetensors { names, .. } => names.contains(hf_name),
            Self::Gguf { content, .. } => content.tensor_infos.contains_key(&gguf_name(hf_name)),
            Self::Synthetic { shapes, .. } => shapes.contains_key(hf_name),
        }
    }

    /// A tensor as a dense array in the activation dtype (norm weights, biases).
    pub fn tensor(&mut self, hf_name: &str) -> Result<Tensor> {
        match self {
            Self::Safetensors { .. } => self.safetensor(hf_name),
            Self::Synthetic { .. } => {
                let dtype = self.dtype();
                Ok(self.random(hf_name)?.to_dtype(dtype)?)
            }
            Self::Gguf { .. } => {
                let q = self.qtensor(hf_name)?;
                let device = self.device().clone();
                Ok(q.dequantize(&device)?)
            }
        }
    }

    /// A weight matrix, `(out, in)`, kept quantized when the file is.
    pub fn matmul(&mut self, hf_name: &str) -> Result<QMatMul> {
        match self {
            Self::Safetensors { .. } => Ok(QMatMul::Tensor(self.safetensor(hf_name)?)),
            Self::Gguf { .. } => Ok(QMatMul::from_arc(Arc::new(self.qtensor(hf_name)?))?),
            Self::Synthetic { .. } => match self.random_quantized(hf_name)? {
                Some(q) => Ok(QMatMul::from_arc(Arc::new(q))?),
                None => Ok(QMatMul::Tensor(self.tensor(hf_name)?)),
            },
        }
    }

    /// Projection `proj` (`gate_proj`, `up_proj` or `down_proj`) of each of the `n` experts of
    /// the MoE block `prefix` (`model.layers.3.mlp`), each `(out, in)`. A checkpoint holds one
    /// tensor per expert (`{prefix}.experts.{e}.{proj}.weight`); a GGUF stacks them in one
    /// (`blk.3.ffn_gate_exps.weight`), which is split here into one matrix per expert so that a
    /// token reads only its own experts' rows.
    pub fn expert_matmuls(&mut self, prefix: &str, proj: &str, n: usize) -> Result<Vec<QMatMul>> {
        if !matches!(self, Self::Gguf { .. }) {
            return (0..n)
                .map(|e| self.matmul(&format!("{prefix}.experts.{e}.{proj}.weight")))
                .collect();
        }
        let hf_name = format!("{prefix}.experts.{proj}.weight");
        // Read on the CPU to be split; each expert then goes to the device.
        let stacked = self.qtensor_on(&hf_name, &Device::Cpu)?;
        let (path, device) = (self.describe_path(), self.device().clone());
        let name = gguf_name(&hf_name);
        let bad = |message: String| EngineError::Weights {
            path: path.clone(),
            message: format!("tensor `{name}`: {message}"),
        };
        let (experts, rows, cols) = match stacked.shape().dims() {
            &[experts, rows, cols] if experts == n => (experts, rows, cols),
            dims => {
                return Err(bad(format!(
                    "shape {dims:?}, expected ({n} experts, rows, columns)"
                )));
            }
        };
        let dtype = stacked.dtype();
        let data = stacked.data().map_err(|e| bad(e.to_string()))?;
        let per_expert = data.len() / experts;
        if per_expert == 0 || rows == 0 || cols == 0 {
            return Err(bad(format!("empty experts of shape ({rows}, {cols})")));
        }
        data.chunks_exact(per_expert)
            .map(|bytes| {
                let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
                    dtype,
                    bytes,
                    vec![rows, cols],
                    &device,
                )
                .map_err(|e| bad(e.to_string()))?;
                Ok(QMatMul::from_arc(Arc::new(q))?)
            })
            .collect()
    }

    /// An embedding table.
    pub fn embedding(&mut self, hf_name: &str) -> Result<Embedding> {
        match self {
            Self::Safetensors { .. } => Ok(Embedding::Dense(self.safetensor(hf_name)?)),
            Self::Gguf { .. } => Ok(Embedding::Quantized(Arc::new(self.qtensor(hf_name)?))),
            Self::Synthetic { .. } => match self.random_quantized(hf_name)? {
                Some(q) => Ok(Embedding::Quantized(Arc::new(q))),
                None => Ok(Embedding::Dense(self.tensor(hf_name)?)),
            },
        }
    }

    /// A random f32 tensor for `hf_name` (norm weights are ones and biases zeros, as trained
    /// models keep them near there; other values have a standard deviation of 0.02).
    fn random(&self, hf_name: &str) -> Result<Tensor> {
        let (shape, device) = self.synthetic_shape(hf_name)?;
        Ok(if hf_name.ends_with("norm.weight") {
            Tensor::ones(shape, DType::F32, device)?
        } else if hf_name.ends_with(".bias") {
            Tensor::zeros(shape, DType::F32, device)?
        } else if device.is_cpu() {
            // candle draws on one thread: tens of seconds for a model of a few billion values.
            let n = shape.iter().product();
            Tensor::from_vec(random_values(hf_name, n, 1), shape, device)?
        } else {
            Tensor::randn(0f32, RANDOM_STD, shape, device)?
        })
    }

    /// The random matrix `hf_name` quantized, when this source quantizes.
    ///
    /// Values are drawn and quantized on the CPU pool, rows in parallel, and the blocks moved to
    /// the device once: candle quantizes on one thread, through the CPU even for a GPU, which is
    /// minutes for a 14B model's matrices.
    fn random_quantized(&self, hf_name: &str) -> Result<Option<QTensor>> {
        let Self::Synthetic {
            quant: Some(quant), ..
        } = self
        else {
            return Ok(None);
        };
        let quant = *quant;
        let (shape, device) = self.synthetic_shape(hf_name)?;
        let bad = |message: String| EngineError::Weights {
            path: "(synthetic)".into(),
            message: format!("cannot quantize `{hf_name}` to {quant:?}: {message}"),
        };
        let cols = shape.last().copied().unwrap_or(0);
        let rows: usize = shape.iter().rev().skip(1).product();
        if cols == 0 || !cols.is_multiple_of(quant.block_size()) {
            return Err(bad(format!(
                "rows of {cols} values are not whole blocks of {}",
                quant.block_size()
            )));
        }
        let row_bytes = cols / quant.block_size() * quant.type_size();
        // About a million values per task.
        let chunk_rows = (1 << 20) / cols + 1;
        let mut bytes = vec![0u8; rows * row_bytes];
        let failure = std::sync::Mutex::new(None);
        let tasks: Vec<(usize, &mut [u8])> = bytes
            .chunks_mut(chunk_rows * row_bytes)
            .enumerate()
            .collect();
        crate::parallel::for_each(tasks, |(chunk, out)| {
            let n_rows = out.len() / row_bytes;
            // Drawn here, on this task's thread: the pool does not nest.
            let mut values = vec![0f32; n_rows * cols];
            fill_random(hf_name, chunk as u64 + 1, &mut values);
            let quantized = Tensor::from_vec(values, (n_rows, cols), &Device::Cpu)
                .and_then(|dense| QTensor::quantize(&dense, quant))
                .and_then(|q| q.data().map(|data| out.copy_from_slice(&data)));
            if let Err(e) = quantized
                && let Ok(mut slot) = failure.lock()
            {
                *slot = Some(e.to_string());
            }
        });
        if let Some(message) = failure.into_inner().ok().flatten() {
            return Err(bad(message));
        }
        candle_core::quantized::ggml_file::qtensor_from_ggml(quant, &bytes, shape.to_vec(), device)
            .map(Some)
            .map_err(|e| bad(e.to_string()))
    }

    /// The shape and device of the synthetic tensor `hf_name`.
    fn synthetic_shape(&self, hf_name: &str) -> Result<(&[usize], &Device)> {
        let Self::Synthetic { shapes, device, .. } = self else {
            return Err(EngineError::InvalidRequest("not a synthetic source".into()));
        };
        let shape = shapes.get(hf_name).ok_or_else(|| EngineError::Weights {
            path: "(synthetic)".into(),
            message: format!("no shape for tensor `{hf_name}`"),
        })?;
        Ok((shape, device))
    }

    fn safetensor(&self, hf_name: &str) -> Result<Tensor> {
        let Self::Safetensors {
            files,
            names,
            dir,
            dtype,
            device,
        } = self
        else {
            return Err(EngineError::InvalidRequest(
                "not a safetensors source".into(),
            ));
        };
        if !names.contains(hf_name) {
            return Err(EngineError::Weights {
                path: dir.clone(),
                message: format!("missing tensor `{hf_name}`"),
            });
        }
        let bad = |e: candle_core::Error| EngineError::Weights {
            path: dir.clone(),
            message: format!("tensor `{hf_name}`: {e}"),
        };
        files
            .load(hf_name, device)
            .and_then(|t| t.to_dtype(*dtype))
            .map_err(bad)
    }

    fn qtensor(&mut self, hf_name: &str) -> Result<QTensor> {
        let device = self.device().clone();
        self.qtensor_on(hf_name, &device)
    }

    /// The GGUF file's path (for messages).
    fn describe_path(&self) -> PathBuf {
        match self {
            Self::Gguf { path, .. } => path.clone(),
            Self::Safetensors { dir, .. } => dir.clone(),
            Self::Synthetic { .. } => "(synthetic)".into(),
        }
    }

    /// A GGUF tensor read onto `device`.
    fn qtensor_on(&mut self, hf_name: &str, device: &Device) -> Result<QTensor> {
        let Self::Gguf {
            content,
            file,
            path,
            ..
        } = self
        else {
            return Err(EngineError::InvalidRequest("not a GGUF source".into()));
        };
        let name = gguf_name(hf_name);
        if !content.tensor_infos.contains_key(&name) {
            return Err(EngineError::Weights {
                path: path.clone(),
                message: format!("missing tensor `{name}`"),
            });
        }
        content
            .tensor(file, &name, device)
            .map_err(|e| EngineError::Weights {
                path: path.clone(),
                message: format!("tensor `{name}`: {e}"),
            })
    }
}

fn describe(paths: &[PathBuf]) -> String {
    match paths {
        [one] => one.display().to_string(),
        many => format!("{} shards", many.len()),
    }
}

/// The shard files named by a safetensors index, in a stable order.
fn shard_paths(index: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|error| EngineError::Io {
        path: index.to_path_buf(),
        error,
    })?;
    let bad = |message: String| EngineError::Weights {
        path: index.to_path_buf(),
        message,
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let files: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    if files.is_empty() {
        return Err(bad("`weight_map` lists no files".into()));
    }
    files
        .into_iter()
        .map(|f| {
            // A shard name must stay inside the model directory.
            if f.contains('/') || f.contains('\\') || f == ".." {
                Err(bad(format!("shard name `{f}` is not a plain file name")))
            } else {
                Ok(dir.join(f))
            }
        })
        .collect()
}

/// llama.cpp's tensor name for a Hugging Face Qwen2/Qwen3 tensor name (for a MoE block's experts,
/// the stacked tensor: `model.layers.3.mlp.experts.gate_proj.weight` -> `blk.3.ffn_gate_exps.weight`).
pub fn gguf_name(hf_name: &str) -> String {
    let name = hf_name.strip_prefix("model.").unwrap_or(hf_name);
    match name {
        "embed_tokens.weight" => return "token_embd.weight".into(),
        "norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    if let Some(rest) = name.strip_prefix("layers.")
        && let Some((layer, tail)) = rest.split_once('.')
    {
        let (module, suffix) = tail.rsplit_once('.').unwrap_or((tail, ""));
        let short = match module {
            "self_attn.q_proj" => "attn_q",
            "self_attn.k_proj" => "attn_k",
            "self_attn.v_proj" => "attn_v",
            "self_attn.o_proj" => "attn_output",
            "self_attn.q_norm" => "attn_q_norm",
            "self_attn.k_norm" => "attn_k_norm",
            "input_layernorm" => "attn_norm",
            "post_attention_layernorm" => "ffn_norm",
            "mlp.gate_proj" => "ffn_gate",
            "mlp.up_proj" => "ffn_up",
            "mlp.down_proj" => "ffn_down",
            "mlp.gate" => "ffn_gate_inp",
            "mlp.experts.gate_proj" => "ffn_gate_exps",
            "mlp.experts.up_proj" => "ffn_up_exps",
            "mlp.experts.down_proj" => "ffn_down_exps",
            other => other,
        };
        return format!("blk.{layer}.{short}.{suffix}");
    }
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(values: &[f32]) -> (f32, f32) {
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean as f32, var.sqrt() as f32)
    }

    /// Synthetic matrices, dense and quantized (drawn in parallel, many rows per task): the same
    /// values in every run, of the intended spread, and different from one task's rows to the
    /// next (a seeding mistake would repeat them).
    #[test]
    fn synthetic_weights_are_reproducible_and_spread_as_intended() {
        let name = "model.layers.0.mlp.down_proj.weight";
        // 3 tasks' worth of rows for the quantized path (about a million values each).
        let (rows, cols) = (3 * ((1 << 20) / 512 + 1), 512);
        let shapes = BTreeMap::from([(name.to_string(), vec![rows, cols])]);
        for quant in [None, Some(GgmlDType::Q4K), Some(GgmlDType::Q8_0)] {
            let weights = Weights::synthetic(shapes.clone(), DType::F32, quant, &Device::Cpu);
            let matrix = |w: &Weights| -> Vec<f32> {
                let t = match quant {
                    Some(_) => w
                        .random_quantized(name)
                        .expect("quantize")
                        .expect("quantized source")
                        .dequantize(&Device::Cpu)
                        .expect("dequantize"),
                    None => w.random(name).expect("random"),
                };
                assert_eq!(t.dims(), [rows, cols]);
                t.flatten_all().expect("flat").to_vec1().expect("vec")
            };
            let values = matrix(&weights);
            assert_eq!(values, matrix(&weights), "{quant:?}: same values each time");
            let (mean, std) = stats(&values);
            assert!(mean.abs() < 1e-3, "{quant:?}: mean {mean}");
            assert!((std - RANDOM_STD).abs() < 2e-3, "{quant:?}: std {std}");
            let task_rows = (1 << 20) / cols + 1;
            let first = &values[..cols];
            for task in 1..3 {
                let row = &values[task * task_rows * cols..][..cols];
                assert_ne!(first, row, "{quant:?}: task {task} repeats task 0");
            }
        }
    }

    #[test]
    fn maps_hf_names_to_gguf() {
        assert_eq!(gguf_name("model.embed_tokens.weight"), "token_embd.weight");
        assert_eq!(gguf_name("lm_head.weight"), "output.weight");
        assert_eq!(gguf_name("model.norm.weight"), "output_norm.weight");
        assert_eq!(
            gguf_name("model.layers.12.self_attn.q_proj.bias"),
            "blk.12.attn_q.bias"
        );
        assert_eq!(
            gguf_name("model.layers.0.self_attn.k_norm.weight"),
            "blk.0.attn_k_norm.weight"
        );
        assert_eq!(
            gguf_name("model.layers.3.mlp.down_proj.weight"),
            "blk.3.ffn_down.weight"
        );
        assert_eq!(
            gguf_name("model.layers.3.post_attention_layernorm.weight"),
            "blk.3.ffn_norm.weight"
        );
        assert_eq!(
            gguf_name("model.layers.5.mlp.gate.weight"),
            "blk.5.ffn_gate_inp.weight"
        );
        assert_eq!(
            gguf_name("model.layers.5.mlp.experts.up_proj.weight"),
            "blk.5.ffn_up_exps.weight"
        );
    }
}
