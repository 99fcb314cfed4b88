"""Each Numba kernel in minicodegen.kernels against its NumPy definition.

References are closed forms evaluated in float64 (and, where they exist, the readable functions
of ``minicodegen.ops``).  Tolerances for dot products are the classical error bound of a float32
sum of n products, gamma_n * sum|x_i * w_i| with gamma_n = n u / (1 - n u), u = 2^-24: whichever
order the kernel adds in (SIMD partial sums, FMA, BLAS blocking), it stays inside that bound.
Shapes include sizes that are not multiples of the SIMD width, T on both sides of the streaming /
BLAS switch, read-only and memory-mapped weights.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicodegen import kernels as K

try:
    from minicodegen import ops
except ImportError:  # pragma: no cover - ops is written alongside
    ops = None

U = 2.0**-24
SETTINGS = settings(max_examples=25, deadline=None, derandomize=False)

odd_sizes = st.sampled_from([1, 2, 3, 7, 16, 17, 31, 63, 64, 65, 130])
Ts = st.integers(1, K.STREAM_MAX_T + 1)  # 1..9: streaming kernel and the BLAS / tile path
seeds = st.integers(0, 2**32 - 1)


def gamma(n: int) -> float:
    return n * U / (1 - n * U)


def readonly(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


def to_bf16(w: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (round to nearest even), as uint16."""
    u = w.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def widen(w16: np.ndarray) -> np.ndarray:
    return (w16.astype(np.uint32) << 16).view(np.float32)


def check_linear(y, x, Wf64, b, extra_terms: int = 0):
    """|y - ref| <= gamma_{n+2} (|x| @ |W|.T + |b|) elementwise, ref in float64."""
    x64 = x.astype(np.float64)
    ref = x64 @ Wf64.T
    mag = np.abs(x64) @ np.abs(Wf64).T
    if b is not None:
        ref = ref + b
        mag = mag + np.abs(b)
    tol = gamma(x.shape[-1] + 2 + extra_terms) * mag + 1e-30
    assert y.dtype == np.float32
    assert y.shape == ref.shape
    err = np.abs(y.astype(np.float64) - ref)
    assert np.all(err <= tol), f"max err/tol {np.max(err / tol):.3g}"


# ---------------------------------------------------------------------------
# linear: fp32 / bf16 / int8
# ---------------------------------------------------------------------------


@SETTINGS
@given(seeds, Ts, odd_sizes, odd_sizes, st.booleans(), st.booleans())
def test_linear_f32(seed, T, n_out, n_in, with_bias, ro):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, n_in)).astype(np.float32)
    W = rng.standard_normal((n_out, n_in)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32) if with_bias else None
    if ro:
        x, W = readonly(x), readonly(W)
        b = None if b is None else readonly(b)
    y = K.linear_f32(x, W, b)
    check_linear(y, x, W.astype(np.float64), b)
    if ops is not None:
        ref = ops.linear(x, W, b)
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * (np.abs(ref).max() + 1))


@SETTINGS
@given(seeds, Ts, odd_sizes, odd_sizes, st.booleans(), st.booleans())
def test_linear_bf16(seed, T, n_out, n_in, with_bias, ro):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, n_in)).astype(np.float32)
    W16 = to_bf16(rng.standard_normal((n_out, n_in)).astype(np.float32))
    b = rng.standard_normal(n_out).astype(np.float32) if with_bias else None
    if ro:
        x, W16 = readonly(x), readonly(W16)
        b = None if b is None else readonly(b)
    y = K.linear_bf16(x, W16, b)
    check_linear(y, x, widen(W16).astype(np.float64), b)


@SETTINGS
@given(seeds, Ts, odd_sizes, odd_sizes, st.booleans(), st.booleans())
def test_linear_int8(seed, T, n_out, n_in, with_bias, ro):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, n_in)).astype(np.float32)
    Wq = rng.integers(-128, 128, (n_out, n_in)).astype(np.int8)
    scale = (rng.random(n_out) * 0.1 + 1e-3).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32) if with_bias else None
    if ro:
        x, Wq, scale = readonly(x), readonly(Wq), readonly(scale)
        b = None if b is None else readonly(b)
    y = K.linear_int8(x, Wq, scale, b)
    # Definition: x @ (Wq * scale[:, None]).T + b (the dequantized matrix), one extra rounding
    # for the scale multiply.
    check_linear(y, x, Wq.astype(np.float64) * scale[:, None].astype(np.float64), b, extra_terms=1)


