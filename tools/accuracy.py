"""How far int8 (and bf16) weights move the model from fp32, with each activation path.

Two measurements:

* ``tiny`` (trained weights, shipped as int8): the validation loss of TINY.md (held-out files of
  the standard library, windows of 512 tokens, nats per token) with
  - fp32: the int8 file dequantized to float32 weights (``W = q * scale``), the reference;
  - int8, float32 activations: the int8 weights times float32 activations;
  - int8, int8 activations (the default): activations quantized per row, integer dot products;
* the 350M shape with random weights (``--workdir`` of tools/bench.py, which holds fp32 / bf16 /
  int8 ``.npz`` conversions of one checkpoint): logits of 128 positions of a pseudo-random sequence,
  max |Δ logits| against fp32 and the argmax agreement.

    python tools/accuracy.py [--workdir $TMPDIR/minicodegen-bench-350M] [--no-tiny]
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
from minicodegen.model import Model, dequantize


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
    a = ap.parse_args()

    if not a.no_tiny:
        q = minicodegen.load("tiny")
        f32 = minicodegen.load("tiny")
        f32.weights = {k: (dequantize(w, q.weights[k + ".scale"]) if w.dtype == np.int8 else w)
                       for k, w in q.weights.items() if not k.endswith(".scale")}
        f32._decode_plan = None
        fl = minicodegen.load("tiny")
        fl.int8_activations = "float32"
        print("tiny, validation loss (nats/token, TINY.md's held-out files):")
        base = None
        for label, m in (("fp32 (dequantized)", f32), ("int8, float32 activations", fl), ("int8, int8 activations", q)):
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
        for label, path, acts in (("bf16", "bfloat16.npz", "int8"), ("int8, float32 activations", "int8.npz", "float32"),
                                  ("int8, int8 activations", "int8.npz", "int8")):
            m = minicodegen.load(work / path)
            m.int8_activations = acts
            z = minicodegen.forward(m, seq[None])[0]
            agree = (z.argmax(-1) == z_ref.argmax(-1)).mean()
            print(f"  {label}: max |Δlogits| {np.abs(z - z_ref).max():.3g}, argmax agreement {100 * agree:.1f}% (of 128)")
    else:
        print(f"\n(no 350M checkpoints in {work}: run tools/bench.py first, or pass --workdir)")


if __name__ == "__main__":
    main()
