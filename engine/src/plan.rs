//! Memory planning: what a model needs at a context length and batch, from its hyper-parameters
//! alone, before any weight is read.
//!
//! The arithmetic is the same in three places: `kestrel plan` prints it, the loader caps a
//! default context to what fits, and an explicit context or batch that cannot fit is refused
//! with it in the error, rather than failing later in the allocator (or in the OS's OOM killer).
//! Weights come from the GGUF header's tensor table or, for safetensors, from the parameter count
//! times the dtype the weights are loaded in (f32 on a CPU doubles a bf16 checkpoint). KV bytes per
//! token are `2 (keys, values) x layers x kv_heads x head_dim` elements of the cache's type.
//! Scratch is the activations of one prefill chunk plus one attention tile and the logits row.

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device};

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
pub use crate::kv_cache::KvType;

/// Prompt tokens run through the model in one forward pass; longer prompts go in chunks of
/// this many, so activations stay bounded whatever the prompt's length.
pub const PREFILL_CHUNK: usize = 512;

/// Where the model would run, and how much memory that place has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryBudget {
    /// "RAM" or the GPU's name.
    pub place: String,
    /// Bytes available there now (RAM: `MemAvailable`; GPU: free device memory), when known.
    pub available: Option<u64>,
}

impl MemoryBudget {
    /// What `device` has now.
    pub fn of(device: &Device) -> Self {
        match device {
            Device::Cpu => Self {
                place: "RAM".into(),
                available: available_ram(),
            },
            Device::Cuda(_) => Self {
                place: "GPU memory".into(),
                available: free_gpu_memory(device),
            },
            Device::Metal(_) => Self {
                // Metal shares the system's memory.
                place: "unified memory".into(),
                available: available_ram(),
            },
        }
    }
}

/// `MemAvailable`, or less when a cgroup (a container's memory limit) leaves less.
fn available_ram() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    let system = kb * 1024;
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let cgroup =
        read("memory.max").map(|max| max.saturating_sub(read("memory.current").unwrap_or(0)));
    Some(cgroup.map_or(system, |c| c.min(system)))
}

#[cfg(feature = "cuda")]
fn free_gpu_memory(device: &Device) -> Option<u64> {
    let cuda = device.as_cuda_device().ok()?;
    let (free, _total) = cuda.cuda_stream().context().mem_get_info().ok()?;
    Some(free as u64)
}

#[cfg(not(feature = "cuda"))]
fn free_gpu_memory(_device: &Device) -> Option<u64> {
    None
}

/// What a model needs: weights, KV cache and scratch, against what the machine has.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    /// Bytes of the weights as loaded.
    pub weight_bytes: u64,
    /// KV cache bytes per token of one sequence.
    pub kv_bytes_per_token: u64,
    /// The KV cache's element type.
    pub kv_type: KvType,
    /// Positions per sequence.
    pub context: usize,
    /// Sequences held at once.
    pub batch: usize,
    /// Activations of one prefill chunk, one attention tile and the logits.
    pub scratch_bytes: u64,
    /// Where it runs and what is available there.
    pub budget: MemoryBudget,
    /// Parameters of the model, all of them.
    pub parameters: u64,
    /// Parameters one token reads (fewer than all in a mixture of experts).
    pub active_parameters: u64,
}

impl MemoryPlan {
    /// The plan for `config` with `weight_bytes` of weights, computing in `activation` dtype.
    pub fn new(
        config: &ModelConfig,
        weight_bytes: u64,
        activation: DType,
        kv_type: KvType,
        context: usize,
        batch: usize,
        budget: MemoryBudget,
    ) -> Self {
        let (parameters, active_parameters) = parameter_counts(config);
        Self {
            parameters,
            active_parameters,
            weight_bytes,
            kv_bytes_per_token: kv_bytes_per_token(config, kv_type),
            kv_type,
            context,
            batch,
            scratch_bytes: scratch_bytes(config, activation, context, batch),
            budget,
        }
    }

    /// KV cache bytes for `batch` sequences of `context` positions.
    pub fn kv_bytes(&self) -> u64 {
        self.kv_bytes_per_token * self.context as u64 * self.batch as u64
    }

    /// Everything.
    pub fn total_bytes(&self) -> u64 {
        self.weight_bytes + self.kv_bytes() + self.scratch_bytes
    }

    /// Whether it fits what is available (`None` when that is unknown).
    pub fn fits(&self) -> Option<bool> {
        self.budget.available.map(|a| self.total_bytes() <= a)
    }

    /// The longest context (`self.context`, else a multiple of 256 below it) whose plan fits, when the
    /// available memory is known; 0 when not even the weights fit.
    pub fn largest_fitting_context(&self) -> Option<usize> {
        let available = self.budget.available?;
        let fixed = self.weight_bytes + self.scratch_bytes;
        let per_position = (self.kv_bytes_per_token * self.batch as u64).max(1);
        let positions = available.saturating_sub(fixed) / per_position;
        let positions = usize::try_from(positions).unwrap_or(usize::MAX);
        Some(if positions >= self.context {
            self.context
        } else {
            positions / 256 * 256
        })
    }

