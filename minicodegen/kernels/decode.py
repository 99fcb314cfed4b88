"""One decode step of CodeGen blocks, each block fused into three parallel loops:
``decode_layers`` (the blocks of a step one after the other), ``decode_block`` (one block),
``decode_weights`` (a block's weights checked and ordered, once per model).

Kernels: ``_decode_block`` runs ``_gemv_pair`` (qkv_proj and fc_in in one loop),
``_rope_attend_step`` (rotary, cache append and attention per head) and ``_gemv_sum_into``
(out_proj + fc_out + residual), built from ``gemv._gemv_step``, ``attention._attend_query``,
``simd._dot`` and the row functions of ``elementwise``; for int8 weights the matrix loops are
``integer._qgemv_pair`` / ``_qgemv_sum_into``, or ``packed._qgemv_pair_packed`` /
``_qgemv_sum_into_packed`` when the weights come packed (chosen by type: ``_pair``, ``_sum_into``).

Tested against (tests/test_kernels_decode.py): ``model.block``'s NumPy path (``ops`` only) for
one new token, float32 / bf16 / int8 weights; ``_gemv_sum_into`` against the float64
``x + a @ W1.T [* s1] + (hidden @ W2.T [* s2] + b2)``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .arrays import _check_w, _prep_vec, _ro
from .attention import _attend_query
from .elementwise import _gelu_new, _layer_norm, _rope_head
from .gemv import PREFETCH_BF16, PREFETCH_F32, PREFETCH_INT4, PREFETCH_INT8, _dot_rows, _gemv_step
from .int4 import Q4Type, _q4gemv_pair, _q4gemv_sum_into, check_int4, q4_kind
from .integer import INT8_ISA, _qgemv_pair, _qgemv_sum_into
from .packed import _qgemv_pair_packed, _qgemv_sum_into_packed, check_packed, packed_isa
from .simd import _FM, _dot, _dot_operand

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
    D = qkv.shape[1] // 3 // n_head
    for bh in prange(B * n_head):
        b = bh // n_head
        h = bh % n_head
        q = np.empty(D, np.float32)
        _rope_head(qkv[b], sincos[b], rotary_dim, n_head, mp_num, h, q, k_cache[b, h, S - 1], v_cache[b, h, S - 1])
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
    B = x.shape[0]
    u_all = np.empty((B, E), np.float32)  # (scratch for batches: the two sums of each output)
    v_all = np.empty((B, E), np.float32)
    for j in prange(h):
        if B == 1 and j + 3 * h < E:
            u = _dot(a[0], (W1[j], W1[j + h], W1[j + 2 * h], W1[j + 3 * h]), pf)
            v = _dot(hidden[0], (W2[j], W2[j + h], W2[j + 2 * h], W2[j + 3 * h]), pf)
            for r in range(4):
                _sum_out(x, 0, j + r * h, u[r], s1, v[r], s2, b2)
        else:  # (each row of W once for all rows of the batch)
            _dot_rows(a, W1, j, h, pf, u_all)
            _dot_rows(hidden, W2, j, h, pf, v_all)
            for r in range(4):
                k = j + r * h
                if k < E:
                    for t in range(B):
                        _sum_out(x, t, k, u_all[t, k], s1, v_all[t, k], s2, b2)


def _pair(x, W1, s1, y1, W2, s2, b2, y2, pf, isa):  # pragma: no cover - replaced by the overload when compiled
    raise NotImplementedError


def _sum_into(x, a, W1, s1, hidden, W2, s2, b2, pf, isa):  # pragma: no cover - replaced when compiled
    raise NotImplementedError


@overload(_pair)
def _pair_for(x, W1, s1, y1, W2, s2, b2, y2, pf, isa):
    """_gemv_pair (isa None: weights widened to float32), integer._qgemv_pair (an Isa: int8
    weights), packed._qgemv_pair_packed (int8 weights packed: 3-d) or int4._q4gemv_pair (a Q4),
    chosen by type when the block compiles (a plain ``if isa is None`` would type every call)."""
    if isinstance(W1, types.Array) and W1.ndim == 3:
        return lambda x, W1, s1, y1, W2, s2, b2, y2, pf, isa: _qgemv_pair_packed(x, W1, s1, y1, W2, s2, b2, y2, isa)
    if isinstance(isa, types.NoneType):
        return lambda x, W1, s1, y1, W2, s2, b2, y2, pf, isa: _gemv_pair(x, W1, s1, y1, W2, s2, b2, y2, pf)
    if isinstance(isa, Q4Type):
        return lambda x, W1, s1, y1, W2, s2, b2, y2, pf, isa: _q4gemv_pair(x, W1, s1, y1, W2, s2, b2, y2, pf, isa)
    return lambda x, W1, s1, y1, W2, s2, b2, y2, pf, isa: _qgemv_pair(x, W1, s1, y1, W2, s2, b2, y2, pf, isa)


@overload(_sum_into)
def _sum_into_for(x, a, W1, s1, hidden, W2, s2, b2, pf, isa):
    """_gemv_sum_into, integer._qgemv_sum_into, packed._qgemv_sum_into_packed or
    int4._q4gemv_sum_into, as _pair."""
    if isinstance(W1, types.Array) and W1.ndim == 3:
        return lambda x, a, W1, s1, hidden, W2, s2, b2, pf, isa: _qgemv_sum_into_packed(
            x, a, W1, s1, hidden, W2, s2, b2, np.empty_like(x), np.empty_like(x), isa)
    if isinstance(isa, types.NoneType):
        return lambda x, a, W1, s1, hidden, W2, s2, b2, pf, isa: _gemv_sum_into(x, a, W1, s1, hidden, W2, s2, b2, pf)
    if isinstance(isa, Q4Type):
        return lambda x, a, W1, s1, hidden, W2, s2, b2, pf, isa: _q4gemv_sum_into(
            x, a, W1, s1, hidden, W2, s2, b2, np.empty_like(x), np.empty_like(x), pf, isa)
    return lambda x, a, W1, s1, hidden, W2, s2, b2, pf, isa: _qgemv_sum_into(
        x, a, W1, s1, hidden, W2, s2, b2, np.empty_like(x), np.empty_like(x), pf, isa)


def _n_out(W, scale):  # pragma: no cover - replaced by the overload when compiled
    raise NotImplementedError


@overload(_n_out)
def _n_out_for(W, scale):
    """The outputs of a weight matrix: its rows, or for packed int8 panels (3-d) its scales."""
    if isinstance(W, types.Array) and W.ndim == 3:
        return lambda W, scale: scale.shape[0]
    return lambda W, scale: W.shape[0]


@njit(error_model="numpy", cache=True)
def _decode_block(x, ln_g, ln_b, eps, W_qkv, s_qkv, W_out, s_out, W_in, s_in, b_in, W_fo, s_fo, b_fo,
                  sincos, rotary_dim, n_head, mp_num, k_cache, v_cache, S, allowed, pf, isa):  # pragma: no cover - compiled
    """The fused block (see the section comment); x [B, E] is updated in place.  isa None: the
    weights are widened to float32 in registers; an Isa (int8 weights) or a Q4 (int4 weights):
    the inputs of the four matrices are quantized per row and multiplied with integer dot
    products (integer.py, int4.py)."""
    B, E = x.shape
    h = np.empty_like(x)
    _layer_norm(x, ln_g, ln_b, eps, h)  # (rows in parallel; the same rounding for any number of rows)
    qkv = np.empty((B, _n_out(W_qkv, s_qkv)), np.float32)
    hidden = np.empty((B, _n_out(W_in, s_in)), np.float32)
    _pair(h, W_qkv, s_qkv, qkv, W_in, s_in, b_in, hidden, pf, isa)
    flat = hidden.reshape(hidden.size)
    _gelu_new(flat, flat)  # (in parallel: 32k values for 8 rows of the 350M block took 60 us in one thread)
    a = np.empty((B, E), np.float32)
    _rope_attend_step(qkv, sincos, rotary_dim, n_head, mp_num, k_cache, v_cache, S, allowed, a)
    _sum_into(x, a, W_out, s_out, hidden, W_fo, s_fo, b_fo, pf, isa)


def _prefetch_bytes(dt: np.dtype) -> int:
    """The prefetch distance for weights of dtype dt (float32, uint16 = bf16, int8), in bytes."""
    return {4: PREFETCH_F32, 2: PREFETCH_BF16, 1: PREFETCH_INT8}[dt.itemsize]


def decode_weights(layer: dict[str, np.ndarray], E: int, int8_activations: bool = True) -> tuple:
    """The weights of one block, checked and in the order ``_decode_block`` takes them.

    ``layer`` maps the block's weight names without the ``transformer.h.{i}.`` prefix
    (``ln_1.weight``, ``attn.qkv_proj.weight``, ... and ``*.weight.scale`` for int8 and int4) to
    arrays.  int8 weights multiply 8-bit activations (``int8_activations``, the default) or
    float32 ones; int8 weights packed (``packed.pack_int8``: int32 panels) and int4 weights
    (uint8) always 8-bit ones.  The kernels do not check bounds, so every shape is checked here; model.forward
    does this once per model and passes the result to decode_layers at every step.
    """
    dt = layer["attn.qkv_proj.weight"].dtype
    if dt not in (np.float32, np.uint16, np.int8, np.uint8, np.int32):
        raise TypeError(f"decode_block takes float32, uint16 (bf16), int8, int32 (packed int8) or uint8 (int4) "
                        f"weights, got {dt}")
    if dt == np.int32:
        return _packed_weights(layer, E)
    n_inner = layer["mlp.fc_in.weight"].shape[0]
    shapes = {"attn.qkv_proj": (3 * E, E), "attn.out_proj": (E, E), "mlp.fc_in": (n_inner, E), "mlp.fc_out": (E, n_inner)}
    if dt == np.uint8:
        return _int4_weights(layer, E, shapes)
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
            Ws[3], sc[3], _prep_vec(layer.get("mlp.fc_out.bias"), E, "mlp.fc_out.bias"), _prefetch_bytes(dt),
            INT8_ISA if dt == np.int8 and int8_activations else None)


def _packed_weights(layer: dict[str, np.ndarray], E: int) -> tuple:
    """decode_weights for int8 weights packed into panels: n_inner from fc_in's scale."""
    n_inner = np.size(layer.get("mlp.fc_in.weight.scale"))
    shapes = {"attn.qkv_proj": (3 * E, E), "attn.out_proj": (E, E), "mlp.fc_in": (n_inner, E), "mlp.fc_out": (E, n_inner)}
    Ws, sc = [], []
    for name, (n_out, n_in) in shapes.items():
        Ws.append(check_packed(layer[name + ".weight"], n_out, n_in, name + ".weight"))
        s = layer.get(name + ".weight.scale")
        if s is None:
            raise ValueError(f"{name}: packed int8 weights need a .weight.scale")
        sc.append(_prep_vec(s, n_out, name + ".weight.scale"))
    return (_prep_vec(layer["ln_1.weight"], E, "ln_1.weight"), _prep_vec(layer["ln_1.bias"], E, "ln_1.bias"),
            Ws[0], sc[0], Ws[1], sc[1], Ws[2], sc[2], _prep_vec(layer.get("mlp.fc_in.bias"), n_inner, "mlp.fc_in.bias"),
            Ws[3], sc[3], _prep_vec(layer.get("mlp.fc_out.bias"), E, "mlp.fc_out.bias"), 0, packed_isa(E, n_inner))


