#!/usr/bin/env python3
"""Makes tiny random Qwen3/Qwen3-MoE/Qwen2 checkpoints with transformers and records its reference outputs.

Each checkpoint lands in tests/fixtures/models/NAME/ (bf16 safetensors, config.json,
generation_config.json) with reference.json (prompt ids, 24 greedy tokens) and logits.f32 (the
last-position logits as little-endian f32). The reference runs in float32 on weights upcast from
the saved bf16, which is what the Rust engine loads on CPU.

Usage: python scripts/oracle/make_tiny_models.py [OUT_DIR [NAME...]]  (NAMEs: only those)
Needs: torch, transformers (>= 5), safetensors (all from PyPI).
"""

import json
import math
import os
import shutil
import sys

import torch
import transformers
from transformers import (Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM,
                          Qwen3MoeConfig, Qwen3MoeForCausalLM)

GREEDY_TOKENS = 24

# name -> (architecture, config overrides, prompt length, extra options)
SHAPES = {
    # head_dim (32) != hidden / heads (16), GQA 4/2, tied, sharded, old config spelling
    "qwen3-gqa-headdim-tied": ("qwen3", dict(vocab_size=1024, hidden_size=64, num_attention_heads=4,
                                             num_key_value_heads=2, head_dim=32, intermediate_size=128,
                                             num_hidden_layers=2, tie_word_embeddings=True), 20,
                               dict(shard="40KB", old_spelling=True)),
    # MQA (one kv head), untied
    "qwen3-mqa-untied": ("qwen3", dict(vocab_size=1024, hidden_size=64, num_attention_heads=4,
                                       num_key_value_heads=1, head_dim=16, intermediate_size=96,
                                       num_hidden_layers=3, tie_word_embeddings=False), 17, {}),
    # YaRN x4 with a prompt longer than original_max_position_embeddings (32)
    "qwen3-yarn": ("qwen3", dict(vocab_size=1024, hidden_size=64, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=16, intermediate_size=128,
                                 num_hidden_layers=2, tie_word_embeddings=False,
                                 max_position_embeddings=128,
                                 rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                                  "original_max_position_embeddings": 32,
                                                  "rope_theta": 10000.0}), 48, {}),
    # Qwen2.5 shape: qkv bias, GQA, untied
    "qwen2-gqa-untied": ("qwen2", dict(vocab_size=1024, hidden_size=64, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=128,
                                       num_hidden_layers=2, tie_word_embeddings=False), 19,
                         dict(old_spelling=True)),
    # Qwen2.5 shape: MQA, tied
    "qwen2-mqa-tied": ("qwen2", dict(vocab_size=1024, hidden_size=64, num_attention_heads=4,
                                     num_key_value_heads=1, intermediate_size=128,
                                     num_hidden_layers=2, tie_word_embeddings=True), 23, {}),
    # The real Qwen3 vocabulary, so that the real tokenizer can drive it (CLI and agent tests)
    "qwen3-tiny-fullvocab": ("qwen3", dict(vocab_size=151936, hidden_size=32, num_attention_heads=2,
                                           num_key_value_heads=1, head_dim=16, intermediate_size=64,
                                           num_hidden_layers=2, tie_word_embeddings=True,
                                           max_position_embeddings=40960,
                                           bos_token_id=151643, eos_token_id=151645), 16, {}),
    # Qwen3 MoE: 4 experts, top-2 renormalised, layer 1 dense (mlp_only_layers), tied
    "qwen3moe-top2-norm-denselayer": ("qwen3_moe", dict(vocab_size=1024, hidden_size=64, num_attention_heads=4,
                                                        num_key_value_heads=2, head_dim=16, intermediate_size=96,
                                                        moe_intermediate_size=32, num_experts=4,
                                                        num_experts_per_tok=2, norm_topk_prob=True,
                                                        mlp_only_layers=[1], num_hidden_layers=3,
                                                        tie_word_embeddings=True), 21, {}),
    # Qwen3 MoE: 6 experts, top-3 not renormalised, every other layer sparse (decoder_sparse_step 2)
    "qwen3moe-top3-unnormed-step2": ("qwen3_moe", dict(vocab_size=1024, hidden_size=64, num_attention_heads=4,
                                                       num_key_value_heads=1, head_dim=16, intermediate_size=64,
                                                       moe_intermediate_size=48, num_experts=6,
                                                       num_experts_per_tok=3, norm_topk_prob=False,
                                                       decoder_sparse_step=2, num_hidden_layers=4,
                                                       tie_word_embeddings=False), 18, dict(old_spelling=True)),
}

