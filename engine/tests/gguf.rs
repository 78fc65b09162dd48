//! The real Qwen2.5-Coder-0.5B-Instruct GGUF (Q5_0/Q6_K/Q8_0) against llama.cpp: the same prompt
//! tokens from the GGUF's own tokenizer, and the same 24 greedy tokens
//! (reference recorded by scripts/oracle/llama_cpp_greedy.py), with Kestrel's CPU kernels and on
//! candle's ops alone (the code a GPU runs: candle's quantized matmuls, f32 activations).

use kestrel_tests as common;

use std::sync::Arc;

use kestrel_engine::{
    Architecture, CpuOps, GenerateRequest, LoadOptions, Model, ModelFormat, SamplingParams, Session,
};

#[test]
fn gguf_tokenizer_and_greedy_tokens_match_llama_cpp() {
    greedy_tokens_match_llama_cpp(CpuOps::Kestrel);
}

#[test]
fn gguf_greedy_tokens_on_candle_ops_match_llama_cpp() {
    greedy_tokens_match_llama_cpp(CpuOps::Candle);
}

fn greedy_tokens_match_llama_cpp(cpu_ops: CpuOps) {
    let reference = common::json(common::fixtures().join("gguf/qwen2.5-coder-greedy.json"));
    let options = LoadOptions {
        cpu_ops,
        ..LoadOptions::default()
    };
    let model = Arc::new(Model::load(&common::coder_gguf(), &options).expect("load gguf"));
    let config = model.config();
    assert_eq!(config.architecture, Architecture::Qwen2);
    assert_eq!(
        (
            config.num_layers,
            config.hidden_size,
            config.num_heads,
            config.num_kv_heads
        ),
        (24, 896, 14, 2)
    );
    // This file carries its own `output.weight` (Q8_0) although the model ties embeddings.
    assert!(!config.tie_word_embeddings && config.qkv_bias);
    assert!(matches!(model.format(), ModelFormat::Gguf(_)));

    let tokenizer = model
        .require_tokenizer()
        .expect("tokenizer from GGUF metadata");
    assert!(
        tokenizer
            .chat_template()
            .is_some_and(|t| t.contains("<|im_start|>"))
    );
    assert!(model.eos_ids().contains(&151645));
    let prompt = tokenizer
        .encode_raw(reference["prompt"].as_str().expect("prompt"))
        .expect("encode");
    assert_eq!(
        prompt,
        common::ids(&reference["prompt_ids"]),
        "prompt tokens differ from llama.cpp's"
    );

    let expected = common::ids(&reference["greedy_ids"]);
    let mut session = Session::new(model.clone());
    let request = GenerateRequest {
        prompt,
        max_tokens: expected.len(),
        sampling: SamplingParams::greedy(),
        stop_ids: None,
    };
    let mut generation = session.generate(request, None);
    let mut text = String::new();
    let mut ids = Vec::new();
    for token in generation.by_ref() {
        let token = token.expect("token");
        ids.push(token.id);
        text.push_str(&token.text);
    }
    text.push_str(&generation.flush_text().expect("flush"));
    assert_eq!(ids, expected, "{cpu_ops:?}");
    assert_eq!(text, reference["text"].as_str().expect("text"));
}

/// A tiny random Qwen3 MoE made by transformers, converted by llama.cpp's converter and quantized
/// to Q8_0 by llama-quantize (scripts/oracle/make_qwen3moe_gguf.py): the stacked expert tensors
/// split per expert, the router and the renormalised top-2 give llama.cpp's 24 greedy tokens.
#[test]
fn qwen3moe_gguf_greedy_tokens_match_llama_cpp() {
    let dir = common::fixtures().join("gguf");
    let reference = common::json(dir.join("qwen3moe-tiny-greedy.json"));
    for cpu_ops in [CpuOps::Kestrel, CpuOps::Candle] {
        let options = LoadOptions {
            cpu_ops,
            ..LoadOptions::default()
        };
        let model = Arc::new(
            Model::load(&dir.join("qwen3moe-tiny-q8_0.gguf"), &options).expect("load moe gguf"),
        );
        let config = model.config();
        assert_eq!(config.architecture, Architecture::Qwen3Moe);
        let moe = config.moe.clone().expect("moe");
        assert_eq!(
            (
                moe.num_experts,
                moe.experts_per_token,
                moe.expert_intermediate_size
            ),
            (4, 2, 32)
        );
        assert!(moe.norm_topk_prob && moe.dense_layers.is_empty());
        let tokenizer = model.require_tokenizer().expect("tokenizer");
        let prompt = tokenizer
            .encode_raw(reference["prompt"].as_str().expect("prompt"))
            .expect("encode");
        assert_eq!(prompt, common::ids(&reference["prompt_ids"]));
        let expected = common::ids(&reference["greedy_ids"]);
        let request = GenerateRequest {
            prompt,
            max_tokens: expected.len(),
            sampling: SamplingParams::greedy(),
            stop_ids: Some(Vec::new()),
        };
        let ids: Vec<u32> = Session::new(model.clone())
            .generate(request, None)
            .map(|t| t.expect("token").id)
            .collect();
        assert_eq!(ids, expected, "{cpu_ops:?}");
    }
}
