"""Where a decode step's time goes: B rows, one new token each, the fused block taken apart.

``kernels.decode_layers`` runs each block as one compiled call (``decode._decode_block``). Here the
same kernels are called one by one from Python, for every block of the model, and timed:

- ``ln_1``: the layer norm of the block's input;
- ``qkv_proj + fc_in``: both matrices in one parallel loop (int8 activations quantized in it);
- ``gelu``: one pass over fc_in's outputs;
- ``attention``: rotary, the cache append and attention over the cache, per row and head;
- ``out_proj + fc_out``: both matrices and the residual in one loop.

Beside them: ``blocks`` (``decode_layers``, the fused calls), ``head`` (``ln_f`` and ``lm_head``)
and ``step`` (``model.forward`` of the B tokens, as ``generate`` calls it). The parts add a few
microseconds of Python each, 100 calls a step at 20 blocks; their result must equal the fused
blocks' bit for bit (else the tool stops with an error). Decode steps of
``model.PACK_MIN_ROWS`` rows or more take int8 weights packed, as ``forward`` does. Medians of
``--runs`` runs after one untimed. minicodegen is imported before NumPy, as the command line
imports it.

    python tools/step_profile.py [--dtype int8] [--rows 1 8] [--cached 32] [--runs 9] [--mapped]
                                 [--workdir DIR]

The checkpoint is ``<dtype>.npz`` in ``--workdir`` (default: where tools/bench.py writes the
350M-shape ones, ``$TMPDIR/minicodegen-bench-350M``).
"""

from __future__ import annotations

import argparse
import sys
import time

import minicodegen  # noqa: I001 - before NumPy, as the command line imports it (OPENBLAS_THREAD_TIMEOUT)
import numpy as np
from minicodegen import kernels
from minicodegen import model as M
from minicodegen.kernels import decode, elementwise, int4, integer, packed
from profile_args import add_checkpoint_args, check_checkpoint

PARTS = ("ln_1", "qkv_proj + fc_in", "gelu", "attention", "out_proj + fc_out")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8], help="rows B of the steps (default 1 8)")
    ap.add_argument("--cached", type=int, default=32, help="positions in the cache before the step (default 32)")
    add_checkpoint_args(ap, 9, "timed runs; medians are printed")
    a = ap.parse_args(argv)
    a.checkpoint = check_checkpoint(ap, a)
    if min(a.rows + [a.cached, a.runs]) < 1:
        ap.error("--rows, --cached and --runs must be at least 1")
    return a


def block_parts(x, w, eps, sincos, rotary_dim, n_head, k_cache, v_cache, S, allowed) -> list[float]:
    """decode._decode_block(x, ...) called kernel by kernel: the seconds of each of PARTS."""
    B, E = x.shape
    ln_g, ln_b, W_qkv, s_qkv, W_out, s_out, W_in, s_in, b_in, W_fo, s_fo, b_fo, pf, isa = w
    n_qkv, n_inner = (len(s_qkv), len(s_in)) if W_qkv.ndim == 3 else (W_qkv.shape[0], W_in.shape[0])
    t = [time.perf_counter()]
    h = np.empty_like(x)
    elementwise._layer_norm(x, ln_g, ln_b, eps, h)
    t.append(time.perf_counter())
    qkv, hidden = np.empty((B, n_qkv), np.float32), np.empty((B, n_inner), np.float32)
    if W_qkv.ndim == 3:  # (the kernels decode._pair chooses, by the weights' type)
        packed._qgemv_pair_packed(h, W_qkv, s_qkv, qkv, W_in, s_in, b_in, hidden, isa)
    elif isa is None:
        decode._gemv_pair(h, W_qkv, s_qkv, qkv, W_in, s_in, b_in, hidden, pf)
    elif W_qkv.dtype == np.uint8:
        int4._q4gemv_pair(h, W_qkv, s_qkv, qkv, W_in, s_in, b_in, hidden, pf, isa)
    else:
        integer._qgemv_pair(h, W_qkv, s_qkv, qkv, W_in, s_in, b_in, hidden, pf, isa)
    t.append(time.perf_counter())
    flat = hidden.reshape(-1)
    elementwise._gelu_new(flat, flat)
    t.append(time.perf_counter())
    a = np.empty((B, E), np.float32)
    decode._rope_attend_step(qkv, sincos, rotary_dim, n_head, 4, k_cache, v_cache, S, allowed, a)
    t.append(time.perf_counter())
    u, v = np.empty_like(x), np.empty_like(x)
    if W_qkv.ndim == 3:
        packed._qgemv_sum_into_packed(x, a, W_out, s_out, hidden, W_fo, s_fo, b_fo, u, v, isa)
    elif isa is None:
        decode._gemv_sum_into(x, a, W_out, s_out, hidden, W_fo, s_fo, b_fo, pf)
    elif W_qkv.dtype == np.uint8:
        int4._q4gemv_sum_into(x, a, W_out, s_out, hidden, W_fo, s_fo, b_fo, u, v, pf, isa)
    else:
        integer._qgemv_sum_into(x, a, W_out, s_out, hidden, W_fo, s_fo, b_fo, u, v, pf, isa)
    t.append(time.perf_counter())
    return list(np.diff(t))