    /// The arithmetic in one line: `weights 8.2 GiB + KV 160 KiB/token (bf16) x 32768 tokens x 1
    /// sequence = 5.0 GiB + scratch 0.3 GiB = 13.5 GiB; RAM available: 12.0 GiB`.
    pub fn arithmetic(&self) -> String {
        let available = match self.budget.available {
            Some(a) => format!("{} available: {}", self.budget.place, bytes(a)),
            None => format!("{} available: unknown", self.budget.place),
        };
        format!(
            "weights {} + KV {}/token ({}) x {} tokens x {} {} = {} + scratch {} = {}; {available}",
            bytes(self.weight_bytes),
            bytes(self.kv_bytes_per_token),
            self.kv_type,
            self.context,
            self.batch,
            if self.batch == 1 {
                "sequence"
            } else {
                "sequences"
            },
            bytes(self.kv_bytes()),
            bytes(self.scratch_bytes),
            bytes(self.total_bytes()),
        )
    }
}

/// KV bytes per token: keys and values of every layer's kv heads.
pub fn kv_bytes_per_token(config: &ModelConfig, kv_type: KvType) -> u64 {
    let row = kv_type.bytes(config.head_dim) as u64;
    2 * config.num_layers as u64 * config.num_kv_heads as u64 * row
}

/// Activations of one forward pass of [`PREFILL_CHUNK`] positions (or `batch` decode rows when
/// that is more): the residual stream and its normalised copy, q/k/v, the attention output, the
/// MLP's gate, up and product, attention's scores, and the last position's logits.
fn scratch_bytes(config: &ModelConfig, activation: DType, context: usize, batch: usize) -> u64 {
    let rows = PREFILL_CHUNK.max(batch) as u64;
    let h = config.hidden_size as u64;
    // A MoE layer holds each row's k experts' activations at once.
    let i = match &config.moe {
        Some(m) => config
            .intermediate_size
            .max(m.experts_per_token * m.expert_intermediate_size),
        None => config.intermediate_size,
    } as u64;
    let q = (config.num_heads * config.head_dim) as u64;
    let kv = (config.num_kv_heads * config.head_dim) as u64;
    let per_row = 3 * h + 2 * q + 2 * kv + 3 * i;
    // Candle's path makes a few tensors the size of one tile's scores; the CPU's, one kv head's
    // keys and values as f32, and per thread one block of positions' scores against the whole
    // context.
    let candle = 4 * crate::paged_attention::SCORE_TILE_BYTES as u64;
    let rep = (config.num_heads / config.num_kv_heads.max(1)) as u64;
    let block = (crate::parallel::threads() * crate::attention::PREFILL_TASK) as u64;
    let cpu = (block * rep + 2 * config.head_dim as u64) * 4 * context as u64;
    let tile = candle.max(cpu);
    rows * per_row * activation.size_in_bytes() as u64 + tile + config.vocab_size as u64 * 4 * 2
}

/// Bytes of a model's weights loaded as `dtype` (vectors and matrices alike; what a safetensors
/// checkpoint takes in memory).
pub fn dense_weight_bytes(config: &ModelConfig, dtype: DType) -> u64 {
    crate::models::qwen::tensor_shapes(config)
        .values()
        .map(|s| s.iter().product::<usize>() as u64)
        .sum::<u64>()
        * dtype.size_in_bytes() as u64
}

/// Parameters of `c`'s weights, all of them and those one token reads (the `k` chosen experts of
/// each sparse layer, not the others).
pub fn parameter_counts(c: &ModelConfig) -> (u64, u64) {
    let total: u64 = crate::models::qwen::tensor_shapes(c)
        .values()
        .map(|s| s.iter().product::<usize>() as u64)
        .sum();
    let Some(moe) = &c.moe else {
        return (total, total);
    };
    let per_expert = 3 * (c.hidden_size * moe.expert_intermediate_size) as u64;
    let sparse_layers = (0..c.num_layers).filter(|l| moe.is_sparse(*l)).count() as u64;
    let unread = sparse_layers * (moe.num_experts - moe.experts_per_token) as u64 * per_expert;
    (total, total - unread)
}

/// Bytes of the tensor data a GGUF header describes.
pub fn gguf_weight_bytes(content: &gguf_file::Content) -> u64 {
    content
        .tensor_infos
        .values()
        .map(|info| {
            let dt = info.ggml_dtype;
            (info.shape.elem_count() / dt.block_size() * dt.type_size()) as u64
        })
        .sum()
}

/// A model's hyper-parameters and weight bytes read without loading it: a GGUF's header, or a
/// directory's config.json (weights counted in `dtype`).
pub fn inspect(path: &Path, dtype: DType) -> Result<(ModelConfig, u64)> {
    let io = |error| EngineError::Io {
        path: path.to_path_buf(),
        error,
    };
    if path.is_dir() {
        let config = ModelConfig::from_hf_file(&path.join("config.json"))?;
        let weights = dense_weight_bytes(&config, dtype);
        return Ok((config, weights));
    }
    let mut file = std::fs::File::open(path).map_err(io)?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| EngineError::Weights {
        path: path.to_path_buf(),
        message: format!("not a readable GGUF header: {e}"),
    })?;
    let config = ModelConfig::from_gguf_content(&content, path)?;
    Ok((config, gguf_weight_bytes(&content)))
}

