"""Which 4-bit layout: the error of candidate group sizes, scale types and level sets against the
bytes each weight costs.

Candidates (weights in groups of G along n_in, one scale per group):

* ``sym8``: 16 levels, q in -8..7 with scale = (the group's value of largest |w|) / -8, so that
  value is exact and the other side reaches 7/8 of it (llama.cpp's q4_0 does this);
* ``sym7``: 15 levels, q in -7..7 with scale = max|w| / 7;
* ``asym``: 16 levels from the group's min to its max (a scale and a minimum per group).

Measured on the trained ``tiny`` (its int8 weights dequantized: relative RMS error of every
matrix, and the validation loss of TINY.md with the float32 forward pass) and on Gaussian
random weights at the 350M shape (relative RMS error).

    python tools/int4_layouts.py [--no-loss]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import minicodegen  # noqa: E402
from minicodegen.model import dequantize  # noqa: E402

SCALE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


def _round_scale(s: np.ndarray, kind: str) -> np.ndarray:
    if kind == "float16":
        return s.astype(np.float16).astype(np.float32)
    if kind == "bfloat16":
        bits = s.astype(np.float32).view(np.uint32)
        return ((bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) & np.uint32(0xFFFF0000)).view(np.float32)
    return s.astype(np.float32)


def fake_quantize(w: np.ndarray, group: int, levels: str, scale: str) -> np.ndarray:  # [n_out, n_in] -> same
    """w rounded to the layout and back to float32."""
    g = w.reshape(w.shape[0], -1, group).astype(np.float32)
    if levels == "asym":
        lo, hi = g.min(axis=2, keepdims=True), g.max(axis=2, keepdims=True)
        d = _round_scale((hi - lo) / 15, scale)
        lo = _round_scale(lo, scale)
        q = np.clip(np.rint((g - lo) / np.where(d > 0, d, 1)), 0, 15)
        return (q * d + lo).reshape(w.shape)
    if levels == "sym8":
        idx = np.abs(g).argmax(axis=2)[..., None]
        d = _round_scale(np.take_along_axis(g, idx, axis=2) / -8, scale)
        q = np.clip(np.rint(g / np.where(d != 0, d, 1)), -8, 7)
    else:
        d = _round_scale(np.abs(g).max(axis=2, keepdims=True) / 7, scale)
        q = np.clip(np.rint(g / np.where(d > 0, d, 1)), -7, 7)
    return (q * d).reshape(w.shape)


CANDIDATES = [(32, "sym8", "float16"), (64, "sym8", "float16"), (128, "sym8", "float16"), (64, "sym7", "float16"),
              (64, "sym8", "bfloat16"), (64, "sym8", "float32"), (64, "asym", "float16"), (128, "asym", "float16")]


def bits_per_weight(group: int, levels: str, scale: str) -> float:
    return 4 + 8 * SCALE_BYTES[scale] * (2 if levels == "asym" else 1) / group


def rel_rms(ws: list[np.ndarray], *layout) -> float:
    num = sum(float(((fake_quantize(w, *layout) - w) ** 2).sum()) for w in ws)
    return (num / sum(float((w**2).sum()) for w in ws)) ** 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-loss", action="store_true", help="skip tiny's validation loss (a minute per layout)")
    a = ap.parse_args()
    from accuracy import tiny_loss

    tiny = minicodegen.load("tiny", fast=False)
    f32 = {k: (dequantize(w, tiny.weights[k + ".scale"]) if w.dtype == np.int8 else w)
           for k, w in tiny.weights.items() if not k.endswith(".scale")}
    mats = [k for k, w in f32.items() if w.ndim == 2]
    rng = np.random.default_rng(0)
    gauss = [rng.standard_normal((1024, 1024), np.float32) * 0.02, rng.standard_normal((1024, 4096), np.float32) * 0.02]
    base = None
    if not a.no_loss:
        tiny.weights, tiny.fast = f32, True
        base, n = tiny_loss(tiny)
        print(f"tiny fp32 (its int8 dequantized): validation loss {base:.4f} over {n:,} tokens")
    print("| group | levels | scale | bits/weight | rel. RMS error, tiny | rel. RMS error, Gaussian | tiny loss |")
    print("|---:|---|---|---:|---:|---:|---:|")
    for layout in CANDIDATES:
        e_tiny = rel_rms([f32[k] for k in mats], *layout)
        e_gauss = rel_rms(gauss, *layout)
        loss = ""
        if base is not None:
            t0 = time.perf_counter()
            tiny.weights = {k: (fake_quantize(w, *layout) if k in mats else w) for k, w in f32.items()}
            value = tiny_loss(tiny)[0]
            loss = f"{value:.4f} ({100 * (value / base - 1):+.2f}%, {time.perf_counter() - t0:.0f} s)"
        print(f"| {layout[0]} | {layout[1]} | {layout[2]} | {bits_per_weight(*layout):.3f} | {e_tiny:.4f} | {e_gauss:.4f} | {loss} |",
              flush=True)


if __name__ == "__main__":
    main()
