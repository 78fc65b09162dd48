#!/usr/bin/env python3
"""Makes a Qwen3-shaped checkpoint with random weights and writes it as a bf16 GGUF.

SHAPE `qwen3-0.6b` (the default) is Qwen3-0.6B's (28 layers, hidden 1024, 16/8 heads, head_dim 128,
intermediate 3072, the full 151936 vocabulary, tied embeddings), so the benchmark exercises the
qwen3 path (q/k norms, head_dim != hidden / heads) at a realistic size without downloading weights.
SHAPE `qwen3-30b-a3b-4l` is Qwen3-30B-A3B's (hidden 2048, 32/4 heads, 128 experts of width 768, 8
per token, renormalised) with 4 of its 48 layers: a token reads what a token of the real model
reads per layer. The tokenizer files
are the real Qwen3 tokenizer's (an npm asset). Conversion is llama.cpp's own convert_hf_to_gguf.py
from the same sources llama-bench is built from; scripts/make-qwen3-gguf quantizes the result.

Usage: make_qwen3_gguf.py TOKENIZER_DIR LLAMA_CPP_SRC OUT.gguf [SHAPE]
Needs: torch, transformers (>= 5), safetensors, numpy (all from PyPI).
"""

import os
import shutil
import subprocess
import sys
import tempfile

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

COMMON = dict(vocab_size=151936, max_position_embeddings=40960, rms_norm_eps=1e-6,
              bos_token_id=151643, eos_token_id=151645,
              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
SHAPES = {
    "qwen3-0.6b": (Qwen3Config, Qwen3ForCausalLM, dict(
        hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
        head_dim=128, intermediate_size=3072, tie_word_embeddings=True)),
    "qwen3-30b-a3b-4l": (Qwen3MoeConfig, Qwen3MoeForCausalLM, dict(
        hidden_size=2048, num_hidden_layers=4, num_attention_heads=32, num_key_value_heads=4,
        head_dim=128, intermediate_size=6144, moe_intermediate_size=768, num_experts=128,
        num_experts_per_tok=8, norm_topk_prob=True, tie_word_embeddings=False)),
}


def main():
    tokenizer_dir, llama_src, out = sys.argv[1:4]
    config_cls, model_cls, shape = SHAPES[sys.argv[4] if len(sys.argv) > 4 else "qwen3-0.6b"]
    torch.manual_seed(0)
    config = config_cls(**COMMON, **shape)
    # Made in bf16 directly: the MoE shape's 3B parameters in f32 and a bf16 copy would take 18 GB.
    torch.set_default_dtype(torch.bfloat16)
    model = model_cls(config)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(tokenizer_dir, name), tmp)
        env = dict(os.environ, PYTHONPATH=os.path.join(llama_src, "gguf-py"))
        subprocess.run(
            [sys.executable, os.path.join(llama_src, "convert_hf_to_gguf.py"), tmp,
             "--outtype", "bf16", "--outfile", out],
            check=True, env=env,
        )


if __name__ == "__main__":
    main()
