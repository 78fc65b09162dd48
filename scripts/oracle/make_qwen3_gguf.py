#!/usr/bin/env python3
"""Makes a Qwen3-shaped checkpoint with random weights and writes it as a bf16 GGUF.

The shapes are Qwen3-0.6B's (28 layers, hidden 1024, 16/8 heads, head_dim 128, intermediate 3072,
the full 151936 vocabulary, tied embeddings), so the benchmark exercises the qwen3 path (q/k norms,
head_dim != hidden / heads) at a realistic size without downloading weights. The tokenizer files
are the real Qwen3 tokenizer's (an npm asset). Conversion is llama.cpp's own convert_hf_to_gguf.py
from the same sources llama-bench is built from; scripts/make-qwen3-gguf quantizes the result.

Usage: make_qwen3_gguf.py TOKENIZER_DIR LLAMA_CPP_SRC OUT.gguf
Needs: torch, transformers (>= 5), safetensors, numpy (all from PyPI).
"""

import os
import shutil
import subprocess
import sys
import tempfile

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM


def main():
    tokenizer_dir, llama_src, out = sys.argv[1:4]
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=151936, hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, intermediate_size=3072, tie_word_embeddings=True,
        max_position_embeddings=40960, rms_norm_eps=1e-6, bos_token_id=151643,
        eos_token_id=151645, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )
    model = Qwen3ForCausalLM(config).to(torch.bfloat16)
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
