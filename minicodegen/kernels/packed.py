"""int8 weights packed once into VNNI panels (CPUs with AVX512-VNNI): ``pack_int8``, ``packs``,
``linear_int8_packed`` (any number of rows of x), and the fused decode block's
``_qgemv_pair_packed`` / ``_qgemv_sum_into_packed``.

The panel is the one qgemm._qgemm_vnni builds per call for a prompt (see the section comment there):

    Wp[p, q, r] = the 4 bytes W[64p + r, 4q .. 4q + 3], each XOR 0x80 (w + 128, unsigned)

so that one vpdpbusd adds 4 bytes of one row of x into 16 outputs, with no sums across lanes at the
end; rows past n_out hold w = 0.  The model packs its int8 matrices for decode steps of a batch
(model.fast_weights, model.PACK_MIN_ROWS): B rows of x go through each panel in tiles of 6 rows
(and one of the rest) as it streams in.  The row kernels of integer.py (dot products along n_in,
summed across lanes per output) ran at 1.5-1.8 vpdpbusd per ns and core at B = 8, the panel tile
at 3.9 in L1; streamed from memory, the 20 blocks' products of a 350M step of 8 rows took 13.9 ms
against 15.7 (16 rows: 21.1 against 28.2), interleaved runs.  One row and prompts gained nothing.
Where the CPU has AMX-INT8 and n_in is a multiple of 64 (``packed_isa``), the same panels go through
AMX tiles instead (``amx._panel_amx``, same sums; measured there).

Tested against (tests/test_kernels_packed.py; on the tiles, tests/test_kernels_amx.py):
``ops.linear_int8_rows`` bit for bit for T = 1 .. 37 and shapes with a partial last panel; the fused
decode block with packed weights against the same block with the checkpoint's.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .amx import AMX_INT8, _decode_x, _panel_amx
from .arrays import _check_w, _prep_vec, _prep_x, _ro, _tile_buffer
from .cpu import Isa, IsaType
from .cpu import amx_int8 as _amx_int8
from .integer import INT8_ISA, _out, _quantize_few, _quantize_rows
from .qgemm import _KQ, _MR, _NR, _TB, _dp_tile

PANEL = _NR  # outputs per panel
PREFETCH = 4096  # bytes ahead in the panel that the first tile of rows prefetches (into L2)
TILES = Isa("amx_int8")  # the panels on AMX tiles (amx._panel_amx)


def packed_isa(*n_ins: int, amx: bool | None = None) -> Isa:
    """How packed panels of matrices with these n_in are multiplied: on AMX tiles (``TILES``) where
    ``amx`` (default ``amx.AMX_INT8``: the CPU has AMX-INT8 and Linux granted the tile registers)
    and every n_in is a multiple of 64 (whole tiles), else with vpdpbusd (``INT8_ISA``)."""
    tiles = AMX_INT8 if amx is None else amx
    return TILES if tiles and all(n % 64 == 0 for n in n_ins) else INT8_ISA


def packs(W: np.ndarray) -> bool:
    """Whether int8 weights W [n_out, n_in] are packed for this CPU: AVX512-VNNI (``INT8_ISA``)
    and n_in a multiple of 4 (at most 65536, for exact int32 sums)."""
    return (INT8_ISA.name == "avx512_vnni" and W.dtype == np.int8 and W.ndim == 2 and W.shape[1] % 4 == 0
            and 0 < W.shape[1] <= 65536 and W.shape[0] > 0)


def pack_int8(W: np.ndarray) -> np.ndarray:  # [n_out, n_in] int8 -> [ceil(n_out / 64), n_in / 4, 64] int32
    """The panels of W (see the module docstring).

    >>> Wp = pack_int8(np.arange(8, dtype=np.int8).reshape(1, 8))
    >>> Wp.shape
    (1, 2, 64)
    >>> list(Wp[0, :, 0].tobytes())  # row 0, its 4-byte groups q = 0, 1: w + 128
    [128, 129, 130, 131, 132, 133, 134, 135]
    >>> list(Wp[0, 0, 1].tobytes())  # row 1 of the panel, past n_out: w = 0
    [128, 128, 128, 128]
    """
    W = _check_w(W, np.int8, "W")
    n_out, n_in = W.shape
    if n_in % 4:
        raise ValueError(f"pack_int8 takes n_in a multiple of 4, got W of shape {W.shape}")
    P, nq = -(-n_out // PANEL), n_in // 4
    u = np.full((P * PANEL, nq), -2139062144, np.int32)  # 0x80808080: w = 0 past n_out
    np.bitwise_xor(W.view(np.int32), np.int32(-2139062144), out=u[:n_out])
    return np.ascontiguousarray(u.reshape(P, PANEL, nq).transpose(0, 2, 1))


def check_packed(Wp: np.ndarray, n_out: int, n_in: int, name: str) -> np.ndarray:
    """Wp as the kernels take it: int32 C-contiguous [ceil(n_out / 64), n_in / 4, 64], on a CPU
    with AVX512-VNNI."""
    if INT8_ISA.name != "avx512_vnni":
        raise ValueError(f"{name}: packed int8 weights need AVX512-VNNI; this CPU's integer dot product is "
                         f"{INT8_ISA.name}")
    shape = (-(-n_out // PANEL), n_in // 4, PANEL)
    if not (isinstance(Wp, np.ndarray) and Wp.dtype == np.int32 and Wp.shape == shape and Wp.flags.c_contiguous):
        got = f"{Wp.dtype} {Wp.shape}" if isinstance(Wp, np.ndarray) else type(Wp).__name__
        raise ValueError(f"{name}: packed int8 weights must be C-contiguous int32 {shape} for "
                         f"[{n_out}, {n_in}], got {got}")
    return _ro(Wp)


# ---------------------------------------------------------------------------
# The kernels: each thread takes whole panels; for a panel, the rows of x go in tiles of 6 (and one
# of the rest: no padding rows), blocks of _TB rows and chunks of _KQ 4-byte groups, as in
# qgemm._tile_sums.  The weights' offset comes off per row: - 128 * sum_i xq[t, i].
# ---------------------------------------------------------------------------


@njit(inline="always")
def _tile(Wp, q0, q1, x, t0, C, acc_in, m, pf):  # pragma: no cover - compiled
    """_dp_tile for m rows (1 .. 6), m known only at run time."""
    if m == 6:
        _dp_tile(Wp, q0, q1, x, t0, C, acc_in, 6, pf)
    elif m == 5:
        _dp_tile(Wp, q0, q1, x, t0, C, acc_in, 5, pf)
    elif m == 4:
        _dp_tile(Wp, q0, q1, x, t0, C, acc_in, 4, pf)
    elif m == 3:
        _dp_tile(Wp, q0, q1, x, t0, C, acc_in, 3, pf)
    elif m == 2:
        _dp_tile(Wp, q0, q1, x, t0, C, acc_in, 2, pf)
    else:
        _dp_tile(Wp, q0, q1, x, t0, C, acc_in, 1, pf)


@njit(inline="always")
def _panel(Wp, xq, xsum, sx, p, scale, b, y, C):  # pragma: no cover - compiled
    """Columns 64p .. 64p + 63 of y = (xq @ W.T) * (sx[:, None] * scale) [+ b] (those < n_out),
    from panel p of Wp; C [T, 64] int32 scratch."""
    T, n_out = y.shape
    nq = Wp.shape[1]
    for tb in range(0, T, _TB):
        te = min(tb + _TB, T)
        for q0 in range(0, nq, _KQ):
            for t0 in range(tb, te, _MR):  # (the first tile streams the chunk in: it prefetches)
                _tile(Wp[p], q0, min(q0 + _KQ, nq), xq, t0, C, q0 > 0, min(_MR, te - t0), PREFETCH if t0 == tb else 0)
    j0 = p * PANEL
    for t in range(T):
        off = 128 * xsum[t]
        for r in range(min(PANEL, n_out - j0)):
            _out(C[t, r] - off, t, j0 + r, sx, scale, b, y)


def _x_for(xq, isa):  # pragma: no cover - replaced by the overload when compiled
    raise NotImplementedError


@overload(_x_for)
def _x_for_impl(xq, isa):
    """What _sums takes as x: xq itself (vpdpbusd), or its tiles (amx._decode_x)."""
    if isinstance(isa, IsaType) and isa.isa == TILES.name:
        def tiles(xq, isa):
            T, n = xq.shape
            Xt = np.empty(((T + 15) // 16, n // 64, 16, 64), np.int8)
            _decode_x(xq, Xt)
            return Xt
        return tiles
    return lambda xq, isa: xq


def _sums(Wp, x, xsum, sx, p, scale, b, y, C, isa):  # pragma: no cover - replaced when compiled
    raise NotImplementedError


@overload(_sums)
def _sums_impl(Wp, x, xsum, sx, p, scale, b, y, C, isa):
    """Panel p into y: _panel (vpdpbusd tiles of 6 rows) or amx._panel_amx (AMX tiles), by isa."""
    if isinstance(isa, IsaType) and isa.isa == TILES.name:
        return lambda Wp, x, xsum, sx, p, scale, b, y, C, isa: _panel_amx(Wp, x, xsum, sx, p, scale, b, y, C)
    return lambda Wp, x, xsum, sx, p, scale, b, y, C, isa: _panel(Wp, x, xsum, sx, p, scale, b, y, C)


@njit(inline="always")
def _scratch(T):  # pragma: no cover - compiled
    """A thread's sums of one panel: T rows (_panel) and at least 16 (_panel_amx)."""
    return np.empty((max(T, 16), PANEL), np.int32)


