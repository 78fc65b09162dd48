//! Qwen3 MoE's hyper-parameters: how many experts, how many per token, how wide, whether the
//! top-k weights are renormalised, and which layers stay dense, from config.json (transformers'
//! rules) or GGUF metadata (llama.cpp's). A routing design Qwen3 MoE does not have is refused by
//! the field that asks for it.

use std::path::Path;

use candle_core::quantized::gguf_file;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{EngineError, Result};

/// How a Qwen3 MoE model routes each token through its experts.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    /// Experts per sparse layer.
    pub num_experts: usize,
    /// Experts each token goes through (top-k of the router's softmax).
    pub experts_per_token: usize,
    /// Width of one expert's SwiGLU MLP.
    pub expert_intermediate_size: usize,
    /// Whether the top-k routing weights are renormalised to sum to one.
    pub norm_topk_prob: bool,
    /// Layers whose MLP is dense (`intermediate_size` wide) instead of sparse, in order:
    /// `mlp_only_layers` and the layers `decoder_sparse_step` skips.
    pub dense_layers: Vec<usize>,
}

impl MoeConfig {
    /// Whether layer `layer` routes through experts.
    pub fn is_sparse(&self, layer: usize) -> bool {
        self.dense_layers.binary_search(&layer).is_err()
    }
}

/// The mixture-of-experts fields of config.json that Qwen3 MoE defines (the router's training
/// losses included: they do not change inference). Any other field naming experts or routing
/// belongs to a design Kestrel does not run (shared experts, grouped routing, scaled weights),
/// unless it turns that design off (Qwen3-Coder's configs carry
/// `shared_expert_intermediate_size: 0`).
const QWEN3_MOE_FIELDS: [&str; 9] = [
    "num_experts",
    "num_local_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "norm_topk_prob",
    "decoder_sparse_step",
    "mlp_only_layers",
    "output_router_logits",
    "router_aux_loss_coef",
];

/// The mixture-of-experts fields of a config.json.
#[derive(Deserialize)]
struct HfMoe {
    num_experts: Option<usize>,
    num_local_experts: Option<usize>,
    num_experts_per_tok: Option<usize>,
    moe_intermediate_size: Option<usize>,
    norm_topk_prob: Option<bool>,
    decoder_sparse_step: Option<usize>,
    mlp_only_layers: Option<Vec<usize>>,
}

/// Why a Qwen3 MoE config.json cannot be read.
pub(super) enum MoeError {
    /// A required field is missing or out of range.
    Invalid(String),
    /// A field asks for what Kestrel does not run.
    Unsupported(String),
}

/// The mixture of experts of a `qwen3_moe` config.json, as transformers builds it: layer `l` is
/// sparse unless listed in `mlp_only_layers` or skipped by `decoder_sparse_step`.
pub(super) fn from_hf(json: &Value, num_layers: usize) -> std::result::Result<MoeConfig, MoeError> {
    let hf = HfMoe::deserialize(json).map_err(|e| MoeError::Invalid(e.to_string()))?;
    let routing_words = ["expert", "moe", "router", "routed", "topk", "top_k"];
    // A value that leaves the design out: nothing, zero, off, or a scale of one.
    let inert = |key: &str, value: &Value| match value {
        Value::Null | Value::Bool(false) => true,
        Value::Number(n) => {
            n.as_f64() == Some(0.0) || (key.contains("scaling") && n.as_f64() == Some(1.0))
        }
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(true) => false,
    };
    if let Some(object) = json.as_object() {
        for (key, value) in object {
            let lower = key.to_ascii_lowercase();
            if routing_words.iter().any(|w| lower.contains(w))
                && !QWEN3_MOE_FIELDS.contains(&key.as_str())
                && !inert(&lower, value)
            {
                return Err(MoeError::Unsupported(format!(
                    "mixture-of-experts field `{key}` (Qwen3 MoE has: {})",
                    QWEN3_MOE_FIELDS.join(", ")
                )));
            }
        }
    }
    let need = |v: Option<usize>, name: &str| {
        v.ok_or_else(|| MoeError::Invalid(format!("missing field `{name}`")))
    };
    let step = hf.decoder_sparse_step.unwrap_or(1);
    if step == 0 {
        return Err(MoeError::Invalid(
            "`decoder_sparse_step` must be positive".into(),
        ));
    }
    let only = hf.mlp_only_layers.clone().unwrap_or_default();
    if let Some(l) = only.iter().find(|l| **l >= num_layers) {
        return Err(MoeError::Invalid(format!(
            "`mlp_only_layers` names layer {l} of a model with {num_layers}"
        )));
    }
    Ok(MoeConfig {
        num_experts: need(hf.num_experts.or(hf.num_local_experts), "num_experts")?,
        experts_per_token: need(hf.num_experts_per_tok, "num_experts_per_tok")?,
        expert_intermediate_size: need(hf.moe_intermediate_size, "moe_intermediate_size")?,
        // transformers' default.
        norm_topk_prob: hf.norm_topk_prob.unwrap_or(false),
        dense_layers: (0..num_layers)
            .filter(|l| only.contains(l) || !(l + 1).is_multiple_of(step))
            .collect(),
    })
}

