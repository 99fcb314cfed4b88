"""The operations of a CodeGen block, one short NumPy function each.

These functions are the *definition* of the model: every faster path (the Numba kernels in
the ``kernels`` package) is tested against them, and the model in ``model.py`` reads as a sequence of
calls to them. Each one names its shapes in a comment and its formula in the docstring.

Names follow the CodeGen paper and Hugging Face ``transformers``
(``models/codegen/modeling_codegen.py``), so that a reader can map one onto the other.
"""

from __future__ import annotations

import numpy as np

# The value a masked attention score takes. transformers uses the float32 minimum; a finite
# value (rather than -inf) keeps a row whose keys are all masked free of NaN.
MASKED_SCORE = np.finfo(np.float32).min


def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:  # [..., E], [E], [E] -> [..., E]
    """y = (x - mean(x)) / sqrt(var(x) + eps) * g + b, over the last axis (biased variance).

    >>> layer_norm(np.array([[1.0, 3.0]], np.float32), np.ones(2, np.float32), np.zeros(2, np.float32), 0.0)
    array([[-1.,  1.]], dtype=float32)
    """
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + np.float32(eps))) * g + b


def gelu_new(x: np.ndarray) -> np.ndarray:  # [...] -> [...]
    """GELU, tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).

    >>> gelu_new(np.array([0.0, 1.0], np.float32))
    array([0.      , 0.841192], dtype=float32)
    """
    c = np.float32(np.sqrt(2.0 / np.pi))
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(c * (x + np.float32(0.044715) * x**3)))


