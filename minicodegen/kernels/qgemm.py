"""Prompts with int8 weights and int8 activations: ``y = quantize(x) @ Wq.T * sx * scale + b`` for
many rows of x, and ``linear_int8_rows``, the wrapper of all integer kernels.

Kernels: ``_qgemm`` (every instruction set: blocks of 4 rows of x by 4 rows of W through
``integer._idot``, each a dot product along n_in summed across lanes at the end) and
``_qgemm_vnni`` (AVX512-VNNI: panels of 64 rows of W repacked so that one vpdpbusd adds 4 bytes of
one row of x into 16 outputs at once; no sums across lanes), with ``_pack16`` and ``_dp_tile``;
``_gemm_bf16dp`` (bf16 weights and bf16-rounded x, AVX512-BF16: the same panels, vdpbf16ps).
``linear_int8_rows`` and ``linear_bf16_rows`` hand prompts to AMX tiles (amx.py) where the CPU and
the system allow them.

Tested against (tests/test_kernels_integer.py): ``ops.linear_int8_rows``, bit for bit, through
``linear_int8_rows`` with every instruction set this CPU runs; both prompt kernels at every edge of
their blocks (T not a multiple of 6 or 4, n_out not a multiple of 64 or 16, n_in not one of 64).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .amx import AMX_BF16, AMX_INT8, _gemm_amx, _pack_panels, _x_tiles, panels_shape, x_tiles_shape
from .arrays import _check_w, _prep_vec, _prep_x, _ro, _scratch
from .cpu import Isa, bf16_dot
from .cpu import amx_bf16 as _amx_bf16
from .cpu import amx_int8 as _amx_int8
from .integer import _V16, INT8_ISA, _i8_matrix, _idot, _is_matrix, _out, _pack16, _qgemv, _quantize_rows

# ---------------------------------------------------------------------------
# A prompt: y = x @ Wq.T * scale + b for many rows.  Each thread takes panels of 16 rows of W; for
# every 4 rows of x (in L1) it runs _idot on the panel's four blocks of 4 rows, so a block of x is
# used 16 times while it sits in L1 and the panel (16 KB for n_in = 1024) stays in L1 / L2.
# Measured at the 350M shape (T = 512, 2 threads, VNNI): fc_in 9.8 ms, fc_out 7.3-11.8 ms, against
# 14-20 ms with blocks of 4 rows of W over all of x (x re-read from L2 for every block).
# ---------------------------------------------------------------------------

_PANEL = 16


@njit(inline="always")
def _qgemm_rows(xq, xsum, sx, W, scale, b, y, j0, j1, isa):  # pragma: no cover - compiled
    """Rows j0 .. j1 - 1 of y = (xq @ W.T) * (sx[:, None] * scale) [+ b], blocks of 4 x 4."""
    T = y.shape[0]
    T4 = T - T % 4
    j4 = j0 + (j1 - j0) // 4 * 4
    for t in range(0, T4, 4):
        xs = (xq[t], xq[t + 1], xq[t + 2], xq[t + 3])
        ss = (xsum[t], xsum[t + 1], xsum[t + 2], xsum[t + 3])
        for j in range(j0, j4, 4):
            u = _idot(xs, ss, (W[j], W[j + 1], W[j + 2], W[j + 3]), 0, isa)
            for a in range(4):
                for r in range(4):
                    _out(u[4 * a + r], t + a, j + r, sx, scale, b, y)
    for t in range(T4, T):
        for j in range(j0, j4, 4):
            u1 = _idot((xq[t],), (xsum[t],), (W[j], W[j + 1], W[j + 2], W[j + 3]), 0, isa)
            for r in range(4):
                _out(u1[r], t, j + r, sx, scale, b, y)
    for j in range(j4, j1):
        for t in range(T):
            _out(_idot((xq[t],), (xsum[t],), (W[j],), 0, isa)[0], t, j, sx, scale, b, y)


@njit(parallel=True, error_model="numpy", cache=True)
def _qgemm(xq, xsum, sx, W, scale, b, y, isa):  # pragma: no cover - compiled
    """y = (xq @ W.T) * (sx[:, None] * scale) [+ b]: xq [>= T, n] int8 (sums xsum, scales sx),
    W [n_out, n] int8, scale [n_out], b [n_out] or None, y [T, n_out]."""
    n_out = W.shape[0]
    for p in prange((n_out + _PANEL - 1) // _PANEL):
        _qgemm_rows(xq, xsum, sx, W, scale, b, y, p * _PANEL, min(p * _PANEL + _PANEL, n_out), isa)



# ---------------------------------------------------------------------------
# A prompt on AVX512-VNNI: panels of 64 rows of W, repacked.
#
# vpdpbusd adds, in each of 16 int32 lanes, the products of 4 unsigned bytes by 4 signed bytes.
# If lane l holds output j0 + l and the 4 bytes of the weights are W[j0 + l, 4q .. 4q + 3], the
# same 4 bytes of x, x[t, 4q .. 4q + 3], serve every lane: one broadcast load.  So each thread
# repacks a panel of 64 rows of W (as oneDNN and CTranslate2 pack their weights, but per call,
# into 64 * n_in bytes of scratch):
#
#     Wp[q, r] = the 4 bytes W[j0 + r, 4q .. 4q + 3], XOR 0x80 each (w + 128, unsigned)
#
# (_pack16: 16 rows x 64 bytes loaded, transposed as 16 x 16 int32 in registers).  Then
# _dp_tile runs 6 rows of x against the panel: 6 x 4 accumulators of 16 lanes, and per 4 bytes
# of n_in 4 loads of the panel, 6 broadcasts and 24 vpdpbusd, with no sum across lanes at the end.
# The offset of the weights comes off as in _idot: - 128 * sum_i xq[t, i].  Repacking costs one
# pass over W per call and 64 * n_in bytes of scratch per thread; nothing is stored with the model,
# so loading is unchanged.  T is padded to a multiple of 6 with rows of zeros, whose outputs are not
# written.  Rows of W past the last full panel go through _qgemm_rows.
# ---------------------------------------------------------------------------

_MR = 6  # rows of x per tile
_NR = 64  # rows of W per panel (4 vectors of 16 lanes)
_KQ = 64  # 4-byte groups of n_in per pass over a block of tokens: 64 x 64 x 4 bytes = 16 KB of the panel in L1
_TB = 96  # rows of x per block: 96 x n_in bytes (384 KB for n_in = 4096) stay in L2 while the panel goes by
class _BFloat(ir.Type):
    """LLVM's bfloat type (llvmlite has none): the operand type of the vdpbf16ps intrinsic."""

    def _to_string(self) -> str:
        return "bfloat"

    def __eq__(self, other) -> bool:
        return isinstance(other, _BFloat)

    def __hash__(self) -> int:
        return hash("bfloat")


