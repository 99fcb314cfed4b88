"""Numba kernels for the hot loops of CodeGen inference on a CPU.

Every kernel here is a faster way to compute something whose *definition* is a
line of NumPy in ``minicodegen.ops`` (and, in the tests, a float64 closed form).
The kernels never change what is computed, only how fast, so the docstring of
each one names the NumPy expression it must equal.

Why kernels at all?

* Decoding one token is a chain of matrix-*vector* products: every weight is
  read from memory once per token and used for a single multiply-add.  The speed
  limit is memory bandwidth, so the kernel must (1) read each weight exactly
  once, (2) keep both cores streaming, and (3) do its arithmetic fast enough to
  keep up with memory.  Storing weights in bf16 or int8 halves or quarters the
  bytes to read; the kernels widen them to float32 *in registers*, so no float32
  copy of the matrix is ever written to memory.
* A decode step is also many small steps (10 per layer); launched one by one
  from Python, they cost a quarter of an int8 step.  ``decode_layers`` runs
  the blocks of a step with one call each, each block in three parallel loops.
* Reading a prompt (prefill, T = hundreds of tokens) is a matrix-*matrix*
  product: compute-bound, and BLAS sgemm is hard to beat.  float32 weights go
  to BLAS.  For bf16 / int8 weights ``_prefill_linear`` widens panels of 128 rows
  into cache-sized float32 blocks and multiplies them with SIMD code of its
  own.  (It replaced float32 tiles of up to 32 MB fed to BLAS: a slightly
  faster prompt, about 25 MiB less peak RSS for the 350M shape.)
  Attention over a prompt runs in blocks of 4 queries with explicit SIMD code
  (``_attend_prompt``), everything in cache.
* Element-wise ops (layer norm, gelu, rotary) are one pass over memory here
  instead of NumPy's chain of temporaries.

Conventions (shared with ``minicodegen.ops`` and ``minicodegen.model``):

* A linear layer stores ``W [n_out, n_in]`` like PyTorch and computes
  ``y = x @ W.T + b``.
* bf16 weights are ``uint16`` arrays holding the bf16 bit patterns.  Widening is
  exact: ``float32 = (uint32(u16) << 16) viewed as float32``.  float16 weights
  (``np.float16``) are widened exactly too.
* int8 weights are ``Wq int8 [n_out, n_in]`` plus ``scale float32 [n_out]``
  (symmetric, per output channel): ``y = (x @ Wq.T) * scale + b``, which equals
  ``x @ (Wq * scale[:, None]).T + b`` up to float32 rounding.
* Weights may be read-only (memory-mapped) or unaligned.  The public wrappers
  mark every input read-only before calling a kernel, so one compiled
  specialization serves both ordinary and memory-mapped arrays.

Floating point: the matrix-vector dot products are spelled out as SIMD code
(``_dot``: four accumulators of 16 lanes, fused multiply-add, a fixed order of
additions; see the comment above it).  The other loops with sums (attention,
layer norm) use ``fastmath={'reassoc', 'contract'}``: ``reassoc`` lets LLVM
keep several partial sums in SIMD registers (without it a float reduction
cannot be vectorized: the additions would have to happen in source order);
``contract`` allows fused multiply-add.  Both only change the rounding of a
sum, and several partial sums are if anything *more* accurate than one
running sum.  No other fast-math flag is used (no ``nnan``/``ninf``:
masked attention scores are ``-inf`` on purpose).  ``error_model="numpy"``
gives IEEE division (x / 0 = inf, as NumPy) instead of Python's
ZeroDivisionError check, which would also block vectorization.  ``exp`` is
computed by ``_exp_f32`` (range reduction + polynomial, <= 1.2 ulp) because
libm's exp/tanh are scalar calls LLVM cannot vectorize.

Threads: ``set_threads(n)`` (default: ``NUMBA_NUM_THREADS``, i.e. all cores);
idle workers spin for some microseconds, then sleep (see ``_start_thread_pool``).
Compilation: ``cache=True`` writes machine code next to this file, so the
compile cost (see ``warmup()``) is paid once per machine.
"""

from __future__ import annotations

import math
import os
import threading
import time

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

__all__ = [
    "linear",
    "linear_f32",
    "linear_bf16",
    "linear_int8",
    "linear_f16",
    "attend_cached",
    "layer_norm",
    "gelu_new",
    "apply_rotary",
    "decode_block",
    "decode_layers",
    "decode_weights",
    "set_threads",
    "get_threads",
    "warmup",
    "STREAM_MAX_T",
]

# Fast-math flags for the dot products (see module docstring).
_FM = {"reassoc", "contract"}

# Up to this many rows of x, linear_* stream W once through the Numba
# matrix-vector kernels; above it, BLAS (float32 weights) or _prefill_linear
# (bf16 / int8).  Decode is T = 1 (or a few rows for batched / speculative decode).
STREAM_MAX_T = 8

# Prefetch distance of the decode kernels, in bytes of W ahead of the elements
# in work (0 disables), by weight type: _dot asks for the cache line that far
# ahead at every step of its main loop.  Measured on this machine, decode of the
# 350M shape (weights in memory), tok/s without / with: int8 45.7 / 64.2 (4 KiB;
# 2 and 8 KiB the same), bf16 33.2 / 40.9, float32 21.7 / 23.1 (2 KiB).  One
# burst of prefetches per row, as before, gave int8 56.  Re-measured with two
# rows per step (median of 4 runs each): int8 1/2/4/6 KiB 72.1/74.7/73.7/74.7,
# bf16 1/2/4/8 KiB 43.3/44.2/43.4/42.9, float32 1/2/4 KiB 24.4/24.7/24.2 tok/s.
# Since four rows per step (see _gemv): the prefetches go to L2 (prefetcht1),
# not L1, 4 KiB ahead for every type.  Paired runs of 64 tokens against L1 at
# 2 / 2 / 4 KiB, 20 pairs: float32 1.018x (quartiles 1.013-1.029), bf16 1.010x,
# int8 1.00x.  Non-temporal prefetches (prefetchnta) made decode 2.5x slower.
PREFETCH_F32 = 4096
PREFETCH_BF16 = 4096
PREFETCH_INT8 = 4096

# A float additive attention mask marks a key as masked when its value is at or
# below this (covers -inf, float32 min as used by transformers, and -1e9).
_MASKED_AT_OR_BELOW = -1e9

# The prefill kernel for bf16 / int8 weights (_prefill_linear) works on blocks of
# _NB tokens x panels of _NR rows of W, and splits n_in into chunks of _KC: one
# chunk of the packed tokens (_KC x _NB float32 = 32 KB) stays in L1 while it is
# used.  Measured on fc_in of the 350M shape (T = 512, int8), ms per call over
# four runs, _KC = 64 / 96 / 128 / 160 / whole rows (1024): 14.0-14.7 /
# 13.8-14.1 / 13.6-14.1 / 14.2-14.8 / 17.4-17.5 (BLAS on a float32 tile, as
# before, 14.2-16.5; float32 BLAS 13.4-13.7).  Taller panels re-read the packed
# tokens fewer times: _NR = 64 / 128 / 256 gave 14.3-14.5 / 13.6-13.9 /
# 13.3-13.7 ms for fc_in, 14.2-14.5 / 13.5-13.8 /
# 13.4-14.2 for fc_out (float32 BLAS 13.7-14.1).  Widening a panel one chunk of
# _KC inputs at a time, rather than whole, kept that speed (fc_out 13.2-14.5 ms)
# and needs 64 KB of scratch per thread instead of 2 MB for fc_out.
_NB = 64
_NR = 128
_KC = 128


# ---------------------------------------------------------------------------
# Thread pool start-up.
# ---------------------------------------------------------------------------


# How long an idle OpenMP worker spins before it sleeps (GNU OpenMP's
# GOMP_SPINCOUNT, in iterations of a pause loop: 10,000 is some tens of
# microseconds here).  Measured on this 2-core machine, int8 decode of the 350M
# shape: 31 tok/s with sleeping workers (PASSIVE: every kernel launch pays a
# futex wake-up), 46 with 10,000, the same with 100,000 or spinning for ever.
_SPIN_COUNT = "10000"


def _start_thread_pool() -> None:
    """Start Numba's thread pool with OpenMP workers that spin briefly, then sleep.

    A decode step launches a few hundred small parallel loops, microseconds
    apart.  Workers that go to sleep after each loop (OMP_WAIT_POLICY=PASSIVE)
    make every launch pay a wake-up; GNU OpenMP's default spins for
    milliseconds, which on a shared 2-core machine steals the cores that BLAS
    threads (during prefill) or other processes need.  A short spin
    (GOMP_SPINCOUNT, see _SPIN_COUNT) keeps the workers awake across one decode
    step and lets them sleep soon after.  The setting is applied only while the
    pool starts (other OpenMP runtimes loaded later, e.g. torch's, keep their
    defaults); OMP_WAIT_POLICY, GOMP_SPINCOUNT or NUMBA_THREADING_LAYER set in
    the environment win.
    """
    own = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
    if own:
        os.environ["GOMP_SPINCOUNT"] = _SPIN_COUNT
    try:
        from numba.np.ufunc.parallel import _launch_threads

        _launch_threads()
    finally:
        if own:
            os.environ.pop("GOMP_SPINCOUNT", None)


_start_thread_pool()


# ---------------------------------------------------------------------------
# Register-level helpers (LLVM intrinsics; each compiles to one or two
# instructions that LLVM vectorizes along with the surrounding loop).
# ---------------------------------------------------------------------------