CLASSES = {
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    "qwen3_moe": (Qwen3MoeConfig, Qwen3MoeForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}


def randomize(model, seed):
    """Every parameter random (biases and norm weights included) so that no code path hides."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))


def to_old_spelling(path):
    """Rewrite config.json the way transformers < 5 wrote it (rope_theta/rope_scaling, torch_dtype,
    num_experts)."""
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    params = cfg.pop("rope_parameters", None) or {}
    cfg["rope_theta"] = params.pop("rope_theta", 1000000.0)
    cfg["rope_scaling"] = None if params.get("rope_type", "default") == "default" else params
    cfg["torch_dtype"] = cfg.pop("dtype", "bfloat16")
    if "num_local_experts" in cfg:
        cfg["num_experts"] = cfg.pop("num_local_experts")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)


def make(name, arch, overrides, prompt_len, options, out_root, seed):
    config_cls, model_cls = CLASSES[arch]
    base = dict(rms_norm_eps=1e-6, max_position_embeddings=256, attn_implementation="eager")
    if "rope_parameters" not in overrides:
        base["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0}
    config = config_cls(**{**base, **overrides})
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32)
    randomize(model, seed)
    model = model.to(torch.bfloat16)

    path = os.path.join(out_root, name)
    shutil.rmtree(path, ignore_errors=True)
    save_kwargs = {"max_shard_size": options["shard"]} if "shard" in options else {}
    model.save_pretrained(path, **save_kwargs)
    gen_cfg = {"do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95,
               "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump(gen_cfg, f, indent=2)
    if options.get("old_spelling"):
        to_old_spelling(path)

    # Reference: the saved bf16 weights upcast to f32, eager attention.
    ref = model_cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(seed + 1)
    prompt = torch.randint(0, min(config.vocab_size, 1024) - 1, (1, prompt_len), generator=g)
    with torch.no_grad():
        logits = ref(prompt).logits[0, -1].to(torch.float32)
        # An explicit mask: without one, generate() takes every id equal to pad_token_id (0, which
        # a random prompt may hold) for padding and masks it out.
        out = ref.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                           max_new_tokens=GREEDY_TOKENS,
                           min_new_tokens=GREEDY_TOKENS, eos_token_id=None, pad_token_id=0)
    greedy = out[0, prompt_len:].tolist()
    logits.numpy().astype("<f4").tofile(os.path.join(path, "logits.f32"))
    top2 = torch.topk(logits, 2).values
    with open(os.path.join(path, "reference.json"), "w") as f:
        json.dump({
            "architecture": arch,
            "prompt_ids": prompt[0].tolist(),
            "greedy_ids": greedy,
            "top2_margin": float(top2[0] - top2[1]),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        }, f, indent=1)
    print(f"{name}: prompt {prompt_len}, greedy {greedy[:8]}..., margin {float(top2[0] - top2[1]):.4f}")


def main():
    out_root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(__file__), "..", "..", "tests", "fixtures", "models")
    only = set(sys.argv[2:])
    os.makedirs(out_root, exist_ok=True)
    for i, (name, (arch, overrides, prompt_len, options)) in enumerate(SHAPES.items()):
        if not only or name in only:
            make(name, arch, overrides, prompt_len, options, out_root, seed=1000 + i)


if __name__ == "__main__":
    main()
