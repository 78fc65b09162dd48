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
    /// Random weights made on the device: normal(0, 0.02) matrices, unit norms, zero biases.
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
    /// models keep them near there).
    fn random(&self, hf_name: &str) -> Result<Tensor> {
        let Self::Synthetic { shapes, device, .. } = self else {
            return Err(EngineError::InvalidRequest("not a synthetic source".into()));
        };
        let shape = shapes.get(hf_name).ok_or_else(|| EngineError::Weights {
            path: "(synthetic)".into(),
            message: format!("no shape for tensor `{hf_name}`"),
        })?;
        Ok(if hf_name.ends_with("norm.weight") {
            Tensor::ones(shape.as_slice(), DType::F32, device)?
        } else if hf_name.ends_with(".bias") {
            Tensor::zeros(shape.as_slice(), DType::F32, device)?
        } else {
            Tensor::randn(0f32, 0.02, shape.as_slice(), device)?
        })
    }

    /// The random matrix `hf_name` quantized, when this source quantizes.
    fn random_quantized(&self, hf_name: &str) -> Result<Option<QTensor>> {
        let Self::Synthetic {
            quant: Some(quant), ..
        } = self
        else {
            return Ok(None);
        };
        let dense = self.random(hf_name)?;
        QTensor::quantize(&dense, *quant)
            .map(Some)
            .map_err(|e| EngineError::Weights {
                path: "(synthetic)".into(),
                message: format!("cannot quantize `{hf_name}` to {quant:?}: {e}"),
            })
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
        let Self::Gguf {
            content,
            file,
            path,
            device,
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

/// llama.cpp's tensor name for a Hugging Face Qwen2/Qwen3 tensor name.
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
            other => other,
        };
        return format!("blk.{layer}.{short}.{suffix}");
    }
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::gguf_name;

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
    }
}
