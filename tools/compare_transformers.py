"""Max |Δ logits| between minicodegen and transformers' CodeGenForCausalLM, fp32, random weights.

    python tools/compare_transformers.py            # the test configs and the real 350M shape
    python tools/compare_transformers.py --small    # without 350M

Prints one row per config: the NumPy path and the Numba path against transformers, and whether
32 greedy tokens agree. The same configs are asserted in tests/test_model.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import CONFIGS, REAL_350M, hf_logits, random_codegen  # noqa: E402

import minicodegen  # noqa: E402


def compare(name: str, kw: dict, T: int = 64) -> str:
    vocab = kw.get("vocab_size", 1000)
    kw = dict(kw, vocab_size=vocab, bos_token_id=vocab - 1, eos_token_id=vocab - 1)
    hf = random_codegen(0, **kw)
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        slow, fast = minicodegen.load(d, fast=False), minicodegen.load(d, fast=True)
        ids = np.random.default_rng(1).integers(0, min(vocab, 50295), size=(2, T))
        ref = hf_logits(hf, ids)
        d_slow, d_fast = np.abs(slow.logits(ids) - ref).max(), np.abs(fast.logits(ids) - ref).max()
        prompt = ids[0, :8].tolist()
        with torch.no_grad():
            theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, pad_token_id=vocab - 1)
        same = minicodegen.generate(fast, prompt, max_new_tokens=32) == theirs[0, 8:].tolist()
    E, H = kw["n_embd"], kw["n_head"]
    return (f"| {name} | {E} | {kw['n_layer']} | {H} | {E // H} | {kw['rotary_dim']} | {vocab} "
            f"| {d_slow:.2e} | {d_fast:.2e} | {'yes' if same else 'NO'} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="skip the real 350M shape")
    a = p.parse_args()
    torch.set_num_threads(2)
    print("| config | n_embd | n_layer | n_head | head_dim | rotary_dim | vocab | max |Δ| NumPy | max |Δ| Numba | greedy 32 equal |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    configs = dict(CONFIGS) if a.small else dict(CONFIGS, **{"350M (real shape)": REAL_350M})
    for name, kw in configs.items():
        print(compare(name, kw), flush=True)


if __name__ == "__main__":
    main()
