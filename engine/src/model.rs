//! Loading a model from a path (a Hugging Face directory or a single GGUF file), or making one of a
//! configuration's shapes with random weights for benchmarks.
//!
//! [`Model`] bundles everything a generation needs that does not change per request: the network,
//! the tokenizer (when there is one), the stop ids, and sampling defaults from
//! generation_config.json. What changes per request (the KV cache) lives in a `Session`.

use std::path::{Path, PathBuf};

use candle_core::DType;
use candle_core::quantized::GgmlDType;
use serde_json::Value;

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::models::qwen::Qwen;
use crate::options::LoadOptions;
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;
use crate::weights::Weights;

/// The file format a model came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelFormat {
    /// Hugging Face safetensors, loaded in this dtype.
    Safetensors(DType),
    /// GGUF; the most common quantization among its matrices.
    Gguf(String),
    /// Random weights of a configuration's shapes: dense in this dtype, or quantized.
    Synthetic(String),
}

/// A loaded model.
#[derive(Debug)]
pub struct Model {
    qwen: Qwen,
    tokenizer: Option<Tokenizer>,
    defaults: SamplingParams,
    eos_ids: Vec<u32>,
    path: PathBuf,
    format: ModelFormat,
    weight_bytes: u64,
}

impl Model {
    /// Loads a model directory (config.json + safetensors) or a `.gguf` file.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|error| EngineError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        if meta.is_dir() {
            Self::load_dir(path, options)
        } else if meta.is_file() {
            Self::load_gguf(path, options)
        } else {
            Err(EngineError::NotAModel {
                path: path.to_path_buf(),
            })
        }
    }

    fn load_dir(dir: &Path, options: &LoadOptions) -> Result<Self> {
        let config_path = dir.join("config.json");
        if !config_path.exists() {
            return Err(EngineError::NotAModel {
                path: dir.to_path_buf(),
            });
        }
        let config = ModelConfig::from_hf_file(&config_path)?;
        let dtype = options.dtype.unwrap_or(if options.device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        });
        let mut weights = Weights::open_safetensors(dir, dtype, &options.device)?;
        let qwen = Qwen::load(&config, &mut weights, options.cpu_ops)?;
        let tokenizer = match &options.tokenizer {
            Some(t) => Some(load_tokenizer(t)?),
            None if dir.join("tokenizer.json").exists() => Some(Tokenizer::from_dir(dir)?),
            None => None,
        };
        let (defaults, gen_eos) = read_generation_config(&dir.join("generation_config.json"))?;
        let weight_bytes = dir_safetensors_bytes(dir);
        Ok(Self::assemble(
            qwen,
            tokenizer,
            defaults,
            gen_eos,
            dir,
            ModelFormat::Safetensors(dtype),
            weight_bytes,
        ))
    }

    fn load_gguf(path: &Path, options: &LoadOptions) -> Result<Self> {
        let mut weights = Weights::open_gguf(path, &options.device)?;
        let content = weights
            .gguf_content()
            .ok_or_else(|| EngineError::NotAModel {
                path: path.to_path_buf(),
            })?;
        let embd = content
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| EngineError::Weights {
                path: path.to_path_buf(),
                message: "missing tensor `token_embd.weight`".into(),
            })?;
        let vocab_size = embd.shape.dims().first().copied().unwrap_or(0);
        let has_output = content.tensor_infos.contains_key("output.weight");
        let qkv_bias = content.tensor_infos.contains_key("blk.0.attn_q.bias");
        let config = ModelConfig::from_gguf(content, path, vocab_size, has_output, qkv_bias)?;
        let format = ModelFormat::Gguf(dominant_quant(content));
        let tokenizer = match &options.tokenizer {
            Some(t) => Some(load_tokenizer(t)?),
            None => match Tokenizer::from_gguf(content, path) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!("{e}; text generation needs a tokenizer given explicitly");
                    None
                }
            },
        };
        let qwen = Qwen::load(&config, &mut weights, options.cpu_ops)?;
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Ok(Self::assemble(
            qwen,
            tokenizer,
            SamplingParams::default(),
            Vec::new(),
            path,
            format,
            bytes,
        ))
    }

    /// A model of `config`'s shapes with random weights made on `options.device`, dense in the
    /// load dtype or quantized to `quant` (for benchmarks of models that cannot be downloaded
    /// where they run). It has no tokenizer.
    pub fn synthetic(
        config: &ModelConfig,
        options: &LoadOptions,
        quant: Option<GgmlDType>,
    ) -> Result<Self> {
        let dtype = options.dtype.unwrap_or(if options.device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        });
        let shapes = crate::models::qwen::tensor_shapes(config);
        // The bytes a checkpoint of this kind would hold: matrices quantized or in `dtype`,
        // vectors in the activation dtype.
        let act = if quant.is_some() { DType::F32 } else { dtype };
        let weight_bytes = shapes
            .values()
            .map(|shape| {
                let n: usize = shape.iter().product();
                match quant {
                    Some(q) if shape.len() == 2 => n / q.block_size() * q.type_size(),
                    _ => n * act.size_in_bytes(),
                }
            })
            .sum::<usize>() as u64;
        let mut weights = Weights::synthetic(shapes, dtype, quant, &options.device);
        let qwen = Qwen::load(config, &mut weights, options.cpu_ops)?;
        let format = match quant {
            Some(q) => ModelFormat::Synthetic(format!("{q:?}")),
            None => ModelFormat::Synthetic(format!("{dtype:?}")),
        };
        Ok(Self::assemble(
            qwen,
            None,
            SamplingParams::default(),
            Vec::new(),
            Path::new("(synthetic)"),
            format,
            weight_bytes,
        ))
    }

    fn assemble(
        qwen: Qwen,
        tokenizer: Option<Tokenizer>,
        defaults: SamplingParams,
        gen_eos: Vec<u32>,
        path: &Path,
        format: ModelFormat,
        weight_bytes: u64,
    ) -> Self {
        let mut eos_ids = gen_eos;
        for &id in tokenizer.iter().flat_map(|t| t.eos_ids()) {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        Self {
            qwen,
            tokenizer,
            defaults,
            eos_ids,
            path: path.to_path_buf(),
            format,
            weight_bytes,
        }
    }

    /// The network.
    pub fn qwen(&self) -> &Qwen {
        &self.qwen
    }

    /// Hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        self.qwen.config()
    }

    /// The tokenizer, if the model has one.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// The tokenizer, or an error saying there is none.
    pub fn require_tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| EngineError::NoTokenizer {
                path: self.path.clone(),
            })
    }

    /// Sampling defaults (generation_config.json, else Qwen's non-thinking preset).
    pub fn sampling_defaults(&self) -> &SamplingParams {
        &self.defaults
    }

    /// Ids that end generation by default.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Where the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file format.
    pub fn format(&self) -> &ModelFormat {
        &self.format
    }

    /// Bytes of weight files on disk.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
}

fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if path.is_dir() {
        Tokenizer::from_dir(path)
    } else {
        Tokenizer::from_dir(path.parent().unwrap_or(Path::new("."))).and_then(|t| {
            if path.file_name() == Some("tokenizer.json".as_ref()) {
                Ok(t)
            } else {
                Err(EngineError::Tokenizer {
                    path: path.to_path_buf(),
                    message: "expected a tokenizer.json file or a directory holding one".into(),
                })
            }
        })
    }
}

/// Sampling defaults and EOS ids from generation_config.json (absent file: Qwen's defaults).
fn read_generation_config(path: &Path) -> Result<(SamplingParams, Vec<u32>)> {
    if !path.exists() {
        return Ok((SamplingParams::default(), Vec::new()));
    }
    let bad = |message: String| EngineError::Config {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|error| EngineError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let json: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut p = SamplingParams::default();
    let float = |k: &str| json.get(k).and_then(Value::as_f64).map(|v| v as f32);
    if let Some(t) = float("temperature") {
        p.temperature = t;
    }
    if let Some(t) = float("top_p") {
        p.top_p = t;
    }
    if let Some(t) = float("min_p") {
        p.min_p = t;
    }
    if let Some(t) = float("repetition_penalty") {
        p.repetition_penalty = t;
    }
    if let Some(k) = json.get("top_k").and_then(Value::as_u64) {
        p.top_k = k as usize;
    }
    if json.get("do_sample").and_then(Value::as_bool) == Some(false) {
        p.temperature = 0.0;
    }
    p.validate().map_err(|e| bad(e.to_string()))?;
    let eos = match json.get("eos_token_id") {
        Some(Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|v| v as u32)
            .collect(),
        _ => Vec::new(),
    };
    Ok((p, eos))
}

fn dir_safetensors_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn dominant_quant(content: &candle_core::quantized::gguf_file::Content) -> String {
    let mut bytes: std::collections::BTreeMap<String, usize> = Default::default();
    for info in content.tensor_infos.values() {
        let dt = info.ggml_dtype;
        *bytes.entry(format!("{dt:?}")).or_default() +=
            info.shape.elem_count() / dt.block_size() * dt.type_size();
    }
    bytes
        .into_iter()
        .max_by_key(|(_, b)| *b)
        .map(|(k, _)| k)
        .unwrap_or_default()
}
