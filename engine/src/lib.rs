//! kestrel-engine: Kestrel's embedded inference engine.
//!
//! It loads Qwen3 and Qwen2.5 models from Hugging Face safetensors directories or GGUF files,
//! runs them on candle (CPU, CUDA or Metal), keeps an explicit, truncatable KV cache so that a
//! prompt sharing a prefix with the previous one only prefills the new tokens, and streams
//! generated tokens through a per-step hook that can mask logits or force tokens. It knows nothing
//! of chat templates, tools or MCP: it turns token ids into token ids.
//!
//! ```no_run
//! use std::sync::Arc;
//! use kestrel_engine::{GenerateRequest, LoadOptions, Model, SamplingParams, Session};
//! # fn main() -> kestrel_engine::Result<()> {
//! let model = Arc::new(Model::load("model.gguf".as_ref(), &LoadOptions::default())?);
//! let prompt = model.require_tokenizer()?.encode_raw("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")?;
//! let mut session = Session::new(model);
//! let request = GenerateRequest { prompt, max_tokens: 32, sampling: SamplingParams::greedy(), stop_ids: None };
//! for token in session.generate(request, None) {
//!     print!("{}", token?.text);
//! }
//! # Ok(()) }
//! ```

mod attention;
pub mod config;
mod decoder;
pub mod device;
pub mod error;
mod fused;
pub mod generation;
pub mod kernels;
pub mod kv_cache;
mod layers;
pub mod model;
mod models;
mod options;
mod paged_attention;
mod parallel;
pub mod plan;
pub mod roofline;
pub mod sampling;
pub mod scheduler;
pub mod tokenizer;
mod weights;

/// Quantization types, for callers that pick one (synthetic benchmark models).
pub use candle_core::quantized::GgmlDType;
pub use candle_core::{DType, Device};
pub use config::{Architecture, ModelConfig, MoeConfig, Yarn};
pub use device::parse_device;
pub use error::{EngineError, Result};
pub use generation::{
    FinishReason, GenerateRequest, GeneratedToken, Generation, Session, StepAction, StepHook,
    Timings,
};
pub use kv_cache::{KvCache, KvSnapshot, KvType, PagePool};
pub use model::{Model, ModelFormat};
pub use models::qwen::{BatchItem, LogitsFor, tensor_shapes};
pub use options::{CpuOps, LoadOptions};
pub use plan::{MemoryBudget, MemoryPlan};
pub use sampling::{MAX_TOP_LOGPROBS, Sampler, SamplingParams, TokenLogprobs, argmax};
pub use scheduler::{Engine, EngineOptions, EngineStats, Event, SendHook, Sink, Ticket};
pub use tokenizer::{TextStream, Tokenizer};
