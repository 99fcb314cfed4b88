"""Where a prompt's time goes: one forward pass over a prompt, each kernel call timed.

The linear layers are timed per matrix (``model.dense``: qkv_proj, out_proj, fc_in, fc_out,
lm_head), the other steps per kernel (layer norm, rotary into the cache, attention, gelu); the
rest of ``block`` (residual adds, reshapes) is what the block total has beyond them. Timing each
call adds a few microseconds to it. The figures are those of the last of ``--runs`` passes (the
first also compiles or loads the kernels). minicodegen is imported before NumPy, as
``python -m minicodegen`` imports it.

    python tools/prompt_profile.py [--dtype int8] [--tokens 512] [--batch 1] [--runs 3] [--mapped]
                                   [--bf16-activations float32|bf16] [--workdir DIR]

The checkpoint is ``<dtype>.npz`` in ``--workdir`` (default: where tools/bench.py writes the
350M-shape ones, ``$TMPDIR/minicodegen-bench-350M``).
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
import time

import minicodegen  # noqa: I001 - before NumPy, as the command line imports it (OPENBLAS_THREAD_TIMEOUT)
import numpy as np
from minicodegen import kernels
from minicodegen import model as M
from profile_args import add_checkpoint_args, check_checkpoint

TIMED_KERNELS = ("layer_norm", "rope_into_cache", "apply_rotary", "attend_cached", "gelu_new")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=512, help="prompt length (default 512)")
    ap.add_argument("--batch", type=int, default=1, help="prompts in the pass (default 1)")
    ap.add_argument("--bf16-activations", choices=minicodegen.BF16_ACTIVATIONS, default="float32",
                    help="what bf16 weights multiply: float32 activations (default) or ones rounded to bf16")
    add_checkpoint_args(ap, 3, "passes; the last one is printed")
    a = ap.parse_args(argv)
    a.checkpoint = check_checkpoint(ap, a)
    if min(a.tokens, a.batch, a.runs) < 1:
        ap.error("--tokens, --batch and --runs must be at least 1")
    return a


def timed(f, spent: dict[str, float], label):
    """f, adding the seconds of each call to spent[label(args)]."""

    @functools.wraps(f)
    def g(*args, **kwargs):
        t = time.perf_counter()
        try:
            return f(*args, **kwargs)
        finally:
            spent[label(args)] += time.perf_counter() - t

    return g


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    spent: dict[str, float] = collections.defaultdict(float)
    for name in TIMED_KERNELS:
        setattr(kernels, name, timed(getattr(kernels, name), spent, lambda args, n=name: n))
    M.dense = timed(M.dense, spent, lambda args: args[2].rsplit(".", 1)[-1])  # dense(x, weights, name, ...)
    M.block = timed(M.block, spent, lambda args: "block total")
    model = minicodegen.load(a.checkpoint, mapped=a.mapped, bf16_activations=a.bf16_activations)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (a.batch, a.tokens))
    for _ in range(a.runs):
        spent.clear()
        t = time.perf_counter()
        M.forward(model, ids, last_only=True)
        total = time.perf_counter() - t
    acts = ", bf16 activations" if a.bf16_activations == "bf16" and a.dtype == "bfloat16" else ""
    print(f"{a.dtype}{acts}, {a.batch} x {a.tokens} tokens, last logits, {kernels.get_threads()} threads: {total * 1e3:.1f} ms")
    for label, s in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {label:18s} {s * 1e3:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
