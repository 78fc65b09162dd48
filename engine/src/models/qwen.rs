//! Qwen2 (Qwen2.5), Qwen3 and Qwen3 MoE decoder.
//!
//! One file covers the three families because they differ in a few switches: Qwen2 adds a bias to
//! the q/k/v projections, Qwen3 normalises each query and key head (RMSNorm) before RoPE, and Qwen3
//! MoE replaces the MLP of its sparse layers by a routed mixture of experts (models/moe.rs).
//! Everything else (SwiGLU MLPs, pre-norm residual blocks, GQA, NEOX-style RoPE with optional
//! YaRN) is shared.
//!
//! The model holds weights only. The KV cache is an explicit [`KvCache`] passed to every call and
//! the position of new tokens is the cache length, so a caller that truncates the cache to a prefix
//! and feeds the rest gets exactly what a cold run would compute.

use candle_core::{DType, Device, Tensor};

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use std::sync::Arc;

use crate::kv_cache::KvType;
use crate::kv_cache::{KvCache, LayerKv, PagePool};
use crate::layers::{Linear, Mlp, RmsNorm, Rope};
use crate::options::CpuOps;
use crate::weights::{Embedding, Weights};

use super::moe::SparseMoe;

/// Which positions to compute logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// Only the last position: shape `(vocab,)`. What generation needs.
    Last,
    /// Every new position: shape `(new_tokens, vocab)`.
    All,
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    ops: CpuOps,
}

impl Attention {
    fn load(w: &mut Weights, p: &str, c: &ModelConfig, ops: CpuOps) -> Result<Self> {
        let norm = |w: &mut Weights, n: &str| -> Result<Option<RmsNorm>> {
            if c.qk_norm {
                Ok(Some(RmsNorm::load(
                    w,
                    &format!("{p}.{n}.weight"),
                    c.rms_norm_eps,
                )?))
            } else {
                Ok(None)
            }
        };
        Ok(Self {
            q_proj: Linear::load(w, &format!("{p}.q_proj"), c.qkv_bias, ops)?,
            k_proj: Linear::load(w, &format!("{p}.k_proj"), c.qkv_bias, ops)?,
            v_proj: Linear::load(w, &format!("{p}.v_proj"), c.qkv_bias, ops)?,
            o_proj: Linear::load(w, &format!("{p}.o_proj"), false, ops)?,
            q_norm: norm(w, "q_norm")?,
            k_norm: norm(w, "k_norm")?,
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            ops,
        })
    }

    /// Attention of the rows of `x` (`(1, rows, hidden)`): the projections see every row, then
    /// each sequence's rows (`lens[i]` of them, in order) attend over their own cache.
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        caches: &mut [&mut LayerKv],
        lens: &[usize],
        max_len: usize,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, d))?.transpose(1, 2)?)
        };
        let [q, k, v] = Linear::forward_many([&self.q_proj, &self.k_proj, &self.v_proj], x)?;
        let (mut q, mut k, v) = (heads(q, h)?, heads(k, kvh)?, heads(v, kvh)?);
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let q = candle_nn::rotary_emb::rope(&q.contiguous()?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k.contiguous()?, cos, sin)?;
        let scale = 1.0 / (d as f64).sqrt();
        let mut outs = Vec::with_capacity(lens.len());
        let mut start = 0;
        for (cache, &n) in caches.iter_mut().zip(lens) {
            let (q, k, v) = (
                q.narrow(2, start, n)?,
                k.narrow(2, start, n)?,
                v.narrow(2, start, n)?,
            );
            start += n;
            cache.append(&k, &v, max_len)?;
            let fast = match (self.ops, n) {
                (CpuOps::Candle, _) => None,
                (CpuOps::Kestrel, 1) => crate::attention::decode(&q, cache, scale as f32)?,
                (CpuOps::Kestrel, _) => crate::attention::prefill(&q, cache, scale as f32)?,
            };
            outs.push(match fast {
                Some(out) => out,
                None => crate::paged_attention::attend(&q, cache, scale)?,
            });
        }
        let out = if outs.len() == 1 {
            outs.remove(0)
        } else {
            Tensor::cat(&outs, 1)?
        };
        self.o_proj.forward(&out)
    }
}

/// A layer's feed-forward block.
#[derive(Debug, Clone)]
enum FeedForward {
    Dense(Mlp),
    Sparse(SparseMoe),
}

impl FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(mlp) => mlp.forward(x),
            Self::Sparse(moe) => moe.forward(x),
        }
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: FeedForward,
}

