//! Tiny Qwen3 checkpoints whose greedy output follows a designed token script.
//!
//! No real hybrid Qwen3 fits in a test, and a random one never does what a test needs (think
//! without end, close its thinking and stop, write a given call). A scripted checkpoint is a real
//! Qwen3 model directory (config.json, safetensors, the real Qwen3 tokenizer and chat template),
//! loaded by the real loader, whose weights make it a bigram machine: attention and MLP write
//! nothing (their output projections are zero), so the last hidden state is the current token's
//! embedding; embeddings are one-hot "states", and `lm_head` maps each state to the token that
//! should follow. The next token thus depends on the current token alone, with a margin large
//! enough that Qwen's sampling presets pick it too. A token the script does not continue is
//! followed by `<|im_end|>`.
//!
//! Scripts are token paths: `["\n", "<think>", "Hmm"]` means `\n` is followed by `<think>`, and
//! `<think>` by `Hmm`. What the prompt ends with decides the first generated token (Qwen3's
//! template ends with `assistant\n` when thinking is on, and `</think>\n\n` when it is off).

use std::collections::BTreeMap;
use std::path::Path;

use kestrel_engine::Tokenizer;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;

/// Width of the hidden state: one dimension per scripted token, dimension 0 for all others.
const HIDDEN: usize = 64;
const VOCAB: usize = 151_936;
/// `<|im_end|>`, Qwen's end of turn.
pub const IM_END: u32 = 151_645;
/// Attention heads, KV heads, head size and MLP width: as small as Qwen3 allows (vLLM's CPU
/// attention takes no head size under 32).
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 64;
const FFN: usize = 16;
/// Logit of the scripted next token (over the normalised one-hot state; others get 0).
const MARGIN: f32 = 4.0;

/// A token script being built.
pub struct Script {
    tokenizer: Tokenizer,
    next: BTreeMap<u32, u32>,
}

impl Default for Script {
    fn default() -> Self {
        Self::new()
    }
}

impl Script {
    /// An empty script over the real Qwen3 tokenizer.
    pub fn new() -> Self {
        let tokenizer = Tokenizer::from_dir(&crate::qwen3_tokenizer()).expect("Qwen3 tokenizer");
        Self {
            tokenizer,
            next: BTreeMap::new(),
        }
    }

    /// The tokenizer the script is written in.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The ids of `text`, special-token text included (`<think>` is one token).
    pub fn ids(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode_raw(text).expect("encode")
    }

    /// Each piece's tokens follow the previous ones. Panics when a token would get two different
    /// successors (a bigram script cannot tell them apart).
    pub fn path(self, pieces: &[&str]) -> Self {
        let ids: Vec<u32> = pieces.iter().flat_map(|p| self.ids(p)).collect();
        self.path_ids(&ids)
    }

    /// [`Script::path`] over ids.
    pub fn path_ids(mut self, ids: &[u32]) -> Self {
        for pair in ids.windows(2) {
            let (from, to) = (pair[0], pair[1]);
            if let Some(&was) = self.next.get(&from) {
                assert_eq!(
                    was,
                    to,
                    "token {from} ({:?}) is already followed by {was}, not {to}",
                    self.tokenizer.decode(&[from])
                );
            }
            self.next.insert(from, to);
        }
        self
    }

