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
use crate::plan::{KvType, MemoryBudget, MemoryPlan, dense_weight_bytes, gguf_weight_bytes};
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
    plan: MemoryPlan,
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
        let mut config = ModelConfig::from_hf_file(&config_path)?;
        let dtype = options.dtype.unwrap_or(if options.device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        });
        let weight_bytes = dense_weight_bytes(&config, dtype);
        let plan = plan_context(&mut config, weight_bytes, dtype, options)?;
        let mut weights = Weights::open_safetensors(dir, dtype, &options.device)?;
        let qwen = Qwen::load(
            &config,
            &mut weights,
            options.cpu_ops,
            plan.context,
            plan.kv_type,
        )?;
        let tokenizer = match &options.tokenizer {
            Some(t) => Some(load_tokenizer(t)?),
            None if dir.join("tokenizer.json").exists() => Some(Tokenizer::from_dir(dir)?),
            None => None,
        };
        let generation = read_generation_config(&dir.join("generation_config.json"))?;
        let weight_bytes = dir_safetensors_bytes(dir);
        Ok(Self::assemble(
            qwen,
            tokenizer,
            generation,
            dir,
            ModelFormat::Safetensors(dtype),
            weight_bytes,
            plan,
        ))
    }

    fn load_gguf(path: &Path, options: &LoadOptions) -> Result<Self> {
        let mut weights = Weights::open_gguf(path, &options.device)?;
        let content = weights
            .gguf_content()
            .ok_or_else(|| EngineError::NotAModel {
                path: path.to_path_buf(),
            })?;
        let mut config = ModelConfig::from_gguf_content(content, path)?;
        let plan = plan_context(&mut config, gguf_weight_bytes(content), DType::F32, options)?;
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
        let qwen = Qwen::load(
            &config,
            &mut weights,
            options.cpu_ops,
            plan.context,
            plan.kv_type,
        )?;
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Ok(Self::assemble(
            qwen,
            tokenizer,
            (SamplingParams::default(), Vec::new()),
            path,
            format,
            bytes,
            plan,
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
        let mut config = config.clone();
        let plan = plan_context(&mut config, weight_bytes, act, options)?;
        let mut weights = Weights::synthetic(shapes, dtype, quant, &options.device);
        let qwen = Qwen::load(
            &config,
            &mut weights,
            options.cpu_ops,
            plan.context,
            plan.kv_type,
        )?;
        let format = match quant {
            Some(q) => ModelFormat::Synthetic(format!("{q:?}")),
            None => ModelFormat::Synthetic(format!("{dtype:?}")),
        };
        Ok(Self::assemble(
            qwen,
            None,
            (SamplingParams::default(), Vec::new()),
            Path::new("(synthetic)"),
            format,
            weight_bytes,
            plan,
        ))
    }

    /// `generation`: sampling defaults and extra EOS ids from generation_config.json.
    fn assemble(
        qwen: Qwen,
        tokenizer: Option<Tokenizer>,
        generation: (SamplingParams, Vec<u32>),
        path: &Path,
        format: ModelFormat,
        weight_bytes: u64,
        plan: MemoryPlan,
    ) -> Self {
        let (defaults, mut eos_ids) = generation;
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
            plan,
        }
    }

    /// What loading `path` with `options` would take, from the config or the GGUF header alone
    /// (no weights read): the arithmetic the loader checks. The context is the one asked for, or
    /// the model's window; whether it fits is the plan's to say.
    pub fn plan(path: &Path, options: &LoadOptions) -> Result<MemoryPlan> {
        plan_load(path, options)
    }

    /// The network.
    pub fn qwen(&self) -> &Qwen {
        &self.qwen
    }

    /// The memory plan the model was loaded under.
    pub fn memory_plan(&self) -> &MemoryPlan {
        &self.plan
    }

    /// Sequences whose caches the load planned for (see [`LoadOptions::sequences`]).
    pub fn sequences(&self) -> usize {
        self.plan.batch
    }

    /// Positions a sequence may hold (see [`LoadOptions::context`]).
    pub fn context(&self) -> usize {
        self.qwen.context()
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

/// See [`Model::plan`].
fn plan_load(path: &Path, options: &LoadOptions) -> Result<MemoryPlan> {
    let activation = if path.is_dir() {
        options.dtype.unwrap_or(if options.device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        })
    } else {
        DType::F32
    };
    let (mut config, weight_bytes) = crate::plan::inspect(path, activation)?;
    draft_plan(&mut config, weight_bytes, activation, options)
}

/// Applies the context options to `config` (a YaRN override) and drafts the plan for the context
/// asked for (or the model's window), refusing a context the model's window cannot take.
fn draft_plan(
    config: &mut ModelConfig,
    weight_bytes: u64,
    activation: DType,
    options: &LoadOptions,
) -> Result<MemoryPlan> {
    if let Some(yarn) = &options.yarn {
        if yarn.factor < 1.0 || yarn.factor.is_nan() {
            return Err(EngineError::Context(format!(
                "YaRN needs a factor of at least 1 (got {})",
                yarn.factor
            )));
        }
        let mut yarn = yarn.clone();
        // An original context of 0 means the model's own window (the one it was trained on).
        if yarn.original_max_position_embeddings == 0 {
            yarn.original_max_position_embeddings = config
                .yarn
                .as_ref()
                .map_or(config.max_position_embeddings, |y| {
                    y.original_max_position_embeddings
                });
        }
        let extended = (yarn.factor * yarn.original_max_position_embeddings as f64) as usize;
        config.max_position_embeddings = config.max_position_embeddings.max(extended);
        config.yarn = Some(yarn);
    }
    let window = config.max_position_embeddings;
    match options.context {
        Some(0) => {
            return Err(EngineError::Context(
                "a context of 0 positions holds nothing".into(),
            ));
        }
        Some(asked) if asked > window => {
            return Err(EngineError::Context(format!(
                "a context of {asked} positions is longer than the model's window of {window}{}",
                if config.yarn.is_none() {
                    " (for longer contexts switch on YaRN, e.g. factor 4 over the native 32768 for Qwen3)"
                } else {
                    ""
                }
            )));
        }
        _ => {}
    }
    let kv_type = options
        .kv_type
        .unwrap_or_else(|| KvType::default_for(&options.device));
    Ok(MemoryPlan::new(
        config,
        weight_bytes,
        activation,
        kv_type,
        options.context.unwrap_or(window),
        options.sequences.max(1),
        MemoryBudget::of(&options.device),
    ))
}

/// [`draft_plan`], then settles the context: the one asked for when it fits, else an error with
/// the plan's arithmetic; by default the model's window, capped with a warning to what the
/// memory holds.
fn plan_context(
    config: &mut ModelConfig,
    weight_bytes: u64,
    activation: DType,
    options: &LoadOptions,
) -> Result<MemoryPlan> {
    let mut plan = draft_plan(config, weight_bytes, activation, options)?;
    let window = config.max_position_embeddings;
    let largest = plan.largest_fitting_context();
    match options.context {
        Some(asked) if plan.fits() == Some(false) => Err(EngineError::Context(format!(
            "a context of {asked} positions does not fit: {}; at most {} would",
            plan.arithmetic(),
            largest.unwrap_or(0)
        ))),
        Some(_) => Ok(plan),
        None => match largest {
            Some(fitting) if fitting < window.min(MIN_DEFAULT_CONTEXT) => {
                Err(EngineError::Context(format!(
                    "the model does not fit: {}",
                    MemoryPlan {
                        context: window.min(MIN_DEFAULT_CONTEXT),
                        ..plan
                    }
                    .arithmetic()
                )))
            }
            Some(fitting) if fitting < window => {
                plan.context = fitting;
                tracing::warn!(
                    "context capped to {fitting} of the model's {window} positions to fit: {}",
                    plan.arithmetic()
                );
                Ok(plan)
            }
            _ => Ok(plan),
        },
    }
}

/// The shortest context a default load settles for before refusing the model as too large.
const MIN_DEFAULT_CONTEXT: usize = 2048;

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