@SETTINGS
@given(seeds, st.integers(K.STREAM_MAX_T + 1, 200), odd_sizes, st.sampled_from([1, 17, 127, 128, 129, 300]),
       st.booleans(), st.booleans())
def test_prefill_linear_bf16_int8(seed, T, n_out, n_in, with_bias, int8):
    """The prompt path (_prefill_linear): several blocks of 64 tokens and chunks of 128 inputs,
    partial blocks, chunks and panels at every edge."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, n_in)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32) if with_bias else None
    if int8:
        Wq = rng.integers(-128, 128, (n_out, n_in)).astype(np.int8)
        scale = (rng.random(n_out) * 0.1 + 1e-3).astype(np.float32)
        y = K.linear_int8(x, Wq, scale, b)
        check_linear(y, x, Wq.astype(np.float64) * scale[:, None].astype(np.float64), b, extra_terms=1)
    else:
        W16 = to_bf16(rng.standard_normal((n_out, n_in)).astype(np.float32))
        y = K.linear_bf16(x, W16, b)
        check_linear(y, x, widen(W16).astype(np.float64), b)


def test_prefill_linear_ignores_stale_scratch():
    """The scratch buffer is reused between calls: a call with fewer tokens or inputs than the
    one before must not pick up the earlier call's sums, panel rows or packed tokens (a
    kernel that adds to the sums of the first chunk of inputs fails here)."""
    rng = np.random.default_rng(7)
    big = to_bf16(rng.standard_normal((130, 300)).astype(np.float32))
    K.linear_bf16(np.full((150, 300), np.nan, np.float32), big)  # fills the scratch with NaN
    for T, n_out, n_in in [(10, 70, 129), (65, 3, 5), (9, 64, 128)]:
        x = rng.standard_normal((T, n_in)).astype(np.float32)
        W16 = to_bf16(rng.standard_normal((n_out, n_in)).astype(np.float32))
        check_linear(K.linear_bf16(x, W16), x, widen(W16).astype(np.float64), None)


@SETTINGS
@given(seeds, Ts, odd_sizes, odd_sizes, st.booleans(), st.booleans())
def test_linear_f16(seed, T, n_out, n_in, with_bias, ro):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, n_in)).astype(np.float32)
    W = rng.standard_normal((n_out, n_in)).astype(np.float16)
    b = rng.standard_normal(n_out).astype(np.float32) if with_bias else None
    if ro:
        x, W = readonly(x), readonly(W)
        b = None if b is None else readonly(b)
    y = K.linear(x, W, b)
    check_linear(y, x, W.astype(np.float64), b)


@pytest.mark.parametrize("T", [1, 3, K.STREAM_MAX_T, K.STREAM_MAX_T + 1, 40])
@pytest.mark.parametrize("n_in", [63, 64, 1024])
def test_widening_is_exact(T, n_in):
    """With x = rows of the identity every output is one widened weight: exact equality
    (bf16, int8, float16)."""
    rng = np.random.default_rng(T * 1000 + n_in)
    n_out = 37
    W16 = to_bf16(rng.standard_normal((n_out, n_in)).astype(np.float32))
    x = np.eye(n_in, dtype=np.float32)[rng.integers(0, n_in, T)]
    y = K.linear_bf16(x, W16)
    np.testing.assert_array_equal(y, x @ widen(W16).T)
    Wq = rng.integers(-128, 128, (n_out, n_in)).astype(np.int8)
    y = K.linear_int8(x, Wq, np.ones(n_out, np.float32))
    np.testing.assert_array_equal(y, x @ Wq.astype(np.float32).T)
    W16 = rng.standard_normal((n_out, n_in)).astype(np.float16)
    W16[0, :3] = [6e-8, -3e-5, 65504]  # subnormal and largest half floats widen exactly too
    np.testing.assert_array_equal(K.linear_f16(x, W16), x @ W16.astype(np.float32).T)


@pytest.mark.parametrize("T", [1, 2, 8, 9, 64])
@pytest.mark.parametrize("n_out,n_in", [(3072, 1024), (1024, 4096), (50, 1000)])
def test_linear_model_shapes(T, n_out, n_in):
    """The 350M shapes (decode and prefill paths), all three weight formats, with bias."""
    rng = np.random.default_rng(n_out + n_in + T)
    x = rng.standard_normal((T, n_in)).astype(np.float32)
    W = (rng.standard_normal((n_out, n_in)) * 0.02).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    check_linear(K.linear_f32(x, W, b), x, W.astype(np.float64), b)
    W16 = to_bf16(W)
    check_linear(K.linear_bf16(x, W16, b), x, widen(W16).astype(np.float64), b)
    scale = (np.abs(W).max(axis=1) / 127).astype(np.float32)
    Wq = np.clip(np.rint(W / scale[:, None]), -127, 127).astype(np.int8)
    check_linear(K.linear_int8(x, Wq, scale, b), x, Wq * scale[:, None].astype(np.float64), b, extra_terms=1)


def test_linear_memmap_and_layouts(tmp_path):
    """Read-only memory-mapped weights, non-contiguous weights, leading batch axes, dispatch."""
    rng = np.random.default_rng(7)
    n_out, n_in = 65, 130
    W = rng.standard_normal((n_out, n_in)).astype(np.float32)
    W16 = to_bf16(W)
    Wq = rng.integers(-127, 128, (n_out, n_in)).astype(np.int8)
    scale = rng.random(n_out).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    maps = {}
    for name, a in dict(W=W, W16=W16, Wq=Wq, scale=scale, b=b).items():
        np.save(tmp_path / f"{name}.npy", a)
        maps[name] = np.load(tmp_path / f"{name}.npy", mmap_mode="r")
        assert not maps[name].flags.writeable
    for T in (1, 12):
        x = rng.standard_normal((2, T, n_in)).astype(np.float32)  # [B, T, n_in]
        y = K.linear_f32(x, maps["W"], maps["b"])
        assert y.shape == (2, T, n_out)
        check_linear(y.reshape(-1, n_out), x.reshape(-1, n_in), W.astype(np.float64), b)
        y = K.linear_bf16(x, maps["W16"], maps["b"])
        check_linear(y.reshape(-1, n_out), x.reshape(-1, n_in), widen(W16).astype(np.float64), b)
        y = K.linear_int8(x, maps["Wq"], maps["scale"], maps["b"])
        check_linear(y.reshape(-1, n_out), x.reshape(-1, n_in), Wq * scale[:, None].astype(np.float64), b, 1)
        # generic dispatch and a non-contiguous weight
        np.testing.assert_array_equal(K.linear(x, maps["W"], maps["b"]), K.linear_f32(x, W, b))
        np.testing.assert_array_equal(K.linear(x, W16, b), K.linear_bf16(x, W16, b))
        np.testing.assert_array_equal(K.linear(x, Wq, b, scale=scale), K.linear_int8(x, Wq, scale, b))
        Wt = np.asfortranarray(W)
        np.testing.assert_array_equal(K.linear_f32(x, Wt, b), K.linear_f32(x, W, b))
    # unaligned read-only buffers (a mapped file may place a tensor at any byte offset)
    for a, a64 in ((W, W.astype(np.float64)), (W16, widen(W16).astype(np.float64))):
        raw = np.frombuffer(b"\0" + a.tobytes(), a.dtype, offset=1).reshape(a.shape)
        assert not raw.flags.aligned and not raw.flags.writeable
        check_linear(K.linear(x, raw, b).reshape(-1, n_out), x.reshape(-1, n_in), a64, b)
    with pytest.raises(TypeError):
        K.linear(x, W.astype(np.float64))
    with pytest.raises(ValueError):
        K.linear_f32(x[..., :-1], W)


@pytest.mark.parametrize("n", [1, 15, 16, 64, 100, 1024])
def test_dot_of_a_tuple_of_rows_equals_one_dot_per_row(n):
    """_dot(x, (w_0, .., w_3)) (the matrix-vector kernels read four rows per step; two in earlier
    versions) adds in the same order as _dot(x, w_r) for each row: equal bit for bit, for each
    weight format."""
    from numba import njit

    @njit
    def tuples(x, w0, w1, w2, w3):
        u0, u1 = K._dot(x, (w0, w1), 4096)
        v0, v1, v2, v3 = K._dot(x, (w0, w1, w2, w3), 4096)
        return (u0, u1), (v0, v1, v2, v3), (K._dot(x, w0, 0), K._dot(x, w1, 4096), K._dot(x, w2, 0), K._dot(x, w3, 0))

    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(np.float32)
    W = rng.standard_normal((4, n)).astype(np.float32)
    for w, w0 in ((W, W[0]), (to_bf16(W), widen(to_bf16(W[0]))), (rng.integers(-127, 128, (4, n)).astype(np.int8), None)):
        xd = K._bf16_pair_order(x[None])[0] if w.dtype == np.uint16 else x  # (bf16 rows take x in pair order)
        two, four, one = tuples(xd, w[0], w[1], w[2], w[3])
        assert two == one[:2] and four == one
        w0 = w[0].astype(np.float64) if w0 is None else w0.astype(np.float64)
        assert abs(one[0] - x.astype(np.float64) @ w0) <= gamma(n + 2) * (np.abs(x) @ np.abs(w0)) + 1e-30


@settings(max_examples=30, deadline=None)
@given(seeds, st.integers(1, 3), st.integers(1, 23), st.integers(1, 70), st.sampled_from(["float32", "bfloat16", "int8"]))
def test_gemv_sum_into_equals_its_definition(seed, B, E, n_inner, dtype):
    """The last loop of a decode step: x += a @ W1.T [* s1] + (hidden @ W2.T [* s2] + b2), four
    output rows a step; E not a multiple of 4 takes the rows of the last steps one by one (the
    model's E always is one, so only this test reaches that branch)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, E)).astype(np.float32)
    a = rng.standard_normal((B, E)).astype(np.float32)
    hidden = rng.standard_normal((B, n_inner)).astype(np.float32)
    W1 = rng.standard_normal((E, E)).astype(np.float32)
    W2 = rng.standard_normal((E, n_inner)).astype(np.float32)
    b2 = rng.standard_normal(E).astype(np.float32)
    s1 = s2 = None
    if dtype == "bfloat16":
        W1, W2 = to_bf16(W1), to_bf16(W2)
        V1, V2 = widen(W1).astype(np.float64), widen(W2).astype(np.float64)
    elif dtype == "int8":
        W1, W2 = (rng.integers(-127, 128, W.shape).astype(np.int8) for W in (W1, W2))
        s1, s2 = (rng.uniform(0.01, 0.1, E).astype(np.float32) for _ in range(2))
        V1, V2 = W1 * s1[:, None].astype(np.float64), W2 * s2[:, None].astype(np.float64)
    else:
        V1, V2 = W1.astype(np.float64), W2.astype(np.float64)
    want = x + a.astype(np.float64) @ V1.T + (hidden.astype(np.float64) @ V2.T + b2)
    bound = (np.abs(x) + np.abs(a).astype(np.float64) @ np.abs(V1).T + np.abs(hidden).astype(np.float64) @ np.abs(V2).T
             + np.abs(b2)) * gamma(max(E, n_inner) + 4)
    got = x.copy()
    K._gemv_sum_into(got, K._ro(a), K._ro(W1), K._ro(s1), K._ro(hidden), K._ro(W2), K._ro(s2), K._ro(b2), 4096)
    assert np.all(np.abs(got - want) <= bound + 1e-30)


def test_results_do_not_depend_on_thread_count():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 257)).astype(np.float32)
    W = rng.standard_normal((1001, 257)).astype(np.float32)
    W16, Wq, sc = to_bf16(W), rng.integers(-127, 128, W.shape).astype(np.int8), np.ones(1001, np.float32)
    n0 = K.get_threads()
    try:
        outs = []
        for n in (1, n0):
            assert K.set_threads(n) == n
            outs.append((K.linear_f32(x, W), K.linear_bf16(x, W16), K.linear_int8(x, Wq, sc)))
        for a, c in zip(*outs):
            np.testing.assert_array_equal(a, c)
    finally:
        K.set_threads(n0)