@intrinsic
def _bf16_to_f32(typingctx, u):
    """float32 whose bit pattern is ``u16 << 16`` (exact bf16 -> float32)."""
    if not (isinstance(u, types.Integer) and u.bitwidth == 16):
        return None

    def codegen(context, builder, sig, args):
        v = builder.zext(args[0], ir.IntType(32))
        v = builder.shl(v, ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(u), codegen


@intrinsic
def _f16_to_f32(typingctx, u):
    """float32 value of the IEEE half-precision number with bit pattern u16 (exact;
    one vcvtph2ps instruction for 8 or 16 values once vectorized)."""
    if not (isinstance(u, types.Integer) and u.bitwidth == 16):
        return None

    def codegen(context, builder, sig, args):
        h = builder.bitcast(args[0], ir.HalfType())
        return builder.fpext(h, ir.FloatType())

    return types.float32(u), codegen


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Hint the CPU to fetch the cache line holding element ``idx`` of the
    C-contiguous array ``arr`` (flat index) into cache; no effect on results."""
    if not (isinstance(arr, types.Array) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        arrty = sig.args[0]
        ary = context.make_array(arrty)(context, builder, value=args[0])
        i8p = ir.IntType(8).as_pointer()
        base = builder.bitcast(ary.data, i8p)
        nbytes = builder.mul(args[1], ir.Constant(args[1].type, arrty.dtype.bitwidth // 8))
        ptr = builder.gep(base, [nbytes])
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        # (address, 0 = read, 3 = keep in all cache levels, 1 = data cache)
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, idx), codegen


@intrinsic
def _bits_as_f32(typingctx, k):
    """float32 whose bit pattern is the low 32 bits of the integer k."""
    if not isinstance(k, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if sig.args[0].bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif sig.args[0].bitwidth < 32:
            v = builder.zext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(k), codegen


_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # ln 2 = _LN2_HI + _LN2_LO; k * _LN2_HI is exact
_LN2_LO = np.float32(-2.12194440e-4)


@njit(inline="always", fastmath={"contract"}, error_model="numpy")
def _exp_f32(x):  # pragma: no cover - compiled
    """exp(x) in float32, vectorizable (math.exp is a libm call LLVM cannot vectorize).

    Range reduction: x = k ln2 + r with k = round(x / ln2), |r| <= ln2 / 2; then
    exp(x) = 2^k * exp(r), exp(r) by its Taylor series to r^7 (truncation error
    < 1e-8 relative) and 2^k built directly from its exponent bits.  Error at
    most 1.2 ulp (measured) for -87.3 <= x <= 88.3; below that the result is 0 (float32 underflow,
    denormals flushed), above it +inf, NaN stays NaN.
    """
    if x != x:
        return x
    xc = min(max(x, np.float32(-87.3)), np.float32(88.3))
    kf = np.float32(math.floor(xc * _LOG2E + np.float32(0.5)))
    r = (xc - kf * _LN2_HI) - kf * _LN2_LO
    p = np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    y = p * _bits_as_f32((np.int64(kf) + 127) << 23)
    if x < np.float32(-87.3):
        y = np.float32(0.0)
    elif x > np.float32(88.3):
        y = np.float32(np.inf)
    return y


# ---------------------------------------------------------------------------
# The dot product of the decode kernels, written as explicit SIMD code.
#
# Definition: dot(x, w) = sum_i x[i] * widen(w[i]) for a float32 vector x and a
# weight row w of float32, bf16 (uint16 bits), float16 (uint16 bits) or int8,
# where widen is the exact conversion to float32 (int8: the integer value; the
# per-row scale is applied by the caller).
#
# Why not a plain Numba loop?  LLVM's loop vectorizer targets 256-bit registers
# on AVX-512 CPUs (the "prefer-256-bit" tuning of Skylake and later), and for
# bf16 / int8 rows the widening then costs more than the memory reads: those
# loops ran at 12-20 GB/s where memory gives 31.  Here the loop is spelled out
# in LLVM IR on vectors of 16 floats (one AVX-512 register; LLVM splits them
# into 2 or 4 registers on CPUs without AVX-512, so the code runs everywhere):
#
#     acc[u] = zeros(16) for u in 0..3           four independent accumulators
#     for i in 0, 64, 128, ... (< n - n % 64):   the main loop, 64 elements a step
#         acc[u] = fma(x[i+16u : i+16u+16], widen(w[i+16u : i+16u+16]), acc[u])
#     for i in steps of 16 (< n - n % 16):       acc[0] = fma(...)
#     tail = sum of x[i] * widen(w[i]) for the last n % 16 elements (fma, in order)
#     return hsum((acc[0] + acc[1]) + (acc[2] + acc[3])) + tail
#
# where hsum adds halves (16 -> 8 -> 4 -> 2 -> 1 lanes).  The order of the
# additions is fixed by this code, not by compiler flags, so a result does not
# depend on the machine's vector width or on the number of threads.  Loads
# are unaligned (memory-mapped weights can sit at any byte offset).
#
# _dot(x, (w_a, w_b), pf) takes a tuple of rows and returns a tuple of dots,
# each summed in exactly the order above (so equal, bit for bit, to one _dot per
# row), in one loop that loads x once for all of them.  The matrix-vector
# kernels pass four rows from far apart in W: one core then reads four streams
# of memory at once, which keeps more reads in flight.  Two streams instead of
# one took int8 rows from 12.5 to 15 GB/s on one core, 24 to 29 GB/s on two
# (float32 rows gained little); four instead of two, see _gemv.
# ---------------------------------------------------------------------------

_LANES = 16
_UNROLL = 4
_F32 = ir.FloatType()
_I64 = ir.IntType(64)


def _ir_widen(builder, raw, kind):
    """IR: widen a loaded scalar or vector of weight elements to float32."""
    lanes = raw.type.count if isinstance(raw.type, ir.VectorType) else None

    def vec(t):
        return ir.VectorType(t, lanes) if lanes else t

    if kind == "f32":
        return raw
    if kind == "i8":
        return builder.sitofp(raw, vec(_F32))
    if kind == "bf16":
        i32 = vec(ir.IntType(32))
        sixteen = ir.Constant(i32, [16] * lanes if lanes else 16)
        return builder.bitcast(builder.shl(builder.zext(raw, i32), sixteen), vec(_F32))
    if kind == "f16":
        return builder.fpext(builder.bitcast(raw, vec(ir.HalfType())), vec(_F32))
    raise AssertionError(kind)


def _ir_fma(builder, a, b, c):
    """IR: a * b + c with one rounding (llvm.fma), scalar or vector."""
    t = a.type
    name = f"llvm.fma.v{t.count}f32" if isinstance(t, ir.VectorType) else "llvm.fma.f32"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(t, [t, t, t]), name)
    return builder.call(fn, [a, b, c])


def _ir_hsum(builder, v):
    """IR: the sum of the lanes of a float vector, adding halves."""
    n = v.type.count
    while n > 1:
        h = n // 2
        lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), h), list(range(h))))
        hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), h), list(range(h, n))))
        v, n = builder.fadd(lo, hi), h
    return builder.extract_element(v, ir.Constant(ir.IntType(32), 0))


_DOT_KINDS = {  # Numba dtype of w -> (kind, LLVM element type)
    types.float32: ("f32", _F32),
    types.uint16: ("bf16", ir.IntType(16)),
    types.int8: ("i8", ir.IntType(8)),
}


def _make_dot(kinds):
    def dot(typingctx, x, w, pf):
        rows = tuple(w) if isinstance(w, types.UniTuple) else (w,)  # one row, or a tuple of rows
        if not (isinstance(x, types.Array) and x.ndim == 1 and x.dtype == types.float32 and x.layout == "C"
                and all(isinstance(r, types.Array) and r.ndim == 1 and r.layout == "C" and r.dtype in kinds
                        for r in rows)
                and isinstance(pf, types.Integer)):
            return None
        kind, elem = kinds[rows[0].dtype]
        itemsize = rows[0].dtype.bitwidth // 8
        R = len(rows)

        def codegen(context, builder, sig, args):
            xa = context.make_array(sig.args[0])(context, builder, value=args[0])
            tupled = isinstance(sig.args[1], types.UniTuple)
            row_vals = [builder.extract_value(args[1], r) for r in range(R)] if tupled else [args[1]]
            was = [context.make_array(row)(context, builder, value=val) for row, val in zip(rows, row_vals)]
            pf_bytes = context.cast(builder, args[2], sig.args[2], types.int64)
            n = builder.extract_value(xa.shape, 0)  # (the caller guarantees len(w) == len(x))
            xp = builder.bitcast(xa.data, _F32.as_pointer())
            wps = [builder.bitcast(wa.data, elem.as_pointer()) for wa in was]
            vx, vw = ir.VectorType(_F32, _LANES), ir.VectorType(elem, _LANES)
            i8p = ir.IntType(8).as_pointer()
            wbytes = [builder.bitcast(wa.data, i8p) for wa in was]
            i32 = ir.IntType(32)
            vi32 = ir.VectorType(ir.IntType(32), _LANES)
            prefetch = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8")

            def prefetch_ahead(i):  # the cache lines pf bytes after w[i : i + 64], in every row
                with builder.if_then(builder.icmp_signed(">", pf_bytes, ir.Constant(_I64, 0))):
                    base = builder.add(builder.mul(i, ir.Constant(_I64, itemsize)), pf_bytes)
                    for wb in wbytes:
                        for line in range(itemsize):  # 64 elements = itemsize lines of 64 bytes
                            at = builder.gep(wb, [builder.add(base, ir.Constant(_I64, 64 * line))])
                            # (read, locality 2 = prefetcht1: into L2, see PREFETCH_F32, data)
                            builder.call(prefetch, [at, ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])

            def load_x(i):
                return builder.load(builder.bitcast(builder.gep(xp, [i]), vx.as_pointer()), align=1)

            def fma_at(i, accs):  # acc[r] = fma(x[i:i+16], widen(w_r[i:i+16]), acc[r]) for each row r
                xv = load_x(i)
                for wp, acc in zip(wps, accs):
                    wv = builder.load(builder.bitcast(builder.gep(wp, [i]), vw.as_pointer()), align=1)
                    builder.store(_ir_fma(builder, xv, _ir_widen(builder, wv, kind), builder.load(acc)), acc)

            def fma_pairs_at(i, accs_even, accs_odd):  # bf16, x in pair order (see _bf16_pair_order)
                xe = load_x(i)
                xo = load_x(builder.add(i, ir.Constant(_I64, _LANES)))
                for wp, acc_even, acc_odd in zip(wps, accs_even, accs_odd):
                    words = builder.load(builder.bitcast(builder.gep(wp, [i]), vi32.as_pointer()), align=1)
                    even = builder.bitcast(builder.shl(words, ir.Constant(vi32, [16] * _LANES)), vx)
                    odd = builder.bitcast(builder.and_(words, ir.Constant(vi32, [-65536] * _LANES)), vx)
                    builder.store(_ir_fma(builder, xe, even, builder.load(acc_even)), acc_even)
                    builder.store(_ir_fma(builder, xo, odd, builder.load(acc_odd)), acc_odd)

            zero = ir.Constant(vx, [0.0] * _LANES)
            accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(R)] for _ in range(_UNROLL)]  # [u][row]
            step = _LANES * _UNROLL
            n_main = builder.and_(n, ir.Constant(_I64, -step))
            with cgutils.for_range_slice(builder, ir.Constant(_I64, 0), n_main, ir.Constant(_I64, step)) as (i, _):
                prefetch_ahead(i)
                if kind == "bf16":  # two blocks of 32 elements, each one load of 16 words
                    fma_pairs_at(i, accs[0], accs[1])
                    fma_pairs_at(builder.add(i, ir.Constant(_I64, 2 * _LANES)), accs[2], accs[3])
                else:
                    for u in range(_UNROLL):
                        fma_at(builder.add(i, ir.Constant(_I64, u * _LANES)), accs[u])
            n_vec = builder.and_(n, ir.Constant(_I64, -_LANES))
            with cgutils.for_range_slice(builder, n_main, n_vec, ir.Constant(_I64, _LANES)) as (i, _):
                fma_at(i, accs[0])
            tails = [cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0)) for _ in range(R)]
            with cgutils.for_range_slice(builder, n_vec, n, ir.Constant(_I64, 1)) as (i, _):
                xs = builder.load(builder.gep(xp, [i]), align=1)
                for wp, tail in zip(wps, tails):
                    ws = builder.load(builder.gep(wp, [i]), align=1)
                    builder.store(_ir_fma(builder, xs, _ir_widen(builder, ws, kind), builder.load(tail)), tail)
            out = []
            for r in range(R):
                a = [builder.load(accs[u][r]) for u in range(_UNROLL)]
                total = builder.fadd(builder.fadd(a[0], a[1]), builder.fadd(a[2], a[3]))
                out.append(builder.fadd(_ir_hsum(builder, total), builder.load(tails[r])))
            return context.make_tuple(builder, sig.return_type, out) if tupled else out[0]

        ret = types.UniTuple(types.float32, R) if isinstance(w, types.UniTuple) else types.float32
        return ret(x, w, pf), codegen

    return intrinsic(dot)


_dot = _make_dot(_DOT_KINDS)  # w float32, uint16 = bf16 bits (x in pair order), or int8
_dot_f16 = _make_dot({types.uint16: ("f16", ir.IntType(16))})  # w uint16 = float16 bits


@njit(error_model="numpy", cache=True)
def _bf16_pair_order(x):  # pragma: no cover - compiled
    """x [T, n] with each block of 32 elements below n - n % 64 reordered as its 16 even-indexed
    elements, then its 16 odd-indexed ones (the rest as is): the layout in which _dot takes x
    for bf16 rows.  _dot then loads 16 uint32 words = 32 bf16 weights at once and gets the
    even ones as float32 with one shift (word << 16) and the odd ones with one mask
    (word & 0xFFFF0000), instead of widening 16-bit lanes one by one."""
    T, n = x.shape
    out = x.copy()
    n_main = n - n % 64
    for t in range(T):
        for b in range(0, n_main, 32):
            for k in range(16):
                out[t, b + k] = x[t, b + 2 * k]
                out[t, b + 16 + k] = x[t, b + 2 * k + 1]
    return out


def _dot_operand(x, W):  # pragma: no cover - replaced by the overload in compiled code
    raise NotImplementedError


@overload(_dot_operand, inline="always")
def _dot_operand_impl(x, W):
    """x as _dot takes it for rows of W: in pair order for bf16 (uint16) rows, else as is."""
    if W.dtype == types.uint16:
        return lambda x, W: _bf16_pair_order(x)
    return lambda x, W: x


# ---------------------------------------------------------------------------
# Matrix-vector kernels (decode).  Shapes: x [T, n_in] float32, y [T, n_out].
# Parallel over output rows; each W row is read from memory once and used for
# all T rows of x while it sits in L1.  A step takes four rows a quarter of W
# apart (j, j + h, j + 2h, j + 3h), so each thread streams four contiguous bands
# of W at once: more streams for the hardware prefetchers to run ahead on.
# Against two bands (j, j + h), in paired runs of 64 decode tokens (350M shape,
# 16 pairs), four decoded bf16 1.07x and int8 1.04x as fast; float32 0.99x (the
# same within noise).
# `pf` > 0: _dot prefetches the cache lines `pf` bytes ahead of the ones it
# works on (into the next rows), so that memory stays busy while the core
# converts and multiplies (the hardware prefetcher alone left bf16/int8 rows
# waiting on memory).
# ---------------------------------------------------------------------------


@njit(inline="always")
def _prefetch_ahead(W, j, n, pf, step):  # pragma: no cover - compiled
    """Prefetch the lines of the n elements that start pf elements after row j
    (one burst per row; the memory-rate probes of tools/ use it)."""
    if pf > 0:
        start = j * n + pf
        stop = min(start + n, W.size)
        for p in range(start, stop, step):
            _prefetch(W, p)


@njit(inline="always")
def _rows_out(acc, j, t, scale, b, y):  # pragma: no cover - compiled
    """y[t, j] = acc [* scale[j]] [+ b[j]]."""
    if scale is not None:
        acc *= scale[j]
    if b is not None:
        acc += b[j]
    y[t, j] = acc


@njit(inline="always")
def _gemv_step(xd, W, j, h, scale, b, y, pf):  # pragma: no cover - compiled
    """Rows j, j + h, j + 2h and j + 3h of y = (xd @ widen(W).T) [* scale] [+ b]
    (those before the end of W): the body of the matrix-vector loops."""
    n = W.shape[0]
    for t in range(xd.shape[0]):
        p = pf if t == 0 else 0  # (the rows sit in L1 for the other t)
        if j + 3 * h < n:
            u = _dot(xd[t], (W[j], W[j + h], W[j + 2 * h], W[j + 3 * h]), p)
            for r in range(4):
                _rows_out(u[r], j + r * h, t, scale, b, y)
        else:
            for r in range(4):
                if j + r * h < n:
                    _rows_out(_dot(xd[t], W[j + r * h], p), j + r * h, t, scale, b, y)


@njit(parallel=True, error_model="numpy", cache=True)
def _gemv(x, W, scale, b, y, pf):  # pragma: no cover - compiled
    """y = (x @ widen(W).T) [* scale] [+ b].

    x [T, n_in] f32; W [n_out, n_in] float32, uint16 (bf16 bits) or int8;
    scale [n_out] f32 or None (int8: the per-row scale); b [n_out] f32 or None.
    Step j computes rows j, j + h, j + 2h, j + 3h, h = n_out / 4 rounded up: each
    thread streams four bands of W at once (see the section comment).
    """
    xd = _dot_operand(x, W)
    h = (W.shape[0] + 3) // 4
    for j in prange(h):
        _gemv_step(xd, W, j, h, scale, b, y, pf)


@njit(parallel=True, error_model="numpy", cache=True)
def _gemv_f16(x, W, b, y, pf):  # pragma: no cover - compiled
    """y = x @ W.astype(float32).T (+ b).   W [n_out, n_in] u16 (float16 bits)."""
    T = x.shape[0]
    for j in prange(W.shape[0]):
        w = W[j]
        for t in range(T):
            acc = _dot_f16(x[t], w, pf if t == 0 else 0)
            if b is not None:
                acc += b[j]
            y[t, j] = acc


# ---------------------------------------------------------------------------
# Python wrappers: argument checks, read-only marking, decode/prefill dispatch.
# ---------------------------------------------------------------------------


def _ro(a: np.ndarray | None) -> np.ndarray | None:
    """A read-only view of ``a`` (free), so kernels see one array type."""
    if a is None or not a.flags.writeable:
        return a
    v = a.view()
    v.flags.writeable = False
    return v


def _prep_x(x: np.ndarray, n_in: int) -> tuple[np.ndarray, tuple[int, ...]]:
    x = np.asarray(x)
    if x.shape[-1] != n_in:
        raise ValueError(f"x has {x.shape[-1]} features, W expects {n_in}")
    lead = x.shape[:-1]
    x2 = np.ascontiguousarray(x.reshape(-1, n_in), dtype=np.float32)
    return x2, lead


def _prep_vec(v: np.ndarray | None, n: int, name: str) -> np.ndarray | None:
    if v is None:
        return None
    v = np.ascontiguousarray(v, dtype=np.float32)
    if v.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {v.shape}")
    return _ro(v)


def _check_w(W: np.ndarray, dtype: type, name: str) -> np.ndarray:
    if W.dtype != dtype or W.ndim != 2:
        raise TypeError(f"{name} must be a 2-D {np.dtype(dtype).name} array, got {W.dtype} {W.shape}")
    if not W.flags.c_contiguous:
        W = np.ascontiguousarray(W)
    return _ro(W)


_tiles = threading.local()  # one reusable scratch buffer per thread


def _tile_buffer(n: int) -> np.ndarray:
    """n float32 of scratch (_prefill_linear's packed tokens and weight panels, _attend_prompt's
    transposed keys), reused from call to call: fresh arrays of some MB at every call paid
    their page faults every time (about 1 ms per 350M matrix)."""
    buf = getattr(_tiles, "buf", None)
    if buf is None or buf.size < n:
        buf = _tiles.buf = np.empty(n, np.float32)
    return buf[:n]


def release_scratch() -> None:
    """Free this thread's scratch buffer (the packed tokens and weight panels of _prefill_linear,
    the transposed keys and copied values of a prompt's attention); model.forward calls it after
    a prompt, so that it does not stay in memory while decoding."""
    _tiles.buf = None


def linear_f32(x: np.ndarray, W: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """``x @ W.T + b`` for float32 ``W [n_out, n_in]``; x [..., n_in] -> [..., n_out].

    Up to STREAM_MAX_T rows: the parallel streaming kernel (reads W once).
    More rows: BLAS ``x @ W.T``.  Definition: ``ops.linear``.
    """
    W = _check_w(W, np.float32, "W")
    n_out, n_in = W.shape
    x2, lead = _prep_x(x, n_in)
    b = _prep_vec(b, n_out, "b")
    if x2.shape[0] <= STREAM_MAX_T:
        y = np.empty((x2.shape[0], n_out), np.float32)
        _gemv(_ro(x2), W, None, b, y, PREFETCH_F32)
    else:
        y = x2 @ W.T
        if b is not None:
            y += b
    return y.reshape(*lead, n_out)


def linear_bf16(x: np.ndarray, W: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """``x @ widen(W).T + b`` for bf16 ``W`` stored as uint16 ``[n_out, n_in]``.

    ``widen(W) = (W.astype(uint32) << 16).view(float32)`` (exact).  Decode
    streams W (2 bytes per weight) and widens in registers; prefill widens
    panels of 128 rows for a matrix-matrix kernel (_prefill_linear).
    """
    return _linear_narrow(x, _check_w(W, np.uint16, "W"), None, b, PREFETCH_BF16)


def linear_f16(x: np.ndarray, W: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """``x @ W.astype(float32).T + b`` for float16 ``W [n_out, n_in]``: decode widens in
    registers (exact, like linear_bf16); more rows widen W with NumPy for BLAS."""
    if W.dtype != np.float16 or W.ndim != 2:
        raise TypeError(f"W must be a 2-D float16 array, got {W.dtype} {W.shape}")
    W = _check_w(np.ascontiguousarray(W).view(np.uint16), np.uint16, "W")
    n_out, n_in = W.shape
    x2, lead = _prep_x(x, n_in)
    b = _prep_vec(b, n_out, "b")
    T = x2.shape[0]
    if T <= STREAM_MAX_T:
        y = np.empty((T, n_out), np.float32)
        _gemv_f16(_ro(x2), W, b, y, PREFETCH_BF16)
    else:
        y = x2 @ W.view(np.float16).astype(np.float32).T  # (not used by the model: load() widens float16)
        if b is not None:
            y += b
    return y.reshape(*lead, n_out)


def linear_int8(x: np.ndarray, Wq: np.ndarray, scale: np.ndarray,
                b: np.ndarray | None = None) -> np.ndarray:
    """``(x @ Wq.T) * scale + b`` for int8 ``Wq [n_out, n_in]``, float32 ``scale [n_out]``.

    Equals ``x @ (Wq * scale[:, None]).T + b`` up to float32 rounding.  Decode
    streams Wq (1 byte per weight) and converts in registers; prefill dequantizes
    panels of 128 rows for a matrix-matrix kernel (_prefill_linear).
    """
    Wq = _check_w(Wq, np.int8, "Wq")
    scale = _prep_vec(scale, Wq.shape[0], "scale")
    if scale is None:
        raise ValueError("linear_int8 needs a per-row scale")
    return _linear_narrow(x, Wq, scale, b, PREFETCH_INT8)


def _linear_narrow(x: np.ndarray, W: np.ndarray, scale: np.ndarray | None, b: np.ndarray | None,
                   pf: int) -> np.ndarray:
    """linear_bf16 / linear_int8 once W (and scale) are checked: up to STREAM_MAX_T rows of x
    stream W through _gemv (prefetching pf bytes ahead), more go to _prefill_linear."""
    n_out, n_in = W.shape
    x2, lead = _prep_x(x, n_in)
    b = _prep_vec(b, n_out, "b")
    T = x2.shape[0]
    if T <= STREAM_MAX_T:
        y = np.empty((T, n_out), np.float32)
        _gemv(_ro(x2), W, scale, b, y, pf)
    else:
        y = _prefill_linear(x2, W, scale, b)
    return y.reshape(*lead, n_out)


def linear(x: np.ndarray, W: np.ndarray, b: np.ndarray | None = None,
           scale: np.ndarray | None = None) -> np.ndarray:
    """Dispatch on the weight dtype: float32 -> linear_f32, uint16 (bf16 bits)
    -> linear_bf16, int8 (needs ``scale``) -> linear_int8, float16 -> linear_f16."""
    if W.dtype == np.float32:
        return linear_f32(x, W, b)
    if W.dtype == np.uint16:
        return linear_bf16(x, W, b)
    if W.dtype == np.int8:
        return linear_int8(x, W, scale, b)
    if W.dtype == np.float16:
        return linear_f16(x, W, b)
    raise TypeError(f"unsupported weight dtype {W.dtype}")


# ---------------------------------------------------------------------------
# Attention of T new tokens over the KV cache.
# ---------------------------------------------------------------------------


# Rows of keys and values _attend_query prefetches ahead of the key it works on.  Decode of the
# 350M shape reads 8 KB of cache per position and block (16 heads x 64 x 4 bytes, keys and
# values): at 100 positions that is 16 MB a token, which ran at about 19 GB/s, against 28-31
# for the weights.  Scoring four keys at a time, p.v four rows at a time and asking for every
# line of keys and values 8 rows ahead took an int8 step from 12.46 to 12.26 ms (medians of 15
# interleaved runs of 10 steps at S = 100; the two loops without the prefetches: 12.44 ms,
# 16 rows ahead: 12.38 ms).
_KV_AHEAD = 8


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _attend_query(qt, k, v, last, allowed, bias, p, o, acc):  # pragma: no cover - compiled
    """o = softmax attention of one query qt [D] over keys/values k, v [>= last+1, D]
    at positions 0..last allowed by allowed [>= last+1] (+ additive bias, or None);
    p [>= last+1] and acc [16] are scratch.  No visible key: o = 0.  Scores four keys at a
    time (_dot, qt loaded once), prefetching keys and values _KV_AHEAD rows ahead."""
    D = qt.shape[0]
    n = last + 1
    ahead = min(_KV_AHEAD, n)
    for j in range(ahead):  # the first rows: the loop below asks for rows j + _KV_AHEAD on
        for d in range(0, D, 16):
            _prefetch(k, j * D + d)
            _prefetch(v, j * D + d)
    j = 0
    while j + 4 <= n:
        for d in range(0, min(4, n - ahead - j) * D, 16):  # rows j+8 .. j+11 (those that exist)
            _prefetch(k, (j + _KV_AHEAD) * D + d)
            _prefetch(v, (j + _KV_AHEAD) * D + d)
        p[j], p[j + 1], p[j + 2], p[j + 3] = _dot(qt, (k[j], k[j + 1], k[j + 2], k[j + 3]), 0)
        j += 4
    for j in range(j, n):
        p[j] = _dot(qt, k[j], 0)
    _softmax_row(p, n, allowed, bias, np.float32(math.sqrt(D)), acc)
    o[:] = 0.0
    j = 0
    while j + 4 <= n:
        w0, w1, w2, w3 = p[j], p[j + 1], p[j + 2], p[j + 3]
        if w0 != 0.0 and w1 != 0.0 and w2 != 0.0 and w3 != 0.0:
            v0, v1, v2, v3 = v[j], v[j + 1], v[j + 2], v[j + 3]
            for d in range(D):
                o[d] += (w0 * v0[d] + w1 * v1[d]) + (w2 * v2[d] + w3 * v3[d])
        else:
            _add_weighted_rows(o, p, v, j, j + 4)
        j += 4
    _add_weighted_rows(o, p, v, j, n)


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _add_weighted_rows(o, p, v, j0, j1):  # pragma: no cover - compiled
    """o += p[j] * v[j] for j0 <= j < j1, skipping weights that are exactly 0: masked keys
    add exactly nothing, whatever their values hold."""
    for j in range(j0, j1):
        w = p[j]
        if w != 0.0:
            vj = v[j]
            for d in range(o.shape[0]):
                o[d] += w * vj[d]


@njit(parallel=True, fastmath=_FM, error_model="numpy", cache=True)
def _attend(q, k, v, S, allowed, bias, out):  # pragma: no cover - compiled
    """Causal softmax attention over the first S cached positions.

    q [B, H, T, D], k/v [B, H, S_cap, D], allowed [B, S] bool, bias [B, S] f32
    or None, out [B, H, T, D].  Query t sits at position S - T + t and sees
    keys j <= S - T + t with allowed[b, j]; score = q.k / sqrt(D) (+ bias[b, j]);
    weights = softmax over the visible keys (exactly 0 elsewhere).  A query with
    no visible key gets a zero output.
    """
    B, H, T, _ = q.shape
    for bh in prange(B * H):
        bi = bh // H
        h = bh % H
        p = np.empty(S, np.float32)  # scores, then weights, of one query
        acc = np.empty(16, np.float32)
        bias_row = None if bias is None else bias[bi]
        for t in range(T):
            _attend_query(q[bi, h, t], k[bi, h], v[bi, h], S - T + t, allowed[bi], bias_row, p, out[bi, h, t], acc)


def _mask_arrays(key_mask: np.ndarray | None, B: int, S: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(allowed bool [B, S], bias float32 [B, S] or None) from a key mask.

    bool / integer masks: nonzero = attend.  Float masks are additive: the value
    is added to the score, and a value <= -1e9 (or -inf) masks the key.
    """
    if key_mask is None:
        return _ro(np.ones((B, S), np.bool_)), None
    m = np.asarray(key_mask)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.shape[1] < S or m.shape[0] not in (1, B):
        raise ValueError(f"key_mask must be [B={B}, >= S={S}], got {m.shape}")
    m = np.broadcast_to(m[:, :S], (B, S))
    if m.dtype.kind == "f":
        m32 = m.astype(np.float32)
        allowed = m32 > _MASKED_AT_OR_BELOW
        bias = np.where(allowed, m32, np.float32(0.0)).astype(np.float32)
        return _ro(allowed), _ro(bias)
    if m.dtype != np.bool_:
        m = m != 0
    return _ro(np.ascontiguousarray(m)), None


def attend_cached(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, S: int,
                  key_mask: np.ndarray | None = None) -> np.ndarray:
    """Softmax attention of T new queries over the first S cached keys/values.

    q [B, H, T, D], k_cache / v_cache [B, H, S_cap, D] (float32, first S filled),
    key_mask [B, S] (or [B, >= S]; bool/int: True = attend; float: additive) or
    None -> out [B, H, T, D].

    Definition (float32): query t is at position S - T + t and attends to keys
    j <= S - T + t that the mask allows; ``scores = q @ k.T / sqrt(D) + mask``;
    ``out = softmax(scores) @ v`` with masked keys weighted exactly 0; a query
    with no allowed key returns zeros.  Parallel over (B, H).
    """
    q = np.ascontiguousarray(q, dtype=np.float32)
    B, H, T, D = q.shape
    if k_cache.shape[:2] != (B, H) or k_cache.shape[3] != D or v_cache.shape != k_cache.shape:
        raise ValueError(f"cache shapes {k_cache.shape} / {v_cache.shape} do not fit q {q.shape}")
    if not (T <= S <= k_cache.shape[2]):
        raise ValueError(f"need T={T} <= S={S} <= S_cap={k_cache.shape[2]}")
    k_cache = np.ascontiguousarray(k_cache, dtype=np.float32)
    v_cache = np.ascontiguousarray(v_cache, dtype=np.float32)
    allowed, bias = _mask_arrays(key_mask, B, S)
    out = np.empty_like(q)
    if T < ATTEND_BLOCK_MIN_T:
        _attend(_ro(q), _ro(k_cache), _ro(v_cache), S, allowed, bias, out)
        return out
    # Many queries (a prompt): blocks of 4 queries against a transposed copy of the keys.
    Dp, NK = -(-D // _LANES) * _LANES, -(-S // 32) * 32
    scratch = _tile_buffer(2 * B * H * Dp * NK)  # reused: no fresh pages at every layer
    kts = scratch[: B * H * Dp * NK].reshape(B * H, Dp, NK)
    vps = scratch[B * H * Dp * NK:].reshape(B * H, NK, Dp)
    _attend_prompt(_ro(q), _ro(k_cache), _ro(v_cache), S, allowed, bias, out, kts, vps)
    return out


# attend_cached with at least this many queries uses _attend_prompt, fewer _attend's one query
# at a time (measured with 16 heads of 64, S = 512, _attend_prompt against _attend: T = 8 1.2 ms
# against 0.7, T = 16 1.4 against 2.0; and T = 512 7.5 ms against 14 for the BLAS products
# _attend_prompt replaced).
ATTEND_BLOCK_MIN_T = 16


@njit(inline="always", error_model="numpy")
def _row_max(row, n, acc):  # pragma: no cover - compiled
    """max(row[:n]), NaN ignored (-inf for n = 0), over 16 running maxima in acc [16]
    (scratch): one chain of compares, whose latency bounds the loop, becomes 16."""
    acc[:] = -np.inf
    n16 = n - n % 16
    for j in range(0, n16, 16):
        for lane in range(16):
            v = row[j + lane]
            acc[lane] = v if v > acc[lane] else acc[lane]
    m = np.float32(-np.inf)
    for lane in range(16):
        m = acc[lane] if acc[lane] > m else m
    for j in range(n16, n):
        m = row[j] if row[j] > m else m
    return m


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _softmax_row(row, n, allowed, bias, scale, acc):  # pragma: no cover - compiled
    """In place: row[:n] holds the scores q.k_j of keys j < n; becomes the softmax over the
    keys with allowed[j] of row / scale (+ bias[j]), exactly 0 for the others; all 0 when no
    key is allowed.  A NaN score makes its row NaN.  acc [16] is scratch."""
    visible = 0
    for j in range(n):
        s = row[j] / scale
        if bias is not None:
            s += bias[j]
        row[j] = s if allowed[j] else np.float32(-np.inf)
        visible += allowed[j]
    if visible == 0:
        row[:n] = 0.0
        return
    m = _row_max(row, n, acc)
    tot = np.float32(0.0)
    for j in range(n):
        e = _exp_f32(row[j] - m)  # exactly 0 for masked keys (exp(-inf))
        row[j] = e
        tot += e
    inv = np.float32(1.0) / tot
    for j in range(n):
        row[j] *= inv


# ---------------------------------------------------------------------------
# Attention of a prompt: blocks of 4 queries, written as explicit SIMD code.
#
# For each (row, head), in parallel: copy the keys transposed, kt [Dp, NK]
# (Dp = D rounded up to 16, its extra rows zero; NK = S rounded up to 32), and
# the values, vp [NK, Dp]; then for each block of 4 queries t0..t0+3 with n
# keys visible to the last of them, two small matrix products (_matmul_rows)
# around a softmax:
#
#     p[u, j] = sum_d q[t0+u, d] * kt[d, j]        4 queries x 64 keys at a time
#     p[u] = softmax of p[u] / sqrt(D) (+ mask) over the keys query u sees
#     o[u, :] = sum_{j < n} p[u, j] * vp[j, :]     4 queries x 64 of D at a time
#
# Everything stays in L1/L2; the sums run in a fixed order (over d, then over
# j), so results do not depend on thread count.  This replaced two BLAS calls
# per chunk of queries, whose thread wake-ups and 4-8 MB score buffers made
# them twice as slow at T = 512.
# ---------------------------------------------------------------------------

_U = 4  # query rows per block


def _ir_splat(builder, s):
    """IR: a vector of 16 copies of the float s."""
    vt = ir.VectorType(_F32, _LANES)
    v = builder.insert_element(ir.Constant(vt, ir.Undefined), s, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), _LANES), [0] * _LANES))