impl DecoderLayer {
    fn load(w: &mut Weights, i: usize, c: &ModelConfig, ops: CpuOps) -> Result<Self> {
        let p = format!("model.layers.{i}");
        Ok(Self {
            input_layernorm: RmsNorm::load(
                w,
                &format!("{p}.input_layernorm.weight"),
                c.rms_norm_eps,
            )?,
            self_attn: Attention::load(w, &format!("{p}.self_attn"), c, ops)?,
            post_attention_layernorm: RmsNorm::load(
                w,
                &format!("{p}.post_attention_layernorm.weight"),
                c.rms_norm_eps,
            )?,
            mlp: match &c.moe {
                Some(moe) if moe.is_sparse(i) => {
                    FeedForward::Sparse(SparseMoe::load(w, &format!("{p}.mlp"), moe, ops)?)
                }
                _ => FeedForward::Dense(Mlp::load(w, &format!("{p}.mlp"), ops)?),
            },
        })
    }
}

/// A loaded Qwen2/Qwen3 model: weights and hyper-parameters, no state.
#[derive(Debug, Clone)]
pub struct Qwen {
    config: ModelConfig,
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    dtype: DType,
    device: Device,
    context: usize,
    pages: Arc<PagePool>,
}

/// Every tensor a checkpoint of `c` holds, by Hugging Face name, with its shape (what
/// [`Weights::synthetic`] needs to stand in for a checkpoint).
pub fn tensor_shapes(c: &ModelConfig) -> std::collections::BTreeMap<String, Vec<usize>> {
    let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let (q, kv) = (c.num_heads * d, c.num_kv_heads * d);
    let mut shapes = std::collections::BTreeMap::new();
    let mut put = |name: String, shape: &[usize]| {
        shapes.insert(name, shape.to_vec());
    };
    put("model.embed_tokens.weight".into(), &[c.vocab_size, h]);
    put("model.norm.weight".into(), &[h]);
    if !c.tie_word_embeddings {
        put("lm_head.weight".into(), &[c.vocab_size, h]);
    }
    for l in 0..c.num_layers {
        let p = format!("model.layers.{l}");
        put(format!("{p}.input_layernorm.weight"), &[h]);
        put(format!("{p}.post_attention_layernorm.weight"), &[h]);
        for (name, rows) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
            put(format!("{p}.self_attn.{name}.weight"), &[rows, h]);
            if c.qkv_bias {
                put(format!("{p}.self_attn.{name}.bias"), &[rows]);
            }
        }
        put(format!("{p}.self_attn.o_proj.weight"), &[h, q]);
        if c.qk_norm {
            put(format!("{p}.self_attn.q_norm.weight"), &[d]);
            put(format!("{p}.self_attn.k_norm.weight"), &[d]);
        }
        match &c.moe {
            Some(moe) if moe.is_sparse(l) => {
                let e = moe.expert_intermediate_size;
                put(format!("{p}.mlp.gate.weight"), &[moe.num_experts, h]);
                for x in 0..moe.num_experts {
                    put(format!("{p}.mlp.experts.{x}.gate_proj.weight"), &[e, h]);
                    put(format!("{p}.mlp.experts.{x}.up_proj.weight"), &[e, h]);
                    put(format!("{p}.mlp.experts.{x}.down_proj.weight"), &[h, e]);
                }
            }
            _ => {
                put(format!("{p}.mlp.gate_proj.weight"), &[i, h]);
                put(format!("{p}.mlp.up_proj.weight"), &[i, h]);
                put(format!("{p}.mlp.down_proj.weight"), &[h, i]);
            }
        }
    }
    shapes
}

