//! Model hyper-parameters, read from a Hugging Face config.json or from GGUF metadata.
//!
//! Both sources end in one validated [`ModelConfig`], so the model code never sees a file format.
//! config.json comes in two spellings (transformers < 5: `rope_theta`/`rope_scaling`/`torch_dtype`;
//! transformers >= 5: `rope_parameters`/`dtype`); both are accepted. Anything the forward pass does
//! not implement (another rope type, sliding-window attention, a mixture-of-experts field Qwen3
//! MoE does not have) is rejected here, by name.

use std::path::Path;

use candle_core::quantized::gguf_file;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{EngineError, Result};

mod moe;

pub use moe::MoeConfig;
use moe::MoeError;

/// The transformer families Kestrel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Qwen2 / Qwen2.5: qkv projections with bias, no q/k norm.
    Qwen2,
    /// Qwen3 (dense): per-head RMSNorm on q and k, no qkv bias.
    Qwen3,
    /// Qwen3 MoE: Qwen3's attention, a routed mixture of SwiGLU experts as the MLP.
    Qwen3Moe,
}

impl Architecture {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "qwen2" => Some(Self::Qwen2),
            "qwen3" => Some(Self::Qwen3),
            // config.json spells it `qwen3_moe`, GGUF `qwen3moe`.
            "qwen3_moe" | "qwen3moe" => Some(Self::Qwen3Moe),
            _ => None,
        }
    }

    /// The name used in config.json `model_type`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Qwen3Moe => "qwen3_moe",
        }
    }
}

/// YaRN rope scaling parameters (static: applied at every length, as transformers does).
#[derive(Debug, Clone, PartialEq)]
pub struct Yarn {
    /// Context extension factor.
    pub factor: f64,
    /// Context length the model was pre-trained with.
    pub original_max_position_embeddings: usize,
    /// Scale of cos/sin; `0.1 ln(factor) + 1` unless the config sets it.
    pub attention_factor: f64,
    /// High-frequency boundary (rotations), default 32.
    pub beta_fast: f64,
    /// Low-frequency boundary (rotations), default 1.
    pub beta_slow: f64,
    /// Whether the correction range is rounded to whole dimensions (default true).
    pub truncate: bool,
}

/// Validated hyper-parameters of a Qwen2/Qwen3 model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Which family.
    pub architecture: Architecture,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Residual stream width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA when fewer than `num_heads`, MQA at 1).
    pub num_kv_heads: usize,
    /// Width of one head (not always `hidden_size / num_heads`).
    pub head_dim: usize,
    /// Context window.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// YaRN scaling, if configured.
    pub yarn: Option<Yarn>,
    /// Whether the output projection shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Whether q/k/v projections have a bias.
    pub qkv_bias: bool,
    /// Whether q and k get a per-head RMSNorm before RoPE.
    pub qk_norm: bool,
    /// The mixture of experts, for Qwen3 MoE; `None` for dense models.
    pub moe: Option<MoeConfig>,
}

/// The fields of config.json we read; everything optional so that a missing one gets our message.
#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    use_sliding_window: Option<bool>,
    hidden_act: Option<String>,
}