@njit(parallel=True, error_model="numpy", cache=True)
def _qgemm_packed(xq, xsum, sx, Wp, scale, b, y, isa):  # pragma: no cover - compiled
    """y = (xq @ W.T) * (sx[:, None] * scale) [+ b]: xq [T, n] int8 (row sums xsum, scales sx), Wp
    the panels of W [n_out, n] (n_out = y.shape[1]), scale [n_out], b [n_out] or None; isa
    INT8_ISA or TILES (packed_isa)."""
    x = _x_for(xq, isa)
    for p in prange(Wp.shape[0]):
        _sums(Wp, x, xsum, sx, p, scale, b, y, _scratch(y.shape[0]), isa)


@njit(inline="always")
def _quantize_batch(x):  # pragma: no cover - compiled
    """integer._quantize_few, its rows in parallel from 4 rows on (in one thread the other waited:
    generate of 8 x 64 tokens at 350M took 2.48-2.55 s so, 2.05-2.14 s in parallel)."""
    if x.shape[0] < 4:
        return _quantize_few(x)
    xq = np.empty(x.shape, np.int8)
    sx = np.empty(x.shape[0], np.float32)
    xsum = np.empty(x.shape[0], np.int32)
    _quantize_rows(x, xq, sx, xsum)
    return xq, sx, xsum


