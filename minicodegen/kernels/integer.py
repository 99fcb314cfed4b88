"""int8 weights times int8 activations: each row of x quantized to 8 bits, the products of bytes
summed exactly in int32 by integer dot-product instructions, then scaled back to float32.

Definition: ``ops.linear_int8_rows`` (with ``ops.quantize_rows``).  The integer sums are exact,
so the kernels equal the definition *bit for bit*, on every instruction set and for every
number of threads: only the float32 steps around them (the row's max, ``rint``, the final
``acc * (sx * scale) + b``) round, and they round as NumPy does.

Kernels: ``_idot`` (the dot products of a few rows of x with a few rows of W, in LLVM IR for the
instruction set of ``cpu.int8_dot``), ``_quantize_rows``, ``_qgemv`` / ``_qgemv_step`` (decode: a
few rows of x, W streamed from memory once) and the fused decode block's ``_qgemv_pair`` /
``_qgemv_sum_into``; ``_pack16``, 16 rows of int8 or bf16 weights transposed as 4-byte groups (the
panels of the prompt kernels, tested through them).  The prompt kernels and the wrapper,
``linear_int8_rows``, are in qgemm.py and amx.py.

Tested against (tests/test_kernels_integer.py): ``ops.linear_int8_rows`` and
``ops.quantize_rows``, exactly, for all three instruction sets the CPU can run (``widen``
everywhere), shapes with tails of every block size, T = 1 .. 37.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .cpu import Isa, IsaType, int8_dot
from .simd import _bits_as_f32, _ir_transpose16

# The instruction set the kernels are compiled for on this machine (see cpu.int8_dot).
INT8_ISA = Isa(int8_dot())

# ---------------------------------------------------------------------------
# The dot products: _idot(xs, xsums, ws, pf, isa) -> sum_i x_a[i] * w_b[i] for every x_a of
# the tuple xs and w_b of the tuple ws (int8 rows of one length), as int32, a-major.
#
# avx512_vnni / avx_vnni: vpdpbusd multiplies *unsigned* bytes by signed bytes, four products
# per 32-bit lane: acc[l] += sum_k u[4l+k] * s[4l+k].  The weights are made unsigned in the
# register, w + 128 = w XOR 0x80 (one vpxor per 64 weights, shared by all rows of x), and x stays
# signed, so each lane sums (w + 128) * x; the caller's row sum of x then removes the offset:
#     sum_i x[i] * w[i] = sum_i x[i] * (w[i] + 128) - 128 * sum_i x[i].
# No sum is precomputed per weight row and nothing about the weights is stored.  (The other
# usual choice, x + 128 with a compensation 128 * sum_i w[i] per weight row, needs those sums
# made at load time or in every call.)  |products| <= 255 * 127 and n_in <= 65536 keep every
# int32 sum exact.
# widen: x and w widened to 16 bits; products summed in pairs into 32 bits (LLVM turns the
# pattern into vpmaddwd on AVX2 and AVX-512, pmaddwd on SSE2); no offset.
#
# The loop takes 64 bytes a step (32 on 256-bit registers) for every (a, b) pair into its own
# vector of int32 lanes; the last n % 64 bytes go one by one.  At the end the lanes of all pairs
# are added together pairwise (_reduce_many: for 4 x 4 pairs of 16 lanes, 30 shuffles and 15
# additions rather than 16 separate trees of 4 levels).  pf > 0: prefetch the W lines pf bytes
# ahead (decode, where W streams from memory; see gemv.PREFETCH_INT8).
# ---------------------------------------------------------------------------

_I8, _I32, _I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
_STEP = {"avx512_vnni": 64, "avx_vnni": 32, "widen": 32}  # bytes of a row per step


def _i64(v: int) -> ir.Constant:
    return ir.Constant(_I64, v)


def _reduce_many(builder, vecs):
    """IR: the lane sums of integer vectors of one length, in order.  Pairs of vectors are added
    half into half: after a round, each vector holds the partial sums of two inputs in its two
    halves, then of four in its quarters, ..."""
    L = vecs[0].type.count
    glen = L  # lanes per group; each vector holds L // glen groups, one per input
    while glen > 1 and len(vecs) > 1 and len(vecs) % 2 == 0:
        h = glen // 2
        lo = [g * glen + i for g in range(L // glen) for i in range(h)]
        hi = [g * glen + h + i for g in range(L // glen) for i in range(h)]
        lo_c = ir.Constant(ir.VectorType(_I32, L), lo + [L + i for i in lo])
        hi_c = ir.Constant(ir.VectorType(_I32, L), hi + [L + i for i in hi])
        vecs = [builder.add(builder.shuffle_vector(a, b, lo_c), builder.shuffle_vector(a, b, hi_c))
                for a, b in zip(vecs[0::2], vecs[1::2])]
        glen = h
    out = []
    for v in vecs:
        for g in range(L // glen):
            s = builder.extract_element(v, ir.Constant(_I32, g * glen))
            for i in range(1, glen):
                s = builder.add(s, builder.extract_element(v, ir.Constant(_I32, g * glen + i)))
            out.append(s)
    return out


def _is_i8_row(t) -> bool:
    return isinstance(t, types.Array) and t.ndim == 1 and t.dtype == types.int8 and t.layout == "C"


@intrinsic
def _idot(typingctx, xs, xsums, ws, pf, isa):
    """(sum_i xs[a][i] * ws[b][i] for a, b) as int32, a-major; xs, ws tuples of int8 rows of one
    length (the caller checks), xsums[a] = sum_i xs[a][i] (used by the vpdpbusd kinds)."""
    if not (isinstance(xs, types.UniTuple) and isinstance(ws, types.UniTuple) and _is_i8_row(xs.dtype)
            and _is_i8_row(ws.dtype) and isinstance(xsums, types.UniTuple) and len(xsums) == len(xs)
            and isinstance(xsums.dtype, types.Integer) and isinstance(pf, types.Integer)
            and isinstance(isa, IsaType) and isa.isa in _STEP):
        return None
    RX, RW, kind = len(xs), len(ws), isa.isa
    step = _STEP[kind]
    vnni = kind != "widen"

    def codegen(context, builder, sig, args):
        rows = [context.make_array(xs.dtype)(context, builder, value=builder.extract_value(args[0], a)) for a in range(RX)]
        wrows = [context.make_array(ws.dtype)(context, builder, value=builder.extract_value(args[2], b)) for b in range(RW)]
        xsum = [context.cast(builder, builder.extract_value(args[1], a), xsums.dtype, types.int32) for a in range(RX)]
        pf_bytes = context.cast(builder, args[3], sig.args[3], types.int64)
        n = builder.extract_value(rows[0].shape, 0)
        xp = [builder.bitcast(r.data, _I8.as_pointer()) for r in rows]
        wp = [builder.bitcast(r.data, _I8.as_pointer()) for r in wrows]
        vb = ir.VectorType(_I8, step)
        lanes = step // 4 if vnni else step // 2
        vacc = ir.VectorType(_I32, lanes)
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(vacc, [0] * lanes)) for _ in range(RW)] for _ in range(RX)]
        i32 = ir.IntType(32)
        i8p = _I8.as_pointer()
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8")
        if vnni:
            name = "llvm.x86.avx512.vpdpbusd.512" if step == 64 else "llvm.x86.avx512.vpdpbusd.256"
            dp = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vacc, [vacc, vb, vb]), name)
            offset = ir.Constant(vb, [-128] * step)  # XOR 0x80: w + 128 as an unsigned byte
        else:
            v32 = ir.VectorType(_I32, step)
            even = ir.Constant(ir.VectorType(_I32, lanes), list(range(0, step, 2)))
            odd = ir.Constant(ir.VectorType(_I32, lanes), list(range(1, step, 2)))

        def load(p, i):
            return builder.load(builder.bitcast(builder.gep(p, [i]), vb.as_pointer()), align=1)

        n_main = builder.and_(n, _i64(-step))
        with cgutils.for_range_slice(builder, _i64(0), n_main, _i64(step)) as (i, _):
            with builder.if_then(builder.icmp_signed(">", pf_bytes, _i64(0))):
                for p in wp:  # (read, into L2, data), as simd._dot
                    at = builder.gep(p, [builder.add(i, pf_bytes)])
                    builder.call(prefetch, [at, ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])
            if vnni:
                wv = [builder.xor(load(p, i), offset) for p in wp]
            else:
                wv = [builder.sext(load(p, i), v32) for p in wp]
            for a in range(RX):
                xv = load(xp[a], i)
                if not vnni:
                    xv = builder.sext(xv, v32)
                for b in range(RW):
                    acc = accs[a][b]
                    if vnni:
                        builder.store(builder.call(dp, [builder.load(acc), wv[b], xv]), acc)
                    else:  # products of 16-bit values, summed in pairs (vpmaddwd)
                        prod = builder.mul(xv, wv[b])
                        pair = builder.add(builder.shuffle_vector(prod, prod, even), builder.shuffle_vector(prod, prod, odd))
                        builder.store(builder.add(builder.load(acc), pair), acc)
        tails = [[cgutils.alloca_once_value(builder, ir.Constant(_I32, 0)) for _ in range(RW)] for _ in range(RX)]
        with cgutils.for_range_slice(builder, n_main, n, _i64(1)) as (i, _):
            ws_i = [builder.load(builder.gep(p, [i])) for p in wp]
            # (w + 128) for the vpdpbusd kinds too, so that one offset covers the whole row
            ws_i = [builder.zext(builder.xor(w, ir.Constant(_I8, -128)), _I32) if vnni else builder.sext(w, _I32) for w in ws_i]
            for a in range(RX):
                x_i = builder.sext(builder.load(builder.gep(xp[a], [i])), _I32)
                for b in range(RW):
                    builder.store(builder.add(builder.load(tails[a][b]), builder.mul(x_i, ws_i[b])), tails[a][b])
        sums = _reduce_many(builder, [builder.load(accs[a][b]) for a in range(RX) for b in range(RW)])
        out = []
        for a in range(RX):
            for b in range(RW):
                s = builder.add(sums[a * RW + b], builder.load(tails[a][b]))
                if vnni:
                    s = builder.sub(s, builder.mul(xsum[a], ir.Constant(_I32, 128)))
                out.append(s)
        return context.make_tuple(builder, sig.return_type, out)

    return types.UniTuple(types.int32, RX * RW)(xs, xsums, ws, pf, isa), codegen


# ---------------------------------------------------------------------------
# Quantizing rows of x (ops.quantize_rows).
# ---------------------------------------------------------------------------


@njit(inline="always", error_model="numpy")
def _quantize_row(x, xq):  # pragma: no cover - compiled
    """xq = rint(x * 127 / max|x|) as int8; returns (sx, sum of xq) (see ops.quantize_rows).

    max|x| is taken on the bit patterns: for floats that are not NaN, |x| orders as its bits
    (sign cleared) order as integers, and every NaN lies above inf, so one integer max (which
    vectorizes; a float max reduction does not, without fast-math) also finds inf and NaN."""
    bits = x.view(np.uint32)
    m = np.uint32(0)
    for i in range(x.shape[0]):
        m = max(m, bits[i] & np.uint32(0x7FFFFFFF))
    if m == 0 or m >= np.uint32(0x7F800000):  # zeros, or inf / NaN in the row
        xq[:] = 0
        return (np.float32(0.0) if m == 0 else np.float32(np.nan)), 0
    amax = _bits_as_f32(m)
    inv = np.float32(127.0) / amax
    s = 0
    for i in range(x.shape[0]):
        q = np.int32(np.rint(x[i] * inv))
        xq[i] = q
        s += q
    return amax / np.float32(127.0), s


@njit(parallel=True, error_model="numpy", cache=True)
def _quantize_rows(x, xq, sx, xsum):  # pragma: no cover - compiled
    """x [T, n] float32 -> xq [T, n] int8, sx [T] float32, xsum [T] int32 (row sums of xq)."""
    for t in prange(x.shape[0]):
        sx[t], xsum[t] = _quantize_row(x[t], xq[t])


@njit(inline="always")
def _out(acc, t, j, sx, scale, b, y):  # pragma: no cover - compiled
    """y[t, j] = float32(acc) * (sx[t] * scale[j]) [+ b[j]] (ops.linear_int8_rows' rounding)."""
    v = np.float32(acc) * (sx[t] * scale[j])
    if b is not None:
        v += b[j]
    y[t, j] = v


# ---------------------------------------------------------------------------
# Decode: a few rows of x; W is read from memory once per call.  As gemv._gemv_step, a step takes
# rows j, j + h, j + 2h, j + 3h of W (four streams of memory), for every 4 rows of x (then the
# rest one by one); the rows of W stay in L1 while the rows of x go by.
#
# One row of x (single-stream decode) has a branch of its own, before the loops over the rows of x,
# although those loops run the same _idot for T = 1.  On an AMD EPYC (family 26, AVX512-VNNI),
# qkv_proj + fc_in of 20 blocks of the 350M shape at T = 1 took 4.44 ms through the loops and
# 3.50 ms through the branch, out_proj + fc_out 2.77 and 2.55 ms (medians of 31 interleaved rounds
# in one process; the float-activation kernels of the same weights: 3.40 and 2.46 ms).  Both
# compile to the same inner loop; what costs the difference in the loops' version was not found.
# ---------------------------------------------------------------------------


@njit(inline="always")
def _qgemv_step(xq, xsum, sx, W, j, h, scale, b, y, pf, isa):  # pragma: no cover - compiled
    """Rows j, j + h, j + 2h, j + 3h of y = (xq @ W.T) * (sx[:, None] * scale) [+ b] (those
    before the end of W)."""
    n = W.shape[0]
    T = xq.shape[0]
    if T == 1 and j + 3 * h < n:  # (one row of x, single-stream decode: see the section comment)
        u1 = _idot((xq[0],), (xsum[0],), (W[j], W[j + h], W[j + 2 * h], W[j + 3 * h]), pf, isa)
        for r in range(4):
            _out(u1[r], 0, j + r * h, sx, scale, b, y)
    elif j + 3 * h < n:
        ws = (W[j], W[j + h], W[j + 2 * h], W[j + 3 * h])
        t = 0
        while t + 4 <= T:
            u = _idot((xq[t], xq[t + 1], xq[t + 2], xq[t + 3]), (xsum[t], xsum[t + 1], xsum[t + 2], xsum[t + 3]),
                      ws, pf if t == 0 else 0, isa)
            for a in range(4):
                for r in range(4):
                    _out(u[4 * a + r], t + a, j + r * h, sx, scale, b, y)
            t += 4
        while t < T:
            u1 = _idot((xq[t],), (xsum[t],), ws, pf if t == 0 else 0, isa)
            for r in range(4):
                _out(u1[r], t, j + r * h, sx, scale, b, y)
            t += 1
    else:
        for r in range(4):
            if j + r * h < n:
                for t in range(T):
                    _out(_idot((xq[t],), (xsum[t],), (W[j + r * h],), pf if t == 0 else 0, isa)[0],
                         t, j + r * h, sx, scale, b, y)


@njit(parallel=True, error_model="numpy", cache=True)
def _qgemv(xq, xsum, sx, W, scale, b, y, pf, isa):  # pragma: no cover - compiled
    """y = (xq @ W.T) * (sx[:, None] * scale) [+ b] for a few rows of xq, W streamed once."""
    h = (W.shape[0] + 3) // 4
    for j in prange(h):
        _qgemv_step(xq, xsum, sx, W, j, h, scale, b, y, pf, isa)


@njit(inline="always")
def _quantize_few(x):  # pragma: no cover - compiled
    """_quantize_rows for the few rows of a decode step, in the calling thread: (xq, sx, xsum)."""
    T = x.shape[0]
    xq = np.empty(x.shape, np.int8)
    sx = np.empty(T, np.float32)
    xsum = np.empty(T, np.int32)
    for t in range(T):
        sx[t], xsum[t] = _quantize_row(x[t], xq[t])
    return xq, sx, xsum


@njit(parallel=True, error_model="numpy", cache=True)
def _qgemv_pair(x, W1, s1, y1, W2, s2, b2, y2, pf, isa):  # pragma: no cover - compiled
    """decode._gemv_pair with int8 activations: y1 = x @ W1.T * s1, y2 = x @ W2.T * s2 + b2,
    x [B, n_in] float32 quantized per row first (one parallel loop over both matrices' rows)."""
    xq, sx, xsum = _quantize_few(x)
    h1 = (W1.shape[0] + 3) // 4
    h2 = (W2.shape[0] + 3) // 4
    for j in prange(h1 + h2):
        if j < h1:
            _qgemv_step(xq, xsum, sx, W1, j, h1, s1, None, y1, pf, isa)
        else:
            _qgemv_step(xq, xsum, sx, W2, j - h1, h2, s2, b2, y2, pf, isa)


@njit(parallel=True, error_model="numpy", cache=True)
def _qgemv_sum_into(x, a, W1, s1, hidden, W2, s2, b2, u, v, pf, isa):  # pragma: no cover - compiled
    """decode._gemv_sum_into with int8 activations: x += a @ W1.T * s1 + (hidden @ W2.T * s2 + b2),
    a and hidden quantized per row first; u, v [B, E] float32 scratch for the two products."""
    aq, sa, asum = _quantize_few(a)
    hq, sh, hsum = _quantize_few(hidden)
    E = W1.shape[0]
    h = (E + 3) // 4
    for j in prange(h):  # (rows j.. of both matrices in one step, so that the threads' shares cost the same)
        _qgemv_step(aq, asum, sa, W1, j, h, s1, None, u, pf, isa)
        _qgemv_step(hq, hsum, sh, W2, j, h, s2, b2, v, pf, isa)
    for t in range(x.shape[0]):
        for j in range(E):
            x[t, j] = x[t, j] + (u[t, j] + v[t, j])


# Weights repacked in panels: 16 rows of W transposed as 4-byte groups (the panels of the prompt kernels in qgemm.py and amx.py).
_V16 = ir.VectorType(ir.IntType(32), 16)


def _i8_matrix(context, builder, ty, val):
    a = context.make_array(ty)(context, builder, value=val)
    return builder.bitcast(a.data, ir.IntType(8).as_pointer()), builder.extract_value(a.strides, 0)


def _is_matrix(t, dtype) -> bool:
    return isinstance(t, types.Array) and t.ndim == 2 and t.dtype == dtype and t.layout == "C"


@intrinsic
def _pack16(typingctx, W, r0, k0, Wp, c0):
    """Wp[q0 + m, c0 + i] = the 4 bytes at W[r0 + i, k0 + 4m / itemsize ...] for i, m < 16
    (16 rows x 64 bytes; q0 = k0 * itemsize / 4): int8 W (4 weights, each XOR 0x80 = w + 128 as
    unsigned bytes) or uint16 = bf16 W (2 weights, as they are).  Wp int32 [n * itemsize / 4, 64];
    the caller checks the bounds."""
    if not (isinstance(W, types.Array) and W.ndim == 2 and W.layout == "C" and W.dtype in (types.int8, types.uint16)
            and _is_matrix(Wp, types.int32) and all(isinstance(v, types.Integer) for v in (r0, k0, c0))):
        return None
    itemsize = W.dtype.bitwidth // 8

    def codegen(context, builder, sig, args):
        wp, ldw = _i8_matrix(context, builder, sig.args[0], args[0])
        dp, ldd = _i8_matrix(context, builder, sig.args[3], args[3])
        r0_, k0_, c0_ = (context.cast(builder, args[i], sig.args[i], types.int64) for i in (1, 2, 4))
        i64 = ir.IntType(64)
        k0_bytes = builder.mul(k0_, ir.Constant(i64, itemsize))
        rows = []
        for i in range(16):
            at = builder.add(builder.mul(builder.add(r0_, ir.Constant(i64, i)), ldw), k0_bytes)
            rows.append(builder.load(builder.bitcast(builder.gep(wp, [at]), _V16.as_pointer()), align=1))
        rows = _ir_transpose16(builder, rows)  # (as simd._transpose_add16, on int32)
        if itemsize == 1:
            rows = [builder.xor(r, ir.Constant(_V16, [-2139062144] * 16)) for r in rows]  # 0x80808080
        q0 = builder.sdiv(k0_bytes, ir.Constant(i64, 4))
        for m in range(16):
            at = builder.add(builder.mul(builder.add(q0, ir.Constant(i64, m)), ldd), builder.mul(c0_, ir.Constant(i64, 4)))
            builder.store(rows[m], builder.bitcast(builder.gep(dp, [at]), _V16.as_pointer()), align=1)
        return context.get_dummy_value()

    return types.void(W, r0, k0, Wp, c0), codegen