# ---------------------------------------------------------------------------
# attention over the KV cache
# ---------------------------------------------------------------------------


def attend_reference(q, k, v, S, allowed, bias):
    """The definition as an explicit float64 loop."""
    B, H, T, D = q.shape
    out = np.zeros((B, H, T, D))
    for b in range(B):
        for h in range(H):
            for t in range(T):
                keys = [j for j in range(S - T + t + 1) if allowed[b, j]]
                if not keys:
                    continue
                s = np.array([q[b, h, t].astype(np.float64) @ k[b, h, j] / math.sqrt(D) + bias[b, j] for j in keys])
                p = np.exp(s - s.max())
                p /= p.sum()
                out[b, h, t] = p @ v[b, h, keys].astype(np.float64)
    return out


@st.composite
def attention_case(draw):
    B, H = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    D = draw(st.sampled_from([1, 3, 8, 17, 64, 80]))  # _attend_prompt: D % 64, D % 16 tails
    S = draw(st.integers(1, 40))
    T = draw(st.integers(1, min(S, 6)))
    if draw(st.booleans()):  # a prompt: _attend_prompt (T >= ATTEND_BLOCK_MIN_T), partial query blocks, S % 32
        S = draw(st.integers(K.ATTEND_BLOCK_MIN_T, 150))
        T = draw(st.integers(K.ATTEND_BLOCK_MIN_T, S))
    cap = S + draw(st.integers(0, 5))
    seed = draw(seeds)
    kind = draw(st.sampled_from(["none", "bool", "int", "additive"]))
    return B, H, D, S, T, cap, seed, kind


