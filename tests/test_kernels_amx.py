"""Prompts with int8 weights on AMX tiles (minicodegen.kernels.amx) against the NumPy definition
``ops.linear_int8_rows``, bit for bit: the tiles of x, the choice of the kernel by CPU features,
the kernel at odd and model shapes, and the model's prompt that runs it.

The kernel tests run where the CPU has AMX-INT8 and Linux grants the tile registers (some of this
project's machines); elsewhere prompts take the VNNI or widening kernels (tests/test_kernels_integer.py,
tests/test_portability.py) and only the CPU-independent tests here run.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kernel_helpers import SETTINGS, seeds

from minicodegen import ops
from minicodegen.kernels import amx, cpu, qgemm

needs_amx = pytest.mark.skipif(not amx.AMX_INT8, reason="this CPU (or system) runs no AMX-INT8 tiles")


def int8_problem(rng: np.random.Generator, T: int, n_out: int, n_in: int, with_bias: bool):
    x = (rng.standard_normal((T, n_in)) * rng.choice([1e-3, 1.0, 50.0])).astype(np.float32)
    W = rng.integers(-128, 128, (n_out, n_in)).astype(np.int8)
    scale = (rng.random(n_out) * 0.1 + 1e-3).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32) if with_bias else None
    return x, W, scale, b


@pytest.mark.parametrize("features,want", [
    ({"avx512f", "avx512bw", "avx512vnni", "amx-tile", "amx-int8", "amx-bf16"}, True),  # Sapphire Rapids and later
    ({"avx512f", "avx512bw", "avx512vnni", "avx512bf16"}, False),  # AMD Zen 4
    ({"amx-tile"}, False),  # tiles without the int8 products
    ({"avx2", "fma", "f16c"}, False),  # a laptop
    (set(), False),
])
def test_the_tiles_are_chosen_by_the_cpu_features(features, want):
    assert cpu.amx_int8(features) is want


def test_a_cpu_named_without_features_runs_no_tiles():
    """NUMBA_CPU_NAME=haswell (the portability tests): no feature is known, so no AMX, whatever the
    machine has."""
    assert not cpu.amx_int8(cpu.target_features("haswell", ""))


@pytest.mark.parametrize("T,n_in", [(1, 64), (31, 128), (32, 64), (33, 192), (70, 64)])
def test_the_tiles_of_x_hold_every_byte_once(T, n_in):
    """Tiles of 16 tokens x 64 bytes, 1 KB each; tokens up to a multiple of 32 are zeros; the panels
    of W hold 4-byte groups of 32 rows (w + 128)."""
    xq = np.random.default_rng(T).integers(-128, 128, (T, n_in)).astype(np.int8)
    Xt = np.full(amx.x_tiles_shape(T, n_in), 99, np.int8)
    amx._x_tiles(xq, Xt)
    P, n_k, rows, k = Xt.shape
    assert (rows, k, n_k) == (16, 64, n_in // 64) and P * 16 == -(-T // 32) * 32
    back = Xt.transpose(0, 2, 1, 3).reshape(P * 16, n_in)
    np.testing.assert_array_equal(back[:T], xq)
    assert (back[T:] == 0).all()
    W = np.random.default_rng(n_in).integers(-128, 128, (T + 32, n_in)).astype(np.int8)
    Wp = np.empty(amx.panels_shape(W.shape), np.int32)
    amx._pack_panels(W, Wp)
    u = Wp.view(np.uint8).reshape(Wp.shape[0], n_in // 4, 32, 4) ^ 0x80  # [panel, group, row, byte]
    rows = u.transpose(0, 2, 1, 3).reshape(-1, n_in).view(np.int8)
    assert Wp.shape[0] == -(-len(W) // 32)
    np.testing.assert_array_equal(rows[:len(W)], W)
    assert (rows[len(W):] == 0).all()  # (the last panel's rows past n_out: zero weights)


def test_tiles_asked_for_where_the_cpu_has_none_are_refused(monkeypatch):
    """amx=True on a CPU or system without AMX would kill the process (SIGILL): an error instead."""
    monkeypatch.setattr(qgemm, "_amx_int8", lambda: False)
    x, W, scale, _ = int8_problem(np.random.default_rng(0), 40, 32, 64, False)
    with pytest.raises(ValueError, match="amx=True needs a CPU with AMX-INT8"):
        qgemm.linear_int8_rows(x, W, scale, amx=True)


@needs_amx
@SETTINGS
@given(seeds, st.integers(9, 80), st.sampled_from([32, 33, 64, 95, 200]), st.sampled_from([64, 128, 320]), st.booleans())
def test_the_amx_kernel_equals_its_definition(seed, T, n_out, n_in, with_bias):
    """T not a multiple of the 32 tokens of a block; n_out not one of the 32 rows of a panel (the
    last panel partial); through qgemm.linear_int8_rows, which the model's prompts call."""
    x, W, scale, b = int8_problem(np.random.default_rng(seed), T, n_out, n_in, with_bias)
    want = ops.linear_int8_rows(x, W, scale, b)
    np.testing.assert_array_equal(qgemm.linear_int8_rows(x, W, scale, b, amx=True), want)


