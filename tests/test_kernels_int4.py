"""int4 weights (minicodegen.kernels.int4) against their NumPy definition, ``ops.linear_int4_rows``,
and the int4 format (``ops.pack_int4`` / ``unpack_int4``, ``npz.quantize_int4``).

Each group's products of integers are exact; the kernels and the definition then add the groups'
float32 sums in different orders, so both are compared with the float64 sum of the same exact
group sums, within the error bound of a float32 sum of n_groups terms (``kernel_helpers.gamma``).
Every instruction set this CPU runs, every group size the kernels take, T on both sides of the
decode / prompt switch, odd n_out.  The fallbacks compiled for a CPU without AVX-512 run in
tests/test_portability.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kernel_helpers import SETTINGS, gamma, odd_sizes, readonly, seeds
from test_kernels_integer import RUNNABLE

from minicodegen import kernels as K
from minicodegen import ops
from minicodegen.kernels import int4
from minicodegen.npz import quantize_int4

isas = st.sampled_from(RUNNABLE)


def random_int4(rng: np.random.Generator, n_out: int, n_in: int, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Random codes (every value 0..15 of a nibble) and float16 scales of mixed magnitude."""
    packed = rng.integers(0, 256, (n_out, n_in // 2), dtype=np.uint8)
    scale = (rng.random((n_out, n_in // group)) * rng.choice([1e-3, 0.05, 2.0])).astype(np.float16)
    return packed, scale


def exact(x: np.ndarray, packed: np.ndarray, scale: np.ndarray, b: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(float64 result, its error bound) for the definition's exact group sums.

    The bound is that of a float32 sum of n_groups scaled terms per lane, then the lanes (at most
    4 levels), the product with sx and the bias.  A lane of a kernel holds a part of a group's
    sum, of the codes q + 8 and the compensation -8 * sum(xq): at most (|q| + 16) * |xq| summed."""
    xq, sx = ops.quantize_rows(x)
    n_out, n_groups = scale.shape
    G = 2 * packed.shape[1] // n_groups
    q = ops.unpack_int4(packed, G).reshape(n_out, n_groups, G).astype(np.int64)
    xg = xq.astype(np.int64).reshape(len(x), n_groups, G)
    s64 = scale.astype(np.float64)[None]
    terms = np.einsum("tgi,ogi->tog", xg, q).astype(np.float64) * s64  # [T, n_out, n_groups]
    lanes = np.einsum("tgi,ogi->tog", np.abs(xg), np.abs(q) + 16).astype(np.float64) * s64
    sx64 = sx.astype(np.float64)[:, None]
    bb = 0 if b is None else b.astype(np.float64)
    want = terms.sum(axis=2) * sx64 + bb
    bound = gamma(n_groups + 7) * (lanes.sum(axis=2) * np.abs(sx64) + np.abs(bb)) + 1e-30
    return want, bound


def test_packing_round_trips_and_matches_the_documented_layout():
    rng = np.random.default_rng(0)
    q = rng.integers(-8, 8, (5, 128)).astype(np.int8)
    for G in (2, 32, 64, 128):
        np.testing.assert_array_equal(ops.unpack_int4(ops.pack_int4(q, G), G), q)
    p = ops.pack_int4(q, 64)
    assert p[0, 0] == (q[0, 0] + 8) | ((q[0, 32] + 8) << 4)  # byte j: weight j low, j + G/2 high
    assert p[0, 32] == (q[0, 64] + 8) | ((q[0, 96] + 8) << 4)


def test_quantize_int4_keeps_the_largest_weight_of_each_group_exact():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((7, 256)).astype(np.float32)
    packed, scale = quantize_int4(w, group=64)
    assert packed.dtype == np.uint8 and packed.shape == (7, 128) and scale.dtype == np.float16 and scale.shape == (7, 4)
    back = ops.dequantize_int4(packed, scale).reshape(7, 4, 64)
    g = w.reshape(7, 4, 64)
    i = np.abs(g).argmax(axis=2)[..., None]
    big = np.take_along_axis(g, i, 2)
    np.testing.assert_allclose(np.take_along_axis(back, i, 2), big, rtol=1e-3)  # (the scale is float16)
    step = np.abs(big) / 8 * 1.002  # (float16 scale)
    same_side = np.sign(g) == np.sign(big)
    assert (np.abs(back - g)[same_side] <= (step / 2 + 1e-7).repeat(64, 2)[same_side]).all()  # half a step
    assert (np.abs(back - g) <= step + 1e-7).all()  # the other side clips at +7 steps: a step at most
    assert (np.take_along_axis(ops.unpack_int4(packed, 64).reshape(7, 4, 64), i, 2) == -8).all()


def test_quantize_int4_refuses_bad_input():
    with pytest.raises(ValueError, match=r"fc_in.weight: an int4 group of 64 weights does not divide n_in=96"):
        quantize_int4(np.zeros((2, 96), np.float32), name="fc_in.weight")
    w = np.ones((2, 64), np.float32)
    w[1, 3] = np.nan
    with pytest.raises(ValueError, match="qkv: non-finite values"):
        quantize_int4(w, name="qkv")
    with pytest.raises(ValueError, match="beyond the float16 range"):
        quantize_int4(np.full((1, 64), 1e6, np.float32))


@SETTINGS
@given(seeds, isas, st.sampled_from([32, 64]), st.integers(1, 37), odd_sizes, st.integers(1, 3), st.booleans(),
       st.booleans())
def test_int4_linear_is_within_a_float32_sum_of_its_definition(seed, isa, G, T, n_out, n_groups, with_bias, ro):
    """Both kernels (stream_max_t 0: always _q4gemm; 64: always the decode kernel) and the
    definition, against the float64 sum of the same exact group sums.  Groups of 32 (8 lanes) and
    64 (16 lanes, the converted files'); the larger ones in the next test."""
    rng = np.random.default_rng(seed)
    n_in = G * n_groups
    x = (rng.standard_normal((T, n_in)) * rng.choice([1e-3, 1.0, 50.0])).astype(np.float32)
    packed, scale = random_int4(rng, n_out, n_in, G)
    b = rng.standard_normal(n_out).astype(np.float32) if with_bias else None
    if ro:
        x, packed, scale = readonly(x), readonly(packed), readonly(scale)
    want, bound = exact(x, packed, scale, b)
    assert np.all(np.abs(ops.linear_int4_rows(x, packed, scale, b) - want) <= bound)
    ys = [int4.linear_int4(x, packed, scale, b, isa=isa, stream_max_t=m) for m in (0, 64)]
    assert np.all(np.abs(ys[0] - want) <= bound)
    np.testing.assert_array_equal(ys[0], ys[1])  # the same order of sums in both kernels


@pytest.mark.parametrize("G", [128, 256])
def test_larger_groups(G):
    """Groups of 128 and 256 (several 64-byte chunks per group), decode and prompt, this CPU's
    instruction set."""
    rng = np.random.default_rng(G)
    x = rng.standard_normal((13, 2 * G)).astype(np.float32)
    packed, scale = random_int4(rng, 37, 2 * G, G)
    b = rng.standard_normal(37).astype(np.float32)
    want, bound = exact(x, packed, scale, b)
    for m in (0, 64):
        assert np.all(np.abs(int4.linear_int4(x, packed, scale, b, stream_max_t=m) - want) <= bound)


@pytest.mark.parametrize("T", [1, 9, 40])
@pytest.mark.parametrize("n_out,n_in", [(3072, 1024), (1024, 4096)])
def test_int4_linear_at_model_shapes(T, n_out, n_in):
    """350M shapes through the public linear_int4 (decode up to STREAM_MAX_T rows, prompt above)
    with groups of 64, and every runnable instruction set giving the same numbers."""
    rng = np.random.default_rng(T + n_in)
    x = rng.standard_normal((T, n_in)).astype(np.float32)
    packed, scale = random_int4(rng, n_out, n_in, 64)
    b = rng.standard_normal(n_out).astype(np.float32)
    want, bound = exact(x, packed, scale, b)
    y = K.linear_int4(x, packed, scale, b)
    assert np.all(np.abs(y - want) <= bound)
    np.testing.assert_array_equal(K.linear(x, packed, b, scale), y)
    for isa in RUNNABLE:
        np.testing.assert_array_equal(int4.linear_int4(x, packed, scale, b, isa=isa), y)


def test_int4_linear_argument_checks():
    x = np.zeros((1, 128), np.float32)
    packed = np.zeros((4, 64), np.uint8)
    with pytest.raises(ValueError, match="W: int4 weights need a float16 scale"):
        K.linear_int4(x, packed, np.ones((4, 2), np.float32))
    with pytest.raises(ValueError, match="the group size must be one of 32, 64, 128, 256 and divide n_in"):
        K.linear_int4(x, packed, np.ones((4, 3), np.float16))
    with pytest.raises(ValueError, match="x has 127 features, W expects 128"):
        K.linear_int4(x[:, :-1], packed, np.ones((4, 2), np.float16))
    with pytest.raises(ValueError, match="unknown integer dot product 'sse9'"):
        int4.Q4("sse9", 64)