impl ModelConfig {
    /// Reads and validates a Hugging Face `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|error| EngineError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_hf_json(&text, path)
    }

    /// Parses config.json text; `path` is only used in error messages.
    pub fn from_hf_json(text: &str, path: &Path) -> Result<Self> {
        let bad = |message: String| EngineError::Config {
            path: path.to_path_buf(),
            message,
        };
        let json: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let hf = HfConfig::deserialize(&json).map_err(|e| bad(e.to_string()))?;
        let unsupported = |message: String| EngineError::Unsupported {
            path: path.to_path_buf(),
            message,
        };
        let model_type = hf
            .model_type
            .clone()
            .ok_or_else(|| bad("missing field `model_type`".into()))?;
        let architecture = Architecture::parse(&model_type).ok_or_else(|| {
            unsupported(format!(
                "architecture `{model_type}` (supported: qwen2, qwen3, qwen3_moe)"
            ))
        })?;
        if let Some(act) = hf.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(unsupported(format!(
                "`hidden_act: {act}` (supported: silu)"
            )));
        }
        let need =
            |v: Option<usize>, name: &str| v.ok_or_else(|| bad(format!("missing field `{name}`")));
        let num_layers = need(hf.num_hidden_layers, "num_hidden_layers")?;
        let moe = match architecture {
            Architecture::Qwen3Moe => {
                Some(moe::from_hf(&json, num_layers).map_err(|e| match e {
                    MoeError::Invalid(m) => bad(m),
                    MoeError::Unsupported(m) => unsupported(m),
                })?)
            }
            _ => None,
        };
        let hidden_size = need(hf.hidden_size, "hidden_size")?;
        let num_heads = need(hf.num_attention_heads, "num_attention_heads")?;
        if hf.use_sliding_window == Some(true) {
            return Err(EngineError::Unsupported {
                path: path.to_path_buf(),
                message: "`use_sliding_window: true` (sliding-window attention)".into(),
            });
        }

        // transformers >= 5 keeps theta and scaling together in `rope_parameters`.
        let rope = hf
            .rope_parameters
            .as_ref()
            .or(hf.rope_scaling.as_ref())
            .filter(|v| !v.is_null());
        let rope_theta = hf
            .rope_theta
            .or_else(|| {
                rope.and_then(|r| r.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(10_000.0);
        let max_position_embeddings = need(hf.max_position_embeddings, "max_position_embeddings")?;
        let yarn = match rope {
            Some(r) => {
                parse_rope(r, max_position_embeddings).map_err(|m| EngineError::Unsupported {
                    path: path.to_path_buf(),
                    message: m,
                })?
            }
            None => None,
        };
        let config = Self {
            architecture,
            vocab_size: need(hf.vocab_size, "vocab_size")?,
            hidden_size,
            // A MoE model whose layers are all sparse may leave the dense width out.
            intermediate_size: match (&moe, hf.intermediate_size) {
                (Some(m), None) if m.dense_layers.is_empty() => m.expert_intermediate_size,
                (_, size) => need(size, "intermediate_size")?,
            },
            num_layers,
            num_heads,
            num_kv_heads: hf.num_key_value_heads.unwrap_or(num_heads),
            head_dim: hf.head_dim.unwrap_or(hidden_size / num_heads.max(1)),
            max_position_embeddings,
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            yarn,
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            // Qwen2 always has a qkv bias; Qwen3 only when `attention_bias` says so.
            qkv_bias: match architecture {
                Architecture::Qwen2 => true,
                Architecture::Qwen3 | Architecture::Qwen3Moe => hf.attention_bias.unwrap_or(false),
            },
            qk_norm: architecture != Architecture::Qwen2,
            moe,
        };
        config.validate().map_err(bad)?;
        Ok(config)
    }

    /// Reads the hyper-parameters of a GGUF file from its header: the metadata, plus what only
    /// the tensor table says (vocabulary rows, a separate output matrix, qkv biases).
    pub fn from_gguf_content(content: &gguf_file::Content, path: &Path) -> Result<Self> {
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
        Self::from_gguf(content, path, vocab_size, has_output, qkv_bias)
    }

    /// Reads the hyper-parameters from GGUF metadata (`{arch}.block_count`, ...).
    /// `has_output` tells whether the file carries a separate `output.weight`; `qkv_bias` whether
    /// it carries `blk.0.attn_q.bias`; `vocab_size` comes from the embedding tensor.
    pub fn from_gguf(
        content: &gguf_file::Content,
        path: &Path,
        vocab_size: usize,
        has_output: bool,
        qkv_bias: bool,
    ) -> Result<Self> {
        let bad = |message: String| EngineError::Config {
            path: path.to_path_buf(),
            message,
        };
        let get = |key: &str| content.metadata.get(key);
        let arch_name = get("general.architecture")
            .and_then(|v| v.to_string().ok().cloned())
            .ok_or_else(|| bad("missing metadata `general.architecture`".into()))?;
        let architecture =
            Architecture::parse(&arch_name).ok_or_else(|| EngineError::Unsupported {
                path: path.to_path_buf(),
                message: format!("architecture `{arch_name}` (supported: qwen2, qwen3, qwen3moe)"),
            })?;
        let uint = |name: &str| -> Result<Option<usize>> {
            match get(&format!("{arch_name}.{name}")) {
                None => Ok(None),
                Some(v) => v
                    .to_u64()
                    .or_else(|_| v.to_u32().map(u64::from))
                    .map(|n| Some(n as usize))
                    .map_err(|_| bad(format!("metadata `{arch_name}.{name}` is not an integer"))),
            }
        };
        let float = |name: &str| -> Result<Option<f64>> {
            match get(&format!("{arch_name}.{name}")) {
                None => Ok(None),
                Some(v) => v
                    .to_f32()
                    .map(f64::from)
                    .or_else(|_| v.to_f64())
                    .map(Some)
                    .map_err(|_| bad(format!("metadata `{arch_name}.{name}` is not a number"))),
            }
        };
        let need = |v: Option<usize>, name: &str| {
            v.ok_or_else(|| bad(format!("missing metadata `{arch_name}.{name}`")))
        };
        let hidden_size = need(uint("embedding_length")?, "embedding_length")?;
        let num_heads = need(uint("attention.head_count")?, "attention.head_count")?;
        let max_position_embeddings = need(uint("context_length")?, "context_length")?;
        let scaling_type = get(&format!("{arch_name}.rope.scaling.type"))
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_else(|| "none".into());
        let yarn = match scaling_type.as_str() {
            "none" => None,
            "yarn" => {
                let factor = float("rope.scaling.factor")?.ok_or_else(|| {
                    bad(format!(
                        "missing metadata `{arch_name}.rope.scaling.factor`"
                    ))
                })?;
                let original = uint("rope.scaling.original_context_length")?
                    .unwrap_or(max_position_embeddings);
                Some(Yarn::new(factor, original, None))
            }
            other => {
                return Err(EngineError::Unsupported {
                    path: path.to_path_buf(),
                    message: format!("rope scaling type `{other}` (supported: yarn)"),
                });
            }
        };
        let num_layers = need(uint("block_count")?, "block_count")?;
        let moe = match architecture {
            Architecture::Qwen3Moe => Some(moe::from_gguf(
                content, path, &arch_name, num_layers, &uint, &float,
            )?),
            _ => None,
        };
        let intermediate_size = match (&moe, uint("feed_forward_length")?) {
            (Some(m), None) if m.dense_layers.is_empty() => m.expert_intermediate_size,
            (_, size) => need(size, "feed_forward_length")?,
        };
        let config = Self {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads: uint("attention.head_count_kv")?.unwrap_or(num_heads),
            head_dim: uint("attention.key_length")?.unwrap_or(hidden_size / num_heads.max(1)),
            max_position_embeddings,
            rms_norm_eps: float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-6),
            rope_theta: float("rope.freq_base")?.unwrap_or(10_000.0),
            yarn,
            tie_word_embeddings: !has_output,
            qkv_bias,
            qk_norm: architecture != Architecture::Qwen2,
            moe,
        };
        config.validate().map_err(bad)?;
        Ok(config)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        for (name, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                return Err(format!("`{name}` must be positive"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!(
                "`num_attention_heads` ({}) is not a multiple of `num_key_value_heads` ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "`head_dim` ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        if let Some(moe) = &self.moe {
            if moe.num_experts == 0 || moe.expert_intermediate_size == 0 {
                return Err("`num_experts` and `moe_intermediate_size` must be positive".into());
            }
            if moe.experts_per_token == 0 || moe.experts_per_token > moe.num_experts {
                return Err(format!(
                    "`num_experts_per_tok` ({}) must be between 1 and `num_experts` ({})",
                    moe.experts_per_token, moe.num_experts
                ));
            }
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return Err(format!(
                "`rope_theta` ({}) must be positive",
                self.rope_theta
            ));
        }
        Ok(())
    }
}

impl Yarn {
    /// YaRN extending a model trained on `original_max_position_embeddings` positions by
    /// `factor`, with transformers' defaults for what is not given (Qwen's recipe for 131k
    /// contexts: factor 4 over 32768).
    pub fn new(
        factor: f64,
        original_max_position_embeddings: usize,
        attention_factor: Option<f64>,
    ) -> Self {
        let default_attention = if factor <= 1.0 {
            1.0
        } else {
            0.1 * factor.ln() + 1.0
        };
        Self {
            factor,
            original_max_position_embeddings,
            attention_factor: attention_factor.unwrap_or(default_attention),
            beta_fast: 32.0,
            beta_slow: 1.0,
            truncate: true,
        }
    }
}

/// Reads a `rope_scaling` / `rope_parameters` object: `None` for plain RoPE, YaRN parameters, or
/// an error naming the unsupported type.
fn parse_rope(
    r: &Value,
    max_position_embeddings: usize,
) -> std::result::Result<Option<Yarn>, String> {
    let kind = r
        .get("rope_type")
        .or_else(|| r.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "yarn" => {
            let num = |k: &str| r.get(k).and_then(Value::as_f64);
            let original = r
                .get("original_max_position_embeddings")
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .unwrap_or(max_position_embeddings);
            // As transformers: without `factor`, the ratio of the two context lengths.
            let factor = num("factor").unwrap_or(max_position_embeddings as f64 / original as f64);
            if num("mscale").is_some() || num("mscale_all_dim").is_some() {
                return Err("yarn `mscale`/`mscale_all_dim` (DeepSeek-style) rope scaling".into());
            }
            let mut yarn = Yarn::new(factor, original, num("attention_factor"));
            if let Some(b) = num("beta_fast") {
                yarn.beta_fast = b;
            }
            if let Some(b) = num("beta_slow") {
                yarn.beta_slow = b;
            }
            if let Some(t) = r.get("truncate").and_then(Value::as_bool) {
                yarn.truncate = t;
            }
            Ok(Some(yarn))
        }
        other => Err(format!(
            "rope scaling type `{other}` (supported: default, yarn)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN3_14B: &str = r#"{"architectures":["Qwen3ForCausalLM"],"model_type":"qwen3",
        "hidden_size":5120,"intermediate_size":17408,"num_hidden_layers":40,"num_attention_heads":40,
        "num_key_value_heads":8,"head_dim":128,"max_position_embeddings":40960,"rms_norm_eps":1e-6,
        "rope_theta":1000000,"rope_scaling":null,"tie_word_embeddings":false,"torch_dtype":"bfloat16",
        "vocab_size":151936,"attention_bias":false}"#;

    fn parse(text: &str) -> Result<ModelConfig> {
        ModelConfig::from_hf_json(text, Path::new("config.json"))
    }

    #[test]
    fn reads_qwen3_14b() {
        let c = parse(QWEN3_14B).expect("valid config");
        assert_eq!(c.architecture, Architecture::Qwen3);
        assert_eq!(
            (c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim),
            (40, 40, 8, 128)
        );
        assert!(c.qk_norm && !c.qkv_bias && !c.tie_word_embeddings && c.yarn.is_none());
        assert_eq!(c.rope_theta, 1e6);
    }

    #[test]
    fn both_yarn_spellings_agree() {
        let old = QWEN3_14B.replace(
            r#""rope_scaling":null"#,
            r#""rope_scaling":{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":32768}"#,
        );
        let new = QWEN3_14B.replace(r#""rope_theta":1000000,"rope_scaling":null"#,
            r#""rope_parameters":{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":32768,"rope_theta":1000000}"#);
        let (a, b) = (parse(&old).expect("old"), parse(&new).expect("new"));
        assert_eq!(a, b);
        let yarn = a.yarn.expect("yarn");
        assert_eq!(yarn.original_max_position_embeddings, 32768);
        assert!((yarn.attention_factor - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
    }

    #[test]
    fn rejects_unknown_rope_type_by_name() {
        let text = QWEN3_14B.replace(
            r#""rope_scaling":null"#,
            r#""rope_scaling":{"type":"dynamic","factor":2.0}"#,
        );
        let err = parse(&text)
            .expect_err("dynamic is unsupported")
            .to_string();
        assert!(err.contains("dynamic"), "{err}");
    }

    #[test]
    fn missing_and_invalid_fields_are_named() {
        let text = QWEN3_14B.replace(r#""hidden_size":5120,"#, "");
        assert!(
            parse(&text)
                .expect_err("missing")
                .to_string()
                .contains("hidden_size")
        );
        let text = QWEN3_14B.replace(r#""num_key_value_heads":8"#, r#""num_key_value_heads":7"#);
        assert!(
            parse(&text)
                .expect_err("gqa")
                .to_string()
                .contains("num_key_value_heads")
        );
        let text = QWEN3_14B.replace(r#""model_type":"qwen3""#, r#""model_type":"llama""#);
        assert!(
            parse(&text)
                .expect_err("arch")
                .to_string()
                .contains("llama")
        );
        assert!(parse("{not json").is_err());
    }

    #[test]
    fn qwen2_has_bias_and_derived_head_dim() {
        let text = r#"{"model_type":"qwen2","hidden_size":896,"intermediate_size":4864,"num_hidden_layers":24,
            "num_attention_heads":14,"num_key_value_heads":2,"max_position_embeddings":32768,
            "vocab_size":151936,"tie_word_embeddings":true,"use_sliding_window":false}"#;
        let c = parse(text).expect("qwen2");
        assert!(c.qkv_bias && !c.qk_norm && c.tie_word_embeddings);
        assert_eq!(c.head_dim, 64);
    }
}