@needs_amx
@pytest.mark.parametrize("n_out,n_in", [(3072, 1024), (1024, 4096)])  # 350M qkv_proj, fc_out
def test_the_amx_kernel_at_model_shapes_with_the_extreme_sums(n_out, n_in):
    """The largest sums int32 holds here (every byte -128 or 127), and the VNNI kernel's result."""
    rng = np.random.default_rng(n_out)
    x, W, scale, b = int8_problem(rng, 200, n_out, n_in, True)
    x[0] = -1.0  # quantized to -127 everywhere
    W[: n_out // 2] = -128
    W[n_out // 2:] = 127
    y = qgemm.linear_int8_rows(x, W, scale, b, amx=True)
    np.testing.assert_array_equal(y, ops.linear_int8_rows(x, W, scale, b))
    np.testing.assert_array_equal(y, qgemm.linear_int8_rows(x, W, scale, b, amx=False))


@needs_amx
def test_the_model_reads_an_int8_prompt_on_the_tiles(monkeypatch):
    """A prompt of the tiny model (int8) calls the AMX kernel for its blocks' four matrices (and
    the head, for the logits of every position), and its logits equal those of the kernels without
    tiles, bit for bit."""
    import minicodegen
    from minicodegen.model import forward

    calls = []
    real = qgemm._gemm_amx

    def counting(*args):
        calls.append(args[1].shape)
        return real(*args)

    model = minicodegen.load("tiny")
    ids = np.random.default_rng(1).integers(0, model.config.vocab_size, (1, 40))
    monkeypatch.setattr(qgemm, "_gemm_amx", counting)
    with_tiles = forward(model, ids)
    assert len(calls) == 4 * model.config.n_layer + 1
    monkeypatch.setattr(qgemm, "AMX_INT8", False)
    np.testing.assert_array_equal(with_tiles, forward(model, ids))
    assert len(calls) == 4 * model.config.n_layer + 1  # (none more)


@pytest.mark.parametrize("features,want", [
    ({"amx-tile", "amx-bf16"}, True), ({"amx-tile", "amx-int8"}, False), ({"avx512bf16", "avx512f", "avx512bw"}, False)])
def test_the_bf16_tiles_are_chosen_by_the_cpu_features(features, want):
    assert cpu.amx_bf16(features) is want


@pytest.mark.skipif(not amx.AMX_BF16, reason="this CPU (or system) runs no AMX-BF16 tiles")
def test_a_bf16_prompt_with_bf16_activations_runs_on_the_tiles(monkeypatch, tmp_path):
    """A model with bf16 weights and Model.bf16_activations = "bf16" reads its prompt on the tiles
    (the blocks' four matrices), decodes with float32 activations, and its prompt's logits are those
    of the NumPy definition (ops.linear_bf16_rows) up to float32 sums; "float32" calls no tile."""
    from test_fast_path import stored_as

    import minicodegen
    from minicodegen import model as M

    base = minicodegen.load("tiny")
    f32 = {n: (M.dequantize(w, base.weights.get(n + ".scale")) if w.dtype == np.int8 else w)
           for n, w in base.weights.items() if not n.endswith(".scale")}
    weights = stored_as(f32, "bfloat16")
    calls = []
    real = qgemm._gemm_amx

    def counting(*args):
        calls.append(args[1].shape)
        return real(*args)

    monkeypatch.setattr(qgemm, "_gemm_amx", counting)
    ids = np.random.default_rng(3).integers(0, base.config.vocab_size, (1, 40))
    fast = M.Model(base.config, weights, fast=True, bf16_activations="bf16")
    slow = M.Model(base.config, weights, fast=False, bf16_activations="bf16")
    cache = M.new_cache(base.config, 1, 41)
    got = M.forward(fast, ids, cache=cache, last_only=True)
    assert len(calls) == 4 * base.config.n_layer
    want = M.forward(slow, ids, last_only=True)
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max() and got.argmax() == want.argmax()
    M.forward(fast, ids[:, :1], cache=cache)  # a decode step: no tiles
    fast.bf16_activations = "float32"
    M.forward(fast, ids)
    assert len(calls) == 4 * base.config.n_layer
    fast.bf16_activations = "fp8"
    with pytest.raises(ValueError, match="model.bf16_activations must be one of float32, bf16"):
        M.forward(fast, ids)