@SETTINGS
@given(attention_case())
def test_attend_cached(case):
    B, H, D, S, T, cap, seed, kind = case
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, T, D)).astype(np.float32)
    k = rng.standard_normal((B, H, cap, D)).astype(np.float32)
    v = rng.standard_normal((B, H, cap, D)).astype(np.float32)
    k[:, :, S:] = np.nan  # beyond the filled part: must never be read
    v[:, :, S:] = np.nan
    allowed = rng.random((B, S)) < 0.7
    allowed[0, :] = rng.random(S) < 0.15  # often a batch row whose queries see nothing
    if B > 1:
        allowed[1, : rng.integers(0, S + 1)] = False  # left padding
    bias = np.zeros((B, S), np.float32)
    if kind == "none":
        allowed[:] = True
        mask = None
    elif kind == "bool":
        mask = allowed
    elif kind == "int":
        mask = allowed.astype(np.int64)
    else:  # additive: finite biases where allowed, -inf / float32 min / -1e9 where masked
        bias = np.where(allowed, rng.standard_normal((B, S)), 0).astype(np.float32)
        masked = rng.choice(np.array([-np.inf, np.finfo(np.float32).min, -1e9], np.float32), (B, S))
        mask = np.where(allowed, bias, masked).astype(np.float32)
    # huge values at masked keys: any nonzero weight on them would show
    v_in = v.copy()
    for b in range(B):
        v_in[b, :, :S][:, ~allowed[b]] = 1e30
    out = K.attend_cached(readonly(q), readonly(k), readonly(v_in), S, mask)
    ref = attend_reference(q, k, v_in, S, allowed, bias)
    assert out.shape == (B, H, T, D) and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * (np.abs(v[:, :, :S]).max() + 1))
    # a query with no visible key returns exactly zero
    for b in range(B):
        for t in range(T):
            if not allowed[b, : S - T + t + 1].any():
                assert np.all(out[b, :, t] == 0)


