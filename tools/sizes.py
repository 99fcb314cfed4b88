"""What each CodeGen size needs, per dtype: file size, peak RSS while decoding, decode tok/s.

For each size (the hub configs of 350M, 2B, 6B and 16B) and dtype (float32, bfloat16, int8, int4),
random weights are written straight in that dtype (codes and scales for int8 / int4: no float32
copy of the model is ever made) into a ``.npz``; then a fresh process loads it as
``python -m minicodegen`` does (memory-mapped), runs a prompt of 32 tokens and decodes 32 more,
and reports decode tok/s and its peak RSS (VmHWM: Python, NumPy, Numba's compiled kernels, the
mapped weights it touched, the KV cache).

350M and 2B are measured at full depth.  6B and 16B are measured with 2 and 4 layers of the real
shape (embeddings and head included) and extrapolated linearly in the number of layers (file
bytes, seconds per token, peak RSS); the output says so.

    python tools/sizes.py [--sizes 350M 2B 6B 16B] [--dtypes float32 bfloat16 int8 int4] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minicodegen import npz  # noqa: E402
from minicodegen.model import config_from_dict, expected_shapes  # noqa: E402

SIZES = {  # the hub's config.json of each size (Salesforce/codegen-*-mono)
    "350M": dict(n_embd=1024, n_layer=20, n_head=16, rotary_dim=32),
    "2B": dict(n_embd=2560, n_layer=32, n_head=32, rotary_dim=64),
    "6B": dict(n_embd=4096, n_layer=33, n_head=16, rotary_dim=64),
    "16B": dict(n_embd=6144, n_layer=34, n_head=24, rotary_dim=64),
}
FULL_DEPTH = ("350M", "2B")
DTYPES = ("float32", "bfloat16", "int8", "int4")

CHILD = r"""
import json, sys, time
import numpy as np
import minicodegen

def status(field):
    return int(next(l for l in open("/proc/self/status") if l.startswith(field + ":")).split()[1]) * 1024

base = status("VmRSS")
m = minicodegen.load(sys.argv[1])
cache = minicodegen.new_cache(m.config, 1, 80)
ids = np.random.default_rng(0).integers(0, m.config.vocab_size, (1, 32))
z = minicodegen.forward(m, ids, cache=cache, last_only=True)
tok = int(z[0, -1].argmax())
for _ in range(2):
    tok = int(minicodegen.forward(m, [[tok]], cache=cache, last_only=True)[0, -1].argmax())
t0 = time.perf_counter()
for _ in range(32):
    tok = int(minicodegen.forward(m, [[tok]], cache=cache, last_only=True)[0, -1].argmax())
dt = time.perf_counter() - t0
print(json.dumps({"s_per_token": dt / 32, "peak_rss": status("VmHWM"), "base_rss": base}))
"""


def config(size: str, n_layer: int | None = None) -> dict:
    c = {"model_type": "codegen", "vocab_size": 51200, "n_positions": 2048, **SIZES[size]}
    if n_layer is not None:
        c["n_layer"] = n_layer
    return c


def random_weights(cfg, dtype: str, seed: int = 0):
    """(name, array) pairs of random weights stored as ``dtype``, one tensor at a time."""
    rng = np.random.default_rng(seed)
    for name, shape in expected_shapes(cfg).items():
        if len(shape) == 1:
            yield name, (np.ones(shape, np.float32) if name.endswith("ln_1.weight") or name.endswith("ln_f.weight")
                         else np.zeros(shape, np.float32))
        elif dtype == "int8" or (dtype == "int4" and name in npz.INT4_KEEP_INT8):
            yield name, rng.integers(-127, 128, shape, dtype=np.int8)
            yield name + ".scale", np.full(shape[0], 0.02 * 3 / 127, np.float32)
        elif dtype == "int4":
            yield name, rng.integers(0, 256, (shape[0], shape[1] // 2), dtype=np.uint8)
            yield name + ".scale", np.full((shape[0], shape[1] // npz.INT4_GROUP), 0.02 * 3 / 8, np.float16)
        else:
            w = np.empty(shape, np.float32)
            for r in range(0, shape[0], 4096):  # (in chunks: the normal draws take float64 memory)
                w[r : r + 4096] = rng.standard_normal((min(4096, shape[0] - r), shape[1]), np.float32) * 0.02
            yield name, npz.to_bfloat16(w) if dtype == "bfloat16" else w


def measure(work: Path, size: str, dtype: str, n_layer: int | None) -> dict:
    cfg = config_from_dict(config(size, n_layer))
    path = work / f"{size}-{cfg.n_layer}-{dtype}.npz"
    npz.write_npz(path, cfg, random_weights(cfg, dtype), meta={"dtype": dtype, "note": "random weights"}, force=True)
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, timeout=3600)
        if out.returncode != 0:
            raise SystemExit(f"sizes: {size} {dtype}: {out.stderr[-2000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        return {**r, "file": path.stat().st_size, "n_layer": cfg.n_layer}
    finally:
        path.unlink(missing_ok=True)


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--workdir", default=None, help="where the .npz files go, one at a time (default: a temporary directory)")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=a.workdir) as d:
        for size in a.sizes:
            for dtype in a.dtypes:
                if size in FULL_DEPTH:
                    r = measure(Path(d), size, dtype, None)
                    how = "measured"
                else:  # two depths at the real layer shape, then per layer
                    r2, r4 = measure(Path(d), size, dtype, 2), measure(Path(d), size, dtype, 4)
                    L = SIZES[size]["n_layer"]
                    r = {k: r2[k] + (r4[k] - r2[k]) / 2 * (L - 2) for k in ("s_per_token", "peak_rss", "file")}
                    r["base_rss"] = r2["base_rss"]
                    how = f"{L} layers extrapolated from 2 and 4"
                rows.append((size, dtype, r, how))
                print(json.dumps({"size": size, "dtype": dtype, "how": how, **r}), flush=True)
    print("\n| size | dtype | file | peak RSS decoding | RSS / file | decode tok/s | how |")
    print("|---|---|---:|---:|---:|---:|---|")
    for size, dtype, r, how in rows:
        print(f"| {size} | {dtype} | {gb(r['file'])} | {gb(r['peak_rss'])} | {r['peak_rss'] / r['file']:.2f} | "
              f"{1 / r['s_per_token']:.1f} | {how} |")


if __name__ == "__main__":
    main()