def _int4_weights(layer: dict[str, np.ndarray], E: int, shapes: dict[str, tuple[int, int]]) -> tuple:
    """decode_weights for int4 weights: every matrix uint8 [n_out, n_in / 2] with its float16
    scale [n_out, n_in / group], one group size for all four."""
    Ws, sc, groups = [], [], set()
    for name, (n_out, n_in) in shapes.items():
        W, S, group = check_int4(layer[name + ".weight"], layer.get(name + ".weight.scale"), name + ".weight")
        if W.shape != (n_out, n_in // 2):
            raise ValueError(f"{name}.weight has shape {W.shape}, expected {(n_out, n_in // 2)} (int4) for E={E}")
        Ws.append(W)
        sc.append(S)
        groups.add(group)
    if len(groups) > 1:
        raise ValueError(f"the block's int4 weights have groups of {sorted(groups)} weights; decode takes one size")
    return (_prep_vec(layer["ln_1.weight"], E, "ln_1.weight"), _prep_vec(layer["ln_1.bias"], E, "ln_1.bias"),
            Ws[0], sc[0], Ws[1], sc[1], Ws[2], sc[2], _prep_vec(layer.get("mlp.fc_in.bias"), shapes["mlp.fc_in"][0], "mlp.fc_in.bias"),
            Ws[3], sc[3], _prep_vec(layer.get("mlp.fc_out.bias"), E, "mlp.fc_out.bias"), PREFETCH_INT4, q4_kind(groups.pop()))


def decode_layers(x: np.ndarray, layers: list[dict[str, np.ndarray] | tuple], eps: float, sincos: np.ndarray,
                  rotary_dim: int, n_head: int, k_caches: list[np.ndarray], v_caches: list[np.ndarray], S: int,
                  allowed: np.ndarray, mp_num: int = 4, int8_activations: bool = True) -> np.ndarray:
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
    plan = [decode_weights(layer, E, int8_activations) if isinstance(layer, dict) else layer for layer in layers]
    for w in plan:
        if w[0].shape != (E,):
            raise ValueError(f"the layer's weights are for E={w[0].shape[0]}, x has E={E}")
    eps, rotary_dim, n_head, mp_num, S = float(eps), int(rotary_dim), int(n_head), int(mp_num), int(S)
    for w, k_cache, v_cache in zip(plan, k_caches, v_caches):
        _decode_block(x, w[0], w[1], eps, *w[2:12], sincos, rotary_dim, n_head, mp_num, k_cache, v_cache, S, allowed, *w[12:])
    return x


def decode_block(x: np.ndarray, layer: dict[str, np.ndarray] | tuple, eps: float, sincos: np.ndarray,
                 rotary_dim: int, n_head: int, k_cache: np.ndarray, v_cache: np.ndarray, S: int,
                 allowed: np.ndarray, mp_num: int = 4, int8_activations: bool = True) -> np.ndarray:
    """One block of decode_layers (see there): x [B, E] updated in place and returned."""
    return decode_layers(x, [layer], eps, sincos, rotary_dim, n_head, [k_cache], [v_cache], S, allowed, mp_num,
                         int8_activations)