def profile(model: M.Model, B: int, cached: int, runs: int) -> dict[str, float]:
    """Median seconds of each part of a decode step of B rows after ``cached`` positions."""
    cfg, rng = model.config, np.random.default_rng(0)
    cache = M.new_cache(cfg, B, cached + 1)
    M.forward(model, rng.integers(0, cfg.vocab_size, (B, cached)), cache=cache, last_only=True)
    ids = rng.integers(0, cfg.vocab_size, (B, 1))
    pack = model.fast and B >= M.PACK_MIN_ROWS
    plan = M.decode_plan(model, pack)
    S, eps = cached + 1, cfg.layer_norm_epsilon
    sincos = np.ascontiguousarray(model.sincos[np.full(B, cached)], np.float32)
    allowed = np.ones((B, S), bool)
    x0 = M.embed(model.weights, ids).reshape(B, cfg.n_embd)
    head_w = M.fast_weights(model, pack)
    head = "lm_head" if "lm_head.weight" in head_w else "transformer.wte"
    q8 = model.int8_activations == "int8"
    exact = head_w[head + ".weight"].dtype in (np.uint8, np.int32) or (head_w[head + ".weight"].dtype == np.int8 and q8)
    chunk = B if exact else kernels.STREAM_MAX_T
    times: dict[str, list[float]] = {k: [] for k in (*PARTS, "blocks", "head", "step")}
    for run in range(runs + 1):
        parts = np.zeros(len(PARTS))
        x = x0.copy()
        for w, k_cache, v_cache in zip(plan, cache.k, cache.v):
            parts += block_parts(x, w, eps, sincos, cfg.rotary_dim, cfg.n_head, k_cache, v_cache, S, allowed)
        by_parts, x = x, x0.copy()
        t0 = time.perf_counter()
        kernels.decode_layers(x, plan, eps, sincos, cfg.rotary_dim, cfg.n_head, cache.k, cache.v, S, allowed)
        t1 = time.perf_counter()
        if not np.array_equal(by_parts, x):
            raise AssertionError(f"B = {B}: the kernels called one by one gave other values than decode_layers")
        y = kernels.layer_norm(x, head_w["transformer.ln_f.weight"], head_w["transformer.ln_f.bias"], eps)
        for i in range(0, B, chunk):  # (as forward: float heads in chunks of the rows one row alone gets)
            M.dense(y[i:i + chunk], head_w, head, True, bias="lm_head.bias", int8_activations=q8)
        t2 = time.perf_counter()
        cache.length = cached
        M.forward(model, ids, cache=cache, last_only=True)
        t3 = time.perf_counter()
        if run:  # (the first run is not timed: it compiles, loads or packs)
            for k, s in zip((*PARTS, "blocks", "head", "step"), (*parts, t1 - t0, t2 - t1, t3 - t2)):
                times[k].append(s)
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    model = minicodegen.load(a.checkpoint, mapped=a.mapped)
    n_layer = model.config.n_layer
    print(f"{a.dtype}, decode steps after {a.cached} cached positions, {kernels.get_threads()} threads, "
          f"medians of {a.runs} runs (ms a step, all {n_layer} blocks)")
    print("| part | " + " | ".join(f"B = {B}" for B in a.rows) + " |")
    print("|---|" + "---:|" * len(a.rows))
    res = [profile(model, B, a.cached, a.runs) for B in a.rows]
    for k in res[0]:
        print(f"| {k} | " + " | ".join(f"{r[k] * 1e3:.2f}" for r in res) + " |")
    print("| tokens/s of the step | " + " | ".join(f"{B / r['step']:.1f}" for B, r in zip(a.rows, res)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
