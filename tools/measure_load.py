"""Measures conversion and loading of a 350M-shaped CodeGen (real shapes, random weights).

Writes a hub-like ``pytorch_model.bin`` (fp16, with the ``attn.causal_mask``/``attn.masked_bias``
buffers the 2022 hub files carry; needs torch), converts it to each .npz dtype, then loads every
.npz in a fresh process and reports wall time and RSS: at load, and after a first forward pass of
8 tokens (which reads every weight). "cold" runs drop the .npz from the page cache first
(posix_fadvise DONTNEED on that file only). Also measures int8 against float32 on these weights.

    python tools/measure_load.py [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIG_350M = {
    "model_type": "codegen", "architectures": ["CodeGenForCausalLM"], "vocab_size": 51200, "n_positions": 2048,
    "n_ctx": 2048, "n_embd": 1024, "n_layer": 20, "n_head": 16, "rotary_dim": 32, "n_inner": None,
    "activation_function": "gelu_new", "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
    "layer_norm_epsilon": 1e-5, "bos_token_id": 1, "eos_token_id": 50256, "tie_word_embeddings": False,
}  # fmt: skip

# Run in a fresh process: prints a JSON line of measurements.
CHILD = r"""
import json, os, sys, time
import numpy as np
from minicodegen import checkpoint as ck
from minicodegen import npz

def status(field):  # MB; VmHWM is this process's peak (ru_maxrss would include the parent's, from fork)
    return int(next(l for l in open("/proc/self/status") if l.startswith(field + ":")).split()[1]) / 1024

def rss():
    return status("VmRSS")

def peak():
    return status("VmHWM")

what, path = sys.argv[1], sys.argv[2]
if what == "convert":
    t = time.perf_counter()
    npz.convert(path, sys.argv[3], dtype=sys.argv[4], force=True)
    print(json.dumps({"seconds": time.perf_counter() - t, "peak_mb": peak()}))
    sys.exit()
if len(sys.argv) > 3 and sys.argv[3] == "cold":
    fd = os.open(path, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)
base = rss()
t = time.perf_counter()
m = ck.load_model(path)  # fast=True, the default: Numba kernels
load_s, load_rss = time.perf_counter() - t, rss() - base
ids = np.arange(8)[None] * 997 % 50000
t = time.perf_counter()
logits = m.logits(ids)
fwd_s = time.perf_counter() - t
if len(sys.argv) > 4:
    np.save(sys.argv[4], logits)
print(json.dumps({"load_s": load_s, "load_rss_mb": load_rss, "forward_s": fwd_s,
                  "rss_after_forward_mb": rss() - base, "anon_after_forward_mb": status("RssAnon"),
                  "peak_mb": peak(), "baseline_mb": base}))
"""


def run(*args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"child failed: {args}\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def write_hub_like_bin(directory: Path) -> None:
    """config.json + an fp16 pytorch_model.bin with the 350M shapes and N(0, 0.02) weights."""
    import collections

    import torch

    from minicodegen.model import config_from_dict, expected_shapes

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(CONFIG_350M, indent=2))
    cfg = config_from_dict(CONFIG_350M)
    gen = torch.Generator().manual_seed(0)
    sd = collections.OrderedDict()
    for name, shape in expected_shapes(cfg).items():
        if name.endswith(("ln_1.weight", "ln_f.weight")):
            sd[name] = torch.ones(shape, dtype=torch.float16)
        else:
            sd[name] = (torch.randn(shape, generator=gen) * 0.02).half()
    n = cfg.n_positions
    for i in range(cfg.n_layer):
        sd[f"transformer.h.{i}.attn.causal_mask"] = torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n)
        sd[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e9)
    torch.save(sd, directory / "pytorch_model.bin")


def int8_accuracy(f32: Path, i8: Path, tokens: int = 64) -> str:
    import numpy as np

    from minicodegen import checkpoint as ck

    ids = np.random.default_rng(0).integers(0, 50000, size=(2, tokens))
    a = ck.load_model(f32, fast=False).logits(ids)
    b = ck.load_model(i8, fast=False).logits(ids)
    agree = (a.argmax(-1) == b.argmax(-1)).mean()
    return (
        f"int8 vs float32 on {ids.size} positions: max|Δlogits| {np.abs(a - b).max():.4g} "
        f"(logits std {a.std():.3g}, max |logit| {np.abs(a).max():.3g}), mean|Δ| {np.abs(a - b).mean():.3g}, "
        f"next-token argmax agreement {agree:.1%}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, help="where to write the files (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the files")
    args = p.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="measure_load_"))
    try:
        src = work / "codegen-350M-random"
        if not (src / "pytorch_model.bin").exists():
            write_hub_like_bin(src)
        print(f"source: {src / 'pytorch_model.bin'} ({(src / 'pytorch_model.bin').stat().st_size / 1e6:.0f} MB, fp16)")
        print("\n| dtype | .npz MB | convert s | convert peak RSS MB | load s (warm / cold) | RSS after load MB "
              "| first forward (8 tok) s | RSS after forward MB (of which anonymous) | peak RSS MB |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        for dtype in ("float32", "bfloat16", "int8", "float16"):
            out = work / f"350M-{dtype}.npz"
            conv = run("convert", str(src), str(out), dtype)
            cold = run("load", str(out), "cold")
            warm = run("load", str(out), "warm")
            print(f"| {dtype} | {out.stat().st_size / 1e6:.0f} | {conv['seconds']:.1f} | {conv['peak_mb']:.0f} "
                  f"| {warm['load_s']:.3f} / {cold['load_s']:.3f} | {warm['load_rss_mb']:.0f} | {warm['forward_s']:.2f} "
                  f"| {warm['rss_after_forward_mb']:.0f} ({warm['anon_after_forward_mb']:.0f}) | {warm['peak_mb']:.0f} |")  # fmt: skip
        direct = run("load", str(src), "warm")
        print(f"| (the .bin dir, direct) | - | - | - | {direct['load_s']:.3f} | {direct['load_rss_mb']:.0f} "
              f"| {direct['forward_s']:.2f} | {direct['rss_after_forward_mb']:.0f} ({direct['anon_after_forward_mb']:.0f}) "
              f"| {direct['peak_mb']:.0f} |")
        print(f"\nRSS columns are growth over a process that imported minicodegen ({warm['baseline_mb']:.0f} MB); "
              "peak RSS is the process's whole high-water mark (VmHWM); anonymous = RssAnon (not file-backed).")
        print(int8_accuracy(work / "350M-float32.npz", work / "350M-int8.npz"))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
