"""Micro-benchmark of the linear kernels on the CodeGen-350M shapes.

Decode (T = 1): GB/s of weight bytes read by linear_f32 / linear_bf16 /
linear_int8, against NumPy ``x @ W.T`` and torch ``F.linear`` (fp32) with the
same number of threads, and against a measured memory-read rate.  To measure
memory rather than the (large) last-level cache, each matrix is copied until
the copies fill ``--ws`` bytes and a pass multiplies by every copy, as decoding
a whole model does (``--hot`` uses a single copy instead).

Prefill (T = 512): milliseconds for fp32 BLAS ``x @ W.T``, torch, and the
bf16 / int8 kernels (kernels.prefill._prefill_linear: panels of widened rows, SIMD matrix products).

    python tools/kernel_speed.py [--threads N] [--ws GB] [--reps R] [--hot] [--sweep]

Figures are medians over ``--reps`` passes, the kernels interleaved within a
pass so that noise from other processes hits all of them alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

SHAPES = [  # name, n_out, n_in, uses per token in the 350M model (20 layers)
    ("qkv", 3072, 1024, 20),
    ("out_proj", 1024, 1024, 20),
    ("fc_in", 4096, 1024, 20),
    ("fc_out", 1024, 4096, 20),
    ("lm_head", 51200, 1024, 1),
]


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="threads (default: NUMBA_NUM_THREADS or all cores)")
    ap.add_argument("--ws", type=float, default=1.0, help="working set per kernel in GB (default 1)")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--hot", action="store_true", help="one copy of each matrix (cache-resident when it fits)")
    ap.add_argument("--sweep", action="store_true", help="also time T = 1..16 (stream kernel vs BLAS)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-prefill", action="store_true")
    ap.add_argument("--shapes", default=",".join(s[0] for s in SHAPES), help="comma-separated subset")
    return ap.parse_args()


ARGS = parse()
_THREADS = ARGS.threads or int(os.environ.get("NUMBA_NUM_THREADS", os.cpu_count() or 1))
# BLAS thread pools are sized at import: set them before numpy / torch load.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, str(_THREADS))

import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from minicodegen import kernels as K  # noqa: E402
from minicodegen.kernels.arrays import _ro  # noqa: E402
from minicodegen.kernels.gemv import _gemv, _prefetch_ahead  # noqa: E402
from minicodegen.kernels.prefill import _prefill_linear  # noqa: E402

try:
    if ARGS.no_torch:
        raise ImportError
    import torch  # noqa: E402
    import torch.nn.functional as F  # noqa: E402
except ImportError:
    torch = None


# (Not cached: it compiles in gemv._prefetch_ahead, and Numba would not notice edits of that file.)
@njit(parallel=True, fastmath={"reassoc", "contract"})
def _row_sums(a, out):
    """Read-rate probe: out[r] = sum(a[r]), the same access pattern as the
    linear kernels (parallel over rows, vectorized inner loop, prefetch)."""
    n = a.shape[1]
    for r in prange(a.shape[0]):
        _prefetch_ahead(a, r, n, 512, 16)  # 2 KiB ahead, like the kernels
        row = a[r]
        s = np.float32(0.0)
        for i in range(n):
            s += row[i]
        out[r] = s


def median_time(fn, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def copies_of(a: np.ndarray, ws_bytes: float, hot: bool) -> list[np.ndarray]:
    n = 1 if hot else max(1, int(np.ceil(ws_bytes / a.nbytes)))
    return [a.copy() for _ in range(n)]


def memory_read_rate(ws_bytes: float, reps: int) -> tuple[float, float]:
    """GB/s: (Numba parallel row sums over ws_bytes, NumPy a.sum() single thread)."""
    a = np.ones((int(ws_bytes) // 4096, 1024), np.float32)
    out = np.empty(a.shape[0], np.float32)
    _row_sums(a, out)
    t_numba = median_time(lambda: _row_sums(a, out), reps)
    t_np = median_time(lambda: a.sum(), max(3, reps // 2))
    return a.nbytes / t_numba / 1e9, a.nbytes / t_np / 1e9


def decode_row(name: str, n_out: int, n_in: int, rng: np.random.Generator) -> dict[str, float]:
    """GB/s of weight reads at T = 1 for each implementation, and the seconds per matrix."""
    ws = ARGS.ws * 1e9
    W0 = rng.standard_normal((n_out, n_in), dtype=np.float32) * np.float32(0.02)
    x = rng.standard_normal((1, n_in), dtype=np.float32)
    res: dict[str, float] = {}

    def run(label: str, mats: list, call, nbytes: int) -> None:
        call(mats[0])  # compile / first touch
        t = median_time(lambda: [call(m) for m in mats], ARGS.reps)
        res[label] = nbytes / (t / len(mats)) / 1e9
        res[label + "_ms"] = 1e3 * t / len(mats)

    # fp32: our kernel, numpy, torch (same arrays), interleaved per rep
    Ws = copies_of(W0, ws, ARGS.hot)
    impls = [("f32", lambda W: K.linear_f32(x, W)), ("numpy", lambda W: x @ W.T)]
    if torch is not None:
        xt = torch.from_numpy(x)
        Wt = {id(W): torch.from_numpy(W) for W in Ws}
        impls.append(("torch", lambda W: F.linear(xt, Wt[id(W)])))
    for _, f in impls:
        f(Ws[0])
    times: dict[str, list[float]] = {k: [] for k, _ in impls}
    for _ in range(ARGS.reps):
        for k, f in impls:
            t0 = time.perf_counter()
            for W in Ws:
                f(W)
            times[k].append((time.perf_counter() - t0) / len(Ws))
    for k, _ in impls:
        t = float(np.median(times[k]))
        res[k] = W0.nbytes / t / 1e9
        res[k + "_ms"] = 1e3 * t
    del Ws, impls
    if torch is not None:
        del Wt

    Wb0 = (W0.view(np.uint32) >> 16).astype(np.uint16)  # truncation is fine for timing
    run("bf16", copies_of(Wb0, ws, ARGS.hot), lambda W: K.linear_bf16(x, W), Wb0.nbytes)
    Wq0 = np.clip(np.rint(W0 / np.float32(0.02 * 4 / 127)), -127, 127).astype(np.int8)
    sc = np.full(n_out, 0.02 * 4 / 127, np.float32)
    run("int8", copies_of(Wq0, ws, ARGS.hot), lambda W: K.linear_int8(x, W, sc), Wq0.nbytes)
    return res


def prefill_row(n_out: int, n_in: int, rng: np.random.Generator, T: int = 512) -> dict[str, float]:
    W = rng.standard_normal((n_out, n_in), dtype=np.float32) * np.float32(0.02)
    Wb = (W.view(np.uint32) >> 16).astype(np.uint16)
    Wq = np.clip(np.rint(W / np.float32(0.02 * 4 / 127)), -127, 127).astype(np.int8)
    sc = np.full(n_out, 0.02 * 4 / 127, np.float32)
    x = rng.standard_normal((T, n_in), dtype=np.float32)
    impls = {
        "blas_f32": lambda: x @ W.T,
        "bf16": lambda: K.linear_bf16(x, Wb),
        "int8": lambda: K.linear_int8(x, Wq, sc),
    }
    if torch is not None:
        xt, Wt = torch.from_numpy(x), torch.from_numpy(W)
        impls["torch_f32"] = lambda: F.linear(xt, Wt)
    for f in impls.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in impls}
    for _ in range(ARGS.reps):
        for k, f in impls.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: 1e3 * float(np.median(v)) for k, v in times.items()}


def sweep(rng: np.random.Generator) -> None:
    n_out, n_in = 4096, 1024
    W = rng.standard_normal((n_out, n_in), dtype=np.float32)
    Wb = (W.view(np.uint32) >> 16).astype(np.uint16)
    Wq = rng.integers(-127, 128, (n_out, n_in), dtype=np.int8)
    sc = np.ones(n_out, np.float32)
    Wc = [W.copy() for _ in range(int(ARGS.ws * 1e9 // W.nbytes))] if not ARGS.hot else [W]
    print(f"\nT sweep, fc_in {n_out}x{n_in}, ms per matrix (fp32 over {len(Wc)} copies):")
    print(f"{'T':>3} {'f32 stream':>11} {'f32 BLAS':>9} {'bf16 stream':>12} {'bf16 panels':>11} {'int8 stream':>12} {'int8 panels':>11}")
    for T in (1, 2, 3, 4, 6, 8, 12, 16):
        x = rng.standard_normal((T, n_in), dtype=np.float32)
        xr = _ro(x)
        y = np.empty((T, n_out), np.float32)
        fns = {
            "f32s": lambda: [_gemv(xr, _ro(M), None, None, y, K.PREFETCH_F32) for M in Wc],
            "f32b": lambda: [x @ M.T for M in Wc],
            "bfs": lambda: _gemv(xr, _ro(Wb), None, None, y, K.PREFETCH_BF16),
            "bft": lambda: _prefill_linear(xr, _ro(Wb), None, None),
            "i8s": lambda: _gemv(xr, _ro(Wq), _ro(sc), None, y, K.PREFETCH_INT8),
            "i8t": lambda: _prefill_linear(xr, _ro(Wq), _ro(sc), None),
        }
        ms = {}
        for k, f in fns.items():
            f()
            n = len(Wc) if k in ("f32s", "f32b") else 1
            ms[k] = 1e3 * median_time(f, ARGS.reps) / n
        print(f"{T:>3} {ms['f32s']:>11.3f} {ms['f32b']:>9.3f} {ms['bfs']:>12.3f} {ms['bft']:>11.3f} {ms['i8s']:>12.3f} {ms['i8t']:>11.3f}")


def main() -> None:
    n = K.set_threads(_THREADS)
    if torch is not None:
        torch.set_num_threads(n)
    t_warm = sum(s for _, s in K.warmup())
    rng = np.random.default_rng(0)
    print(f"threads: numba {K.get_threads()}, torch {torch.get_num_threads() if torch else '-'}, "
          f"BLAS env {os.environ.get('OPENBLAS_NUM_THREADS')}; kernels.warmup() {t_warm:.2f} s "
          f"({'from cache' if t_warm < 3 else 'compiled'})")
    mem_numba, mem_np = memory_read_rate(ARGS.ws * 1e9, ARGS.reps)
    print(f"memory read rate ({ARGS.ws:.1f} GB): numba parallel row sums {mem_numba:.1f} GB/s, "
          f"numpy a.sum() (1 thread) {mem_np:.1f} GB/s")
    mode = "hot (one copy)" if ARGS.hot else f"cold (copies filling {ARGS.ws:.1f} GB per kernel)"
    print(f"\nDecode, T=1, {mode}: GB/s of weight bytes read (ms per matrix)")
    cols = ["f32", "numpy", "torch", "bf16", "int8"]
    print(f"{'matrix':>9} {'n_out x n_in':>12} " + " ".join(f"{c:>15}" for c in cols))
    chosen = [s for s in SHAPES if s[0] in ARGS.shapes.split(",")]
    per_token = {c: 0.0 for c in cols}
    for name, n_out, n_in, uses in chosen:
        r = decode_row(name, n_out, n_in, rng)
        cells = []
        for c in cols:
            if c in r:
                cells.append(f"{r[c]:6.1f} ({r[c + '_ms']:6.3f})")
                per_token[c] += uses * r[c + "_ms"]
            else:
                cells.append(f"{'-':>15}")
        print(f"{name:>9} {f'{n_out}x{n_in}':>12} " + " ".join(cells))
    if len(chosen) == len(SHAPES):
        params = sum(uses * n_out * n_in for _, n_out, n_in, uses in SHAPES)
        print(f"\n350M linears per token ({params / 1e6:.0f}M weights): ms per token and the tok/s they allow")
        for c in cols:
            if per_token[c]:
                by = {"bf16": 2, "int8": 1}.get(c, 4)
                print(f"  {c:>6}: {per_token[c]:7.1f} ms -> {1e3 / per_token[c]:5.1f} tok/s"
                      f"   (memory-rate bound {mem_numba * 1e9 / (params * by):5.1f} tok/s)")
    if not ARGS.no_prefill:
        print("\nPrefill, T=512: ms per matrix (median)")
        pcols = ["blas_f32", "torch_f32", "bf16", "int8"]
        print(f"{'matrix':>9} " + " ".join(f"{c:>10}" for c in pcols))
        for name, n_out, n_in, _ in chosen:
            r = prefill_row(n_out, n_in, rng)
            print(f"{name:>9} " + " ".join(f"{r[c]:>10.2f}" if c in r else f"{'-':>10}" for c in pcols))
    if ARGS.sweep:
        sweep(rng)


if __name__ == "__main__":
    main()
