"""Register-level building blocks compiled into the kernels: LLVM intrinsics and explicit
SIMD code in LLVM IR.

* ``_bf16_to_f32``, ``_f16_to_f32``, ``_bits_as_f32``: exact conversions (one or two
  instructions each); ``_prefetch``: a cache-line prefetch hint (no effect on results).
* ``_exp_f32``: float32 exp that LLVM can vectorize (<= 1.2 ulp).
* ``_dot`` / ``_dot_f16``: the dot product of the decode kernels on vectors of 16 floats (see
  the comment above ``_LANES``); ``_bf16_pair_order`` / ``_dot_operand``: the
  layout in which ``_dot`` takes x for bf16 rows.
* ``_matmul_rows``: 4 rows of a small matrix product (prompt attention and prefill);
  ``_transpose_add16``: a 16 x 16 block transposed in registers plus a bias (prefill).
* ``_FM``: the fast-math flags of the loops with sums (see the package docstring).

Tested against (tests/test_kernels_simd.py): ``_exp_f32`` against float64 ``np.exp`` (<= 1.5
ulp; 0, +-inf, NaN and underflow exact); ``_dot`` against float64 ``x @ w`` within the error
bound of a float32 sum and, for a tuple of rows, bit for bit against one ``_dot`` per row;
``_matmul_rows`` against float64 ``A @ B`` (same bound); ``_transpose_add16`` exactly against
``src.T + b``.  The conversions are tested through the kernels that use them (exact widening in
tests/test_kernels_gemv.py).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

# Fast-math flags of the loops with sums (see "Floating point" in the package docstring).
_FM = {"reassoc", "contract"}

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
    y = p * _bits_as_f32((np.int32(kf) + np.int32(127)) << np.int32(23))  # -126 <= kf <= 127
    # Selects rather than branches, and int32 rather than int64 lanes: LLVM vectorizes this to
    # about 0.75 ns a value (one core, a loop of exp and a sum) against 0.93 before, same bits.
    y = np.float32(0.0) if x < np.float32(-87.3) else y
    y = np.float32(np.inf) if x > np.float32(88.3) else y
    return x if x != x else y


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
# row), in one loop that loads x once for all of them.  _dot((x_a, x_b), w, pf)
# likewise takes a tuple of x (the rows of a batch) and one row of W: the row is
# loaded and widened once for all of them (batched decode), each sum still in the
# order above, so a row of a batch gets the bits it would get alone.  The matrix-vector
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
        xs = tuple(x) if isinstance(x, types.UniTuple) else (x,)  # one x, or a tuple of them (not both tuples)
        if not (all(isinstance(v, types.Array) and v.ndim == 1 and v.dtype == types.float32 and v.layout == "C" for v in xs)
                and all(isinstance(r, types.Array) and r.ndim == 1 and r.layout == "C" and r.dtype in kinds
                        for r in rows)
                and isinstance(pf, types.Integer) and not (len(xs) > 1 and len(rows) > 1)):
            return None
        kind, elem = kinds[rows[0].dtype]
        itemsize = rows[0].dtype.bitwidth // 8
        R, RX = len(rows), len(xs)
        x_tupled, w_tupled = isinstance(x, types.UniTuple), isinstance(w, types.UniTuple)

        def codegen(context, builder, sig, args):
            x_vals = [builder.extract_value(args[0], a) for a in range(RX)] if x_tupled else [args[0]]
            xas = [context.make_array(xt)(context, builder, value=val) for xt, val in zip(xs, x_vals)]
            row_vals = [builder.extract_value(args[1], r) for r in range(R)] if w_tupled else [args[1]]
            was = [context.make_array(row)(context, builder, value=val) for row, val in zip(rows, row_vals)]
            pf_bytes = context.cast(builder, args[2], sig.args[2], types.int64)
            n = builder.extract_value(xas[0].shape, 0)  # (the caller guarantees len(w) == len(x))
            xps = [builder.bitcast(xa.data, _F32.as_pointer()) for xa in xas]
            wps = [builder.bitcast(wa.data, elem.as_pointer()) for wa in was]
            pairs = [(a, r) for a in range(RX) for r in range(R)]  # one sum per (x, row), x-major
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

            def load_x(xp, i):
                return builder.load(builder.bitcast(builder.gep(xp, [i]), vx.as_pointer()), align=1)

            def fma_at(i, accs):  # acc[a, r] = fma(x_a[i:i+16], widen(w_r[i:i+16]), acc[a, r]) for each pair
                xv = [load_x(xp, i) for xp in xps]
                wv = [_ir_widen(builder, builder.load(builder.bitcast(builder.gep(wp, [i]), vw.as_pointer()), align=1), kind)
                      for wp in wps]
                for (a, r), acc in zip(pairs, accs):
                    builder.store(_ir_fma(builder, xv[a], wv[r], builder.load(acc)), acc)

            def fma_pairs_at(i, accs_even, accs_odd):  # bf16, x in pair order (see _bf16_pair_order)
                xe = [load_x(xp, i) for xp in xps]
                xo = [load_x(xp, builder.add(i, ir.Constant(_I64, _LANES))) for xp in xps]
                even, odd = [], []
                for wp in wps:
                    words = builder.load(builder.bitcast(builder.gep(wp, [i]), vi32.as_pointer()), align=1)
                    even.append(builder.bitcast(builder.shl(words, ir.Constant(vi32, [16] * _LANES)), vx))
                    odd.append(builder.bitcast(builder.and_(words, ir.Constant(vi32, [-65536] * _LANES)), vx))
                for (a, r), acc_even, acc_odd in zip(pairs, accs_even, accs_odd):
                    builder.store(_ir_fma(builder, xe[a], even[r], builder.load(acc_even)), acc_even)
                    builder.store(_ir_fma(builder, xo[a], odd[r], builder.load(acc_odd)), acc_odd)

            zero = ir.Constant(vx, [0.0] * _LANES)
            accs = [[cgutils.alloca_once_value(builder, zero) for _ in pairs] for _ in range(_UNROLL)]  # [u][pair]
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
            tails = [cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0)) for _ in pairs]
            with cgutils.for_range_slice(builder, n_vec, n, ir.Constant(_I64, 1)) as (i, _):
                xs_i = [builder.load(builder.gep(xp, [i]), align=1) for xp in xps]
                ws_i = [_ir_widen(builder, builder.load(builder.gep(wp, [i]), align=1), kind) for wp in wps]
                for (a, r), tail in zip(pairs, tails):
                    builder.store(_ir_fma(builder, xs_i[a], ws_i[r], builder.load(tail)), tail)
            out = []
            for p in range(len(pairs)):
                v = [builder.load(accs[u][p]) for u in range(_UNROLL)]
                total = builder.fadd(builder.fadd(v[0], v[1]), builder.fadd(v[2], v[3]))
                out.append(builder.fadd(_ir_hsum(builder, total), builder.load(tails[p])))
            return context.make_tuple(builder, sig.return_type, out) if (x_tupled or w_tupled) else out[0]

        ret = types.UniTuple(types.float32, RX * R) if (x_tupled or w_tupled) else types.float32
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
# Small matrix products on vectors of 16 floats, for the prompt kernels
# (attention.py: blocks of 4 queries; prefill.py: panels of widened weights).
# ---------------------------------------------------------------------------

_U = 4  # rows of A and C per _matmul_rows call (the query rows of a block in _attend_prompt)


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


def _ir_transpose16(builder, rows):
    """IR: 16 vectors of 16 lanes transposed (out[m][i] = rows[i][m]): four rounds of swapping the
    d x d blocks off the diagonal between rows i and i + d (d = 8, 4, 2, 1), 64 shuffles."""
    rows = list(rows)
    i32v = ir.VectorType(ir.IntType(32), _LANES)
    for d in (8, 4, 2, 1):
        lo = ir.Constant(i32v, [j if not j & d else 16 + j - d for j in range(16)])
        hi = ir.Constant(i32v, [j + d if not j & d else 16 + j for j in range(16)])
        for i in range(16):
            if not i & d:
                a, c = rows[i], rows[i + d]
                rows[i], rows[i + d] = builder.shuffle_vector(a, c, lo), builder.shuffle_vector(a, c, hi)
    return rows


# A 16 x 16 block transposed in registers (prefill.py: packing the tokens, writing out the sums).
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
        rows = _ir_transpose16(builder, [_ir_vload(builder, sp, builder.add(builder.mul(builder.add(r0_, _i64(i)), lds), c0_))
                                         for i in range(16)])
        bias = _ir_vload(builder, bp, b0_)
        for m in range(16):  # rows[m] now holds src[r0 + i, c0 + m] for i = 0..15
            _ir_vstore(builder, builder.fadd(rows[m], bias), dp, builder.add(builder.mul(builder.add(t0_, _i64(m)), ldd), j0_))
        return context.get_dummy_value()

    return types.void(src, r0, c0, b, b0, dst, t0, j0), codegen
