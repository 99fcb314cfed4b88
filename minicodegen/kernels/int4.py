"""int4 weights times int8 activations: 4-bit weights in groups along n_in, each group with its
own float16 scale, multiplied by rows of x quantized to 8 bits with integer dot products.

Layout (``ops.unpack_int4``): ``W uint8 [n_out, n_in / 2]``, byte j of a group of G weights
holding weight j (low nibble) and weight j + G / 2 (high nibble) as q + 8 in 0..15;
``scale float16 [n_out, n_in / G]``; W[o, i] = q[o, i] · scale[o, i // G].

Definition: ``ops.linear_int4_rows``.  Per group the products of integers are summed exactly;
the groups' sums are then scaled and added in float32 vector lanes (fused multiply-add), in
another order than NumPy's, so the kernels match the definition within float32 rounding.  The
order is fixed: 16 lanes (8 for groups of 32), lane l holding products 4l .. 4l + 3 of each 64
bytes, whatever the instruction set (avx_vnni fills them two registers at a time, ``widen``
sums the same four products), then the lanes added in halves.  So a row of x gets the same
numbers on every CPU, and in a batch, alone or in a prompt.

How a group is multiplied (``_i4dot``): its G / 2 bytes loaded into both halves of a register,
shifted by 0 and 4 bits (16-bit words) and masked give the G codes in order as unsigned bytes
u = q + 8; ``vpdpbusd`` (or, without VNNI, bytes widened to 16
bits, multiplied and summed by fours) sums u · xq in int32 lanes.  The lanes start from the group's
compensation -8 · Σ xq over the group (one int32, computed with the row's quantization), so they
end on Σ q · xq exactly; they are converted to float32 and added into float32 lanes times the
group's scale (the scales of 16 groups converted from float16 at once).  Nothing is precomputed
per weight and nothing is stored besides the file.  On the 2-core Xeon measured, this is about
four vector operations per 64 weights where int8 needs one, and int4 decode is bound by them,
not by memory (docs/performance.md).

Kernels: ``_i4dot``, ``_quantize_rows4`` (xq, sx and the per-group compensations), ``_q4gemm``
(prompts: panels of 16 rows of W, blocks of 4 rows of x), ``_q4gemv`` (decode) and the fused
decode block's ``_q4gemv_pair`` / ``_q4gemv_sum_into`` (integer.py's int8 kernels, step for step).

Tested against (tests/test_kernels_int4.py): ``ops.linear_int4_rows`` for every instruction set
the CPU runs (the same numbers on each), every group size, T = 1 .. 37 and odd n_out.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import NativeValue, intrinsic, models, register_model, typeof_impl, unbox

from .arrays import _check_w, _prep_vec, _prep_x, _ro, _tile_buffer
from .cpu import INT8_DOTS
from .integer import INT8_ISA, _quantize_row

GROUPS = (32, 64, 128, 256)  # group sizes the kernels take (the definition takes any even size)


class Q4:
    """What an int4 kernel is compiled for: the integer dot product (cpu.INT8_DOTS) and the group."""

    def __init__(self, isa: str, group: int) -> None:
        if isa not in INT8_DOTS:
            raise ValueError(f"unknown integer dot product {isa!r}; known: {', '.join(INT8_DOTS)}")
        if group not in GROUPS:
            raise ValueError(f"int4 group size {group} is not one of {', '.join(map(str, GROUPS))}")
        self.isa, self.group = isa, group

    def __repr__(self) -> str:
        return f"Q4({self.isa!r}, {self.group})"


class Q4Type(types.Dummy):
    def __init__(self, isa: str, group: int) -> None:
        self.isa, self.group = isa, group
        super().__init__(name=f"Q4({isa},{group})")


@typeof_impl.register(Q4)
def _typeof_q4(val, c):
    return Q4Type(val.isa, val.group)


register_model(Q4Type)(models.OpaqueModel)


@unbox(Q4Type)
def _unbox_q4(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())


def q4_kind(group: int, isa: str | None = None) -> Q4:
    """The Q4 for int4 weights in groups of ``group`` on this CPU (or with dot product ``isa``)."""
    return Q4(INT8_ISA.name if isa is None else isa, group)


# ---------------------------------------------------------------------------
# _i4dot(xs, comps, ws, ss, pf, kind): for every row x_a of xs (int8 [n_in]) and w_b of ws (uint8
# [n_in / 2], packed), sum_g scale_b[g] * sum_{i in g} x_a[i] * q_b[i] in float32; comps[a] [n_groups]
# int32 holds -8 * (sum of x_a over each group), ss[b] [n_groups] the float16 scales as uint16.
# ---------------------------------------------------------------------------

_I8, _I16, _I32, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
_F32 = ir.FloatType()


def _is_row(t, dtype) -> bool:
    return isinstance(t, types.Array) and t.ndim == 1 and t.dtype == dtype and t.layout == "C"


def _splat(builder, value, n):
    v = builder.insert_element(ir.Constant(ir.VectorType(value.type, n), None), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), [0] * n))


def _lane_sum(builder, v):
    """IR: the sum of the float32 lanes of v, halves added until one lane is left: the same order
    for every pair of rows, so a row's result does not depend on the rows beside it."""
    n = v.type.count
    while n > 1:
        n //= 2
        lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), list(range(n))))
        hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), list(range(n, 2 * n))))
        v = builder.fadd(lo, hi)
    return builder.extract_element(v, ir.Constant(_I32, 0))