    /// The checkpoint's tensors under transformers' names: (name, shape, values).
    fn tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        assert!(
            self.next.len() < HIDDEN,
            "a script has at most {} steps",
            HIDDEN - 1
        );
        let state: BTreeMap<u32, usize> = self
            .next
            .keys()
            .enumerate()
            .map(|(i, &t)| (t, i + 1))
            .collect();
        let mut embed = vec![0f32; VOCAB * HIDDEN];
        for token in 0..VOCAB {
            let s = state.get(&(token as u32)).copied().unwrap_or(0);
            embed[token * HIDDEN + s] = 1.0;
        }
        let mut lm_head = vec![0f32; VOCAB * HIDDEN];
        lm_head[IM_END as usize * HIDDEN] = MARGIN;
        for (from, to) in &self.next {
            lm_head[*to as usize * HIDDEN + state[from]] = MARGIN;
        }
        let (heads, kv_heads, head_dim, ffn) = (HEADS, KV_HEADS, HEAD_DIM, FFN);
        let ones = |n: usize| vec![1f32; n];
        let zeros = |n: usize| vec![0f32; n];
        let l = "model.layers.0";
        let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = vec![
            (
                "model.embed_tokens.weight".into(),
                vec![VOCAB, HIDDEN],
                embed,
            ),
            ("lm_head.weight".into(), vec![VOCAB, HIDDEN], lm_head),
            ("model.norm.weight".into(), vec![HIDDEN], ones(HIDDEN)),
            (
                format!("{l}.input_layernorm.weight"),
                vec![HIDDEN],
                ones(HIDDEN),
            ),
            (
                format!("{l}.post_attention_layernorm.weight"),
                vec![HIDDEN],
                ones(HIDDEN),
            ),
            (
                format!("{l}.self_attn.q_proj.weight"),
                vec![heads * head_dim, HIDDEN],
                zeros(heads * head_dim * HIDDEN),
            ),
            (
                format!("{l}.self_attn.k_proj.weight"),
                vec![kv_heads * head_dim, HIDDEN],
                zeros(kv_heads * head_dim * HIDDEN),
            ),
            (
                format!("{l}.self_attn.v_proj.weight"),
                vec![kv_heads * head_dim, HIDDEN],
                zeros(kv_heads * head_dim * HIDDEN),
            ),
            (
                format!("{l}.self_attn.o_proj.weight"),
                vec![HIDDEN, heads * head_dim],
                zeros(HIDDEN * heads * head_dim),
            ),
            (
                format!("{l}.self_attn.q_norm.weight"),
                vec![head_dim],
                ones(head_dim),
            ),
            (
                format!("{l}.self_attn.k_norm.weight"),
                vec![head_dim],
                ones(head_dim),
            ),
            (
                format!("{l}.mlp.gate_proj.weight"),
                vec![ffn, HIDDEN],
                zeros(ffn * HIDDEN),
            ),
            (
                format!("{l}.mlp.up_proj.weight"),
                vec![ffn, HIDDEN],
                zeros(ffn * HIDDEN),
            ),
            (
                format!("{l}.mlp.down_proj.weight"),
                vec![HIDDEN, ffn],
                zeros(HIDDEN * ffn),
            ),
        ];
        tensors
    }

    /// Writes the checkpoint (with the Qwen3 tokenizer files) into `dir`.
    pub fn write(&self, dir: &Path) {
        std::fs::create_dir_all(dir).expect("model dir");
        let tensors = self.tensors();
        let (heads, kv_heads, head_dim, ffn) = (HEADS, KV_HEADS, HEAD_DIM, FFN);
        // bf16 halves the file; 0, 1 and the margin are exact in it.
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .into_iter()
            .map(|(name, shape, data)| {
                let raw = data
                    .iter()
                    .flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes())
                    .collect();
                (name, shape, raw)
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = bytes
            .iter()
            .map(|(name, shape, raw)| {
                let view = TensorView::new(Dtype::BF16, shape.clone(), raw).expect("tensor");
                (name.clone(), view)
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join("model.safetensors"))
            .expect("write safetensors");
        let config = json!({
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "hidden_size": HIDDEN,
            "intermediate_size": ffn,
            "num_hidden_layers": 1,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": 40960,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1_000_000.0,
            "tie_word_embeddings": false,
            "vocab_size": VOCAB,
            "bos_token_id": 151_643,
            "eos_token_id": IM_END,
            "torch_dtype": "bfloat16"
        });
        std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
        for file in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(crate::qwen3_tokenizer().join(file), dir.join(file)).expect(file);
        }
    }

    /// Writes the checkpoint as one GGUF file (f32, the Qwen3 tokenizer in llama.cpp's form:
    /// byte-level BPE tokens and merges, `qwen2` pre-tokenizer, special tokens as control tokens
    /// and the others added as user-defined ones), for llama.cpp's `llama-server`.
    pub fn write_gguf(&self, path: &Path) {
        use candle_core::quantized::gguf_file::Value;
        use candle_core::quantized::{GgmlDType, QTensor};
        let tokenizer: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(crate::qwen3_tokenizer().join("tokenizer.json"))
                .expect("tokenizer.json"),
        )
        .expect("tokenizer JSON");
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(crate::qwen3_tokenizer().join("tokenizer_config.json"))
                .expect("tokenizer_config.json"),
        )
        .expect("tokenizer config JSON");
        let chat_template = config["chat_template"]
            .as_str()
            .expect("Qwen3's chat template")
            .to_string();
        // Every id up to the model's vocabulary: the BPE vocabulary, the added tokens, then
        // padding (as llama.cpp's converter names it).
        let mut tokens = vec![String::new(); VOCAB];
        let mut types = vec![5i32; VOCAB];
        for (text, id) in tokenizer["model"]["vocab"].as_object().expect("vocab") {
            let id = id.as_u64().expect("id") as usize;
            tokens[id] = text.clone();
            types[id] = 1;
        }
        for added in tokenizer["added_tokens"].as_array().expect("added tokens") {
            let id = added["id"].as_u64().expect("id") as usize;
            tokens[id] = added["content"].as_str().expect("content").to_string();
            types[id] = if added["special"] == true { 3 } else { 4 };
        }
        for (id, token) in tokens.iter_mut().enumerate() {
            if token.is_empty() {
                *token = format!("[PAD{id}]");
            }
        }
        let merges: Vec<Value> = tokenizer["model"]["merges"]
            .as_array()
            .expect("merges")
            .iter()
            .map(|m| match m {
                serde_json::Value::Array(pair) => Value::String(format!(
                    "{} {}",
                    pair[0].as_str().expect("merge"),
                    pair[1].as_str().expect("merge")
                )),
                other => Value::String(other.as_str().expect("merge").to_string()),
            })
            .collect();
        let u32v = |n: usize| Value::U32(n as u32);
        let metadata: Vec<(&str, Value)> = vec![
            ("general.architecture", Value::String("qwen3".into())),
            ("general.name", Value::String("scripted-qwen3".into())),
            ("qwen3.context_length", u32v(40960)),
            ("qwen3.embedding_length", u32v(HIDDEN)),
            ("qwen3.block_count", u32v(1)),
            ("qwen3.feed_forward_length", u32v(FFN)),
            ("qwen3.attention.head_count", u32v(HEADS)),
            ("qwen3.attention.head_count_kv", u32v(KV_HEADS)),
            ("qwen3.attention.key_length", u32v(HEAD_DIM)),
            ("qwen3.attention.value_length", u32v(HEAD_DIM)),
            ("qwen3.rope.freq_base", Value::F32(1_000_000.0)),
            ("qwen3.attention.layer_norm_rms_epsilon", Value::F32(1e-6)),
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String("qwen2".into())),
            (
                "tokenizer.ggml.tokens",
                Value::Array(tokens.into_iter().map(Value::String).collect()),
            ),
            (
                "tokenizer.ggml.token_type",
                Value::Array(types.into_iter().map(Value::I32).collect()),
            ),
            ("tokenizer.ggml.merges", Value::Array(merges)),
            ("tokenizer.ggml.eos_token_id", Value::U32(IM_END)),
            ("tokenizer.ggml.padding_token_id", Value::U32(151_643)),
            ("tokenizer.ggml.bos_token_id", Value::U32(151_643)),
            ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
            // Qwen3's own template, for a server that renders prompts itself (chat mode).
            ("tokenizer.chat_template", Value::String(chat_template)),
        ];
        let gguf_name = |name: &str| -> String {
            let name = name
                .replace("model.embed_tokens", "token_embd")
                .replace("lm_head", "output")
                .replace("model.norm", "output_norm")
                .replace("model.layers.", "blk.");
            [
                ("input_layernorm", "attn_norm"),
                ("post_attention_layernorm", "ffn_norm"),
                ("self_attn.q_proj", "attn_q"),
                ("self_attn.k_proj", "attn_k"),
                ("self_attn.v_proj", "attn_v"),
                ("self_attn.o_proj", "attn_output"),
                ("self_attn.q_norm", "attn_q_norm"),
                ("self_attn.k_norm", "attn_k_norm"),
                ("mlp.gate_proj", "ffn_gate"),
                ("mlp.up_proj", "ffn_up"),
                ("mlp.down_proj", "ffn_down"),
            ]
            .iter()
            .fold(name, |n, (hf, gguf)| n.replace(hf, gguf))
        };
        let device = candle_core::Device::Cpu;
        let tensors: Vec<(String, QTensor)> = self
            .tensors()
            .into_iter()
            .map(|(name, shape, data)| {
                let tensor = candle_core::Tensor::from_vec(data, shape, &device).expect("tensor");
                let q = QTensor::quantize(&tensor, GgmlDType::F32).expect("f32 tensor");
                (gguf_name(&name), q)
            })
            .collect();
        let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("GGUF file"));
        candle_core::quantized::gguf_file::write(&mut file, &metadata, &tensors)
            .expect("write GGUF");
    }
}