def softmax(x: np.ndarray) -> np.ndarray:  # [..., n] -> [..., n]
    """softmax(x)_i = exp(x_i - max x) / Σ_j exp(x_j - max x), over the last axis."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:  # [..., n_in], [n_out, n_in], [n_out] -> [..., n_out]
    """y = x·Wᵀ + b, with W stored [n_out, n_in] as PyTorch stores it."""
    y = x @ w.T
    return y if b is None else y + b


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # [N, n] float32 -> int8 [N, n], float32 [N]
    """Each row to 8 bits, symmetric: x ≈ xq · sx with sx = max|x| / 127, xq = rint(x · 127 / max|x|).

    A row of zeros gets xq = 0 and sx = 0; a row holding inf or NaN gets xq = 0 and sx = NaN (its
    products are NaN, as they would be in float).

    >>> quantize_rows(np.array([[0.5, -1.0, 0.25]], np.float32))
    (array([[  64, -127,   32]], dtype=int8), array([0.00787402], dtype=float32))
    """
    x = np.asarray(x, np.float32)
    amax = np.abs(x).max(axis=-1)
    ok = (amax > 0) & np.isfinite(amax)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(ok, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
        xq = np.where(ok[:, None], np.rint(x * inv[:, None]), 0).astype(np.int8)
        sx = np.where(amax == 0, np.float32(0.0), np.where(ok, amax / np.float32(127.0), np.float32(np.nan)))
    return xq, sx.astype(np.float32)


def linear_int8_rows(x: np.ndarray, wq: np.ndarray, scale: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:  # [N, n_in], int8 [n_out, n_in], [n_out], [n_out] -> [N, n_out]
    """y = (xq·Wqᵀ) · sx · scale + b: x quantized per row (``quantize_rows``), the products of
    the 8-bit integers summed exactly (int32 in the kernels), then scaled in float32.

    This is how int8 weights are multiplied by default (``kernels.integer``): an approximation of
    ``linear(x, Wq · scale)`` whose error README measures.
    """
    xq, sx = quantize_rows(x)
    acc = (xq.astype(np.int64) @ wq.astype(np.int64).T).astype(np.float32)  # exact integers, then rounded once
    y = acc * (sx[:, None] * scale[None, :])
    return y if b is None else y + b


def unpack_int4(packed: np.ndarray, group: int) -> np.ndarray:  # uint8 [n_out, n_in / 2] -> int8 [n_out, n_in]
    """The 4-bit codes of int4 weights as int8 values in -8..7.

    Each group of ``group`` weights along a row is stored in ``group / 2`` bytes: byte j of the
    group holds weight j in its low nibble and weight j + group / 2 in its high nibble, each as
    q + 8 (0..15).  So a group's first half is the bytes' low nibbles, its second half their
    high nibbles: one load, a shift and two masks give the group in order.

    >>> unpack_int4(np.array([[0x80, 0x1F]], np.uint8), 4)
    array([[-8,  7,  0, -7]], dtype=int8)
    """
    n_out, half = packed.shape
    g = packed.reshape(n_out, -1, group // 2)
    q = np.concatenate([g & 0x0F, g >> 4], axis=2).astype(np.int8) - np.int8(8)
    return q.reshape(n_out, 2 * half)


def pack_int4(q: np.ndarray, group: int) -> np.ndarray:  # int8 [n_out, n_in] in -8..7 -> uint8 [n_out, n_in / 2]
    """The inverse of ``unpack_int4``."""
    n_out, n_in = q.shape
    u = (q.astype(np.int16) + 8).astype(np.uint8).reshape(n_out, -1, 2, group // 2)
    return (u[:, :, 0] | (u[:, :, 1] << 4)).reshape(n_out, n_in // 2)


def dequantize_int4(packed: np.ndarray, scale: np.ndarray) -> np.ndarray:  # uint8 [n_out, n_in / 2], float16 [n_out, n_groups] -> [n_out, n_in]
    """W = q · scale of its group (group = n_in / n_groups), in float32."""
    n_out, n_groups = scale.shape
    group = 2 * packed.shape[1] // n_groups
    q = unpack_int4(packed, group).reshape(n_out, n_groups, group)
    return (q * scale.astype(np.float32)[:, :, None]).reshape(n_out, -1)


def linear_int4_rows(x: np.ndarray, packed: np.ndarray, scale: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:  # [N, n_in], uint8 [n_out, n_in / 2], float16 [n_out, n_groups], [n_out] -> [N, n_out]
    """y = sx · Σ_g float32(xq_g·q_gᵀ) · scale_g + b: x quantized per row (``quantize_rows``), each
    group's products of integers summed exactly, then the groups' sums scaled and added in float32.

    This is how int4 weights are multiplied (``kernels.int4``); the kernels add the groups in
    another order, so they match this within float32 rounding, not bit for bit.
    """
    xq, sx = quantize_rows(x)
    n_out, n_groups = scale.shape
    group = 2 * packed.shape[1] // n_groups
    q = unpack_int4(packed, group).reshape(n_out, n_groups, group).astype(np.int32)
    xg = xq.astype(np.int32).reshape(len(xq), n_groups, group)
    acc = np.einsum("tgi,ogi->tog", xg, q).astype(np.float32)  # exact integers per group
    y = (acc * scale.astype(np.float32)[None]).sum(axis=2, dtype=np.float32) * sx[:, None]
    return y if b is None else y + b


def round_bf16(x: np.ndarray) -> np.ndarray:  # [...] float32 -> [...] float32
    """x rounded to the nearest bfloat16 (ties to even), as float32: the top 16 bits of each float.

    >>> round_bf16(np.array([1.0 + 2**-8, 1.0 + 3 * 2**-8], np.float32)).tolist()
    [1.0, 1.015625]
    """
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32) << 16
    return np.where(np.isnan(x), np.float32(np.nan), r.view(np.float32)).astype(np.float32)


def linear_bf16_rows(x: np.ndarray, w16: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:  # [N, n_in], uint16 [n_out, n_in], [n_out] -> [N, n_out]
    """y = round_bf16(x)·Wᵀ + b for bf16 weights (uint16 bits): how prompts with bf16 weights are
    multiplied on CPUs with AVX512-BF16 (``kernels.qgemm``), whose sums add pairs of products in
    float32.  An approximation of ``linear(x, W)`` whose error README measures."""
    w = (w16.astype(np.uint32) << 16).view(np.float32)
    return linear(round_bf16(x), w, b)


def sinusoid_table(n_positions: int, rotary_dim: int) -> np.ndarray:  # -> [n_positions, rotary_dim]
    """The rotary angles' sines and cosines, built exactly as transformers builds them.

    inv_freq_i = 1 / 10000^(2i / rotary_dim) for i in [0, rotary_dim/2); θ[p, i] = p · inv_freq_i
    (float32, like torch); the table is [sin θ | cos θ] along the last axis. Every step is
    correctly rounded; torch's float32 ``pow`` and ``sin`` are not always, so a few entries of
    transformers' table differ from this one in the last bit (tested: at most 2 ulp).

    >>> sinusoid_table(3, 4)[2].round(4)   # position 2: sin(2), sin(0.02), cos(2), cos(0.02)
    array([ 0.9093,  0.02  , -0.4161,  0.9998], dtype=float32)
    """
    exponent = (np.arange(0, rotary_dim, 2) / rotary_dim).astype(np.float32)  # float32, like torch
    power = (10000.0 ** exponent.astype(np.float64)).astype(np.float32)  # 10000^e rounded to float32
    inv_freq = np.float32(1.0) / power
    theta = np.arange(n_positions, dtype=np.float32)[:, None] * inv_freq[None, :]  # float32 product
    theta = theta.astype(np.float64)  # sin/cos correctly rounded, then float32
    return np.concatenate([np.sin(theta), np.cos(theta)], axis=1).astype(np.float32)


def rotate_every_two(x: np.ndarray) -> np.ndarray:  # [..., d] -> [..., d]
    """Maps each channel pair (x_2i, x_2i+1) to (-x_2i+1, x_2i): multiplication by i.

    >>> rotate_every_two(np.array([1.0, 2.0, 3.0, 4.0]))
    array([-2.,  1., -4.,  3.])
    """
    out = np.empty_like(x)
    out[..., 0::2] = -x[..., 1::2]
    out[..., 1::2] = x[..., 0::2]
    return out


def apply_rotary(x: np.ndarray, sincos: np.ndarray, rotary_dim: int) -> np.ndarray:  # [B, T, H, D], [B, T, rotary_dim] -> [B, T, H, D]
    """GPT-J rotary embedding on the first ``rotary_dim`` channels of every head.

    Channel pair (2i, 2i+1) at position p is rotated by the angle θ[p, i]: seen as the complex
    number x_2i + i·x_2i+1, it is multiplied by e^{iθ}. Channels from ``rotary_dim`` on pass
    through unchanged. ``sincos`` holds the table rows of each token's position.
    """
    half = rotary_dim // 2
    sin = np.repeat(sincos[..., :half], 2, axis=-1)[:, :, None, :]  # [B, T, 1, rotary_dim]
    cos = np.repeat(sincos[..., half:], 2, axis=-1)[:, :, None, :]
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    x_rot = x_rot * cos + rotate_every_two(x_rot) * sin
    return np.concatenate([x_rot, x_pass], axis=-1)


def split_qkv(qkv: np.ndarray, n_head: int, mp_num: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # [B, T, 3E] -> 3 × [B, T, H, D]
    """Splits CodeGen's fused ``qkv_proj`` output into query, key and value heads.

    CodeGen was trained on TPU-v4 with the model split over ``mp_num = 4`` cores, and the fused
    projection keeps that layout: the 3E outputs are 4 blocks of 3E/4, and each block holds
    [query | value | key] (in that order) for H/4 consecutive heads::

        qkv = [ q(heads 0..H/4-1) v(...) k(...) | q(heads H/4..) v k | ... 4 blocks ]
    """
    B, T, three_e = qkv.shape
    e = three_e // 3
    d = e // n_head
    blocks = qkv.reshape(B, T, mp_num, 3, e // mp_num)  # [B, T, mp, (q, v, k), E/mp]
    q, v, k = blocks[:, :, :, 0], blocks[:, :, :, 1], blocks[:, :, :, 2]
    return tuple(t.reshape(B, T, n_head, d) for t in (q, k, v))  # heads grouped per mp block


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # [B, H, T, D], [B, H, S, D], [B, H, S, D], [B, 1, T, S] bool -> [B, H, T, D], [B, H, T, S]
    """Scaled dot-product attention: softmax(q·kᵀ / √D, where mask) · v.

    ``mask`` is True where a query may look at a key (causal and not padding). Masked scores are
    set to the float32 minimum, so a query that may see no key at all gets uniform weights over
    garbage instead of NaN; such rows belong to padding and are never read.
    Returns the output and the attention probabilities.
    """
    scores = (q @ np.swapaxes(k, -1, -2)) / np.float32(np.sqrt(q.shape[-1]))
    probs = softmax(np.where(mask, scores, MASKED_SCORE))
    return probs @ v, probs


def causal_mask(attention_mask: np.ndarray, T: int) -> np.ndarray:  # [B, S] (1 = token, 0 = padding) -> [B, 1, T, S] bool
    """Which keys each of the last T queries may see: keys at or before it that are not padding.

    The S keys are the cached ones followed by the T new ones; query t sits at key index S - T + t.
    """
    S = attention_mask.shape[1]
    causal = np.arange(S)[None, :] <= (S - T + np.arange(T))[:, None]  # [T, S]
    return causal[None, None] & (attention_mask[:, None, None, :] != 0)


def mlp(x: np.ndarray, w_in: np.ndarray, b_in: np.ndarray, w_out: np.ndarray, b_out: np.ndarray) -> np.ndarray:  # [..., E] -> [..., E]
    """fc_out(gelu_new(fc_in(x))): E -> n_inner -> E."""
    return linear(gelu_new(linear(x, w_in, b_in)), w_out, b_out)