@intrinsic
def _i4dot(typingctx, xs, comps, ws, ss, pf, kind):
    """(float32 sum for each (a, b)), a-major; see the section comment."""
    if not (isinstance(xs, types.UniTuple) and isinstance(comps, types.UniTuple) and isinstance(ws, types.UniTuple)
            and isinstance(ss, types.UniTuple) and len(comps) == len(xs) and len(ss) == len(ws)
            and _is_row(xs.dtype, types.int8) and _is_row(comps.dtype, types.int32) and _is_row(ws.dtype, types.uint8)
            and _is_row(ss.dtype, types.uint16) and isinstance(pf, types.Integer) and isinstance(kind, Q4Type)):
        return None
    RX, RW, G = len(xs), len(ws), kind.group
    C = min(G, 64)  # bytes of a chunk: lane l of a group sums products 4l .. 4l + 3 of each chunk
    L = C // 4  # lanes
    P = 8 if kind.isa == "avx_vnni" else L  # lanes of one register (avx_vnni: 256-bit)
    parts = L // P
    vnni = kind.isa != "widen"

    def codegen(context, builder, sig, args):
        def rows(k, t, n):
            return [builder.bitcast(context.make_array(t.dtype)(context, builder, value=builder.extract_value(args[k], i)).data,
                                    ir.IntType(t.dtype.dtype.bitwidth).as_pointer()) for i in range(n)]

        def const_i32(values):
            return ir.Constant(ir.VectorType(_I32, len(values)), list(values))

        xp, cp, wp, sp = rows(0, xs, RX), rows(1, comps, RX), rows(2, ws, RW), rows(3, ss, RW)
        s0 = context.make_array(ss.dtype)(context, builder, value=builder.extract_value(args[3], 0))
        n_groups = builder.extract_value(s0.shape, 0)
        pf_bytes = context.cast(builder, args[4], sig.args[4], types.int64)
        vf, vi, vb = ir.VectorType(_F32, P), ir.VectorType(_I32, P), ir.VectorType(_I8, 4 * P)
        accs = [[[cgutils.alloca_once_value(builder, ir.Constant(vf, [0.0] * P)) for _ in range(parts)]
                 for _ in range(RW)] for _ in range(RX)]
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf, vf, vf]), f"llvm.fma.v{P}f32")
        i8p = _I8.as_pointer()
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32]), "llvm.prefetch.p0i8")
        if vnni:
            name = "llvm.x86.avx512.vpdpbusd.512" if P == 16 else "llvm.x86.avx512.vpdpbusd.256"
            dp = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vi, [vi, vb, vb]), name)
        else:
            vw = ir.VectorType(_I32, 4 * P)
        half = ir.VectorType(_I8, G // 2)

        def load(p, i, t):
            return builder.load(builder.bitcast(builder.gep(p, [i]), t.as_pointer()), align=1)

        def quads(prod):  # widen: the sums of 4 consecutive products (what a vpdpbusd lane holds)
            q = [builder.shuffle_vector(prod, prod, const_i32(range(k, 4 * P, 4))) for k in range(4)]
            return builder.add(builder.add(q[0], q[1]), builder.add(q[2], q[3]))

        steps = [(c, p) for c in range(0, G, C) for p in range(parts)]  # (chunk, part) of a group
        shifts = ir.Constant(ir.VectorType(_I16, G // 2), [0] * (G // 4) + [4] * (G // 4))

        def codes_of(b, g):
            """Group g of W row b as G unsigned bytes u = q + 8, in order: the G / 2 bytes twice,
            shifted by 0 (first half) and 4 (second half) in 16-bit words, then masked."""
            packed = load(wp[b], builder.mul(g, ir.Constant(_I64, G // 2)), half)
            twice = builder.shuffle_vector(packed, packed, const_i32(list(range(G // 2)) * 2))
            words = builder.lshr(builder.bitcast(twice, ir.VectorType(_I16, G // 2)), shifts)
            return builder.and_(builder.bitcast(words, ir.VectorType(_I8, G)), ir.Constant(ir.VectorType(_I8, G), [15] * G))

        def group(g, scale_of):
            """The body for group g; scale_of(b): W row b's scale for it, as P float32 lanes."""
            wv, scales = [], []
            for b in range(RW):
                codes = codes_of(b, g)
                wv.append([builder.shuffle_vector(codes, codes, const_i32(range(c + 4 * P * p, c + 4 * P * (p + 1))))
                           for c, p in steps])
                scales.append(scale_of(b))
            for a in range(RX):
                comp = builder.insert_element(ir.Constant(vi, [0] * P), builder.load(builder.gep(cp[a], [g])), ir.Constant(_I32, 0))
                base = builder.mul(g, ir.Constant(_I64, G))
                xv = [load(xp[a], builder.add(base, ir.Constant(_I64, c + 4 * P * p)), vb) for c, p in steps]
                if not vnni:
                    xv = [builder.sext(v, vw) for v in xv]
                for b in range(RW):
                    acc = [comp] + [ir.Constant(vi, [0] * P)] * (parts - 1)  # the compensation in lane 0
                    for k, (_, p) in enumerate(steps):
                        if vnni:
                            acc[p] = builder.call(dp, [acc[p], wv[b][k], xv[k]])
                        else:
                            acc[p] = builder.add(acc[p], quads(builder.mul(xv[k], builder.zext(wv[b][k], vw))))
                    for p in range(parts):
                        f = builder.sitofp(acc[p], vf)
                        builder.store(builder.call(fma, [f, scales[b], builder.load(accs[a][b][p])]), accs[a][b][p])

        # Groups in blocks of 16: the block's 16 scales converted from float16 at once (one
        # vcvtph2ps per row) into scratch that each group's multiply reads as a broadcast; the
        # prefetches of the block's 8 lines of each row in one burst.  The last block may hold
        # fewer groups (its scales converted one by one): one copy of the group's code for all.
        SB = 16
        vsf = ir.VectorType(_F32, SB)
        scratch = [cgutils.alloca_once(builder, ir.ArrayType(_F32, SB)) for _ in range(RW)]
        sb = ir.Constant(_I64, SB)
        n_blocks = builder.udiv(builder.add(n_groups, ir.Constant(_I64, SB - 1)), sb)
        with cgutils.for_range(builder, n_blocks) as blk:
            g0 = builder.mul(blk.index, sb)
            left = builder.sub(n_groups, g0)
            full = builder.icmp_signed(">=", left, sb)
            count = builder.select(full, sb, left)
            with builder.if_then(builder.icmp_signed(">", pf_bytes, ir.Constant(_I64, 0))):
                for b in range(RW):
                    at = builder.add(builder.mul(g0, ir.Constant(_I64, G // 2)), pf_bytes)
                    for line in range(0, SB * G // 2, 64):
                        builder.call(prefetch, [builder.gep(wp[b], [builder.add(at, ir.Constant(_I64, line))]),
                                                ir.Constant(_I32, 0), ir.Constant(_I32, 2), ir.Constant(_I32, 1)])
            with builder.if_else(full) as (whole, part):
                with whole:
                    for b in range(RW):
                        v = load(sp[b], g0, ir.VectorType(_I16, SB))
                        f = builder.fpext(builder.bitcast(v, ir.VectorType(ir.HalfType(), SB)), vsf)
                        builder.store(f, builder.bitcast(scratch[b], vsf.as_pointer()), align=4)
                with part:
                    with cgutils.for_range(builder, count) as k:
                        for b in range(RW):
                            h = builder.bitcast(builder.load(builder.gep(sp[b], [builder.add(g0, k.index)])), ir.HalfType())
                            builder.store(builder.fpext(h, _F32), builder.gep(scratch[b], [ir.Constant(_I32, 0), k.index]))
            with cgutils.for_range(builder, count) as k:
                group(builder.add(g0, k.index),
                      lambda b: _splat(builder, builder.load(builder.gep(scratch[b], [ir.Constant(_I32, 0), k.index])), P))

        def lanes(a, b):  # the L lanes of pair (a, b) in one vector
            v = [builder.load(x) for x in accs[a][b]]
            return v[0] if parts == 1 else builder.shuffle_vector(v[0], v[1], const_i32(range(L)))

        sums = [_lane_sum(builder, lanes(a, b)) for a in range(RX) for b in range(RW)]
        return context.make_tuple(builder, sig.return_type, sums)

    return types.UniTuple(types.float32, RX * RW)(xs, comps, ws, ss, pf, kind), codegen


# ---------------------------------------------------------------------------
# Quantizing rows of x: integer._quantize_row, then each group's compensation.
# ---------------------------------------------------------------------------


@njit(inline="always")
def _quantize_row4(x, xq, comp):  # pragma: no cover - compiled
    """xq = quantize(x) (integer._quantize_row), comp[g] = -8 * sum of xq over group g; returns sx."""
    sx, _ = _quantize_row(x, xq)
    G = xq.shape[0] // comp.shape[0]
    for g in range(comp.shape[0]):
        s = 0
        for i in range(g * G, g * G + G):
            s += xq[i]
        comp[g] = -8 * s
    return sx


@njit(parallel=True, error_model="numpy", cache=True)
def _quantize_rows4(x, xq, sx, comp):  # pragma: no cover - compiled
    """x [T, n] float32 -> xq [T, n] int8, sx [T] float32, comp [T, n_groups] int32."""
    for t in prange(x.shape[0]):
        sx[t] = _quantize_row4(x[t], xq[t], comp[t])


@njit(inline="always")
def _out4(acc, t, j, sx, b, y):  # pragma: no cover - compiled
    """y[t, j] = acc * sx[t] [+ b[j]]."""
    v = acc * sx[t]
    if b is not None:
        v += b[j]
    y[t, j] = v


# ---------------------------------------------------------------------------
# Decode: as integer.py's kernels, four rows of W a quarter of W apart a step.
# ---------------------------------------------------------------------------


@njit(inline="always")
def _q4gemv_step(xq, comp, sx, W, j, h, S, b, y, pf, kind):  # pragma: no cover - compiled
    """Rows j, j + h, j + 2h, j + 3h of y = ops.linear_int4_rows (those before the end of W)."""
    n = W.shape[0]
    T = xq.shape[0]
    if j + 3 * h < n:
        ws = (W[j], W[j + h], W[j + 2 * h], W[j + 3 * h])
        ss = (S[j], S[j + h], S[j + 2 * h], S[j + 3 * h])
        t = 0
        while t + 4 <= T:
            u = _i4dot((xq[t], xq[t + 1], xq[t + 2], xq[t + 3]), (comp[t], comp[t + 1], comp[t + 2], comp[t + 3]),
                       ws, ss, pf if t == 0 else 0, kind)
            for a in range(4):
                for r in range(4):
                    _out4(u[4 * a + r], t + a, j + r * h, sx, b, y)
            t += 4
        while t < T:
            u1 = _i4dot((xq[t],), (comp[t],), ws, ss, pf if t == 0 else 0, kind)
            for r in range(4):
                _out4(u1[r], t, j + r * h, sx, b, y)
            t += 1
    else:
        for r in range(4):
            k = j + r * h
            if k < n:
                for t in range(T):
                    _out4(_i4dot((xq[t],), (comp[t],), (W[k],), (S[k],), pf if t == 0 else 0, kind)[0], t, k, sx, b, y)


@njit(inline="always")
def _quantize_few4(x, G):  # pragma: no cover - compiled
    """_quantize_rows4 for the few rows of a decode step, in the calling thread: (xq, sx, comp)."""
    T = x.shape[0]
    xq = np.empty(x.shape, np.int8)
    sx = np.empty(T, np.float32)
    comp = np.empty((T, x.shape[1] // G), np.int32)
    for t in range(T):
        sx[t] = _quantize_row4(x[t], xq[t], comp[t])
    return xq, sx, comp


@njit(parallel=True, error_model="numpy", cache=True)
def _q4gemv(xq, comp, sx, W, S, b, y, pf, kind):  # pragma: no cover - compiled
    """y = ops.linear_int4_rows for a few rows of xq (quantized), W streamed once."""
    h = (W.shape[0] + 3) // 4
    for j in prange(h):
        _q4gemv_step(xq, comp, sx, W, j, h, S, b, y, pf, kind)


@njit(parallel=True, error_model="numpy", cache=True)
def _q4gemv_pair(x, W1, s1, y1, W2, s2, b2, y2, pf, kind):  # pragma: no cover - compiled
    """integer._qgemv_pair for int4 weights: y1 = x @ W1.T, y2 = x @ W2.T + b2 (s1, s2 the
    weights' group scales), x [B, n_in] float32 quantized per row first."""
    xq, sx, comp = _quantize_few4(x, x.shape[1] // s1.shape[1])
    h1 = (W1.shape[0] + 3) // 4
    h2 = (W2.shape[0] + 3) // 4
    for j in prange(h1 + h2):
        if j < h1:
            _q4gemv_step(xq, comp, sx, W1, j, h1, s1, None, y1, pf, kind)
        else:
            _q4gemv_step(xq, comp, sx, W2, j - h1, h2, s2, b2, y2, pf, kind)


@njit(parallel=True, error_model="numpy", cache=True)
def _q4gemv_sum_into(x, a, W1, s1, hidden, W2, s2, b2, u, v, pf, kind):  # pragma: no cover - compiled
    """integer._qgemv_sum_into for int4 weights: x += a @ W1.T + (hidden @ W2.T + b2)."""
    aq, sa, ac = _quantize_few4(a, a.shape[1] // s1.shape[1])
    hq, sh, hc = _quantize_few4(hidden, hidden.shape[1] // s2.shape[1])
    E = W1.shape[0]
    h = (E + 3) // 4
    for j in prange(h):
        _q4gemv_step(aq, ac, sa, W1, j, h, s1, None, u, pf, kind)
        _q4gemv_step(hq, hc, sh, W2, j, h, s2, b2, v, pf, kind)
    for t in range(x.shape[0]):
        for j in range(E):
            x[t, j] = x[t, j] + (u[t, j] + v[t, j])


# ---------------------------------------------------------------------------
# A prompt: panels of 16 rows of W per thread; for every 4 rows of x (in L1), the panel's four
# blocks of 4 rows (as qgemm._qgemm does for int8).
# ---------------------------------------------------------------------------

_PANEL = 16


@njit(parallel=True, error_model="numpy", cache=True)
def _q4gemm(xq, comp, sx, W, S, b, y, kind):  # pragma: no cover - compiled
    """y = ops.linear_int4_rows for many rows of x."""
    T, n = y.shape
    T4 = T - T % 4
    for p in prange((n + _PANEL - 1) // _PANEL):
        j0 = p * _PANEL
        j1 = min(j0 + _PANEL, n)
        j4 = j0 + (j1 - j0) // 4 * 4
        for t in range(0, T4, 4):
            xs = (xq[t], xq[t + 1], xq[t + 2], xq[t + 3])
            cs = (comp[t], comp[t + 1], comp[t + 2], comp[t + 3])
            for j in range(j0, j4, 4):
                u = _i4dot(xs, cs, (W[j], W[j + 1], W[j + 2], W[j + 3]), (S[j], S[j + 1], S[j + 2], S[j + 3]), 0, kind)
                for a in range(4):
                    for r in range(4):
                        _out4(u[4 * a + r], t + a, j + r, sx, b, y)
        for t in range(T4, T):
            for j in range(j0, j4, 4):
                u1 = _i4dot((xq[t],), (comp[t],), (W[j], W[j + 1], W[j + 2], W[j + 3]), (S[j], S[j + 1], S[j + 2], S[j + 3]), 0, kind)
                for r in range(4):
                    _out4(u1[r], t, j + r, sx, b, y)
        for j in range(j4, j1):
            for t in range(T):
                _out4(_i4dot((xq[t],), (comp[t],), (W[j],), (S[j],), 0, kind)[0], t, j, sx, b, y)


# ---------------------------------------------------------------------------
# The wrapper.
# ---------------------------------------------------------------------------


def check_int4(W: np.ndarray, scale: np.ndarray, name: str = "W") -> tuple[np.ndarray, np.ndarray, int]:
    """(W, scale as uint16 bits, group) for the kernels, or a ValueError / TypeError naming ``name``."""
    W = _check_w(W, np.uint8, name)
    scale = np.asarray(scale)
    n_out, n_in = W.shape[0], 2 * W.shape[1]
    if scale.dtype != np.float16 or scale.ndim != 2 or scale.shape[0] != n_out or scale.shape[1] == 0:
        raise ValueError(f"{name}: int4 weights need a float16 scale [n_out={n_out}, n_groups], got {scale.dtype} {scale.shape}")
    group = n_in // scale.shape[1]
    if group * scale.shape[1] != n_in or group not in GROUPS:
        raise ValueError(f"{name}: {scale.shape[1]} groups of n_in={n_in}: the group size must be one of "
                         f"{', '.join(map(str, GROUPS))} and divide n_in")
    return W, _ro(np.ascontiguousarray(scale).view(np.uint16)), group


def linear_int4(x: np.ndarray, W: np.ndarray, scale: np.ndarray, b: np.ndarray | None = None,
                pf: int = 0, isa: str | None = None, stream_max_t: int = 8) -> np.ndarray:
    """``ops.linear_int4_rows``: x [..., n_in] float32 quantized per row, times int4 weights
    ``W uint8 [n_out, n_in / 2]`` with ``scale float16 [n_out, n_groups]``, plus ``b``.

    Up to ``stream_max_t`` rows (decode): W streamed once (``integer._qgemv`` with a Q4, four
    rows of W a step, prefetching ``pf`` bytes ahead); more (a prompt): ``_q4gemm``.  ``isa``
    chooses the integer dot product (default: the best this CPU has)."""
    W, S, group = check_int4(W, scale)
    n_out, n_in = W.shape[0], 2 * W.shape[1]
    kind = q4_kind(group, isa)
    x2, lead = _prep_x(x, n_in)
    b = _prep_vec(b, n_out, "b")
    T = x2.shape[0]
    xq = _tile_buffer(-(-T * n_in // 4)).view(np.int8)[:T * n_in].reshape(T, n_in)
    sx = np.empty(T, np.float32)
    comp = np.empty((T, n_in // group), np.int32)
    _quantize_rows4(_ro(x2), xq, sx, comp)
    y = np.empty((T, n_out), np.float32)
    if T <= stream_max_t:
        _q4gemv(_ro(xq), _ro(comp), _ro(sx), W, S, b, y, pf, kind)
    else:
        _q4gemm(_ro(xq), _ro(comp), _ro(sx), W, S, b, y, kind)
    return y.reshape(*lead, n_out)
