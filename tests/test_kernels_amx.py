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


# ---------------------------------------------------------------------------
# Decode steps of a batch: the int8 weights packed once (packed.pack_int8) on the tiles.
# ---------------------------------------------------------------------------


def test_packed_weights_take_the_tiles_for_whole_tiles_of_n_in_only():
    """packed_isa: AMX where granted and every n_in a multiple of 64 bytes, else vpdpbusd."""
    from minicodegen.kernels import packed

    assert packed.packed_isa(64, 4096, amx=True) is packed.TILES
    assert packed.packed_isa(64, 200, amx=True) is packed.INT8_ISA  # (200: a partial tile)
    assert packed.packed_isa(64, 4096, amx=False) is packed.INT8_ISA
    assert packed.packed_isa(1024, amx=None) is (packed.TILES if amx.AMX_INT8 else packed.INT8_ISA)


def test_asking_for_packed_tiles_without_amx_is_an_error(monkeypatch):
    """amx=True where the system grants no tiles would kill the process (SIGILL): an error instead."""
    from minicodegen import kernels as K
    from minicodegen.kernels import packed

    monkeypatch.setattr(packed, "_amx_int8", lambda: False)
    W = np.zeros((64, 64), np.int8)
    with pytest.raises(ValueError, match="amx=True needs a CPU with AMX-INT8"):
        packed.linear_int8_packed(np.zeros((2, 64), np.float32), K.pack_int8(W), np.ones(64, np.float32), amx=True)


@needs_amx
@SETTINGS
@given(seeds, st.integers(1, 40), st.sampled_from([1, 7, 63, 64, 65, 130, 200]), st.sampled_from([64, 128, 320]),
       st.booleans())
def test_packed_panels_on_the_tiles_equal_their_definition(seed, T, n_out, n_in, with_bias):
    """Groups of 16 rows of x and the rest (T = 1 .. 40), a partial last panel of 64 rows of W, through
    linear_int8_packed (the head of a decode step of a batch)."""
    from minicodegen.kernels import packed

    x, W, scale, b = int8_problem(np.random.default_rng(seed), T, n_out, n_in, with_bias)
    got = packed.linear_int8_packed(x, packed.pack_int8(W), scale, b, amx=True)
    np.testing.assert_array_equal(got, ops.linear_int8_rows(x, W, scale, b))


@needs_amx
@pytest.mark.parametrize("T", [1, 8, 16, 33])
def test_packed_panels_on_the_tiles_at_model_shapes_with_the_extreme_sums(T):
    """350M's fc_out (n_in 4096: 64 tiles of x per panel), every byte -128 or 127, against the
    vpdpbusd panels and the definition."""
    from minicodegen.kernels import packed

    rng = np.random.default_rng(T)
    x, W, scale, b = int8_problem(rng, T, 1024, 4096, True)
    x[0] = -1.0
    W[:512] = -128
    W[512:] = 127
    Wp = packed.pack_int8(W)
    y = packed.linear_int8_packed(x, Wp, scale, b, amx=True)
    np.testing.assert_array_equal(y, ops.linear_int8_rows(x, W, scale, b))
    np.testing.assert_array_equal(y, packed.linear_int8_packed(x, Wp, scale, b, amx=False))


@needs_amx
@pytest.mark.parametrize("B", [1, 8, 16, 17, 33])
def test_the_fused_block_on_the_tiles_equals_it_with_vpdpbusd_panels(B):
    """decode_layers over two blocks of E = 128, n_inner = 320 (whole tiles: decode_weights picks
    the tiles), bit for bit against the same packed weights with vpdpbusd and against the
    checkpoint's matrices; B past one group of 16 rows."""
    from test_kernels_packed import _int8_layer

    from minicodegen import kernels as K
    from minicodegen.kernels import packed

    rng = np.random.default_rng(B)
    E, H, n_inner, S = 128, 4, 320, 5
    layer = _int8_layer(rng, E, n_inner)
    plan = K.decode_weights({n: K.pack_int8(w) if w.ndim == 2 else w for n, w in layer.items()}, E)
    assert plan[-1] is packed.TILES
    x = rng.standard_normal((B, E)).astype(np.float32)
    sincos = rng.standard_normal((B, 8)).astype(np.float32)
    kv = rng.standard_normal((2, B, H, S, E // H)).astype(np.float32)
    allowed = np.ones((B, S), bool)
    outs = [K.decode_layers(x.copy(), [lay, lay], 1e-5, sincos, 8, H, [kv[0].copy()] * 2, [kv[1].copy()] * 2, S, allowed)
            for lay in (plan, plan[:-1] + (packed.INT8_ISA,), layer)]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


@needs_amx
def test_a_decode_step_of_a_batch_runs_its_packed_matrices_on_the_tiles(monkeypatch):
    """tiny (int8): a step of PACK_MIN_ROWS rows takes the blocks' packed matrices and the head on
    the tiles, with the logits of the model without packing, bit for bit."""
    import minicodegen
    from minicodegen import kernels as K
    from minicodegen import model as M
    from minicodegen.kernels import packed

    model = minicodegen.load("tiny")
    B = M.PACK_MIN_ROWS
    assert all(w[-1] is packed.TILES for w in M.decode_plan(model, True))
    heads = []
    real = packed._qgemm_packed
    monkeypatch.setattr(packed, "_qgemm_packed", lambda *a: heads.append(a[-1]) or real(*a))

    def run(m):
        cache = M.new_cache(m.config, B, 6)
        M.forward(m, np.full((B, 4), 198) + np.arange(B)[:, None], cache=cache)
        return M.forward(m, np.full((B, 1), 50284), cache=cache)

    got = run(model)
    assert heads == [packed.TILES]
    plain = minicodegen.load("tiny")
    monkeypatch.setattr(K, "packs", lambda W: False)
    np.testing.assert_array_equal(got, run(plain))