@njit(parallel=True, error_model="numpy", cache=True)
def _qgemv_pair_packed(x, W1, s1, y1, W2, s2, b2, y2, isa):  # pragma: no cover - compiled
    """integer._qgemv_pair with packed weights: y1 = x @ W1.T * s1, y2 = x @ W2.T * s2 + b2, x [B,
    n_in] float32 quantized per row once; one parallel loop over the panels of both."""
    xq, sx, xsum = _quantize_batch(x)
    xt = _x_for(xq, isa)
    P1 = W1.shape[0]
    for p in prange(P1 + W2.shape[0]):
        C = _scratch(x.shape[0])
        if p < P1:
            _sums(W1, xt, xsum, sx, p, s1, None, y1, C, isa)
        else:
            _sums(W2, xt, xsum, sx, p - P1, s2, b2, y2, C, isa)


@njit(parallel=True, error_model="numpy", cache=True)
def _qgemv_sum_into_packed(x, a, W1, s1, hidden, W2, s2, b2, u, v, isa):  # pragma: no cover - compiled
    """integer._qgemv_sum_into with packed weights: x += a @ W1.T * s1 + (hidden @ W2.T * s2 + b2);
    W1 and W2 have the same panels of outputs (E), taken together; u, v [B, E] scratch."""
    aq, sa, asum = _quantize_batch(a)
    hq, sh, hsum = _quantize_batch(hidden)
    at, ht = _x_for(aq, isa), _x_for(hq, isa)
    E = x.shape[1]
    for p in prange(W1.shape[0]):
        C = _scratch(x.shape[0])
        _sums(W1, at, asum, sa, p, s1, None, u, C, isa)
        _sums(W2, ht, hsum, sh, p, s2, b2, v, C, isa)
        for t in range(x.shape[0]):  # (the panel's columns, while they are in cache)
            for j in range(p * PANEL, min(p * PANEL + PANEL, E)):
                x[t, j] = x[t, j] + (u[t, j] + v[t, j])


def linear_int8_packed(x: np.ndarray, Wp: np.ndarray, scale: np.ndarray, b: np.ndarray | None = None,
                       amx: bool | None = None) -> np.ndarray:
    """``ops.linear_int8_rows(x, W, scale, b)`` from ``Wp = pack_int8(W)``: x [..., n_in] float32
    quantized per row, then the panels (on AMX tiles where ``packed_isa(n_in, amx=amx)`` says so);
    the same result, bit for bit, as the kernels of the unpacked W, for any number of rows."""
    if not (isinstance(Wp, np.ndarray) and Wp.ndim == 3):
        raise ValueError(f"Wp must be packed int8 weights (pack_int8), got {getattr(Wp, 'shape', type(Wp).__name__)}")
    if amx and not _amx_int8():  # (asked for explicitly: checked; a tile instruction would kill the process)
        raise ValueError("amx=True needs a CPU with AMX-INT8 whose tile registers the system granted (cpu.amx_int8)")
    scale = _prep_vec(scale, np.size(scale), "scale")
    if scale is None:
        raise ValueError("linear_int8_packed needs a per-row scale")
    n_out, n_in = scale.shape[0], Wp.shape[1] * 4
    Wp = check_packed(Wp, n_out, n_in, "Wp")
    x2, lead = _prep_x(x, n_in)
    b = _prep_vec(b, n_out, "b")
    T = x2.shape[0]
    # xq in reused scratch (fresh pages at every call cost 0.5 ms for the 350M fc_out at T = 512)
    xq = _tile_buffer(-(-T * n_in // 4)).view(np.int8)[:T * n_in].reshape(T, n_in)
    sx = np.empty(T, np.float32)
    xsum = np.empty(T, np.int32)
    _quantize_rows(_ro(x2), xq, sx, xsum)
    y = np.empty((T, n_out), np.float32)
    _qgemm_packed(_ro(xq), _ro(xsum), _ro(sx), Wp, scale, b, y, packed_isa(n_in, amx=amx))
    return y.reshape(*lead, n_out)
