"""attend_cached (minicodegen.kernels.attention: _attend for decode, _attend_prompt for a prompt)
against the definition as a float64 loop and against ops.attention."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kernel_helpers import SETTINGS, ops, readonly, seeds

from minicodegen import kernels as K


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