@intrinsic(prefer_literal=True)
def _dp_tile(typingctx, Wp, q0, q1, xq, t0, C, acc_in, mr, pf):
    """C[t0 + a, r] (+)= sum_{q0 <= q < q1} (the products in the 4 bytes of Wp[q, r] and of
    x[t0 + a, 4-byte group q]) for a < mr, r < 64 (mr: a literal, 1 .. 6); acc_in: add to C's
    values; pf > 0: prefetch Wp's lines pf bytes ahead (a panel streamed from memory).  int8 x and int32 C: vpdpbusd (AVX512-VNNI; Wp holds w + 128 as unsigned bytes); uint16 = bf16 x and float32 C:
    vdpbf16ps (AVX512-BF16; sums rounded to float32 after each pair of products).  Wp int32
    [n_groups, 64], xq [>= t0 + mr, n], C [>= t0 + mr, 64]; the caller checks the bounds."""
    if not (isinstance(mr, types.IntegerLiteral) and 1 <= mr.literal_value <= _MR and _is_matrix(Wp, types.int32)
            and isinstance(xq, types.Array) and xq.ndim == 2 and xq.layout == "C"
            and isinstance(C, types.Array) and C.ndim == 2 and C.layout == "C"
            and (xq.dtype, C.dtype) in ((types.int8, types.int32), (types.uint16, types.float32))
            and all(isinstance(v, types.Integer) for v in (q0, q1, t0, pf)) and isinstance(acc_in, types.Boolean)):
        return None
    bf16 = xq.dtype == types.uint16
    MR = mr.literal_value

    def codegen(context, builder, sig, args):
        i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
        wp, ldw = _i8_matrix(context, builder, sig.args[0], args[0])
        xp, ldx = _i8_matrix(context, builder, sig.args[3], args[3])
        cp, ldc = _i8_matrix(context, builder, sig.args[5], args[5])
        q0_, q1_, t0_ = (context.cast(builder, args[i], sig.args[i], types.int64) for i in (1, 2, 4))
        add_to_c = context.cast(builder, args[6], sig.args[6], types.boolean)
        pf_bytes = context.cast(builder, args[8], sig.args[8], types.int64)
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8.as_pointer(), i32, i32, i32]), "llvm.prefetch.p0i8")
        if bf16:
            vacc, vop = ir.VectorType(ir.FloatType(), 16), ir.VectorType(_BFloat(), 32)
            name, zero = "llvm.x86.avx512bf16.dpbf16ps.512", ir.Constant(ir.VectorType(ir.FloatType(), 16), [0.0] * 16)
        else:
            vacc, vop = _V16, ir.VectorType(i8, 64)
            name, zero = "llvm.x86.avx512.vpdpbusd.512", ir.Constant(_V16, [0] * 16)
        dp = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vacc, [vacc, vop, vop]), name)

        def c_at(a, s):
            row = builder.gep(cp, [builder.mul(builder.add(t0_, ir.Constant(i64, a)), ldc)])
            return builder.bitcast(builder.gep(row, [ir.Constant(i64, 64 * s)]), vacc.as_pointer())

        accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(4)] for _ in range(MR)]
        for a in range(MR):
            for s in range(4):
                builder.store(builder.select(add_to_c, builder.load(c_at(a, s), align=1), zero), accs[a][s])
        xrows = [builder.gep(xp, [builder.mul(builder.add(t0_, ir.Constant(i64, a)), ldx)]) for a in range(MR)]
        splat = ir.Constant(_V16, [0] * 16)
        with cgutils.for_range_slice(builder, q0_, q1_, ir.Constant(i64, 1)) as (q, _):
            wrow = builder.gep(wp, [builder.mul(q, ldw)])
            with builder.if_then(builder.icmp_signed(">", pf_bytes, ir.Constant(i64, 0))):
                for s in range(4):  # (read, into L2, data), as integer._idot
                    at = builder.gep(wrow, [builder.add(pf_bytes, ir.Constant(i64, 64 * s))])
                    builder.call(prefetch, [at, ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])
            w = [builder.bitcast(builder.load(builder.bitcast(builder.gep(wrow, [ir.Constant(i64, 64 * s)]),
                                                              _V16.as_pointer()), align=1), vop) for s in range(4)]
            for a in range(MR):
                x4 = builder.load(builder.bitcast(builder.gep(xrows[a], [builder.mul(q, ir.Constant(i64, 4))]),
                                                  i32.as_pointer()), align=1)
                xv = builder.insert_element(ir.Constant(_V16, ir.Undefined), x4, ir.Constant(i32, 0))
                xb = builder.bitcast(builder.shuffle_vector(xv, xv, splat), vop)  # the 4 bytes in every lane
                for s in range(4):
                    builder.store(builder.call(dp, [builder.load(accs[a][s]), w[s], xb]), accs[a][s])
        for a in range(MR):
            for s in range(4):
                builder.store(builder.load(accs[a][s]), c_at(a, s), align=1)
        return context.get_dummy_value()

    return types.void(Wp, q0, q1, xq, t0, C, acc_in, mr, pf), codegen


