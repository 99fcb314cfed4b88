"""int8 weights times int8 activations (minicodegen.kernels.integer) against their NumPy
definition, ``ops.linear_int8_rows``: equal bit for bit, on every instruction set this CPU can run
(``widen`` runs everywhere; the VNNI kinds where the CPU has them), for the prompt kernel
(``_qgemm``) and the decode kernel (``_qgemv``), and the CPU-feature choice of ``kernels.cpu``.

The fallbacks compiled for a CPU without AVX-512 (NUMBA_CPU_NAME=haswell) run in a subprocess in
tests/test_portability.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kernel_helpers import SETTINGS, odd_sizes, readonly, seeds

from minicodegen import kernels as K
from minicodegen import model as M
from minicodegen import ops
from minicodegen.kernels import amx, cpu, integer, qgemm
from minicodegen.kernels.cpu import Isa

FEATURES = cpu.target_features()
RUNNABLE = ["widen"] + [k for k, needs in (("avx_vnni", {"avxvnni", "avx2"}),
                                          ("avx512_vnni", {"avx512vnni", "avx512bw", "avx512f"}))
                        if needs <= FEATURES]
isas = st.sampled_from(RUNNABLE)


def test_the_vnni_kernels_run_here_when_the_cpu_has_them():
    """Which kinds this machine runs (README names them); the best one is the default."""
    assert integer.INT8_ISA.name == cpu.int8_dot() in RUNNABLE


@pytest.mark.parametrize("features,int8,bf16", [
    ("+avx2,+fma,+f16c", "widen", "widen"),
    ("+avx2,+avxvnni,+fma", "avx_vnni", "widen"),
    ("+avx512f,+avx512bw,+avx512vnni,+avx512vl", "avx512_vnni", "widen"),
    ("+avx512f,+avx512bw,+avx512vnni,+avx512bf16,+avxvnni,+avx2", "avx512_vnni", "avx512_bf16"),
    ("+avx512f,-avx512vnni,+avx512bw,+avx2", "widen", "widen"),
])
def test_the_choice_follows_the_features(features, int8, bf16):
    f = cpu.target_features("haswell", features)
    assert cpu.int8_dot(f) == int8 and cpu.bf16_dot(f) == bf16


def test_a_cpu_named_without_features_gets_the_fallbacks():
    assert cpu.target_features("haswell", "") == set()
    assert cpu.int8_dot(set()) == "widen"


def test_an_unknown_isa_is_refused():
    with pytest.raises(ValueError, match="unknown instruction set 'sse9'"):
        Isa("sse9")


@SETTINGS
@given(seeds, isas, st.integers(1, 37), odd_sizes, st.sampled_from([1, 3, 4, 31, 32, 63, 64, 65, 130, 257]),
       st.booleans(), st.booleans())
def test_integer_linear_equals_its_definition(seed, isa, T, n_out, n_in, with_bias, ro):
    """Both kernels (stream_max_t 0: always _qgemm; 64: always _qgemv), tails of every block:
    4 rows of x, 4 / 16 rows of W, 32 / 64 bytes of a row."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((T, n_in)) * rng.choice([1e-3, 1.0, 50.0])).astype(np.float32)
    Wq = rng.integers(-128, 128, (n_out, n_in)).astype(np.int8)  # -128 too: the kernels take every int8
    scale = (rng.random(n_out) * 0.1 + 1e-3).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32) if with_bias else None
    if ro:
        x, Wq, scale = readonly(x), readonly(Wq), readonly(scale)
    want = ops.linear_int8_rows(x, Wq, scale, b)
    for stream_max_t in (0, 64):
        y = qgemm.linear_int8_rows(x, Wq, scale, b, isa=Isa(isa), stream_max_t=stream_max_t)
        np.testing.assert_array_equal(y, want)


@SETTINGS
@given(seeds, isas, st.integers(1, 20), st.sampled_from([1, 63, 64, 65, 127, 130, 200]), st.sampled_from([64, 192]),
       st.booleans())
