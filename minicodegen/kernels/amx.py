"""Prompts with int8 or bf16 weights on AMX tiles (Intel Xeon since Sapphire Rapids): the products
``qgemm.linear_int8_rows`` (x quantized per row) and ``qgemm.linear_bf16_rows`` (x rounded to
bf16) compute, on the CPU's tile matrix unit; and decode steps of a batch with int8 weights
packed once (``_panel_amx``, see its section below).

AMX adds eight tile registers of up to 16 rows x 64 bytes and instructions that multiply two of
them into a third: ``tdpbsud C, A, B`` adds 16 x 16 int32 sums of 64 products of bytes each (A
signed, B unsigned), 16,384 multiply-adds where one ``vpdpbusd`` does 64; ``tdpbf16ps`` adds
16 x 16 float32 sums of 32 products of bf16 numbers each.  B is laid out as vpdpbusd and vdpbf16ps
lay out their weights: row q of B holds the 4-byte groups q of 16 columns.  So:

* A = 16 rows of x (tokens), 64 bytes of n_in: x is copied once per call into tiles of 16 x 64
  bytes, each 1 KB in one piece (``_x_tiles``; a tile read with a stride of n_in bytes, a power of
  two, falls into a few cache sets and ran at a sixth to a half of the speed, by shape);
* B = 16 rows of W, 64 bytes of n_in, as the 4-byte groups ``integer._pack16`` makes for the VNNI
  kernels (int8 w XOR 0x80 = w + 128, unsigned, so ``C - 128 * sum_i xq[t, i]`` is the sum of
  products as in ``integer._idot``; bf16 pairs as they are), in panels of 32 rows packed once per
  call (``_pack_panels``, n_out * n_in bytes of int8 or twice that of bf16 scratch).

``_tile_block`` takes 32 tokens by 32 outputs: two tiles of x, two of W and four sums, four tile
products per 64 bytes of n_in.  ``_gemm_amx`` runs the tokens in chunks of 256 (their tiles stay
in L2); in each chunk the threads take panels, and write every 32 x 32 block of sums out as the
definition rounds it (``_write_block``).  The integer sums are
exact, so int8 equals ``ops.linear_int8_rows`` bit for bit, as every other integer kernel does;
bf16 rounds after each pair of products, as vdpbf16ps does (within the error bound of a float32
sum of ``ops.linear_bf16_rows``).  A last panel of fewer than 32 rows (the 50,295 rows of tiny's
head; none of CodeGen's matrices) is packed beside zero weights, and its sums past n_out are not
written.

A thread configures its tiles (``_tile_config``: palette 1, eight tiles of 16 rows x 64 bytes)
before its first block of a panel and releases them (``_tile_release``) after the last.  The
wrappers take this path for prompts (more than STREAM_MAX_T rows) when ``AMX_INT8`` / ``AMX_BF16``
(``cpu.amx_int8`` / ``cpu.amx_bf16``: the CPU has the unit and Linux granted the tile registers)
and n_in is a multiple of 64 bytes.

Measured at the 350M shape (T = 512, 2 threads, this project's Xeon, model 207), interleaved,
medians of 15, two runs: ``linear_int8`` of fc_in 5.1-5.5 ms against 6.9-7.1 with
``qgemm._qgemm_vnni``, fc_out 5.5-5.7 against 7.8-8.5; bf16 fc_in with bf16 x 8.5 ms against 24.3
widened to float32.

Decode steps of a batch (``packed.py`` chooses this with ``packed_isa``): the weights are the panels
``packed.pack_int8`` made once, 64 rows of W whose 4-byte groups q lie 256 bytes apart, so 16 groups
of 16 rows are a B tile read in place with a stride of 256 bytes; x is copied into tiles of 16 rows
(``_decode_x``).  ``_tile_panel`` keeps the sums of a panel's 64 outputs in four tiles, and per 64
bytes of n_in loads one tile of x and four of W.  Streamed from memory, a tile load that misses L1
waits on its rows, so every tile load is preceded by prefetches of its quarter of the 4 KB
``PANEL_PREFETCH`` bytes ahead into L2 and ``PANEL_NEAR`` bytes ahead into L1.  The 20 blocks' four
matrices of a 350M step, interleaved with the vpdpbusd panels in one process (medians of 9):
qkv_proj + fc_in 7.6 ms against 8.0 at B = 8, 7.3 against 11.1 at B = 16, 14.0 against 19.9 at
B = 32; out_proj + fc_out 5.5 against 6.5, 5.9 against 7.9, 11.3 against 14.9.  At B = 1 to 4
the row kernels of integer.py are as fast (``model.PACK_MIN_ROWS`` stays 8).

Tested against (tests/test_kernels_amx.py and the bf16 prompt test of tests/test_kernels_integer.py,
skipped where the CPU has no AMX): ``ops.linear_int8_rows`` bit for bit and ``ops.linear_bf16_rows``
within a float32 sum, through the wrappers (hypothesis over T, n_out, n_in, with and without a
bias), the tiles of x read back, the choice by CPU features, and the model's prompts on the tiles;
the packed panels on the tiles against the definition and the vpdpbusd panels (hypothesis over T,
n_out, n_in; the fused block; a decode step of the model).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .cpu import amx_bf16, amx_int8
from .integer import _i8_matrix, _is_matrix, _pack16

# Whether the int8 and the bf16 prompt kernels run on AMX tiles on this machine (see cpu.amx_int8).
AMX_INT8 = amx_int8()
AMX_BF16 = amx_bf16()

_TN = 32  # rows of W per panel (two tiles), and tokens per block (two tiles)
_K = 64  # bytes of n_in per tile row
_CHUNK = 16  # tiles of x (256 tokens) per chunk: at n_in = 4096, 1 MB of x stays in L2 while the panels go by

_I8, _I16, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(64)


def _void_fn(builder, name, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), args), name)


def _tmm(i: int) -> ir.Constant:
    """The number of tile register i (an immediate operand of the tile instructions)."""
    return ir.Constant(_I8, i)


def _load_config(builder, rows) -> None:
    """ldtilecfg: palette 1, tile t of rows[t] rows (an i8 value) of 64 bytes, t < 8."""
    cfg = builder.bitcast(cgutils.alloca_once(builder, ir.ArrayType(_I8, 64)), _I8.as_pointer())
    for i in range(64):  # (unused fields must be zero)
        builder.store(_tmm(0), builder.gep(cfg, [ir.Constant(_I64, i)]))
    builder.store(_tmm(1), cfg)  # palette 1
    for t in range(8):
        colsb = builder.bitcast(builder.gep(cfg, [ir.Constant(_I64, 16 + 2 * t)]), _I16.as_pointer())
        builder.store(ir.Constant(_I16, _K), colsb)  # bytes per row
        builder.store(rows[t], builder.gep(cfg, [ir.Constant(_I64, 48 + t)]))
    builder.call(_void_fn(builder, "llvm.x86.ldtilecfg", [_I8.as_pointer()]), [cfg])


@intrinsic
def _tile_config(typingctx):
    """Configure this thread's tiles: palette 1, tiles 0..7 of 16 rows x 64 bytes (ldtilecfg)."""

    def codegen(context, builder, sig, args):
        _load_config(builder, [_tmm(16)] * 8)
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _tile_config_rows(typingctx, m):
    """Configure this thread's tiles for ``_tile_panel``: tiles 0-4 (sums, x) of m rows (1 .. 16),
    tiles 5-7 (weights) of 16 rows, 64 bytes a row."""
    if not isinstance(m, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        rows = builder.trunc(context.cast(builder, args[0], sig.args[0], types.int64), _I8)
        _load_config(builder, [rows] * 5 + [_tmm(16)] * 3)
        return context.get_dummy_value()

    return types.void(m), codegen


@intrinsic
def _tile_release(typingctx):
    """Return this thread's tiles to their initial state (tilerelease)."""

    def codegen(context, builder, sig, args):
        builder.call(_void_fn(builder, "llvm.x86.tilerelease", []), [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _tile_block(typingctx, Xt, tb, Wp, C):
    """C[a, r] = sum_q (the products in the 4 bytes of tokens 16 tb + a of Xt and of Wp[q, r]) for
    a, r < 32.  Xt [Tp / 16, n_k, 16, 64 bytes] (tiles of x), Wp int32 [16 n_k, 32] (a panel: the
    4-byte groups of 32 rows of W), C [32, 32].  int8 Xt, Wp of w + 128 and int32 C: tdpbsud; uint16
    (bf16) Xt and Wp and float32 C: tdpbf16ps.  Tiles 0-3 hold the sums, 4-5 x, 6-7 W.  The caller
    configured the tiles and checks the bounds (tb + 1 < Tp / 16)."""
    pairs = ((types.int8, types.int32), (types.uint16, types.float32))
    if not (isinstance(Xt, types.Array) and Xt.ndim == 4 and Xt.layout == "C" and (Xt.dtype, getattr(C, "dtype", None)) in pairs
            and _is_matrix(Wp, types.int32) and _is_matrix(C, C.dtype) and isinstance(tb, types.Integer)):
        return None
    name = "llvm.x86.tdpbsud" if Xt.dtype == types.int8 else "llvm.x86.tdpbf16ps"

    def codegen(context, builder, sig, args):
        xa = context.make_array(sig.args[0])(context, builder, value=args[0])
        xp = builder.bitcast(xa.data, _I8.as_pointer())
        tile_row = builder.extract_value(xa.strides, 0)  # bytes from one 16 tokens to the next
        n_k = builder.extract_value(xa.shape, 1)
        wp, ldw = _i8_matrix(context, builder, sig.args[2], args[2])
        cp, ldc = _i8_matrix(context, builder, sig.args[3], args[3])
        tb_ = context.cast(builder, args[1], sig.args[1], types.int64)
        load = _void_fn(builder, "llvm.x86.tileloadd64", [_I8, _I8.as_pointer(), _I64])
        dp = _void_fn(builder, name, [_I8, _I8, _I8])
        zero = _void_fn(builder, "llvm.x86.tilezero", [_I8])
        for c in range(4):
            builder.call(zero, [_tmm(c)])
        x0 = builder.gep(xp, [builder.mul(tb_, tile_row)])
        x1 = builder.gep(x0, [tile_row])
        k_bytes = ir.Constant(_I64, _K)
        with cgutils.for_range(builder, n_k) as loop:
            kb = loop.index
            xo = builder.mul(kb, ir.Constant(_I64, 16 * _K))  # the 1 KB tile kb of x
            w = builder.gep(wp, [builder.mul(builder.mul(kb, ir.Constant(_I64, 16)), ldw)])  # rows 16 kb.. of Wp
            builder.call(load, [_tmm(4), builder.gep(x0, [xo]), k_bytes])
            builder.call(load, [_tmm(5), builder.gep(x1, [xo]), k_bytes])
            builder.call(load, [_tmm(6), w, ldw])
            builder.call(load, [_tmm(7), builder.gep(w, [k_bytes]), ldw])  # columns 16..31
            for c, (a, b) in enumerate(((4, 6), (4, 7), (5, 6), (5, 7))):
                builder.call(dp, [_tmm(c), _tmm(a), _tmm(b)])
        store = _void_fn(builder, "llvm.x86.tilestored64", [_I8, _I8.as_pointer(), _I64])
        for c, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            at = builder.add(builder.mul(ir.Constant(_I64, 16 * a), ldc), ir.Constant(_I64, 64 * b))
            builder.call(store, [_tmm(c), builder.gep(cp, [at]), ldc])
        return context.get_dummy_value()

    return types.void(Xt, tb, Wp, C), codegen


@intrinsic
def _tile_panel(typingctx, Xg, Wp, C, pf):
    """C[a, r] = sum_q (the products in the 4 bytes of group q of row a of x and of Wp[q, r]) for a < m
    (the rows ``_tile_config_rows`` configured), r < 64: Xg int8 [n_k, 16, 64] (x's tiles for these
    rows), Wp int32 [16 n_k, 64] (a panel of ``packed.pack_int8``: w + 128), C int32 [>= m, 64].
    Tiles 0-3 hold the sums of outputs 0-15, ..., 48-63, tile 4 x, tiles 5-7 W (the fourth tile of
    W reuses 5 after its product); pf > 0: Wp's lines pf bytes ahead are prefetched into L2, and
    PANEL_NEAR bytes ahead into L1, a quarter of 4 KB before each tile load of W."""
    if not (isinstance(Xg, types.Array) and Xg.ndim == 3 and Xg.layout == "C" and Xg.dtype == types.int8
            and _is_matrix(Wp, types.int32) and _is_matrix(C, types.int32) and isinstance(pf, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        xa = context.make_array(sig.args[0])(context, builder, value=args[0])
        xp = builder.bitcast(xa.data, _I8.as_pointer())
        wa = context.make_array(sig.args[1])(context, builder, value=args[1])
        wp, ldw = _i8_matrix(context, builder, sig.args[1], args[1])
        cp, ldc = _i8_matrix(context, builder, sig.args[2], args[2])
        n_k = builder.udiv(builder.extract_value(wa.shape, 0), ir.Constant(_I64, 16))
        pf_ = context.cast(builder, args[3], sig.args[3], types.int64)
        load = _void_fn(builder, "llvm.x86.tileloadd64", [_I8, _I8.as_pointer(), _I64])
        dp = _void_fn(builder, "llvm.x86.tdpbsud", [_I8, _I8, _I8])
        i32 = ir.IntType(32)
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [_I8.as_pointer(), i32, i32, i32]), "llvm.prefetch.p0i8")
        for c in range(4):
            builder.call(_void_fn(builder, "llvm.x86.tilezero", [_I8]), [_tmm(c)])
        with cgutils.for_range(builder, n_k) as loop:
            kb = loop.index
            w = builder.gep(wp, [builder.mul(builder.mul(kb, ir.Constant(_I64, 16)), ldw)])  # 16 rows: 4 KB

            def load_w(c, tile):  # W's tile c, after prefetching a quarter of the 4 KB ahead, pf bytes
                with builder.if_then(builder.icmp_signed(">", pf_, ir.Constant(_I64, 0))):  # into L2 and
                    for line in range(16 * 64 * c, 16 * 64 * (c + 1), 64):  # PANEL_NEAR bytes into L1
                        at = builder.gep(w, [builder.add(pf_, ir.Constant(_I64, line))])
                        builder.call(prefetch, [at, ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])
                        at = builder.gep(w, [ir.Constant(_I64, PANEL_NEAR + line)])
                        builder.call(prefetch, [at, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
                builder.call(load, [_tmm(tile), builder.gep(w, [ir.Constant(_I64, 64 * c)]), ldw])

            builder.call(load, [_tmm(4), builder.gep(xp, [builder.mul(kb, ir.Constant(_I64, 16 * _K))]),
                                ir.Constant(_I64, _K)])
            for c in range(3):
                load_w(c, 5 + c)
            for c in range(3):
                builder.call(dp, [_tmm(c), _tmm(4), _tmm(5 + c)])
            load_w(3, 5)
            builder.call(dp, [_tmm(3), _tmm(4), _tmm(5)])
        store = _void_fn(builder, "llvm.x86.tilestored64", [_I8, _I8.as_pointer(), _I64])
        for c in range(4):
            builder.call(store, [_tmm(c), builder.gep(cp, [ir.Constant(_I64, 64 * c)]), ldc])
        return context.get_dummy_value()

    return types.void(Xg, Wp, C, pf), codegen


@njit(parallel=True, error_model="numpy", cache=True)
def _x_tiles(xq, Xt):  # pragma: no cover - compiled
    """Xt[tb, kb, r, :] = xq[16 tb + r, K kb : K kb + K] (zeros past the rows of xq), K = 64 bytes of
    int8 or bf16 (uint16) x: xq [T, n], Xt [Tp / 16, n / K, 16, K] (x_tiles_shape)."""
    T = xq.shape[0]
    K = Xt.shape[3]
    for tb in prange(Xt.shape[0]):
        for r in range(16):
            t = 16 * tb + r
            for kb in range(Xt.shape[1]):
                for i in range(K):
                    Xt[tb, kb, r, i] = xq[t, K * kb + i] if t < T else 0


@njit(parallel=True, error_model="numpy", cache=True)
def _pack_panels(W, Wp):  # pragma: no cover - compiled
    """Wp[p] = the 4-byte groups of rows 32 p .. 32 p + 31 of W (integer._pack16: int8 as w + 128,
    bf16 as they are), rows past n_out zero weights: W [n_out, n] int8 or bf16 bits, Wp int32
    [ceil(n_out / 32), n * itemsize / 4, 32] (panels_shape)."""
    n_out, n = W.shape
    for p in prange(Wp.shape[0]):
        src, r0 = W, _TN * p
        if r0 + _TN > n_out:  # the last panel, partial: its rows copied beside zeros
            src = np.zeros((_TN, n), W.dtype)
            src[: n_out - r0] = W[r0:]
            r0 = 0
        for s in range(0, _TN, 16):
            for k0 in range(0, n, _K // W.itemsize):
                _pack16(src, r0 + s, k0, Wp[p], s)


def _new_sums(Xt):  # pragma: no cover - replaced by the overload
    """A 32 x 32 scratch block of sums: int32 for int8 tiles, float32 for bf16 ones."""


@overload(_new_sums)
def _new_sums_impl(Xt):
    dtype = np.int32 if Xt.dtype == types.int8 else np.float32
    return lambda Xt: np.empty((_TN, _TN), dtype)


@njit(parallel=True, error_model="numpy", cache=True)
def _gemm_amx(Xt, Wp, xsum, sx, scale, b, y):  # pragma: no cover - compiled
    """y on AMX tiles (see the module docstring), Wp the panels of W [n_out, n] (``_pack_panels``),
    Xt the tiles of x (``x_tiles_shape``), y [T, n_out]:

    * int8: y = (xq @ W.T) * (sx[:, None] * scale) [+ b], xsum / sx [>= T] xq's row sums and scales;
    * bf16 (xsum, sx, scale None): y = widen(xb) @ widen(W).T [+ b].

    Chunks of _CHUNK tiles of x (256 tokens) one after the other; in each, the threads take panels."""
    T = y.shape[0]
    for c0 in range(0, Xt.shape[0], _CHUNK):
        c1 = min(c0 + _CHUNK, Xt.shape[0])
        for p in prange(Wp.shape[0]):
            j0 = p * _TN
            C = _new_sums(Xt)
            _tile_config()
            for tb in range(c0, c1, 2):
                _tile_block(Xt, tb, Wp[p], C)
                _write_block(C, 16 * tb, min(_TN, T - 16 * tb), j0, min(_TN, y.shape[1] - j0), xsum, sx, scale, b, y)
            _tile_release()


@njit(inline="always")
def _write_block(C, t0, n, j0, w, xsum, sx, scale, b, y):  # pragma: no cover - compiled
    """y[t0 + a, j0 + r] for the sums C[a, r] of a block, a < n, r < w, rounded as the definitions
    round: int8 ``float32(C - 128 xsum[t]) * (sx[t] * scale[j]) [+ b[j]]`` (integer._out), bf16
    ``C [+ b[j]]``.  (Written on row slices, which LLVM vectorizes: calling _out per element took
    8.7 ms for fc_in at T = 512 where this takes 4.7, the products alone 3.1.)"""
    bj = b[j0:j0 + w] if b is not None else None
    for a in range(n):
        row = y[t0 + a, j0:j0 + w]
        c = C[a]
        if xsum is None:
            for r in range(w):
                row[r] = c[r] + bj[r] if b is not None else c[r]
        else:
            off = np.int32(128) * xsum[t0 + a]
            st = sx[t0 + a]
            s = scale[j0:j0 + w]
            for r in range(w):
                v = np.float32(c[r] - off) * (st * s[r])
                row[r] = v + bj[r] if b is not None else v


# ---------------------------------------------------------------------------
# Decode steps of a batch: the int8 weights packed once (packed.pack_int8, panels of 64 rows whose
# 4-byte groups are laid out as B tiles: 16 groups of 16 rows are one tile, a row 256 bytes on)
# times x in groups of 16 rows; per 64 bytes of n_in one tile of x, four of W, four products.
# ---------------------------------------------------------------------------

# Bytes of a panel ahead that _tile_panel prefetches into L2 and into L1.  A tile load that misses
# L1 waited on its 16 rows: qkv_proj and fc_in of 20 blocks of the 350M shape (random weights),
# B = 8, took 8.6 ms with 8 KB ahead into L2 only, 7.4 ms with 16 KB into L2 and 4 KB into L1
# (vpdpbusd panels 9.9 ms), interleaved in one process, medians of 9.
PANEL_PREFETCH = 16384
PANEL_NEAR = 4096


@njit(inline="always")
def _decode_x(xq, Xt):  # pragma: no cover - compiled
    """Xt[g, kb, r, :] = xq[16 g + r, 64 kb : 64 kb + 64] for the rows of xq (a tile read in one
    piece: x read in place with a stride of n_in bytes, a power of two, falls into a few cache
    sets); the rows past T are left as they are (never loaded)."""
    for t in range(xq.shape[0]):
        g, r = t // 16, t % 16
        for kb in range(Xt.shape[1]):
            for i in range(_K):  # (elements: LLVM vectorizes this loop)
                Xt[g, kb, r, i] = xq[t, _K * kb + i]


@njit(inline="always")
def _panel_amx(Wp, Xt, xsum, sx, p, scale, b, y, C):  # pragma: no cover - compiled
    """Columns 64p .. 64p + 63 of y = (xq @ W.T) * (sx[:, None] * scale) [+ b] (those < n_out), from
    panel p of Wp (packed.pack_int8) and the tiles Xt of xq (``_decode_x``): packed._panel on AMX
    tiles, the same sums.  C [>= 16, 64] int32 scratch."""
    T, n_out = y.shape
    j0 = p * 64
    for g in range(Xt.shape[0]):
        m = min(16, T - 16 * g)
        _tile_config_rows(m)
        _tile_panel(Xt[g], Wp[p], C, PANEL_PREFETCH)
        _tile_release()
        _write_block(C, 16 * g, m, j0, min(64, n_out - j0), xsum, sx, scale, b, y)


def panels_shape(W_shape: tuple[int, int], itemsize: int = 1) -> tuple[int, int, int]:
    """The shape of the panels of 32 rows of a weight ``W_shape`` (``_pack_panels``)."""
    n_out, n_in = W_shape
    return (-(-n_out // _TN), n_in * itemsize // 4, _TN)


def x_tiles_shape(T: int, n_in: int, itemsize: int = 1) -> tuple[int, int, int, int]:
    """The shape of the tiles of T rows of x with ``itemsize`` bytes per value (T rounded up to 32)."""
    k = _K // itemsize
    return (-(-T // _TN) * 2, n_in // k, 16, k)