def _ir_matrix(context, builder, ty, val):
    """IR: (float pointer to the data, row length) of a C-contiguous float32 matrix."""
    a = context.make_array(ty)(context, builder, value=val)
    return builder.bitcast(a.data, _F32.as_pointer()), builder.extract_value(a.shape, 1)


def _ir_vload(builder, ptr, i):
    vt = ir.VectorType(_F32, _LANES)
    return builder.load(builder.bitcast(builder.gep(ptr, [i]), vt.as_pointer()), align=4)


def _ir_vstore(builder, v, ptr, i):
    builder.store(v, builder.bitcast(builder.gep(ptr, [i]), v.type.as_pointer()), align=4)


def _is_f32_matrix(t):
    return isinstance(t, types.Array) and t.ndim == 2 and t.dtype == types.float32 and t.layout == "C"


def _i64(v):
    return ir.Constant(_I64, v)


@intrinsic
def _matmul_rows(typingctx, A, B, n_inner, n_cols, C, acc_in):
    """C[u, j] (+)= sum_{i < n_inner} A[u, i] * B[i, j] for u < 4 and j < n_cols (a multiple of
    16; the caller checks that every index is in its array).  A [4, >= n_inner], B [>= n_inner,
    >= n_cols], C [4, >= n_cols], float32, C-contiguous; acc_in (bool): add to C's values
    instead of overwriting them.  Each C[u, j] is one lane of one FMA chain over i = 0, 1, ...
    (fixed order, starting from 0 or from C[u, j]): 4 rows x 64 columns in 16 vector
    accumulators, then 4 x 16 for the last n_cols % 64 columns."""
    if not (all(_is_f32_matrix(m) for m in (A, B, C)) and isinstance(acc_in, types.Boolean)
            and isinstance(n_inner, types.Integer) and isinstance(n_cols, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ap, lda = _ir_matrix(context, builder, sig.args[0], args[0])
        bp, ldb = _ir_matrix(context, builder, sig.args[1], args[1])
        cp, ldc = _ir_matrix(context, builder, sig.args[4], args[4])
        n_in, n_out = (context.cast(builder, args[i], sig.args[i], types.int64) for i in (2, 3))
        add_to_c = context.cast(builder, args[5], sig.args[5], types.boolean)
        zero = ir.Constant(ir.VectorType(_F32, _LANES), [0.0] * _LANES)

        def columns(start, stop, width):  # column blocks j0 = start, start + 16 width, ... < stop
            accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(width)] for _ in range(_U)]
            with cgutils.for_range_slice(builder, start, stop, _i64(_LANES * width)) as (j0, _):
                for u in range(_U):
                    at = builder.add(builder.mul(_i64(u), ldc), j0)
                    for c in range(width):
                        c_in = _ir_vload(builder, cp, builder.add(at, _i64(c * _LANES)))
                        builder.store(builder.select(add_to_c, c_in, zero), accs[u][c])
                with cgutils.for_range_slice(builder, _i64(0), n_in, _i64(1)) as (i, _):
                    at = builder.add(builder.mul(i, ldb), j0)
                    bv = [_ir_vload(builder, bp, builder.add(at, _i64(c * _LANES))) for c in range(width)]
                    for u in range(_U):
                        av = _ir_splat(builder, builder.load(builder.gep(ap, [builder.add(builder.mul(_i64(u), lda), i)])))
                        for c in range(width):
                            builder.store(_ir_fma(builder, av, bv[c], builder.load(accs[u][c])), accs[u][c])
                for u in range(_U):
                    at = builder.add(builder.mul(_i64(u), ldc), j0)
                    for c in range(width):
                        _ir_vstore(builder, builder.load(accs[u][c]), cp, builder.add(at, _i64(c * _LANES)))

        n_main = builder.and_(n_out, _i64(-4 * _LANES))
        columns(_i64(0), n_main, 4)
        columns(n_main, n_out, 1)
        return context.get_dummy_value()

    return types.void(A, B, n_inner, n_cols, C, acc_in), codegen


