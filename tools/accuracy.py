"""How far bf16, int8 and int4 weights move the model from fp32 (int8 and bf16 with each activation path).

Three measurements:

* ``tiny`` (trained weights, shipped as int8): the validation loss of TINY.md (held-out files of
  the standard library, windows of 512 tokens, nats per token) with
  - fp32: the int8 file dequantized to float32 weights (``W = q * scale``), the reference;
  - int8, float32 activations: the int8 weights times float32 activations;
  - int8, int8 activations (the default): activations quantized per row, integer dot products;
  - int4: the int8 file converted to int4 as it loads (``load("tiny", dtype="int4")``: the token
    embedding, tied to the head, stays int8), and the same with the embedding in int4 too;
  - bf16: the fp32 weights rounded to bf16, with float32 activations (the default) and with
    prompt activations rounded to bf16 (``Model.bf16_activations = "bf16"``);
* the 350M shape with random weights (``--workdir`` of tools/bench.py, which holds fp32 / bf16 /
  int8 / int4 ``.npz`` conversions of one checkpoint): logits of 128 positions of a pseudo-random
  sequence, max |Δ logits| against fp32 and the argmax agreement;
* the 16B shape (``--16b``): 2 layers at CodeGen-16B's real shape (n_embd 6144, 24 heads of 256,
  n_inner 24576, vocab 51200), random normal weights (std 0.02, as transformers initializes), the
  same figures for each dtype converted in memory.

    python tools/accuracy.py [--workdir $TMPDIR/minicodegen-bench-350M] [--no-tiny] [--16b]
"""

from __future__ import annotations

import argparse
import json
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

import minicodegen
from minicodegen import npz
from minicodegen.model import Model, config_from_dict, dequantize, expected_shapes


def tiny_loss(model: Model) -> tuple[float, int]:
    """TINY.md's validation loss: mean NLL over the held-out files' scored tokens."""
    card = Path(minicodegen.__file__).parent / "data" / "TINY.md"
    rec = json.loads(card.read_text().split("<!-- tiny-validation -->")[-1].split("```json")[1].split("```")[0])
    lib = Path(sysconfig.get_paths()["stdlib"])
    lp = np.concatenate([minicodegen.score(model, (lib / f).read_bytes().decode()).logprobs for f in rec["held_out"]])
    return float(-np.nanmean(lp)), int(np.isfinite(lp).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "minicodegen-bench-350M"))
    ap.add_argument("--no-tiny", action="store_true")
    ap.add_argument("--16b", dest="b16", action="store_true", help="also 2 layers at the 16B shape (about 10 GB of memory)")
    a = ap.parse_args()

    if not a.no_tiny:
        q = minicodegen.load("tiny")
        f32 = minicodegen.load("tiny")
        f32.weights = {k: (dequantize(w, q.weights[k + ".scale"]) if w.dtype == np.int8 else w)
                       for k, w in q.weights.items() if not k.endswith(".scale")}
        fl = minicodegen.load("tiny")
        fl.int8_activations = "float32"
        q4 = minicodegen.load("tiny", dtype="int4")
        q4e = minicodegen.load("tiny", dtype="int4")  # the (tied) embedding in int4 too
        wte = "transformer.wte.weight"
        q4e.weights[wte], q4e.weights[wte + ".scale"] = npz.quantize_int4(q.weights[wte], scale=q.weights[wte + ".scale"])
        b16 = minicodegen.load("tiny")
        b16.weights = npz.convert_weights(f32.weights, "bfloat16")
        b16a = minicodegen.load("tiny", bf16_activations="bf16")
        b16a.weights = b16.weights
        print("tiny, validation loss (nats/token, TINY.md's held-out files):")
        base = None
        for label, m in (("fp32 (dequantized)", f32), ("int8, float32 activations", fl), ("int8, int8 activations", q),
                         ("int4 (embedding int8)", q4), ("int4, embedding int4 too", q4e), ("bf16, float32 activations", b16),
                         ("bf16, bf16 activations", b16a)):
            t0 = time.perf_counter()
            loss, n = tiny_loss(m)
            base = loss if base is None else base
            print(f"  {label}: {loss:.4f} over {n:,} tokens ({100 * (loss / base - 1):+.3f}% vs fp32; {time.perf_counter() - t0:.0f} s)")

    work = Path(a.workdir)
    if (work / "float32.npz").exists():
        ref = minicodegen.load(work / "float32.npz")
        V = ref.config.vocab_size
        seq = np.random.default_rng(5).integers(0, V - 1, 128)
        z_ref = minicodegen.forward(ref, seq[None])[0]
        print(f"\n350M shape, random weights ({work}), logits of 128 positions against fp32 "
              f"(max |logit| {np.abs(z_ref).max():.3g}):")
        for label, path, acts in (("bf16", "bfloat16.npz", {}), ("bf16, bf16 activations", "bfloat16.npz", {"bf16_activations": "bf16"}),
                                  ("int8, float32 activations", "int8.npz", {"int8_activations": "float32"}),
                                  ("int8, int8 activations", "int8.npz", {}), ("int4", "int4.npz", {})):
            if not (work / path).exists():
                print(f"  {label}: no {work / path}")
                continue
            m = minicodegen.load(work / path, **acts)
            compare(label, minicodegen.forward(m, seq[None])[0], z_ref)
    else:
        print(f"\n(no 350M checkpoints in {work}: run tools/bench.py first, or pass --workdir)")
    if a.b16:
        shape_16b()


def compare(label: str, z: np.ndarray, z_ref: np.ndarray) -> None:
    agree = (z.argmax(-1) == z_ref.argmax(-1)).mean()
    print(f"  {label}: max |Δlogits| {np.abs(z - z_ref).max():.3g}, argmax agreement {100 * agree:.1f}% (of {len(z)})")


def shape_16b(n_layer: int = 2, positions: int = 128) -> None:
    """Two layers at the 16B shape, random weights: each dtype against fp32."""
    cfg = config_from_dict({"vocab_size": 51200, "n_embd": 6144, "n_layer": n_layer, "n_head": 24, "rotary_dim": 64,
                            "n_positions": 2048})
    rng = np.random.default_rng(0)
    weights = {}
    for name, shape in expected_shapes(cfg).items():
        if len(shape) == 1:
            weights[name] = np.ones(shape, np.float32) if name.endswith(("ln_1.weight", "ln_f.weight")) else np.zeros(shape, np.float32)
        else:
            weights[name] = np.empty(shape, np.float32)
            for r in range(0, shape[0], 2048):
                weights[name][r : r + 2048] = rng.standard_normal((min(2048, shape[0] - r), shape[1]), np.float32) * 0.02
    seq = np.random.default_rng(5).integers(0, cfg.vocab_size, positions)
    ref = Model(cfg, weights)
    z_ref = minicodegen.forward(ref, seq[None])[0]
    print(f"\n16B shape ({n_layer} layers of n_embd 6144, n_inner 24576, 24 heads; random weights), logits of "
          f"{positions} positions against fp32 (max |logit| {np.abs(z_ref).max():.3g}):")
    for dtype in ("bfloat16", "int8", "int4"):
        m = Model(cfg, npz.convert_weights(weights, dtype))
        compare(dtype, minicodegen.forward(m, seq[None])[0], z_ref)
        del m


if __name__ == "__main__":
    main()