def test_the_packed_vnni_prompt_kernel_equals_its_definition(seed, isa, T, n_out, n_in, with_bias):
    """n_in a multiple of 64: _qgemm_vnni on AVX512-VNNI (6 rows of x a tile, panels of 64 rows of
    W and the rows after the last full panel through _qgemm_rows), _qgemm elsewhere."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, n_in)).astype(np.float32)
    Wq = rng.integers(-128, 128, (n_out, n_in)).astype(np.int8)
    scale = (rng.random(n_out) * 0.1 + 1e-3).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32) if with_bias else None
    y = qgemm.linear_int8_rows(x, Wq, scale, b, isa=Isa(isa), stream_max_t=0)
    np.testing.assert_array_equal(y, ops.linear_int8_rows(x, Wq, scale, b))


@pytest.mark.parametrize("T", [1, 2, 5, 8, 9, 40])
@pytest.mark.parametrize("n_out,n_in", [(3072, 1024), (1024, 4096)])
def test_integer_linear_at_model_shapes(T, n_out, n_in):
    """350M shapes through the public linear_int8 (decode T <= STREAM_MAX_T, prompt above), every
    runnable kind; the extreme sums (all bytes -127 / -128) stay exact in int32."""
    rng = np.random.default_rng(T + n_in)
    x = rng.standard_normal((T, n_in)).astype(np.float32)
    x[0] = -1.0  # quantizes to -127 everywhere
    Wq = rng.integers(-128, 128, (n_out, n_in)).astype(np.int8)
    Wq[0] = -128
    scale = np.full(n_out, 0.01, np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    want = ops.linear_int8_rows(x, Wq, scale, b)
    assert want[0, 0] == np.float32(np.float32(127 * 128 * n_in) * (np.float32(1 / 127) * np.float32(0.01))) + b[0]
    np.testing.assert_array_equal(K.linear_int8(x, Wq, scale, b), want)
    for isa in RUNNABLE:
        np.testing.assert_array_equal(qgemm.linear_int8_rows(x, Wq, scale, b, isa=Isa(isa)), want)


def test_quantize_rows_equals_its_definition():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((6, 77)) * 3).astype(np.float32)
    x[1] = 0.0  # a row of zeros
    x[2, 5] = np.inf
    x[3, 7] = np.nan
    x[4, :] = 0.0
    x[4, :6] = [127.0, 0.5, 1.5, 2.5, -0.5, -1.5]  # scale 1: halves, which rint rounds to even
    xq = np.empty(x.shape, np.int8)
    sx = np.empty(6, np.float32)
    xsum = np.empty(6, np.int32)
    integer._quantize_rows(x, xq, sx, xsum)
    want_q, want_s = ops.quantize_rows(x)
    np.testing.assert_array_equal(xq, want_q)
    np.testing.assert_array_equal(sx, want_s)  # (NaN == NaN here)
    np.testing.assert_array_equal(xsum, want_q.sum(axis=1))
    assert sx[1] == 0 and np.isnan(sx[2]) and np.isnan(sx[3]) and not xq[1:4].any()
    assert np.abs(xq).max() == 127 and list(xq[4, :6]) == [127, 0, 2, 2, 0, -2]


def test_a_row_with_nan_or_inf_gives_nan_outputs():
    x = np.ones((2, 8), np.float32)
    x[1, 3] = np.inf
    y = K.linear_int8(x, np.ones((3, 8), np.int8), np.ones(3, np.float32))
    assert np.isfinite(y[0]).all() and np.isnan(y[1]).all()


def test_integer_linear_argument_checks():
    Wq = np.zeros((4, 8), np.int8)
    with pytest.raises(ValueError, match="needs a per-row scale"):
        qgemm.linear_int8_rows(np.zeros((1, 8), np.float32), Wq, None)
    with pytest.raises(ValueError, match="x has 7 features, W expects 8"):
        K.linear_int8(np.zeros((1, 7), np.float32), Wq, np.ones(4, np.float32))
    with pytest.raises(TypeError, match="Wq must be a 2-D int8 array"):
        K.linear_int8(np.zeros((1, 8), np.float32), Wq.astype(np.int16), np.ones(4, np.float32))
    with pytest.raises(ValueError, match="too long for exact int32 sums"):
        qgemm.linear_int8_rows(np.zeros((1, 70000), np.float32), np.zeros((1, 70000), np.int8), np.ones(1, np.float32))


def test_the_activation_setting_is_checked():
    import minicodegen

    with pytest.raises(ValueError, match="int8_activations must be one of int8, float32, got 'int4'"):
        minicodegen.load("tiny", int8_activations="int4")
    model = minicodegen.load("tiny")
    model.int8_activations = "fp8"
    with pytest.raises(ValueError, match="model.int8_activations must be one of"):
        model.logits([1, 2, 3])
    with pytest.raises(ValueError, match="bf16_activations must be one of float32, bf16, got 'int8'"):
        minicodegen.load("tiny", bf16_activations="int8")
    with pytest.raises(ValueError, match="bf16_activations must be one of float32, bf16, got 'half'"):
        M.Model(model.config, model.weights, bf16_activations="half")


BF16_KERNELS = ["amx"] * amx.AMX_BF16 + ["vdpbf16ps"] * (qgemm.BF16_ISA.name == "avx512_bf16")


@pytest.mark.parametrize("kernel", BF16_KERNELS or [pytest.param("none", marks=pytest.mark.skip(
    reason="this CPU has neither AMX-BF16 nor AVX512-BF16: linear_bf16 widens instead (tests/test_kernels_prefill.py)"))])
@SETTINGS
@given(seeds, st.integers(1, 40), st.sampled_from([64, 128, 192]), st.sampled_from([32, 64, 96]), st.booleans())
def test_the_bf16_prompt_kernel_is_within_a_float32_sum_of_its_definition(kernel, seed, T, n_out, n_in, with_bias):
    """qgemm.linear_bf16_rows (AMX tiles, tdpbf16ps, or vdpbf16ps; opt-in through linear_bf16(...,
    bf16_activations=True)) against ops.linear_bf16_rows in float64: x rounded to bf16 exactly as the
    definition rounds it, the sums within the error bound of a float32 sum of n_in products (both
    instructions round after each pair; products of bf16 numbers are exact in float32)."""
    from kernel_helpers import gamma, to_bf16, widen

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, n_in)).astype(np.float32)
    W16 = to_bf16(rng.standard_normal((n_out, n_in)).astype(np.float32))
    b = rng.standard_normal(n_out).astype(np.float32) if with_bias else None
    use_amx = kernel == "amx"
    if T > K.STREAM_MAX_T and use_amx == amx.AMX_BF16:
        y = K.linear_bf16(x, W16, b, bf16_activations=True)
    else:
        y = qgemm.linear_bf16_rows(x, W16, b, amx=use_amx)
    xr = ops.round_bf16(x).astype(np.float64)
    w = widen(W16).astype(np.float64)
    want = xr @ w.T + (0 if b is None else b)
    bound = gamma(n_in + 2) * (np.abs(xr) @ np.abs(w).T + (0 if b is None else np.abs(b))) + 1e-30
    assert np.all(np.abs(y - want) <= bound)
    np.testing.assert_array_equal(ops.round_bf16(x), widen(to_bf16(x)))  # (the definition's rounding is the helpers')


def test_bf16_activations_round_x_on_every_cpu():
    """kernels.linear_bf16(..., bf16_activations=True) computes ops.linear_bf16_rows for any number
    of rows and any shape: where no bf16 unit takes the shape (n_out = 40 here, a decode step of 2
    rows), x is rounded and goes through the widening kernels."""
    from kernel_helpers import to_bf16

    rng = np.random.default_rng(5)
    W16 = to_bf16(rng.standard_normal((40, 48)).astype(np.float32))
    for T in (2, 20):
        x = rng.standard_normal((T, 48)).astype(np.float32)
        want = ops.linear_bf16_rows(x, W16)
        np.testing.assert_allclose(K.linear_bf16(x, W16, bf16_activations=True), want, rtol=1e-5, atol=1e-5)
        assert np.abs(K.linear_bf16(x, W16) - want).max() > 1e-4  # (float32 x gives another result)