/// The mixture of experts of a `qwen3moe` GGUF: its metadata (`{arch}.expert_count`, ...) and
/// which layers have a router (`blk.N.ffn_gate_inp.weight`); what llama.cpp would run differently
/// (shared experts, scaled weights, another gating function) is refused by name.
pub(super) fn from_gguf(
    content: &gguf_file::Content,
    path: &Path,
    arch_name: &str,
    num_layers: usize,
    uint: &dyn Fn(&str) -> Result<Option<usize>>,
    float: &dyn Fn(&str) -> Result<Option<f64>>,
) -> Result<MoeConfig> {
    let need = |v: Option<usize>, name: &str| {
        v.ok_or_else(|| EngineError::Config {
            path: path.to_path_buf(),
            message: format!("missing metadata `{arch_name}.{name}`"),
        })
    };
    let unsupported = |message: String| EngineError::Unsupported {
        path: path.to_path_buf(),
        message,
    };
    if let Some(n) = uint("expert_shared_count")?.filter(|n| *n > 0) {
        return Err(unsupported(format!(
            "`{arch_name}.expert_shared_count: {n}` (shared experts)"
        )));
    }
    if let Some(w) = float("expert_weights_scale")?.filter(|w| *w != 0.0 && *w != 1.0) {
        return Err(unsupported(format!(
            "`{arch_name}.expert_weights_scale: {w}` (scaled routing weights)"
        )));
    }
    // llama.cpp's enum: 1 is softmax, what Qwen3 MoE routes with.
    if let Some(f) = uint("expert_gating_func")?.filter(|f| *f != 1) {
        return Err(unsupported(format!(
            "`{arch_name}.expert_gating_func: {f}` (supported: 1, softmax)"
        )));
    }
    // A layer without a router is dense; llama.cpp always renormalises the top-k
    // weights of this architecture.
    let dense_layers = (0..num_layers)
        .filter(|l| {
            !content
                .tensor_infos
                .contains_key(&format!("blk.{l}.ffn_gate_inp.weight"))
        })
        .collect();
    Ok(MoeConfig {
        num_experts: need(uint("expert_count")?, "expert_count")?,
        experts_per_token: need(uint("expert_used_count")?, "expert_used_count")?,
        expert_intermediate_size: need(
            uint("expert_feed_forward_length")?,
            "expert_feed_forward_length",
        )?,
        norm_topk_prob: true,
        dense_layers,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Architecture, ModelConfig};

    fn parse(text: &str) -> crate::error::Result<ModelConfig> {
        ModelConfig::from_hf_json(text, std::path::Path::new("config.json"))
    }

    const QWEN3_30B_A3B: &str = r#"{"architectures":["Qwen3MoeForCausalLM"],"model_type":"qwen3_moe",
        "hidden_size":2048,"intermediate_size":6144,"moe_intermediate_size":768,"num_experts":128,
        "num_experts_per_tok":8,"norm_topk_prob":true,"decoder_sparse_step":1,"mlp_only_layers":[],
        "num_hidden_layers":48,"num_attention_heads":32,"num_key_value_heads":4,"head_dim":128,
        "max_position_embeddings":40960,"rope_theta":1000000.0,"rope_scaling":null,
        "output_router_logits":false,"router_aux_loss_coef":0.001,"hidden_act":"silu",
        "tie_word_embeddings":false,"vocab_size":151936}"#;

    #[test]
    fn reads_qwen3_30b_a3b_and_both_expert_count_spellings() {
        let c = parse(QWEN3_30B_A3B).expect("moe config");
        assert_eq!(c.architecture, Architecture::Qwen3Moe);
        assert!(c.qk_norm && !c.qkv_bias);
        let moe = c.moe.clone().expect("moe");
        assert_eq!(
            (
                moe.num_experts,
                moe.experts_per_token,
                moe.expert_intermediate_size
            ),
            (128, 8, 768)
        );
        assert!(moe.norm_topk_prob && moe.dense_layers.is_empty() && moe.is_sparse(47));
        let v5 = QWEN3_30B_A3B.replace(r#""num_experts":128"#, r#""num_local_experts":128"#);
        assert_eq!(parse(&v5).expect("v5 spelling"), c);
    }

    #[test]
    fn dense_moe_layers_follow_mlp_only_layers_and_the_sparse_step() {
        let text = QWEN3_30B_A3B
            .replace(r#""decoder_sparse_step":1"#, r#""decoder_sparse_step":2"#)
            .replace(r#""mlp_only_layers":[]"#, r#""mlp_only_layers":[3]"#);
        let moe = parse(&text).expect("config").moe.expect("moe");
        // Layer l is sparse when (l + 1) is a multiple of the step and l is not listed.
        assert_eq!(&moe.dense_layers[..4], [0, 2, 3, 4]);
        assert!(moe.is_sparse(1) && moe.is_sparse(5) && !moe.is_sparse(3));
        let text = QWEN3_30B_A3B.replace(r#""mlp_only_layers":[]"#, r#""mlp_only_layers":[48]"#);
        let err = parse(&text).expect_err("out of range").to_string();
        assert!(
            err.contains("mlp_only_layers") && err.contains("48"),
            "{err}"
        );
    }

    #[test]
    fn moe_designs_qwen3_moe_does_not_have_are_refused_by_name() {
        for (field, value) in [
            ("shared_expert_intermediate_size", "5632"),
            ("n_shared_experts", "2"),
            ("routed_scaling_factor", "2.5"),
            ("topk_group", "4"),
        ] {
            let text = QWEN3_30B_A3B.replace(
                r#""hidden_act":"silu""#,
                &format!(r#""hidden_act":"silu","{field}":{value}"#),
            );
            let err = parse(&text).expect_err(field).to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
        // Switched off, as Qwen3-Coder's configs say it: accepted.
        let coder = QWEN3_30B_A3B.replace(
            r#""hidden_act":"silu""#,
            r#""hidden_act":"silu","shared_expert_intermediate_size":0,"routed_scaling_factor":1.0"#,
        );
        assert!(parse(&coder).is_ok());
        let too_many =
            QWEN3_30B_A3B.replace(r#""num_experts_per_tok":8"#, r#""num_experts_per_tok":129"#);
        let err = parse(&too_many).expect_err("k > experts").to_string();
        assert!(err.contains("num_experts_per_tok"), "{err}");
        let gelu = QWEN3_30B_A3B.replace(r#""hidden_act":"silu""#, r#""hidden_act":"gelu""#);
        assert!(parse(&gelu).expect_err("gelu").to_string().contains("gelu"));
        let missing = QWEN3_30B_A3B.replace(r#""moe_intermediate_size":768,"#, "");
        let err = parse(&missing).expect_err("missing").to_string();
        assert!(err.contains("moe_intermediate_size"), "{err}");
    }
}
