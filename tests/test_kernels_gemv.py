"""The decode matrix-vector kernels and the public linear* functions (minicodegen.kernels.gemv)
against ops.linear and the float64 product of the widened or dequantized weights (see
kernel_helpers for the error bound)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kernel_helpers import SETTINGS, Ts, check_linear, odd_sizes, ops, readonly, seeds, to_bf16, widen

from minicodegen import kernels as K


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
    y = K.linear_int8(x, Wq, scale, b, int8_activations=False)
    # Definition: x @ (Wq * scale[:, None]).T + b (the dequantized matrix), one extra rounding
    # for the scale multiply.  (With int8 activations, the default: tests/test_kernels_integer.py.)
    check_linear(y, x, Wq.astype(np.float64) * scale[:, None].astype(np.float64), b, extra_terms=1)


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
    y = K.linear_int8(x, Wq, np.ones(n_out, np.float32), int8_activations=False)
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
    check_linear(K.linear_int8(x, Wq, scale, b, int8_activations=False), x, Wq * scale[:, None].astype(np.float64), b,
                 extra_terms=1)


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
        y = K.linear_int8(x, maps["Wq"], maps["scale"], maps["b"], int8_activations=False)
        check_linear(y.reshape(-1, n_out), x.reshape(-1, n_in), Wq * scale[:, None].astype(np.float64), b, 1)
        y = K.linear_int8(x, maps["Wq"], maps["scale"], maps["b"])  # int8 activations
        np.testing.assert_array_equal(y.reshape(-1, n_out), ops.linear_int8_rows(x.reshape(-1, n_in), Wq, scale, b))
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