impl Qwen {
    /// Builds the model from `weights` (names as in Hugging Face checkpoints), running on the
    /// CPU with `ops`, for sequences of at most `context` positions cached in `kv_type`.
    pub fn load(
        config: &ModelConfig,
        weights: &mut Weights,
        ops: CpuOps,
        context: usize,
        kv_type: KvType,
    ) -> Result<Self> {
        // Only Kestrel's CPU attention reads Q8_0 (it takes f32 activations).
        if kv_type == KvType::Q8_0 && (ops == CpuOps::Candle || weights.dtype() != DType::F32) {
            return Err(EngineError::InvalidRequest(
                "a q8_0 KV cache is read only by Kestrel's CPU attention (f32 activations, \
                 --cpu-ops kestrel); candle's path takes f32, f16 or bf16"
                    .into(),
            ));
        }
        let pages = Arc::new(PagePool::new(
            kv_type,
            config.num_kv_heads,
            config.head_dim,
            weights.device(),
        )?);
        let embed_tokens = weights.embedding("model.embed_tokens.weight")?;
        let layers = (0..config.num_layers)
            .map(|i| DecoderLayer::load(weights, i, config, ops))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(weights, "model.norm.weight", config.rms_norm_eps)?;
        // Some tied checkpoints still ship lm_head.weight; prefer it when present.
        let lm_head = if weights.contains("lm_head.weight") {
            Linear::load(weights, "lm_head", false, ops)?
        } else if config.tie_word_embeddings {
            Linear::new(embed_tokens.as_matmul()?, None, ops)
        } else {
            return Err(EngineError::Weights {
                path: "lm_head.weight".into(),
                message: "untied model without `lm_head.weight`".into(),
            });
        };
        Ok(Self {
            config: config.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope: Rope::new(config),
            dtype: weights.dtype(),
            device: weights.device().clone(),
            context: context.min(config.max_position_embeddings),
            pages,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The activation dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Positions a sequence may hold: the model's window, or less when the load asked for less
    /// or the memory holds less.
    pub fn context(&self) -> usize {
        self.context
    }

    /// An empty cache sized for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.num_layers, self.context, self.pages.clone())
    }

    /// The pages of this model's caches that no sequence holds now, and their type.
    pub fn page_pool(&self) -> &PagePool {
        &self.pages
    }

    /// Runs `tokens` at positions `cache.len()..`, appends their keys/values to `cache` and returns
    /// f32 logits for the requested positions.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        logits: LogitsFor,
    ) -> Result<Tensor> {
        let t = tokens.len();
        let x = self.hidden(&mut [BatchItem { tokens, cache }])?;
        let x = match logits {
            LogitsFor::Last => x.narrow(1, t - 1, 1)?,
            LogitsFor::All => x,
        };
        let out = self
            .lm_head
            .forward(&self.norm.forward(&x)?.contiguous()?)?
            .to_dtype(DType::F32)?;
        Ok(match logits {
            LogitsFor::Last => out.flatten_all()?,
            LogitsFor::All => out.squeeze(0)?,
        })
    }

    /// Runs several sequences in one pass: each item's tokens at positions `cache.len()..` of its
    /// own cache. The projections and the MLP see the rows of all of them at once (the weights
    /// are read once for the batch); attention stays per sequence. Returns the f32 logits of each
    /// item's last position, `(items, vocab)`.
    pub fn forward_batch(&self, items: &mut [BatchItem<'_>]) -> Result<Tensor> {
        let x = self.hidden(items)?;
        let mut last = Vec::with_capacity(items.len());
        let mut end = 0;
        for item in items.iter() {
            end += item.tokens.len();
            last.push((end - 1) as u32);
        }
        let rows = Tensor::new(last.as_slice(), &self.device)?;
        let x = x.squeeze(0)?.index_select(&rows, 0)?.unsqueeze(0)?;
        let out = self
            .lm_head
            .forward(&self.norm.forward(&x)?.contiguous()?)?
            .to_dtype(DType::F32)?;
        Ok(out.squeeze(0)?)
    }

    /// The final hidden states `(1, rows, hidden)` of every item's tokens, in order, after
    /// appending their keys and values to the items' caches.
    fn hidden(&self, items: &mut [BatchItem<'_>]) -> Result<Tensor> {
        if items.is_empty() {
            return Err(EngineError::InvalidRequest("no sequences to run".into()));
        }
        let mut ids = Vec::new();
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for item in items.iter() {
            let (t, offset) = (item.tokens.len(), item.cache.len());
            if t == 0 {
                return Err(EngineError::InvalidRequest("no tokens to run".into()));
            }
            let context = self.context.min(item.cache.max_len());
            if offset + t > context {
                return Err(EngineError::ContextOverflow {
                    prompt_tokens: offset + t,
                    context,
                });
            }
            if let Some(bad) = item
                .tokens
                .iter()
                .find(|&&id| id as usize >= self.config.vocab_size)
            {
                return Err(EngineError::InvalidRequest(format!(
                    "token id {bad} is outside the vocabulary of {} tokens",
                    self.config.vocab_size
                )));
            }
            ids.extend_from_slice(item.tokens);
            let (c, s) = self.rope.cos_sin(offset, t, self.dtype, &self.device)?;
            cos.push(c);
            sin.push(s);
        }
        let (cos, sin) = if items.len() == 1 {
            (cos.remove(0), sin.remove(0))
        } else {
            (Tensor::cat(&cos, 0)?, Tensor::cat(&sin, 0)?)
        };
        let lens: Vec<usize> = items.iter().map(|i| i.tokens.len()).collect();
        let max_len = self.context;
        let ids = Tensor::new(ids.as_slice(), &self.device)?.unsqueeze(0)?;
        let mut x = self.embed_tokens.forward(&ids)?.to_dtype(self.dtype)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let mut caches = items
                .iter_mut()
                .map(|item| {
                    item.cache.layer_mut(i).ok_or_else(|| {
                        EngineError::InvalidRequest(
                            "kv cache has fewer layers than the model".into(),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let residual = x.clone();
            let h = layer.input_layernorm.forward(&x)?;
            let h = layer
                .self_attn
                .forward(&h, &cos, &sin, &mut caches, &lens, max_len)?;
            let x_mid = (residual + h)?;
            let h = layer.post_attention_layernorm.forward(&x_mid)?;
            x = (x_mid + layer.mlp.forward(&h)?)?;
        }
        Ok(x)
    }
}

/// One sequence's part of a batched forward pass.
pub struct BatchItem<'a> {
    /// Tokens to run, after what `cache` holds.
    pub tokens: &'a [u32],
    /// The sequence's cache.
    pub cache: &'a mut KvCache,
}