@njit(inline="always")
def _panel_sums(W, j0, x, T, C):  # pragma: no cover - compiled
    """C[t, r] = the sums of products of row t of x with row j0 + r of W for t < T, r < 64 (see the
    section comment): the panel repacked into per-thread scratch, then _dp_tile over blocks of
    _TB rows of x and chunks of _KQ 4-byte groups of n_in.  int8 W and x (int32 C) or bf16 W and
    x (float32 C)."""
    n = W.shape[1]
    per = 4 // W.itemsize  # weights in a 4-byte group
    Wp = np.empty((n // per, _NR), np.int32)
    for s in range(0, _NR, 16):
        for k0 in range(0, n, 16 * per):
            _pack16(W, j0 + s, k0, Wp, s)
    _tile_sums(Wp, x, T, C)


@njit(inline="always")
def _tile_sums(Wp, x, T, C):  # pragma: no cover - compiled
    """C[t, r] = the sums of products of row t of x with column r of the packed panel Wp
    [n_groups, 64] for t < T (x and C hold T rounded up to 6 rows): _dp_tile over blocks of _TB rows
    of x and chunks of _KQ 4-byte groups."""
    nq = Wp.shape[0]
    for tb in range(0, T, _TB):
        for q0 in range(0, nq, _KQ):
            for t0 in range(tb, min(tb + _TB, T), _MR):
                _dp_tile(Wp, q0, min(q0 + _KQ, nq), x, t0, C, q0 > 0, 6, 0)


@njit(parallel=True, error_model="numpy", cache=True)
def _qgemm_vnni(xq, xsum, sx, W, scale, b, y, isa):  # pragma: no cover - compiled
    """_qgemm on AVX512-VNNI through repacked panels (see the section comment): xq [T_pad, n] int8
    with T_pad a multiple of 6 (rows past T zero) and n a multiple of 64; y [T, n_out]."""
    T = y.shape[0]
    n_out = W.shape[0]
    n_full = n_out // _NR
    n_panels = (n_out + _NR - 1) // _NR  # (a conditional expression inside prange() keeps the loop serial)
    for p in prange(n_panels):
        j0 = p * _NR
        if p < n_full:
            C = np.empty((xq.shape[0], _NR), np.int32)
            _panel_sums(W, j0, xq, T, C)
            for t in range(T):
                off = 128 * xsum[t]
                for r in range(_NR):
                    _out(C[t, r] - off, t, j0 + r, sx, scale, b, y)
        else:
            _qgemm_rows(xq, xsum, sx, W, scale, b, y, j0, n_out, isa)


# ---------------------------------------------------------------------------
# A prompt with bf16 weights on AVX512-BF16: x rounded to bf16 (ops.round_bf16), the same panels
# of 64 rows (_pack16 on pairs of bf16), and vdpbf16ps: per lane and instruction, two products of
# bf16 numbers (exact in float32) added to the float32 sum.  Twice the multiply-adds of an fp32
# FMA per instruction.  Shapes: n_in a multiple of 32, n_out of 64 (the wrapper checks; else the
# widening path of prefill.py).
# ---------------------------------------------------------------------------

BF16_ISA = Isa(bf16_dot())  # avx512_bf16 where the CPU has it: then prompts with bf16 weights use _gemm_bf16dp


@njit(parallel=True, error_model="numpy", cache=True)
def _round_bf16(x, xb):  # pragma: no cover - compiled
    """xb = the bf16 bits of x rounded to nearest even (ops.round_bf16); NaN stays NaN."""
    for t in prange(x.shape[0]):
        u = x[t].view(np.uint32)
        for i in range(x.shape[1]):
            v = u[i]
            r = (v + np.uint32(0x7FFF) + ((v >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
            xb[t, i] = np.uint16(0x7FC0) if (v & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000) else np.uint16(r)


@njit(parallel=True, error_model="numpy", cache=True)
def _gemm_bf16dp(xb, W, b, y):  # pragma: no cover - compiled
    """y = widen(xb) @ widen(W).T [+ b] with vdpbf16ps: xb [T_pad, n] bf16 bits (T_pad a multiple
    of 6, rows past T zero), W [n_out, n] bf16 bits (n % 32 == 0, n_out % 64 == 0), y [T, n_out]."""
    T = y.shape[0]
    n_out = W.shape[0]
    for p in prange(n_out // _NR):
        j0 = p * _NR
        C = np.empty((xb.shape[0], _NR), np.float32)
        _panel_sums(W, j0, xb, T, C)
        for t in range(T):
            for r in range(_NR):
                v = C[t, r]
                if b is not None:
                    v += b[j0 + r]
                y[t, j0 + r] = v


def linear_bf16_rows(x: np.ndarray, W: np.ndarray, b: np.ndarray | None = None, amx: bool | None = None) -> np.ndarray:
    """``ops.linear_bf16_rows``: x [..., n_in] rounded to bf16, times bf16 ``W [n_out, n_in]``
    (uint16 bits), plus ``b``: on AMX tiles (``amx._gemm_amx``) when ``amx`` (None, the
    default: ``AMX_BF16``) and n_out is a multiple of 32, else with vdpbf16ps (AVX512-BF16, n_out a
    multiple of 64); n_in a multiple of 32 (the caller checks ``bf16_rows_apply``)."""
    W = _check_w(W, np.uint16, "W")
    n_out, n_in = W.shape
    if amx is None:
        amx = AMX_BF16
    elif amx and not _amx_bf16():  # (asked for explicitly: checked; 0.3 ms, so not at every call)
        raise ValueError("amx=True needs a CPU with AMX-BF16 whose tile registers the system granted (cpu.amx_bf16)")
    tiles = amx and n_in % 32 == 0 and n_out % 32 == 0 and n_out > 0
    if not (tiles or (BF16_ISA.name == "avx512_bf16" and n_in % 32 == 0 and n_out % _NR == 0 and n_out > 0)):
        raise ValueError(f"linear_bf16_rows needs AMX-BF16 (n_out % 32 == 0) or AVX512-BF16 (n_out % 64 == 0) and "
                         f"n_in % 32 == 0; got {W.shape} on {BF16_ISA.name}, AMX-BF16 {AMX_BF16}")
    x2, lead = _prep_x(x, n_in)
    b = _prep_vec(b, n_out, "b")
    T = x2.shape[0]
    T_pad = T if tiles else -(-T // _MR) * _MR  # (_gemm_bf16dp takes 6 rows at a time)
    shapes = [(T_pad, n_in)] + ([x_tiles_shape(T, n_in, 2), panels_shape(W.shape, 2)] if tiles else [])
    xb, *tiled = _scratch(shapes, [np.uint16, np.uint16, np.int32])
    xb[T:] = 0
    _round_bf16(_ro(x2), xb[:T])
    y = np.empty((T, n_out), np.float32)
    if tiles:
        Xt, Wp = tiled
        _x_tiles(_ro(xb), Xt)
        _pack_panels(W, Wp)
        _gemm_amx(_ro(Xt), _ro(Wp), None, None, None, b, y)
    else:
        _gemm_bf16dp(_ro(xb), W, b, y)
    return y.reshape(*lead, n_out)


def bf16_rows_apply(shape: tuple[int, int]) -> bool:
    """Whether linear_bf16_rows runs for a bf16 weight of this shape on this CPU (AMX-BF16: n_out a
    multiple of 32; AVX512-BF16: of 64; n_in of 32 for both)."""
    n_out, n_in = shape
    if n_in % 32 or n_out <= 0:
        return False
    return (AMX_BF16 and n_out % 32 == 0) or (BF16_ISA.name == "avx512_bf16" and n_out % _NR == 0)


# ---------------------------------------------------------------------------
# The wrapper.
# ---------------------------------------------------------------------------



def linear_int8_rows(x: np.ndarray, Wq: np.ndarray, scale: np.ndarray, b: np.ndarray | None = None,
                     pf: int = 0, isa: Isa = INT8_ISA, stream_max_t: int = 8, amx: bool | None = None) -> np.ndarray:
    """``ops.linear_int8_rows``: x [..., n_in] float32 quantized per row, times int8
    ``Wq [n_out, n_in]`` with integer dot products, times ``scale [n_out]``, plus ``b``.

    Up to ``stream_max_t`` rows (decode): W streamed once (``integer._qgemv``, prefetching ``pf``
    bytes ahead); more rows (a prompt): on AMX tiles (``amx._gemm_amx``) when ``amx`` (None, the
    default: ``AMX_INT8``, whether this CPU and system allow them), n_in is a multiple of 64 and
    n_out >= 32; else panels of W reused from cache (``_qgemm_vnni`` on AVX512-VNNI when n_in is a
    multiple of 64, else ``_qgemm``).  ``isa`` chooses the instruction set of the other kernels
    (default: the best this CPU has, ``INT8_ISA``); the result is the same for every choice.
    """
    Wq = _check_w(Wq, np.int8, "Wq")
    n_out, n_in = Wq.shape
    if n_in > 65536:
        raise ValueError(f"n_in={n_in} is too long for exact int32 sums of int8 products (at most 65536)")
    if amx is None:
        amx = AMX_INT8
    elif amx and not _amx_int8():  # (asked for explicitly: checked; 0.3 ms, so not at every call)
        raise ValueError("amx=True needs a CPU with AMX-INT8 whose tile registers the system granted (cpu.amx_int8)")
    scale = _prep_vec(scale, n_out, "scale")
    if scale is None:
        raise ValueError("linear_int8_rows needs a per-row scale")
    x2, lead = _prep_x(x, n_in)
    b = _prep_vec(b, n_out, "b")
    T = x2.shape[0]
    tiles = amx and T > stream_max_t and n_in % 64 == 0 and n_out >= 32
    packed = not tiles and T > stream_max_t and isa.name == "avx512_vnni" and n_in % 64 == 0 and n_out >= _NR
    T_pad = -(-T // _MR) * _MR if packed else T  # (_qgemm_vnni takes 6 rows at a time)
    # xq (and the AMX tiles of x and panels of W) in reused scratch (fresh pages at every call cost
    # 0.5 ms for the 350M fc_out at T = 512)
    shapes = [(T_pad, n_in)] + ([x_tiles_shape(T, n_in), panels_shape(Wq.shape)] if tiles else [])
    xq, *tiled = _scratch(shapes, [np.int8, np.int8, np.int32])
    sx = np.zeros(T_pad, np.float32)
    xsum = np.zeros(T_pad, np.int32)
    xq[T:] = 0
    _quantize_rows(_ro(x2), xq[:T], sx[:T], xsum[:T])
    y = np.empty((T, n_out), np.float32)
    if T <= stream_max_t:
        _qgemv(_ro(xq), _ro(xsum), _ro(sx), Wq, scale, b, y, pf, isa)
    elif tiles:
        Xt, Wp = tiled
        _x_tiles(_ro(xq), Xt)
        _pack_panels(Wq, Wp)
        _gemm_amx(_ro(Xt), _ro(Wp), _ro(xsum), _ro(sx), scale, b, y)
    elif packed:
        _qgemm_vnni(_ro(xq), _ro(xsum), _ro(sx), Wq, scale, b, y, isa)
    else:
        _qgemm(_ro(xq), _ro(xsum), _ro(sx), Wq, scale, b, y, isa)
    return y.reshape(*lead, n_out)