@njit(parallel=True, fastmath=_FM, error_model="numpy", cache=True)
def _attend_prompt(q, k, v, S, allowed, bias, out, kts, vps):  # pragma: no cover - compiled
    """The same function as _attend (see there), in blocks of 4 queries (see the section
    comment).  kts [B*H, Dp, NK], vps [B*H, NK, Dp] are scratch; Dp = D rounded up to 16,
    NK = S rounded up to 32."""
    B, H, T, D = q.shape
    Dp = kts.shape[1]
    NK = kts.shape[2]
    scale = np.float32(math.sqrt(D))
    for bh in prange(B * H):
        b = bh // H
        h = bh % H
        kt = kts[bh]
        vp = vps[bh]
        kt[D:] = 0.0  # (columns past S and vp's extra columns are never used)
        for j in range(S):
            for d in range(D):
                kt[d, j] = k[b, h, j, d]
            vp[j, :D] = v[b, h, j]
        acc = np.empty(16, np.float32)
        qb = np.zeros((_U, Dp), np.float32)
        p = np.empty((_U, NK), np.float32)
        ob = np.empty((_U, Dp), np.float32)
        bias_row = None if bias is None else bias[b]
        for t0 in range(0, T, _U):
            nq = min(_U, T - t0)
            for u in range(nq):
                qb[u, :D] = q[b, h, t0 + u]
            n = S - T + t0 + nq  # keys up to the position of the block's last query
            _matmul_rows(qb, kt, Dp, (n + 15) // 16 * 16, p, False)  # scores (NK >= n rounded up to 16)
            for u in range(_U):
                nu = S - T + t0 + u + 1 if u < nq else 0  # keys query u may see
                _softmax_row(p[u], nu, allowed[b], bias_row, scale, acc)
                p[u, nu:n] = 0.0
            _matmul_rows(p, vp, n, Dp, ob, False)  # weights x values
            for u in range(nq):
                out[b, h, t0 + u] = ob[u, :D]


# ---------------------------------------------------------------------------
# Prefill with bf16 / int8 weights: y = x @ widen(W).T for T > STREAM_MAX_T rows.
#
# A matrix-matrix product is compute-bound; what matters is that the operands
# of the inner loop sit in L1.  The tokens are packed once per call, transposed
# in blocks of 64: xp[blk, i, c] = x[64 blk + c, i] (zero past T).  Each thread
# then takes panels of 128 rows of W.  For each chunk k of 128 inputs it widens
# (bf16) or dequantizes (int8) the panel's chunk into float32, pan[r, :] =
# widen(W[j0 + r, 128 k : 128 k + 128]) (64 KB), and for each block of 64 tokens
# runs _matmul_rows (4 rows of the panel x 64 tokens in 16 vector accumulators):
#
#     cb[blk, r, c] += sum_{i in chunk k} pan[r, i] * xp[blk, 128 k + i, c]
#
# so the chunk of packed tokens (128 x 64 floats, 32 KB) is reused by all 128
# rows of the panel from L1.  Then y[64 blk + c, j0 + r] = cb[blk, r, c] +
# b[j0 + r], in blocks of 16 x 16 transposed in registers (_transpose_add16).
# Every weight is widened once per call (as BLAS packs its operands once), and
# no float32 copy of W is made: the scratch is the packed tokens plus, per
# thread, one widened chunk and the sums (64 KB + 32 KB per block of tokens).
# Sums run over i in a fixed order.
# ---------------------------------------------------------------------------


@intrinsic
def _transpose_add16(typingctx, src, r0, c0, b, b0, dst, t0, j0):
    """dst[t0 + m, j0 + i] = src[r0 + i, c0 + m] + b[b0 + i] for i, m < 16: one 16 x 16 block,
    transposed in registers (four rounds of swapping half-blocks between pairs of rows, 64
    shuffles).  src, dst float32 C-contiguous matrices, b float32 [>= b0 + 16]; the caller
    checks the bounds."""
    ints = (r0, c0, b0, t0, j0)
    if not (_is_f32_matrix(src) and _is_f32_matrix(dst) and all(isinstance(v, types.Integer) for v in ints)
            and isinstance(b, types.Array) and b.ndim == 1 and b.dtype == types.float32 and b.layout == "C"):
        return None

    def codegen(context, builder, sig, args):
        sp, lds = _ir_matrix(context, builder, sig.args[0], args[0])
        dp, ldd = _ir_matrix(context, builder, sig.args[5], args[5])
        bp = builder.bitcast(context.make_array(sig.args[3])(context, builder, value=args[3]).data, _F32.as_pointer())
        r0_, c0_, b0_, t0_, j0_ = (context.cast(builder, args[i], sig.args[i], types.int64) for i in (1, 2, 4, 6, 7))
        rows = [_ir_vload(builder, sp, builder.add(builder.mul(builder.add(r0_, _i64(i)), lds), c0_)) for i in range(16)]
        i32v = ir.VectorType(ir.IntType(32), _LANES)
        for d in (8, 4, 2, 1):  # swap the d x d blocks off the diagonal, for every pair of rows (i, i + d)
            lo = ir.Constant(i32v, [j if not j & d else 16 + j - d for j in range(16)])
            hi = ir.Constant(i32v, [j + d if not j & d else 16 + j for j in range(16)])
            for i in range(16):
                if not i & d:
                    a, c = rows[i], rows[i + d]
                    rows[i], rows[i + d] = builder.shuffle_vector(a, c, lo), builder.shuffle_vector(a, c, hi)
        bias = _ir_vload(builder, bp, b0_)
        for m in range(16):  # rows[m] now holds src[r0 + i, c0 + m] for i = 0..15
            _ir_vstore(builder, builder.fadd(rows[m], bias), dp, builder.add(builder.mul(builder.add(t0_, _i64(m)), ldd), j0_))
        return context.get_dummy_value()

    return types.void(src, r0, c0, b, b0, dst, t0, j0), codegen


@njit(parallel=True, error_model="numpy", cache=True)
def _pack_tokens(x, xp, zeros):  # pragma: no cover - compiled
    """xp[blk, i, c] = x[64 blk + c, i], 0 past the last row.   x [T, n_in], xp [NT, n_in, 64],
    zeros [16] (zeros, the bias of _transpose_add16).  Parallel over the blocks of 64 tokens;
    16 x 16 blocks transposed in registers, the edges copied one by one.  Packing the input of
    the 350M fc_in / fc_out at T = 512 (2 / 8 MB) took 0.18 / 0.78 ms with scalar copies, 0.10 /
    0.57 ms so (the latter at memory speed)."""
    T, n_in = x.shape
    for blk in prange(xp.shape[0]):
        t0 = blk * _NB
        nt = min(_NB, T - t0)
        dst = xp[blk]
        for c0 in range(0, _NB, 16):
            for i0 in range(0, n_in, 16):
                if c0 + 16 <= nt and i0 + 16 <= n_in:
                    _transpose_add16(x, t0 + c0, i0, zeros, 0, dst, i0, c0)
                else:
                    for c in range(c0, c0 + 16):
                        for i in range(i0, min(i0 + 16, n_in)):
                            dst[i, c] = x[t0 + c, i] if c < nt else np.float32(0.0)


def _widen_into(w, s, out):  # pragma: no cover - replaced by the overload in compiled code
    raise NotImplementedError


@overload(_widen_into, inline="always")
def _widen_into_impl(w, s, out):
    """out[i] = widen(w[i]): bf16 bits (uint16) exactly; int8 times the row scale s, rounded
    as model.dequantize rounds it."""
    if w.dtype == types.uint16:
        def bf16(w, s, out):
            for i in range(w.shape[0]):
                out[i] = _bf16_to_f32(w[i])
        return bf16
    if w.dtype == types.int8:
        def int8(w, s, out):
            for i in range(w.shape[0]):
                out[i] = np.float32(w[i]) * s
        return int8
    return None


@njit(parallel=True, fastmath=_FM, error_model="numpy", cache=True)
def _gemm_panels(xp, T, W, scale, b, y, pans, cbs):  # pragma: no cover - compiled
    """y = x @ widen(W).T [* scale] + b from the packed tokens xp [NT, n_in, 64] of x [T, n_in]
    (see the section comment).  W [n_out, n_in] uint16 (bf16) or int8 with scale [n_out];
    b [n_out] (zeros for no bias: one compiled specialization less); y [T, n_out].  Scratch,
    one of each per thread part (part p takes the panels j0 = _NR (p + P m)): pans [P, _NR, _KC]
    the widened chunk of the panel, cbs [P, NT, _NR, 64] its sums for every block of tokens."""
    n_out, n_in = W.shape
    NT = xp.shape[0]
    P = pans.shape[0]
    NK = (n_in + _KC - 1) // _KC
    n_pan = (n_out + _NR - 1) // _NR
    for part in prange(P):
        pan = pans[part]
        cb = cbs[part]
        for pb in range(part, n_pan, P):
            j0 = pb * _NR
            nr = min(_NR, n_out - j0)
            for k in range(NK):
                k0 = k * _KC
                kn = min(_KC, n_in - k0)
                for r in range(nr):
                    s = scale[j0 + r] if scale is not None else np.float32(1.0)
                    _widen_into(W[j0 + r, k0:k0 + kn], s, pan[r, :kn])
                if k == 0:  # (rows past n_out: computed, never written out)
                    pan[nr:] = 0.0
                for blk in range(NT):
                    xk = xp[blk, k0:k0 + kn]
                    for g in range(0, nr, _U):
                        _matmul_rows(pan[g:g + _U], xk, kn, _NB, cb[blk, g:g + _U], k > 0)
            for blk in range(NT):
                t0 = blk * _NB
                nt = min(_NB, T - t0)
                for c0 in range(0, nt, 16):
                    for r0 in range(0, nr, 16):
                        if c0 + 16 <= nt and r0 + 16 <= nr:  # y[t0 + c, j0 + r] = cb[blk, r, c] + b[j0 + r]
                            _transpose_add16(cb[blk], r0, c0, b, j0 + r0, y, t0 + c0, j0 + r0)
                        else:
                            for c in range(c0, min(c0 + 16, nt)):
                                for r in range(r0, min(r0 + 16, nr)):
                                    y[t0 + c, j0 + r] = cb[blk, r, c] + b[j0 + r]


_ZEROS16 = np.zeros(16, np.float32)
_ZEROS16.flags.writeable = False


def _prefill_linear(x2: np.ndarray, W: np.ndarray, scale: np.ndarray | None,
                   b: np.ndarray | None) -> np.ndarray:
    """``x2 @ widen(W).T [* scale] + b`` for many rows (a prompt) and bf16 (uint16) or int8
    weights (with ``scale``): x2 [T, n_in] float32 -> [T, n_out].  Checked and read-only
    arguments are the callers' (linear_bf16, linear_int8); see the section comment."""
    T, n_in = x2.shape
    NT = -(-T // _NB)
    P = get_threads()
    n_xp, n_pan = NT * n_in * _NB, P * _NR * _KC
    buf = _tile_buffer(n_xp + n_pan + P * NT * _NR * _NB)
    xp = buf[:n_xp].reshape(NT, n_in, _NB)
    pans = buf[n_xp:n_xp + n_pan].reshape(P, _NR, _KC)
    cbs = buf[n_xp + n_pan:].reshape(P, NT, _NR, _NB)
    _pack_tokens(_ro(x2), xp, _ZEROS16)
    y = np.empty((T, W.shape[0]), np.float32)
    b = b if b is not None else _ro(np.zeros(W.shape[0], np.float32))
    _gemm_panels(_ro(xp), T, W, scale, b, y, pans, cbs)
    return y


# ---------------------------------------------------------------------------
# Fused element-wise ops.
# ---------------------------------------------------------------------------


@njit(parallel=True, fastmath=_FM, error_model="numpy", cache=True)
def _layer_norm(x, g, b, eps, y):  # pragma: no cover - compiled
    """Row-wise (x - mean) / sqrt(var + eps) * g + b; x, y [N, E]; stats in float64."""
    for r in prange(x.shape[0]):
        _layer_norm_row(x[r], g, b, eps, y[r])


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _layer_norm_row(xr, g, b, eps, yr):  # pragma: no cover - compiled
    """One row of _layer_norm: xr, yr [E]."""
    E = xr.shape[0]
    mean = 0.0
    for i in range(E):
        mean += xr[i]
    mean /= E
    var = 0.0
    for i in range(E):
        d = xr[i] - mean
        var += d * d
    var /= E
    rstd = 1.0 / math.sqrt(var + eps)
    for i in range(E):
        yr[i] = np.float32((xr[i] - mean) * rstd) * g[i] + b[i]


def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Layer norm over the last axis: ``(x - mean) / sqrt(var + eps) * g + b``
    (biased variance, like torch.nn.LayerNorm).  x [..., E] f32 -> same shape."""
    x = np.asarray(x)
    E = x.shape[-1]
    x2 = np.ascontiguousarray(x.reshape(-1, E), dtype=np.float32)
    g = _prep_vec(g, E, "g")
    b = _prep_vec(b, E, "b")
    y = np.empty_like(x2)
    _layer_norm(_ro(x2), g, b, float(eps), y)
    return y.reshape(x.shape)


_GELU_C2 = np.float32(2.0 * 0.7978845608028654)  # 2 sqrt(2/pi)
_GELU_A = np.float32(0.044715)


@njit(inline="always", fastmath={"contract"}, error_model="numpy")
def _gelu_scalar(xi):  # pragma: no cover - compiled
    """0.5 * x * (1 + tanh(u)), u = sqrt(2/pi) * (x + 0.044715 * x**3), computed as
    x / (1 + exp(-2u)): the same function (0.5 (1 + tanh u) is the logistic
    sigmoid of 2u), with the vectorizable _exp_f32: one exp and one division
    instead of a scalar libm tanh."""
    u2 = _GELU_C2 * (xi + _GELU_A * (xi * xi * xi))
    return xi / (np.float32(1.0) + _exp_f32(-u2))


@njit(parallel=True, fastmath={"contract"}, error_model="numpy", cache=True)
def _gelu_new(x, y):  # pragma: no cover - compiled
    """y = gelu_new(x) element-wise (see _gelu_scalar); x, y flat float32."""
    for i in prange(x.shape[0]):
        y[i] = _gelu_scalar(x[i])


def gelu_new(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """GPT-2 / CodeGen tanh GELU, ``0.5*x*(1 + tanh(sqrt(2/pi)*(x + 0.044715*x**3)))``.

    x float32, any shape; ``out`` may be ``x`` itself (in place)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if out is None:
        out = np.empty_like(x)
    elif out.shape != x.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous float32 array shaped like x")
    _gelu_new(x.reshape(-1), out.reshape(-1))
    return out


@njit(error_model="numpy", cache=True)
def _rotate(xr, sc, rotary_dim, o):  # pragma: no cover - compiled
    """One head: o = xr with channel pairs (2i, 2i+1), i < rotary_dim / 2, rotated by
    the angle whose sin, cos are sc[i], sc[rotary_dim/2 + i]; other channels copied.
    No fused multiply-add (no fastmath), so it rounds exactly as ops.apply_rotary."""
    half = rotary_dim // 2
    for i in range(half):
        s = sc[i]
        c = sc[half + i]
        a = xr[2 * i]
        b2 = xr[2 * i + 1]
        o[2 * i] = a * c - b2 * s
        o[2 * i + 1] = b2 * c + a * s
    for d in range(rotary_dim, xr.shape[0]):
        o[d] = xr[d]


@njit(parallel=True, error_model="numpy", cache=True)
def _rotary(x, sincos, rotary_dim, out):  # pragma: no cover - compiled
    """GPT-J rotary embedding, like ops.apply_rotary (bit for bit: no fused
    multiply-add, so every product and sum rounds as NumPy's do).

    x [B, T, H, D] (any strides), sincos [B, T, rotary_dim] = [sin | cos],
    out [B, T, H, D].  Channel pair (2i, 2i+1) is rotated by angle i:
    (a, b) -> (a cos - b sin, b cos + a sin); channels >= rotary_dim are copied.
    """
    B, T, H, D = x.shape
    for bt in prange(B * T):
        bi = bt // T
        t = bt % T
        for h in range(H):
            _rotate(x[bi, t, h], sincos[bi, t], rotary_dim, out[bi, t, h])


def apply_rotary(x: np.ndarray, sincos: np.ndarray, rotary_dim: int,
                 out: np.ndarray | None = None) -> np.ndarray:
    """Rotary embedding of the first ``rotary_dim`` channels of every head, equal
    bit for bit to ``ops.apply_rotary``; one pass instead of NumPy's temporaries.

    x [B, T, H, D] float32 (may be a strided view, e.g. from ops.split_qkv),
    sincos [B, T, rotary_dim] -> out [B, T, H, D] (new C-contiguous array, or
    ``out``)."""
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    B, T, H, D = x.shape
    if rotary_dim % 2 or not 0 <= rotary_dim <= D:
        raise ValueError(f"rotary_dim must be even and <= D={D}, got {rotary_dim}")
    sincos = np.asarray(sincos, dtype=np.float32)
    if sincos.shape != (B, T, rotary_dim):
        sincos = np.ascontiguousarray(np.broadcast_to(sincos, (B, T, rotary_dim)))
    if out is None:
        out = np.empty((B, T, H, D), np.float32)
    _rotary(_ro(x), _ro(sincos), rotary_dim, out)
    return out


# ---------------------------------------------------------------------------
# One decode step of a CodeGen block, fused (one new token per row).
#
# The block is  x + out_proj(attn(ln_1(x))) + fc_out(gelu(fc_in(ln_1(x))))  (see
# model.block, whose NumPy path is the definition).  Run op by op, a decode step
# launches ~10 kernels per layer from Python, each for microseconds of work:
# the launches and the Python in between cost a quarter of an int8 step.  Here
# one call does the whole block in three parallel loops:
#
#   1. qkv_proj and fc_in (+ bias) of ln_1(x): both read the same input, so one
#      loop over the 3E + n_inner rows of the two matrices; then gelu;
#   2. per (row, head): split q/k/v (mp_num layout), rotary on q and k, append
#      k and v to the cache, attend over the cache;
#   3. out_proj(attention) + fc_out(hidden) + bias + residual: both write the
#      same E outputs, so one loop over E rows reading a row of each matrix.
# ---------------------------------------------------------------------------


@njit(parallel=True, error_model="numpy", cache=True)
def _gemv_pair(x, W1, s1, y1, W2, s2, b2, y2, pf):  # pragma: no cover - compiled
    """y1 = x @ widen(W1).T [* s1];  y2 = x @ widen(W2).T [* s2] [+ b2].

    x [B, n_in]; W1 [n1, n_in], W2 [n2, n_in] (same dtype); s1, s2: int8 row
    scales or None; b2 [n2] or None; y1 [B, n1], y2 [B, n2].  One parallel loop
    over the row pairs of both matrices (see _gemv).  gelu is not applied here:
    _decode_block runs it as one vectorized pass over y2 afterwards.
    """
    x = _dot_operand(x, W1)  # (W1 and W2 have the same dtype)
    h1 = (W1.shape[0] + 3) // 4
    h2 = (W2.shape[0] + 3) // 4
    for j in prange(h1 + h2):
        if j < h1:
            _gemv_step(x, W1, j, h1, s1, None, y1, pf)
        else:
            _gemv_step(x, W2, j - h1, h2, s2, b2, y2, pf)


@njit(parallel=True, fastmath=_FM, error_model="numpy", cache=True)
def _rope_attend_step(qkv, sincos, rotary_dim, n_head, mp_num, k_cache, v_cache, S, allowed, out):  # pragma: no cover - compiled
    """Attention of one new token per row, which sits at cache slot S - 1.

    qkv [B, 3E] (qkv_proj output, mp_num blocks of [q | v | k], see
    ops.split_qkv); sincos [B, rotary_dim] (the token's table row);
    k_cache, v_cache [B, H, S_cap, D]; allowed [B, S] bool; out [B, E] (heads
    merged: head h at columns h*D .. h*D + D).  Writes the token's rotated key
    and its value to slot S - 1, then attends over slots 0..S-1.
    """
    B = qkv.shape[0]
    E = qkv.shape[1] // 3
    D = E // n_head
    heads_per_block = n_head // mp_num
    block = 3 * E // mp_num
    part = E // mp_num
    for bh in prange(B * n_head):
        b = bh // n_head
        h = bh % n_head
        base = (h // heads_per_block) * block + (h % heads_per_block) * D
        q = np.empty(D, np.float32)
        _rotate(qkv[b, base:base + D], sincos[b], rotary_dim, q)
        _rotate(qkv[b, base + 2 * part:base + 2 * part + D], sincos[b], rotary_dim, k_cache[b, h, S - 1])
        v_cache[b, h, S - 1, :] = qkv[b, base + part:base + part + D]
        p = np.empty(S, np.float32)
        acc = np.empty(16, np.float32)
        _attend_query(q, k_cache[b, h], v_cache[b, h], S - 1, allowed[b], None, p, out[b, h * D:(h + 1) * D], acc)


@njit(inline="always")
def _sum_out(x, t, j, u, s1, v, s2, b2):  # pragma: no cover - compiled
    """x[t, j] += u [* s1[j]] + (v [* s2[j]] [+ b2[j]])."""
    if s1 is not None:
        u *= s1[j]
    if s2 is not None:
        v *= s2[j]
    if b2 is not None:
        v += b2[j]
    x[t, j] = x[t, j] + (u + v)


@njit(parallel=True, error_model="numpy", cache=True)
def _gemv_sum_into(x, a, W1, s1, hidden, W2, s2, b2, pf):  # pragma: no cover - compiled
    """x += a @ widen(W1).T [* s1] + (hidden @ widen(W2).T [* s2] + b2), in place.

    x, a [B, E]; W1 [E, E]; hidden [B, n_inner]; W2 [E, n_inner]; one parallel
    loop over output rows j, j + h, j + 2h, j + 3h (h = E / 4 rounded up), reading
    those rows of both matrices.
    """
    a = _dot_operand(a, W1)
    hidden = _dot_operand(hidden, W2)
    E = W1.shape[0]
    h = (E + 3) // 4
    for j in prange(h):
        for t in range(x.shape[0]):
            p = pf if t == 0 else 0
            if j + 3 * h < E:
                u = _dot(a[t], (W1[j], W1[j + h], W1[j + 2 * h], W1[j + 3 * h]), p)
                v = _dot(hidden[t], (W2[j], W2[j + h], W2[j + 2 * h], W2[j + 3 * h]), p)
                for r in range(4):
                    _sum_out(x, t, j + r * h, u[r], s1, v[r], s2, b2)
            else:
                for r in range(4):
                    k = j + r * h
                    if k < E:
                        _sum_out(x, t, k, _dot(a[t], W1[k], p), s1, _dot(hidden[t], W2[k], p), s2, b2)


@njit(error_model="numpy", cache=True)
def _decode_block(x, ln_g, ln_b, eps, W_qkv, s_qkv, W_out, s_out, W_in, s_in, b_in, W_fo, s_fo, b_fo,
                  sincos, rotary_dim, n_head, mp_num, k_cache, v_cache, S, allowed, pf):  # pragma: no cover - compiled
    """The fused block (see the section comment); x [B, E] is updated in place."""
    B, E = x.shape
    h = np.empty_like(x)
    for t in range(B):  # (a few rows: a parallel loop would cost more than it saves)
        _layer_norm_row(x[t], ln_g, ln_b, eps, h[t])
    qkv = np.empty((B, W_qkv.shape[0]), np.float32)
    hidden = np.empty((B, W_in.shape[0]), np.float32)
    _gemv_pair(h, W_qkv, s_qkv, qkv, W_in, s_in, b_in, hidden, pf)
    for t in range(B):  # gelu_new, one vectorized pass (a few thousand values)
        for i in range(hidden.shape[1]):
            hidden[t, i] = _gelu_scalar(hidden[t, i])
    a = np.empty((B, E), np.float32)
    _rope_attend_step(qkv, sincos, rotary_dim, n_head, mp_num, k_cache, v_cache, S, allowed, a)
    _gemv_sum_into(x, a, W_out, s_out, hidden, W_fo, s_fo, b_fo, pf)


def _prefetch_bytes(dt: np.dtype) -> int:
    """The prefetch distance for weights of dtype dt (float32, uint16 = bf16, int8), in bytes."""
    return {4: PREFETCH_F32, 2: PREFETCH_BF16, 1: PREFETCH_INT8}[dt.itemsize]


def decode_weights(layer: dict[str, np.ndarray], E: int) -> tuple:
    """The weights of one block, checked and in the order ``_decode_block`` takes them.

    ``layer`` maps the block's weight names without the ``transformer.h.{i}.`` prefix
    (``ln_1.weight``, ``attn.qkv_proj.weight``, ... and ``*.weight.scale`` for int8) to
    arrays.  The kernels do not check bounds, so every shape is checked here; model.forward
    does this once per model and passes the result to decode_layers at every step.
    """
    dt = layer["attn.qkv_proj.weight"].dtype
    if dt not in (np.float32, np.uint16, np.int8):
        raise TypeError(f"decode_block takes float32, uint16 (bf16) or int8 weights, got {dt}")
    n_inner = layer["mlp.fc_in.weight"].shape[0]
    shapes = {"attn.qkv_proj": (3 * E, E), "attn.out_proj": (E, E), "mlp.fc_in": (n_inner, E), "mlp.fc_out": (E, n_inner)}
    Ws, sc = [], []
    for name, shape in shapes.items():
        W = _check_w(layer[name + ".weight"], dt.type, name + ".weight")
        if W.shape != shape:
            raise ValueError(f"{name}.weight has shape {W.shape}, expected {shape} for E={E}")
        s = layer.get(name + ".weight.scale")
        if (dt == np.int8) != (s is not None):
            raise ValueError(f"{name}: int8 weights need a .weight.scale, other dtypes none")
        Ws.append(W)
        sc.append(_prep_vec(s, shape[0], name + ".weight.scale"))
    return (_prep_vec(layer["ln_1.weight"], E, "ln_1.weight"), _prep_vec(layer["ln_1.bias"], E, "ln_1.bias"),
            Ws[0], sc[0], Ws[1], sc[1], Ws[2], sc[2], _prep_vec(layer.get("mlp.fc_in.bias"), n_inner, "mlp.fc_in.bias"),
            Ws[3], sc[3], _prep_vec(layer.get("mlp.fc_out.bias"), E, "mlp.fc_out.bias"), _prefetch_bytes(dt))


def decode_layers(x: np.ndarray, layers: list[dict[str, np.ndarray] | tuple], eps: float, sincos: np.ndarray,
                  rotary_dim: int, n_head: int, k_caches: list[np.ndarray], v_caches: list[np.ndarray], S: int,
                  allowed: np.ndarray, mp_num: int = 4) -> np.ndarray:
    """CodeGen blocks one after the other for one new token per row, each fused into three
    parallel loops.

    x [B, E] float32 residual stream (updated in place and returned); ``layers``: each block's
    weights as a dict (see decode_weights) or as decode_weights' result; sincos [B, rotary_dim]
    the table rows of the tokens' positions; k_caches[i], v_caches[i] [B, H, S_cap, D] float32,
    block i's cache, the token goes to slot S - 1; allowed [B, >= S] bool (False: padding).
    Equals ``model.block`` (its NumPy path is the definition) for T = 1, block after block.
    The arguments are checked once for all blocks.
    """
    if x.ndim != 2 or x.dtype != np.float32 or not x.flags.c_contiguous or not x.flags.writeable:
        raise ValueError("x must be a writeable C-contiguous float32 [B, E] array")
    B, E = x.shape
    D = E // n_head if n_head > 0 else 0
    if D * n_head != E or n_head % mp_num or rotary_dim % 2 or not 0 <= rotary_dim <= D:
        raise ValueError(f"E={E}, n_head={n_head}, mp_num={mp_num}, rotary_dim={rotary_dim} do not fit together")
    if not len(layers) == len(k_caches) == len(v_caches):
        raise ValueError(f"{len(layers)} layers, {len(k_caches)} key caches and {len(v_caches)} value caches")
    for k_cache, v_cache in zip(k_caches, v_caches):
        if (k_cache.shape != v_cache.shape or k_cache.shape[:2] != (B, n_head) or k_cache.shape[3] != D
                or not 1 <= S <= k_cache.shape[2]):
            raise ValueError(f"cache {k_cache.shape} does not fit B={B}, H={n_head}, D={D}, S={S}")
        for c in (k_cache, v_cache):
            if c.dtype != np.float32 or not c.flags.c_contiguous or not c.flags.writeable:
                raise ValueError("k_cache and v_cache must be writeable C-contiguous float32 arrays")
    sincos = _ro(np.ascontiguousarray(sincos, dtype=np.float32))
    allowed = _ro(np.ascontiguousarray(allowed[:, :S], dtype=np.bool_))
    if sincos.shape != (B, rotary_dim) or allowed.shape != (B, S):
        raise ValueError(f"sincos {sincos.shape} / allowed {allowed.shape} must be [B={B}, {rotary_dim}] / [B, >= S={S}]")
    plan = [decode_weights(layer, E) if isinstance(layer, dict) else layer for layer in layers]
    for w in plan:
        if w[0].shape != (E,):
            raise ValueError(f"the layer's weights are for E={w[0].shape[0]}, x has E={E}")
    eps, rotary_dim, n_head, mp_num, S = float(eps), int(rotary_dim), int(n_head), int(mp_num), int(S)
    for w, k_cache, v_cache in zip(plan, k_caches, v_caches):
        _decode_block(x, w[0], w[1], eps, *w[2:12], sincos, rotary_dim, n_head, mp_num, k_cache, v_cache, S, allowed, w[12])
    return x


def decode_block(x: np.ndarray, layer: dict[str, np.ndarray] | tuple, eps: float, sincos: np.ndarray,
                 rotary_dim: int, n_head: int, k_cache: np.ndarray, v_cache: np.ndarray, S: int,
                 allowed: np.ndarray, mp_num: int = 4) -> np.ndarray:
    """One block of decode_layers (see there): x [B, E] updated in place and returned."""
    return decode_layers(x, [layer], eps, sincos, rotary_dim, n_head, [k_cache], [v_cache], S, allowed, mp_num)


# ---------------------------------------------------------------------------
# Threads and warm-up.
# ---------------------------------------------------------------------------


def set_threads(n: int | None = None) -> int:
    """Use ``n`` threads in the kernels (default: NUMBA_NUM_THREADS if set,
    else all cores).  Returns the number in use.  Cannot exceed the thread pool
    size fixed at start-up by NUMBA_NUM_THREADS."""
    if n is None:
        env = os.environ.get("NUMBA_NUM_THREADS")
        n = int(env) if env else numba.config.NUMBA_NUM_THREADS
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


def get_threads() -> int:
    """Number of threads the kernels use."""
    return numba.get_num_threads()


def warmup() -> float:
    """Compile (or load from the on-disk cache) every kernel signature the model
    uses: linear fp32 / bf16 / int8 / fp16 with and without bias (decode and prefill
    paths), attention, layer norm, gelu, rotary, and the fused decode block.  Returns the seconds it took."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    n_out, n_in = 24, 16
    xs = [rng.standard_normal((1, n_in), dtype=np.float32),
          rng.standard_normal((STREAM_MAX_T + 1, n_in), dtype=np.float32)]
    Wf = rng.standard_normal((n_out, n_in), dtype=np.float32)
    Wb = (Wf.view(np.uint32) >> 16).astype(np.uint16)
    Wq = rng.integers(-127, 128, (n_out, n_in), dtype=np.int8)
    sc = np.ones(n_out, np.float32)
    for x in xs:
        for b in (None, np.zeros(n_out, np.float32)):
            linear_f32(x, Wf, b)
            linear_bf16(x, Wb, b)
            linear_bf16(x[:, :-1], Wb[:, :-1], b)  # odd n_in path
            linear_int8(x, Wq, sc, b)
            linear_f16(x, Wf.astype(np.float16), b)
    q = rng.standard_normal((1, 2, 1, 8), dtype=np.float32)
    kc = rng.standard_normal((1, 2, 4, 8), dtype=np.float32)
    attend_cached(q, kc, kc, 3, np.ones((1, 3), bool))
    attend_cached(q, kc, kc, 3, np.zeros((1, 3), np.float32))  # additive mask
    T = ATTEND_BLOCK_MIN_T  # a prompt: blocks of queries (_attend_prompt)
    qp = rng.standard_normal((1, 2, T, 8), dtype=np.float32)
    kp = rng.standard_normal((1, 2, T, 8), dtype=np.float32)
    attend_cached(qp, kp, kp, T, np.ones((1, T), bool))
    attend_cached(qp, kp, kp, T, np.zeros((1, T), np.float32))
    E = 8
    layer_norm(rng.standard_normal((2, E), dtype=np.float32), np.ones(E, np.float32),
               np.zeros(E, np.float32), 1e-5)
    gelu_new(rng.standard_normal((2, E), dtype=np.float32))
    qkv = rng.standard_normal((1, 2, 3 * 4 * 8), dtype=np.float32).reshape(1, 2, 4, 3, 8)
    apply_rotary(qkv[:, :, :, 0], rng.standard_normal((1, 2, 4), dtype=np.float32), 4)  # strided view
    apply_rotary(np.ascontiguousarray(qkv[:, :, :, 0]), rng.standard_normal((1, 2, 4), dtype=np.float32), 4)
    E, H, n_inner = 16, 4, 32  # the fused decode block, for each weight type
    for w in (Wf, Wb, Wq):
        def mat(n_out, n_in, w=w):
            return np.ascontiguousarray(np.resize(w, (n_out, n_in)))
        layer = {"ln_1.weight": np.ones(E, np.float32), "ln_1.bias": np.zeros(E, np.float32),
                 "attn.qkv_proj.weight": mat(3 * E, E), "attn.out_proj.weight": mat(E, E),
                 "mlp.fc_in.weight": mat(n_inner, E), "mlp.fc_in.bias": np.zeros(n_inner, np.float32),
                 "mlp.fc_out.weight": mat(E, n_inner), "mlp.fc_out.bias": np.zeros(E, np.float32)}
        if w.dtype == np.int8:
            layer |= {n + ".scale": np.ones(layer[n].shape[0], np.float32) for n in list(layer) if layer[n].ndim == 2}
        kv = np.zeros((1, H, 2, E // H), np.float32)
        decode_block(np.zeros((1, E), np.float32), layer, 1e-5, np.zeros((1, 2), np.float32), 2, H, kv, kv.copy(), 1,
                     np.ones((1, 1), bool))
    return time.perf_counter() - t0