def test_attend_cached_matches_ops_attention():
    """Against the readable ops.attention on rows that see at least one key."""
    if ops is None or not hasattr(ops, "attention") or not hasattr(ops, "causal_mask"):
        pytest.skip("minicodegen.ops.attention not available")
    rng = np.random.default_rng(11)
    B, H, D, S, T = 3, 4, 64, 29, 5
    _attend_matches_ops(rng, B, H, D, S, T)
    _attend_matches_ops(rng, B, H, D, 150, 140)  # a prompt: _attend_prompt


def _attend_matches_ops(rng, B, H, D, S, T):
    q = rng.standard_normal((B, H, T, D)).astype(np.float32)
    k = rng.standard_normal((B, H, S + 3, D)).astype(np.float32)
    v = rng.standard_normal((B, H, S + 3, D)).astype(np.float32)
    am = np.ones((B, S), np.int64)
    am[1, :7] = 0  # left padding
    am[2, : S - 2] = 0  # all but the last two keys padded: early queries see nothing
    ref, _ = ops.attention(q, k[:, :, :S], v[:, :, :S], ops.causal_mask(am, T))
    out = K.attend_cached(q, k, v, S, am)
    vis = ops.causal_mask(am, T).any(axis=-1)[:, 0]  # [B, T]
    np.testing.assert_allclose(out[vis.nonzero()[0], :, vis.nonzero()[1]],
                               ref[vis.nonzero()[0], :, vis.nonzero()[1]], rtol=1e-5, atol=1e-6)
    assert np.all(out[(~vis).nonzero()[0], :, (~vis).nonzero()[1]] == 0)


