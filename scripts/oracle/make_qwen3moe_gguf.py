#!/usr/bin/env python3
"""Makes a tiny random Qwen3 MoE GGUF with llama.cpp's own tools and records llama.cpp's greedy tokens.

transformers builds a Qwen3MoeForCausalLM (the real Qwen3 vocabulary so that the GGUF carries the
real tokenizer; 4 experts, top-2 renormalised, as llama.cpp's qwen3moe always routes), llama.cpp's
convert_hf_to_gguf.py converts it, llama-quantize quantizes it to Q8_0, and llama.cpp (through the
Python bindings of the same sdist, as llama_cpp_greedy.py) records 24 greedy tokens:

  root=$(scripts/build-llama-cpp)
  cmake --build $root/build --target llama-quantize
  python3 scripts/oracle/make_qwen3moe_gguf.py $(scripts/fetch-assets | tail -1)/qwen3-tokenizer $root

A random model of this size has near-ties (two experts or two tokens scored within rounding of
each other), where two correct engines may part ways. The routers are scaled up so that experts are
chosen decisively, and seeds are tried until llama.cpp's greedy run has no top-2 logit margin under
MIN_MARGIN and no router a gap between its k-th and (k+1)-th logit under MIN_ROUTER_GAP (both
recorded).

Writes tests/fixtures/gguf/qwen3moe-tiny-q8_0.gguf and qwen3moe-tiny-greedy.json.
Needs: torch, transformers (>= 5), safetensors, numpy, typing-extensions, diskcache, jinja2 (PyPI).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
from make_tiny_models import randomize  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "gguf")
NAME = "qwen3moe-tiny"
ROUTER_SCALE = 8.0
MIN_MARGIN = 0.05
MIN_ROUTER_GAP = 0.05


def smallest_router_gap(model, ids, k):
    """The smallest gap between the k-th and (k+1)-th router logit over every row and layer."""
    gaps = []

    def hook(module, args, out):
        logits = args[0].reshape(-1, args[0].shape[-1]).float() @ module.weight.float().T
        top = torch.topk(logits, k + 1, dim=-1).values
        gaps.append(float((top[:, k - 1] - top[:, k]).min()))

    handles = [layer.mlp.gate.register_forward_hook(hook) for layer in model.model.layers]
    with torch.no_grad():
        model(torch.tensor([ids]))
    for h in handles:
        h.remove()
    return min(gaps)


def main():
    tokenizer_dir, llama_root = sys.argv[1:3]
    for seed in range(7, 100):
        if attempt(tokenizer_dir, llama_root, seed):
            return
    sys.exit("no seed gave a reference without near-ties")


def attempt(tokenizer_dir, llama_root, seed):
    llama_src = os.path.join(llama_root, "src", "vendor", "llama.cpp")
    bin_dir = os.path.join(llama_root, "build", "bin")
    config = Qwen3MoeConfig(
        vocab_size=151936, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
        head_dim=16, intermediate_size=64, moe_intermediate_size=32, num_experts=4,
        num_experts_per_tok=2, norm_topk_prob=True, num_hidden_layers=2, tie_word_embeddings=True,
        max_position_embeddings=4096, rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151645,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )
    torch.manual_seed(seed)
    model = Qwen3MoeForCausalLM(config).to(torch.float32)
    randomize(model, seed)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight.mul_(ROUTER_SCALE)
    model = model.to(torch.bfloat16).to(torch.float32)
    out = os.path.join(FIXTURES, f"{NAME}-q8_0.gguf")
    with tempfile.TemporaryDirectory() as tmp:
        hf = os.path.join(tmp, "hf")
        model.to(torch.bfloat16).save_pretrained(hf)
        model = model.to(torch.float32)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(tokenizer_dir, name), hf)
        f32 = os.path.join(tmp, f"{NAME}-f32.gguf")
        env = dict(os.environ, PYTHONPATH=os.path.join(llama_src, "gguf-py"))
        subprocess.run([sys.executable, os.path.join(llama_src, "convert_hf_to_gguf.py"), hf,
                        "--outtype", "f32", "--outfile", f32], check=True, env=env)
        env = dict(os.environ, LD_LIBRARY_PATH=bin_dir)
        subprocess.run([os.path.join(bin_dir, "llama-quantize"), f32, out, "Q8_0"], check=True,
                       env=env)
    env = dict(os.environ, LLAMA_CPP_LIB_PATH=bin_dir, PYTHONPATH=os.path.join(llama_root, "src"))
    reference = os.path.join(FIXTURES, f"{NAME}-greedy.json")
    subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "llama_cpp_greedy.py"),
                    out, reference], check=True, env=env)
    with open(reference) as f:
        result = json.load(f)
    gap = smallest_router_gap(model, result["prompt_ids"] + result["greedy_ids"],
                              config.num_experts_per_tok)
    print(f"seed {seed}: top-2 margin {result['min_top2_margin']:.4f}, router gap {gap:.4f}")
    if result["min_top2_margin"] < MIN_MARGIN or gap < MIN_ROUTER_GAP:
        return False
    result.update(seed=seed, router_scale=ROUTER_SCALE, min_router_gap=gap)
    with open(reference, "w") as f:
        json.dump(result, f, indent=1)
    return True


if __name__ == "__main__":
    main()
