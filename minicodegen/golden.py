"""Golden outputs: every intermediate of one forward pass, written to an ``.npz`` for other ports.

A port of CodeGen (C, Rust, WebGPU, ...) checks itself against minicodegen by running the same
prompt through the same weights and comparing, array by array, what it computes with what is in a
golden file. The first array that disagrees says where the bug is: the embedding lookup, the
mp_num=4 qkv split, rotary, the attention, the MLP, the final layer norm, or the decode loop.

    python -m minicodegen golden --model M --prompt "def f():" -o golden.npz --steps 8

The file format (every name, shape, dtype and meaning), the tolerance a port should use and a
comparison snippet are in ``docs/golden.md``; ``tests/test_golden.py`` checks the file against
transformers and against a deliberately naive re-implementation written from that spec.

All arrays are computed with the NumPy definition of the model (``fast=False``: ``ops.py``), in
float32, for one sequence (no batch axis in the file).

>>> import numpy as np
>>> from minicodegen.golden import golden_names
>>> golden_names(n_layer=1)[:7]
['format_version', 'config', 'prompt', 'deviation', 'input_ids', 'position_ids', 'sincos']
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from . import ops
from .npz import atomic_output
from .model import Model, config_to_dict, dequantize, embed, forward, new_cache

# Bumped whenever a name, shape or meaning in the file changes (docs/golden.md says what each
# version holds). Readers should refuse a version they do not know.
FORMAT_VERSION = 1

# The per-layer arrays, in the order they are computed ({i} is the layer index).
LAYER_NAMES = (
    "ln_1",          # [T, E]      ln_1(x), the input of both attention and MLP (parallel residual)
    "qkv",           # [T, 3E]     ln_1 · qkv_projᵀ, the fused projection before the split
    "q_split",       # [T, H, D]   query heads after the mp_num=4 split, before rotary
    "k_split",       # [T, H, D]   key heads after the split, before rotary
    "v",             # [T, H, D]   value heads after the split (values get no rotary)
    "q",             # [T, H, D]   query heads after rotary
    "k",             # [T, H, D]   key heads after rotary
    "attn_probs",    # [H, T, T]   softmax(q·kᵀ/√D, causal): row t = query t, column s = key s
    "attn_context",  # [T, E]      attn_probs · v, heads merged (h·D + d), before out_proj
    "attn_out",      # [T, E]      attn_context · out_projᵀ (no bias)
    "mlp_hidden",    # [T, F]      gelu_new(ln_1 · fc_inᵀ + b_in)
    "mlp_out",       # [T, E]      mlp_hidden · fc_outᵀ + b_out
    "residual",      # [T, E]      x + attn_out + mlp_out: the block's output
)  # fmt: skip

# Tolerance (docs/golden.md, "Tolerance"): for every element of a float array,
#     |port − golden| <= ATOL + RTOL · max|golden| + K · deviation
# with the max taken over the whole array, and ``deviation`` the array's own rounding error: the
# largest |golden − the same computation in float64|, stored in the file. The first two terms
# cover the rounding of a float32 port of a well-conditioned model, the third the amplification
# of rounding by a model that is not (deep, sharp attention). Measured, see the docs.
ATOL = 1e-5
RTOL = 1e-5
K = 20.0


def golden_names(n_layer: int) -> list[str]:
    """Every array name a golden file of ``n_layer`` layers holds, in file order.

    The greedy-step arrays (``step_ids``, ``step_logits``) are always present (with 0 rows for 0 steps).
    """
    names = ["format_version", "config", "prompt", "deviation", "input_ids", "position_ids", "sincos", "wte"]
    for i in range(n_layer):
        names += [f"h.{i}.{name}" for name in LAYER_NAMES]
    return names + ["ln_f", "logits", "step_ids", "step_logits"]


def tolerance(golden: np.ndarray, deviation: float = 0.0) -> float:
    """The largest |port − golden| allowed anywhere in an array: ATOL + RTOL·max|golden| + K·deviation.

    >>> tolerance(np.array([0.5, -20.0], np.float32))
    0.00021
    >>> tolerance(np.array([0.5, -20.0], np.float32), deviation=1e-4)
    0.00221
    """
    scale = float(np.abs(golden).max()) if golden.size else 0.0
    return round(ATOL + RTOL * scale + K * deviation, 12)


def deviations(golden: dict[str, np.ndarray]) -> dict[str, float]:
    """The file's ``deviation`` table: {name: max |golden − float64 reference|} (empty if absent)."""
    if "deviation" not in golden:
        return {}
    return {k: float(v) for k, v in json.loads(bytes(np.asarray(golden["deviation"], np.uint8))).items()}