def test_attend_cached_argument_checks():
    q = np.zeros((1, 2, 3, 4), np.float32)
    kc = np.zeros((1, 2, 5, 4), np.float32)
    with pytest.raises(ValueError):
        K.attend_cached(q, kc, kc, 2)  # S < T
    with pytest.raises(ValueError):
        K.attend_cached(q, kc, kc, 6)  # S > S_cap
    with pytest.raises(ValueError):
        K.attend_cached(q, kc, kc, 4, np.ones((1, 3), bool))  # mask too short


# ---------------------------------------------------------------------------
# fused element-wise ops
# ---------------------------------------------------------------------------


@SETTINGS
@given(seeds, st.integers(1, 9), odd_sizes, st.floats(1e-6, 1e-3))
def test_layer_norm(seed, rows, E, eps):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, E)) * 3 + 5).astype(np.float32)
    g = rng.standard_normal(E).astype(np.float32)
    b = rng.standard_normal(E).astype(np.float32)
    y = K.layer_norm(readonly(x), readonly(g), readonly(b), eps)
    x64 = x.astype(np.float64)
    xhat = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + eps)
    ref = xhat * g + b
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5 * (np.abs(xhat * g).max() + np.abs(b).max()))
    if ops is not None and hasattr(ops, "layer_norm"):
        np.testing.assert_allclose(y, ops.layer_norm(x, g, b, eps), rtol=0,
                                   atol=2e-5 * (np.abs(xhat * g).max() + np.abs(b).max()))


@SETTINGS
@given(seeds, st.integers(1, 5), odd_sizes, st.booleans())
def test_gelu_new(seed, rows, n, in_place):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, n)) * 4).astype(np.float32)
    x64 = x.astype(np.float64)
    ref = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
    y = K.gelu_new(x, out=x) if in_place else K.gelu_new(readonly(x))
    assert y.dtype == np.float32 and y.shape == x.shape
    # float32 evaluation of the formula: 1 + tanh(u) carries an absolute error of a few ulp of 1,
    # so for very negative x (result near 0) the error is relative to |x|, not to the result
    tol = 2e-6 * np.abs(ref) + 4 * U * np.abs(x64) + 1e-30
    assert np.all(np.abs(y - ref) <= tol)
    if ops is not None and hasattr(ops, "gelu_new") and not in_place:
        assert np.all(np.abs(y - ops.gelu_new(x)) <= 2 * tol)


