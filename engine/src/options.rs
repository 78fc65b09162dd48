//! How a model is loaded: device, dtype, tokenizer, and which code runs on the CPU. The model
//! and its layers both read these, so they live apart from either.

use std::path::PathBuf;

use candle_core::{DType, Device};

use crate::config::Yarn;
use crate::kv_cache::KvType;

/// Which code runs a model's heavy operations on the CPU.
///
/// On a GPU there is one path: candle's ops (cuBLAS matmuls, candle's quantized kernels and its
/// softmax, RMSNorm and RoPE kernels). On the CPU, Kestrel's own kernels and fused paths take over
/// where they apply. `Candle` keeps the CPU on the GPU's path, so that path's logic (grouped-query
/// attention through reshapes, the additive causal mask, reduced-precision dtypes) is checked
/// against the references on machines without a GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CpuOps {
    /// Kestrel's quantized matmul kernels, attention and fused SwiGLU where they apply; candle's
    /// ops elsewhere.
    #[default]
    Kestrel,
    /// candle's ops only, as on a GPU.
    Candle,
}

/// How a model is loaded.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where the weights go.
    pub device: Device,
    /// Activation/weight dtype for safetensors models; default f32 on CPU, bf16 on GPUs.
    /// GGUF models always compute in f32 with quantized weights.
    pub dtype: Option<DType>,
    /// A tokenizer.json (or a directory holding one) to use instead of the model's own.
    pub tokenizer: Option<PathBuf>,
    /// Which code runs the heavy operations on the CPU (ignored on GPUs, which have one path).
    pub cpu_ops: CpuOps,
    /// Positions per sequence. Default: the model's window, capped (with a warning) to what the
    /// memory holds; an explicit context that cannot fit is refused with the plan's arithmetic.
    pub context: Option<usize>,
    /// Sequences whose KV caches are held at once (the plan's batch).
    pub sequences: usize,
    /// The KV cache's element type (default: see [`KvType::default_for`]).
    pub kv_type: Option<KvType>,
    /// YaRN switched on (or re-parameterised) over what the model's config says, as Qwen
    /// documents for contexts past the native 32k; the default context becomes
    /// `factor x original` positions. An original context of 0 stands for the model's window.
    pub yarn: Option<Yarn>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
            tokenizer: None,
            cpu_ops: CpuOps::default(),
            context: None,
            sequences: 1,
            kv_type: None,
            yarn: None,
        }
    }
}