def compare(golden: dict[str, np.ndarray], ours: dict[str, np.ndarray]) -> list[tuple[str, float, float, bool]]:
    """Compares a port's arrays with a golden file's, in file order.

    Returns one row (name, max |ours − golden|, tolerance, ok) per float array of the golden file
    that ``ours`` holds; integer arrays (ids) must be equal (difference 0, tolerance 0). Names
    ``ours`` lacks are skipped, so a port can check what it has so far.
    """
    dev = deviations(golden)
    rows = []
    for name, g in golden.items():
        if name not in ours or name in ("format_version", "config", "prompt", "deviation"):
            continue
        o = np.asarray(ours[name])
        if o.shape != g.shape:
            rows.append((name, float("inf"), 0.0, False))
            continue
        if np.issubdtype(g.dtype, np.integer):
            diff = 0.0 if np.array_equal(o, g) else float("inf")
            rows.append((name, diff, 0.0, diff == 0.0))
            continue
        diff = float(np.abs(o.astype(np.float64) - g.astype(np.float64)).max()) if g.size else 0.0
        tol = tolerance(g, dev.get(name, 0.0))
        rows.append((name, diff, tol, bool(diff <= tol)))
    return rows


def read_golden(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Loads a golden file into a dict (no pickles), checking its format version."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {name: f[name] for name in f.files}
    version = int(arrays.get("format_version", np.array([-1]))[0])
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: golden format version {version}, this minicodegen reads {FORMAT_VERSION}")
    return arrays


def _prompt_ids(model: Model, prompt: str | Sequence[int]) -> tuple[bytes, list[int]]:
    """(prompt text as UTF-8 bytes, its token ids). Text is encoded with the model's tokenizer,
    or CodeGen's when the checkpoint carries none; ids are decoded back to text only when the
    model has its own tokenizer (otherwise the text is empty)."""
    vocab = model.config.vocab_size
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("the prompt is empty: give at least one character")
        tok = model.tokenizer
        if tok is None:
            from .tokenizer import Tokenizer

            tok = Tokenizer.codegen()
        ids = [int(i) for i in tok.encode(prompt)]
        text = prompt.encode("utf-8", "surrogatepass")
    else:
        ids = [int(i) for i in prompt]
        if not ids:
            raise ValueError("the prompt has no token ids: give at least one")
        text = b""
        if model.tokenizer is not None and all(0 <= i < model.tokenizer.vocab_size for i in ids):
            try:
                text = model.tokenizer.decode_bytes(ids)
            except ValueError:  # an id the vocabulary does not use
                text = b""
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise ValueError(f"prompt token id {bad[0]} is outside the model's vocabulary [0, {vocab})")
    return text, ids


def _qkv_from_split(q: np.ndarray, k: np.ndarray, v: np.ndarray, mp_num: int = 4) -> np.ndarray:  # 3 × [T, H, D] -> [T, 3E]
    """Undoes ops.split_qkv exactly (a permutation): 4 blocks of [q | v | k] over H/4 heads each."""
    T, H, D = q.shape
    parts = [t.reshape(T, mp_num, H // mp_num * D) for t in (q, v, k)]  # heads h = m·H/4 + j
    return np.stack(parts, axis=2).reshape(T, 3 * H * D)  # [T, mp, (q, v, k), E/mp]


def reference64(model: Model, ids: Sequence[int]) -> dict[str, np.ndarray]:
    """The golden arrays of one sequence (positions 0..len-1) computed in float64 from the same
    weights, with the same ops and the same float32 rotary table: the exact answer to within
    float64 rounding. It measures how much float32 rounding moved each golden array."""
    cfg, w = model.config, model.weights
    E, H, R = cfg.n_embd, cfg.n_head, cfg.rotary_dim
    f64 = np.float64

    def mat(name: str) -> np.ndarray:  # a weight, dequantized, widened
        return dequantize(w[name], w.get(name + ".scale")).astype(f64)

    T = len(ids)
    x = embed(w, np.asarray([ids]))[0].astype(f64)  # [T, E]
    sincos = model.sincos[:T].astype(f64)[None]  # [1, T, R]: positions 0..T-1
    mask = ops.causal_mask(np.ones((1, T), np.int8), T)  # [1, 1, T, T]
    eps = cfg.layer_norm_epsilon
    out: dict[str, np.ndarray] = {"sincos": sincos[0], "wte": x}
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        h = ops.layer_norm(x, mat(p + "ln_1.weight"), mat(p + "ln_1.bias"), eps)
        qkv = h @ mat(p + "attn.qkv_proj.weight").T  # [T, 3E]
        q, k, v = ops.split_qkv(qkv[None], H)  # [1, T, H, D]
        qr, kr = ops.apply_rotary(q, sincos, R), ops.apply_rotary(k, sincos, R)
        ctx, probs = ops.attention(*(a.transpose(0, 2, 1, 3) for a in (qr, kr, v)), mask)  # [1, H, T, D], [1, H, T, T]
        ctx = ctx[0].transpose(1, 0, 2).reshape(T, E)
        attn_out = ctx @ mat(p + "attn.out_proj.weight").T
        hidden = ops.gelu_new(h @ mat(p + "mlp.fc_in.weight").T + mat(p + "mlp.fc_in.bias"))
        mlp_out = hidden @ mat(p + "mlp.fc_out.weight").T + mat(p + "mlp.fc_out.bias")
        x = x + attn_out + mlp_out
        out |= {f"h.{i}.{n}": a for n, a in dict(
            ln_1=h, qkv=qkv, q_split=q[0], k_split=k[0], v=v[0], q=qr[0], k=kr[0], attn_probs=probs[0],
            attn_context=ctx, attn_out=attn_out, mlp_hidden=hidden, mlp_out=mlp_out, residual=x,
        ).items()}  # fmt: skip
    out["ln_f"] = ops.layer_norm(x, mat("transformer.ln_f.weight"), mat("transformer.ln_f.bias"), eps)
    head = "transformer.wte.weight" if cfg.tie_word_embeddings else "lm_head.weight"
    out["logits"] = out["ln_f"] @ mat(head).T + mat("lm_head.bias")
    return out


def _deviation(arrays: dict[str, np.ndarray], model: Model, ids: list[int], steps: int) -> dict[str, float]:
    """{name: max |golden − float64 reference|} for every float array. One float64 pass over the
    prompt and the step ids covers both: the model is causal, so its first T rows are the prompt's
    arrays and the logits at rows T-1 .. T+N-2 are the steps'."""
    T = len(ids)
    ref = reference64(model, ids + arrays["step_ids"][: max(steps - 1, 0)].tolist())
    ref["step_logits"] = ref["logits"][T - 1 : T - 1 + steps]
    dev: dict[str, float] = {}
    for name, a in arrays.items():
        if a.dtype.kind != "f" or name == "step_logits" and steps == 0:
            continue
        r = ref[name]
        if name != "step_logits":
            r = r[:, :T, :T] if name.endswith("attn_probs") else r[:T]
        dev[name] = float(np.abs(a.astype(np.float64) - r).max()) if a.size else 0.0
    dev.setdefault("step_logits", 0.0)
    return dev


def golden_arrays(model: Model, prompt: str | Sequence[int], steps: int = 0) -> dict[str, np.ndarray]:
    """Every array of a golden file (see ``golden_names``), computed with the NumPy definition.

    ``steps`` greedy steps follow the prompt, each fed the previous step's id through the KV
    cache; EOS does not stop them. Raises ValueError for an empty or out-of-vocabulary prompt or
    one that, with the steps, does not fit in n_positions.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    cfg = model.config
    text, ids = _prompt_ids(model, prompt)
    T = len(ids)
    # The last step's logits are computed at position T + steps - 2 (its id is not fed back).
    needed = T + max(steps - 1, 0)
    if needed > cfg.n_positions:
        raise ValueError(f"the prompt ({T} tokens) and {steps} steps need {needed} positions, "
                         f"more than n_positions={cfg.n_positions}")
    ref = copy.copy(model)
    ref.fast = False  # the definition: ops.py only, no Numba kernels, no BLAS-vs-kernel switch
    ref.int8_activations = "float32"  # int8 weights dequantized, activations in float32: what a port computes

    trace: dict[str, np.ndarray] = {}
    cache = new_cache(cfg, 1, T + max(steps - 1, 0))
    logits = forward(ref, [ids], cache=cache, trace=trace)  # [1, T, V]

    out: dict[str, np.ndarray] = {
        "format_version": np.array([FORMAT_VERSION], np.int32),
        "config": np.frombuffer(json.dumps(config_to_dict(cfg), sort_keys=True).encode(), np.uint8),
        "prompt": np.frombuffer(text, np.uint8),
        "deviation": np.zeros(0, np.uint8),  # filled in below, once every array is known
        "input_ids": trace["input_ids"][0].astype(np.int64),  # [T]
        "position_ids": trace["position_ids"][0].astype(np.int64),  # [T]
        "sincos": model.sincos[trace["position_ids"][0]],  # [T, rotary_dim]
        "wte": trace["wte"][0],  # [T, E]
    }
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        q_split, k_split, v = trace[p + "q_split"][0], trace[p + "k_split"][0], trace[p + "v"][0]  # [T, H, D]
        probs = trace[p + "attn_probs"][0]  # [H, T, T]
        context = np.matmul(probs, v.transpose(1, 0, 2))  # [H, T, D], as ops.attention computes it
        out |= {
            p + "ln_1": trace[p + "ln_1"][0],
            p + "qkv": _qkv_from_split(q_split, k_split, v),
            p + "q_split": q_split, p + "k_split": k_split, p + "v": v,
            p + "q": trace[p + "q"][0], p + "k": trace[p + "k"][0],
            p + "attn_probs": probs,
            p + "attn_context": context.transpose(1, 0, 2).reshape(T, cfg.n_embd),
            p + "attn_out": trace[p + "attn_out"][0], p + "mlp_hidden": trace[p + "mlp_hidden"][0],
            p + "mlp_out": trace[p + "mlp_out"][0], p + "residual": trace[p + "residual"][0],
        }  # fmt: skip
    out |= {"ln_f": trace["ln_f"][0], "logits": logits[0]}

    step_ids = np.zeros(steps, np.int64)  # [N]
    step_logits = np.zeros((steps, cfg.vocab_size), np.float32)  # [N, V]
    last = logits[0, -1]
    for n in range(steps):
        step_logits[n] = last
        step_ids[n] = int(np.argmax(last))
        if n + 1 < steps:
            last = forward(ref, [[int(step_ids[n])]], cache=cache, last_only=True)[0, -1]
    out |= {"step_ids": step_ids, "step_logits": step_logits}

    for name, a in out.items():  # one dtype per kind: ids int64, text uint8, the rest float32
        if a.dtype.kind == "f":
            out[name] = np.ascontiguousarray(a, dtype=np.float32)
    dev = _deviation(out, ref, ids, steps)
    out["deviation"] = np.frombuffer(json.dumps(dev).encode(), np.uint8)
    assert list(out) == golden_names(cfg.n_layer), "golden names out of sync with golden_names()"
    return out


def write_golden(model: Model, prompt: str | Sequence[int], path: str | os.PathLike, steps: int = 0) -> dict[str, np.ndarray]:
    """Writes the golden file of ``prompt`` (text or token ids) to ``path`` and returns its arrays.

    An uncompressed ``.npz`` (each member a plain ``.npy``), written to a temporary file in the
    same directory and renamed into place, so ``path`` is either the old file or the complete new
    one, never a partial write.
    """
    arrays = golden_arrays(model, prompt, steps)
    with atomic_output(Path(path), force=True) as f:
        np.savez(f, **arrays)
    return arrays


def ill_conditioned(golden: dict[str, np.ndarray], threshold: float = 1e-3) -> tuple[str, float] | None:
    """The first array (file order) whose float32 rounding error exceeds ``threshold`` of its
    largest value, with that ratio; None when the whole file is well conditioned."""
    for name, d in deviations(golden).items():
        scale = float(np.abs(golden[name]).max()) if golden[name].size else 0.0
        if scale > 0 and d / scale > threshold:
            return name, d / scale
    return None