@SETTINGS
@given(seeds, st.integers(1, 3), st.integers(1, 9), st.integers(1, 5), st.sampled_from([2, 8, 17, 64, 80]), st.data())
def test_apply_rotary(seed, B, T, H, D, data):
    rd = data.draw(st.sampled_from([r for r in (0, 2, 4, 8, 16, 32, 64) if r <= D]))
    rng = np.random.default_rng(seed)
    wide = rng.standard_normal((B, T, H, 2 * D)).astype(np.float32)
    x = wide[..., ::2]  # a strided view, like the heads split out of the fused projection
    theta = rng.uniform(-50, 50, (B, T, rd // 2))
    sincos = np.concatenate([np.sin(theta), np.cos(theta)], -1).astype(np.float32)
    y = K.apply_rotary(x, readonly(sincos), rd)
    # closed form: pair (2i, 2i+1) as a complex number times e^{i theta}
    x64, s64, c64 = x.astype(np.float64), sincos[..., : rd // 2, None], sincos[..., rd // 2 :, None]
    z = (x64[..., 0:rd:2] + 1j * x64[..., 1:rd:2]) * (c64 + 1j * s64).transpose(0, 1, 3, 2)
    ref = x64.copy()
    ref[..., 0:rd:2], ref[..., 1:rd:2] = z.real, z.imag
    np.testing.assert_allclose(y, ref, rtol=0, atol=4 * U * (np.abs(x).max() + 1))
    if ops is not None and hasattr(ops, "apply_rotary"):
        np.testing.assert_array_equal(y, ops.apply_rotary(x, sincos, rd))  # bit for bit


def test_exp_f32_within_about_one_ulp():
    """The vectorizable exp behind gelu_new and the attention softmax."""
    from numba import njit

    @njit
    def vexp(x, y):
        for i in range(x.shape[0]):
            y[i] = K._exp_f32(x[i])

    x = np.concatenate([np.linspace(-87.3, 88.3, 400_001), np.linspace(-1, 1, 100_001)]).astype(np.float32)
    y = np.empty_like(x)
    vexp(x, y)
    ref = np.exp(x.astype(np.float64))
    ulp = np.spacing(ref.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(y - ref) / ulp) <= 1.5  # measured: 1.19
    special = np.array([0.0, -np.inf, -200.0, -87.5, np.nan, 89.0, np.inf], np.float32)
    y = np.empty_like(special)
    vexp(special, y)
    assert y[0] == 1.0 and y[1] == 0.0 and y[2] == 0.0 and y[3] == 0.0
    assert np.isnan(y[4]) and y[5] == np.inf and y[6] == np.inf


def test_warmup_and_threads():
    assert K.warmup() >= 0.0
    n = K.get_threads()
    assert K.set_threads() >= 1
    K.set_threads(n)
    assert K.get_threads() == n


# ---------------------------------------------------------------------------
# decode_block: the fused decode step of a whole block against model.block's NumPy path
# ---------------------------------------------------------------------------


def _random_layer(rng, E, n_inner, dtype):
    def mat(n_out, n_in):
        return (rng.standard_normal((n_out, n_in)) / math.sqrt(n_in)).astype(np.float32)

    w = {
        "ln_1.weight": (1 + 0.1 * rng.standard_normal(E)).astype(np.float32),
        "ln_1.bias": (0.1 * rng.standard_normal(E)).astype(np.float32),
        "attn.qkv_proj.weight": mat(3 * E, E),
        "attn.out_proj.weight": mat(E, E),
        "mlp.fc_in.weight": mat(n_inner, E),
        "mlp.fc_in.bias": (0.1 * rng.standard_normal(n_inner)).astype(np.float32),
        "mlp.fc_out.weight": mat(E, n_inner),
        "mlp.fc_out.bias": (0.1 * rng.standard_normal(E)).astype(np.float32),
    }
    for name in [n for n in w if n.endswith(".weight") and w[n].ndim == 2]:
        if dtype == "bfloat16":
            w[name] = to_bf16(w[name])
        elif dtype == "int8":
            scale = np.abs(w[name]).max(axis=1) / 127
            w[name], w[name + ".scale"] = np.round(w[name] / scale[:, None]).astype(np.int8), scale.astype(np.float32)
    return w


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("E,H,rotary_dim,n_inner", [(64, 8, 4, 256), (96, 4, 24, 200), (40, 4, 10, 17)])
def test_decode_block_equals_the_numpy_block(dtype, E, H, rotary_dim, n_inner):
    from minicodegen import model as M

    rng = np.random.default_rng(E + n_inner)
    B, past = 3, 9
    cfg = M.Config(vocab_size=10, n_embd=E, n_layer=1, n_head=H, rotary_dim=rotary_dim, n_positions=32, n_inner=n_inner)
    layer = _random_layer(rng, E, n_inner, dtype)
    weights = {f"transformer.h.0.{k}": v for k, v in layer.items()}
    mask = np.ones((B, past + 1), np.int8)
    mask[1, :4] = 0  # row 1 is left-padded
    mask[2, :past] = 0  # row 2 sees only the new token
    caches = []
    for _ in range(2):
        c = M.new_cache(cfg, B, past + 4)
        for kv in (c.k[0], c.v[0]):
            kv[:, :, :past] = rng.standard_normal((B, H, past, E // H)).astype(np.float32)
        c.mask[:, : past + 1] = mask
        c.length = past
        caches.append(c)
    caches[1].k[0][:] = caches[0].k[0]
    caches[1].v[0][:] = caches[0].v[0]
    x = rng.standard_normal((B, 1, E)).astype(np.float32)
    sincos = ops.sinusoid_table(32, rotary_dim)[np.array([[past], [past - 4], [0]])]  # [B, 1, rotary_dim]
    slow = M.block(x, weights, 0, cfg, sincos, caches[0], fast=False, trace=None)
    fast = M.block(x, weights, 0, cfg, sincos, caches[1], fast=True, trace=None)  # T = 1: decode_block
    assert fast.shape == slow.shape == (B, 1, E)
    assert np.abs(fast - slow).max() <= 1e-4 * max(1.0, np.abs(slow).max())
    for a, b in ((caches[0].k[0], caches[1].k[0]), (caches[0].v[0], caches[1].v[0])):
        assert np.abs(a - b).max() <= 1e-5  # the new key (rotated) and value went to slot `past`
    assert not np.shares_memory(fast, x) and np.abs(x).max() > 0  # the input stays as it was


def test_decode_block_argument_checks():
    rng = np.random.default_rng(0)
    layer = _random_layer(rng, 16, 32, "int8")
    k = np.zeros((1, 4, 4, 4), np.float32)
    allowed = np.ones((1, 4), bool)
    sc = np.zeros((1, 2), np.float32)
    del layer["mlp.fc_in.weight.scale"]
    with pytest.raises(ValueError, match="scale"):
        K.decode_block(np.zeros((1, 16), np.float32), layer, 1e-5, sc, 2, 4, k, k.copy(), 2, allowed)
    layer = _random_layer(rng, 16, 32, "float32")
    with pytest.raises(ValueError, match="cache"):
        K.decode_block(np.zeros((1, 16), np.float32), layer, 1e-5, sc, 2, 4, k, k.copy(), 5, allowed)
    with pytest.raises(ValueError, match="float32"):
        K.decode_block(np.zeros((1, 16), np.float64), layer, 1e-5, sc, 2, 4, k, k.copy(), 2, allowed)
    with pytest.raises(ValueError, match="fc_out.weight has shape"):  # the kernels do not check bounds
        K.decode_block(np.zeros((1, 16), np.float32), layer | {"mlp.fc_out.weight": np.zeros((16, 31), np.float32)},
                       1e-5, sc, 2, 4, k, k.copy(), 2, allowed)
    with pytest.raises(ValueError, match="ln_1.bias"):
        K.decode_block(np.zeros((1, 16), np.float32), layer | {"ln_1.bias": np.zeros(15, np.float32)},
                       1e-5, sc, 2, 4, k, k.copy(), 2, allowed)
    with pytest.raises(ValueError, match="sincos"):
        K.decode_block(np.zeros((1, 16), np.float32), layer, 1e-5, np.zeros((1, 4), np.float32), 2, 4, k, k.copy(), 2,
                       allowed)
    with pytest.raises(ValueError, match="2 layers, 1 key caches"):
        K.decode_layers(np.zeros((1, 16), np.float32), [layer, layer], 1e-5, sc, 2, 4, [k], [k.copy()], 2, allowed)
    with pytest.raises(ValueError, match="cache"):  # every block's cache is checked
        K.decode_layers(np.zeros((1, 16), np.float32), [layer, layer], 1e-5, sc, 2, 4, [k, k[:, :2]],
                        [k.copy(), k[:, :2].copy()], 2, allowed)
