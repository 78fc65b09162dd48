#!/usr/bin/env python3
"""Records llama.cpp's greedy tokens for the Qwen2.5-Coder GGUF (the reference for Kestrel's GGUF path).

Uses the Python bindings of PyPI's llama-cpp-python 0.3.36 over the libllama that
scripts/build-llama-cpp builds from the same sdist:

  root=$(scripts/build-llama-cpp)
  LLAMA_CPP_LIB_PATH=$root/build/bin PYTHONPATH=$root/src \
    python3 scripts/oracle/llama_cpp_greedy.py $(scripts/fetch-assets | tail -1)/qwen2.5-coder-0.5b-instruct.gguf

Needs numpy, typing-extensions, diskcache, jinja2 (PyPI). Writes tests/fixtures/gguf/qwen2.5-coder-greedy.json.
"""

import json
import os
import sys

import llama_cpp
from llama_cpp import Llama

PROMPT = "<|im_start|>user\nWrite a Python function that adds two numbers.<|im_end|>\n<|im_start|>assistant\n"
N = 24


def main():
    gguf = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
        os.path.dirname(__file__), "..", "..", "tests", "fixtures", "gguf", "qwen2.5-coder-greedy.json")
    llm = Llama(model_path=gguf, n_ctx=512, n_threads=2, verbose=False, logits_all=True)
    prompt_ids = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)
    llm.reset()
    llm.eval(prompt_ids)
    ids = []
    margins = []
    for _ in range(N):
        # Greedy: the argmax of the last logits, exactly as llama.cpp's greedy sampler.
        logits = llm.scores[llm.n_tokens - 1]
        tok = int(logits.argmax())
        top2 = sorted(logits, reverse=True)[:2]
        margins.append(float(top2[0] - top2[1]))
        ids.append(tok)
        llm.eval([tok])
    text = llm.detokenize(ids).decode("utf-8", errors="replace")
    with open(out, "w") as f:
        json.dump({"prompt": PROMPT, "prompt_ids": prompt_ids, "greedy_ids": ids, "text": text,
                   "min_top2_margin": min(margins), "llama_cpp_python": llama_cpp.__version__},
                  f, indent=1)
    print(json.dumps({"prompt_ids": prompt_ids, "greedy_ids": ids, "text": text}))


if __name__ == "__main__":
    main()