/// `1.5 GiB`, `160 KiB`, `512 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qwen3_14b() -> ModelConfig {
        let json = r#"{"model_type":"qwen3","vocab_size":151936,"hidden_size":5120,
            "intermediate_size":17408,"num_hidden_layers":40,"num_attention_heads":40,
            "num_key_value_heads":8,"head_dim":128,"max_position_embeddings":40960,
            "rope_theta":1000000.0,"tie_word_embeddings":false}"#;
        ModelConfig::from_hf_json(json, Path::new("config.json")).expect("config")
    }

    /// Qwen's model cards: Qwen3-30B-A3B has 30.5B parameters, 3.3B of them active; Qwen3-14B
    /// 14.8B, all active.
    #[test]
    fn parameter_counts_match_the_model_cards() {
        let json = r#"{"model_type":"qwen3_moe","vocab_size":151936,"hidden_size":2048,
            "intermediate_size":6144,"moe_intermediate_size":768,"num_experts":128,
            "num_experts_per_tok":8,"norm_topk_prob":true,"num_hidden_layers":48,
            "num_attention_heads":32,"num_key_value_heads":4,"head_dim":128,
            "max_position_embeddings":40960,"tie_word_embeddings":false}"#;
        let moe = ModelConfig::from_hf_json(json, Path::new("config.json")).expect("config");
        let (total, active) = parameter_counts(&moe);
        let billions = |n: u64| n as f64 / 1e9;
        assert!((30.45..30.55).contains(&billions(total)), "{total}");
        // The card's 3.3 counts the embedding and output matrices, as here.
        assert!((3.3..3.4).contains(&billions(active)), "{active}");
        let (total, active) = parameter_counts(&qwen3_14b());
        assert!((14.75..14.85).contains(&billions(total)), "{total}");
        assert_eq!(total, active);
    }

    fn budget(available: Option<u64>) -> MemoryBudget {
        MemoryBudget {
            place: "RAM".into(),
            available,
        }
    }

    #[test]
    fn qwen3_14b_at_32k_in_bf16_takes_160_kib_per_token_and_5_gib() {
        let c = qwen3_14b();
        let plan = MemoryPlan::new(&c, 0, DType::BF16, KvType::Bf16, 32768, 1, budget(None));
        assert_eq!(plan.kv_bytes_per_token, 160 * 1024);
        assert_eq!(plan.kv_bytes(), 5 << 30);
        assert_eq!(bytes(plan.kv_bytes()), "5 GiB");
        // 14.8 billion parameters.
        let params = dense_weight_bytes(&c, DType::F32) / 4;
        assert!(
            (14_700_000_000..14_800_000_000).contains(&params),
            "{params}"
        );
        assert_eq!(
            kv_bytes_per_token(&c, KvType::Q8_0),
            2 * 40 * 8 * 136,
            "q8_0: 34 bytes per 32 values"
        );
    }

    #[test]
    fn the_largest_fitting_context_leaves_room_for_weights_and_scratch() {
        let c = qwen3_14b();
        let gib = 1u64 << 30;
        let plan = MemoryPlan::new(
            &c,
            8 * gib,
            DType::F32,
            KvType::Bf16,
            40960,
            2,
            budget(Some(12 * gib)),
        );
        assert_eq!(plan.fits(), Some(false));
        let fitting = plan.largest_fitting_context().expect("known");
        assert!(fitting > 0 && fitting < 40960 && fitting.is_multiple_of(256));
        let capped = MemoryPlan {
            context: fitting,
            ..plan.clone()
        };
        assert_eq!(capped.fits(), Some(true));
        let over = MemoryPlan {
            context: fitting + 256,
            ..plan.clone()
        };
        assert_eq!(over.fits(), Some(false));
        let text = plan.arithmetic();
        assert!(
            text.starts_with("weights 8 GiB + KV 160 KiB/token (bf16) x 40960 tokens x 2 sequences = 12.5 GiB + scratch "),
            "{text}"
        );
        assert!(text.ends_with("RAM available: 12 GiB"), "{text}");
        // Not even the weights fit.
        let tiny = MemoryPlan {
            budget: budget(Some(gib)),
            ..plan
        };
        assert_eq!(tiny.largest_fitting_context(), Some(0));
    }

    #[test]
    fn kv_types_parse_by_name_and_refuse_others() {
        assert_eq!("Q8_0".parse::<KvType>().expect("q8_0"), KvType::Q8_0);
        assert_eq!("bf16".parse::<KvType>().expect("bf16"), KvType::Bf16);
        let e = "int4".parse::<KvType>().expect_err("unknown").to_string();
        assert!(e.contains("\"int4\"") && e.contains("q8_0"), "{e}");
    }
}
