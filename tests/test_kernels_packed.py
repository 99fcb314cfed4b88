"""int8 weights packed into VNNI panels (minicodegen.kernels.packed) against the NumPy definition
``ops.linear_int8_rows`` of the unpacked weights, bit for bit: the layout, the kernel for any
number of rows, the fused decode block, and the model that packs its weights on this CPU.

They run where the CPU has AVX512-VNNI (the machines of this project do); elsewhere nothing is
packed (``kernels.packs`` is False), which tests/test_portability.py runs.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kernel_helpers import SETTINGS, seeds

import minicodegen
from minicodegen import kernels as K
from minicodegen import model as M
from minicodegen import ops
from minicodegen.kernels import integer

pytestmark = pytest.mark.skipif(integer.INT8_ISA.name != "avx512_vnni",
                                reason="packed int8 panels need AVX512-VNNI, which this CPU lacks")


def unpack(Wp: np.ndarray, n_out: int) -> np.ndarray:  # [P, n_in / 4, 64] int32 -> [n_out, n_in] int8
    """The layout, read back: Wp[p, q, r] holds the bytes W[64p + r, 4q .. 4q + 3] + 128."""
    P, nq, _ = Wp.shape
    u = Wp.view(np.uint8).reshape(P, nq, 64, 4) ^ 0x80
    return u.transpose(0, 2, 1, 3).reshape(P * 64, 4 * nq)[:n_out].view(np.int8)


def int8_matrix(rng: np.random.Generator, n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(-128, 128, (n_out, n_in)).astype(np.int8), (rng.random(n_out) * 0.1 + 1e-3).astype(np.float32)


@pytest.mark.parametrize("n_out,n_in", [(1, 4), (63, 8), (64, 12), (65, 1024), (200, 36)])
def test_the_layout_holds_every_weight_once(n_out, n_in):
    W, _ = int8_matrix(np.random.default_rng(n_out), n_out, n_in)
    Wp = K.pack_int8(W)
    assert Wp.shape == (-(-n_out // 64), n_in // 4, 64) and Wp.dtype == np.int32 and Wp.flags.c_contiguous
    np.testing.assert_array_equal(unpack(Wp, n_out), W)
    pad = Wp.view(np.uint8).reshape(Wp.shape[0], n_in // 4, 64, 4)[-1, :, n_out % 64 or 64:]
    assert (pad == 0x80).all()  # rows past n_out: w = 0


@SETTINGS
@given(seeds, st.integers(1, 37), st.sampled_from([1, 7, 63, 64, 65, 130, 200]), st.sampled_from([4, 8, 36, 64, 100, 260]),
       st.booleans())
def test_packed_linear_equals_its_definition(seed, T, n_out, n_in, with_bias):
    """Tiles of 6 rows and one of the rest (T = 1 .. 37), a partial last panel, n_in not a
    multiple of the 64-byte chunk; through kernels.linear, which takes the packed weights."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((T, n_in)) * rng.choice([1e-3, 1.0, 50.0])).astype(np.float32)
    W, scale = int8_matrix(rng, n_out, n_in)
    b = rng.standard_normal(n_out).astype(np.float32) if with_bias else None
    want = ops.linear_int8_rows(x, W, scale, b)
    np.testing.assert_array_equal(K.linear(x, K.pack_int8(W), b, scale), want)


@pytest.mark.parametrize("T", [1, 2, 8, 9, 97, 200])
def test_packed_linear_at_model_shapes(T):
    """350M's fc_out (n_in 4096: chunks of the panel), blocks of 96 rows of x past T = 96, and the
    largest sums (all bytes -127 x -128) exact in int32."""
    rng = np.random.default_rng(T)
    x = rng.standard_normal((T, 4096)).astype(np.float32)
    x[0] = -1.0
    W, scale = int8_matrix(rng, 1024, 4096)
    W[0] = -128
    b = rng.standard_normal(1024).astype(np.float32)
    np.testing.assert_array_equal(K.linear_int8_packed(x, K.pack_int8(W), scale, b), ops.linear_int8_rows(x, W, scale, b))


def test_packed_arguments_are_checked():
    W, scale = int8_matrix(np.random.default_rng(0), 64, 16)
    Wp = K.pack_int8(W)
    with pytest.raises(ValueError, match="n_in a multiple of 4"):
        K.pack_int8(np.zeros((4, 6), np.int8))
    with pytest.raises(ValueError, match="int32 \\(2, 4, 64\\)"):  # scales of 65 rows need two panels
        K.linear_int8_packed(np.zeros((1, 16), np.float32), Wp, np.ones(65, np.float32))
    with pytest.raises(ValueError, match="int8 activations only"):
        K.linear(np.zeros((1, 16), np.float32), Wp, None, scale, int8_activations=False)
    with pytest.raises(ValueError, match="x has 12 features, W expects 16"):
        K.linear_int8_packed(np.zeros((1, 12), np.float32), Wp, scale)
    assert K.packs(W) and not K.packs(np.zeros((4, 6), np.int8)) and not K.packs(W.astype(np.float32))


def _int8_layer(rng: np.random.Generator, E: int, n_inner: int) -> dict[str, np.ndarray]:
    layer = {"ln_1.weight": (1 + 0.1 * rng.standard_normal(E)).astype(np.float32),
             "ln_1.bias": (0.1 * rng.standard_normal(E)).astype(np.float32),
             "mlp.fc_in.bias": (0.1 * rng.standard_normal(n_inner)).astype(np.float32),
             "mlp.fc_out.bias": (0.1 * rng.standard_normal(E)).astype(np.float32)}
    for name, shape in (("attn.qkv_proj", (3 * E, E)), ("attn.out_proj", (E, E)), ("mlp.fc_in", (n_inner, E)),
                        ("mlp.fc_out", (E, n_inner))):
        layer[name + ".weight"], layer[name + ".weight.scale"] = int8_matrix(rng, *shape)
        layer[name + ".weight.scale"] *= 0.05
    return layer


@pytest.mark.parametrize("B", [1, 6, 7, 13])
def test_the_fused_block_with_packed_weights_equals_it_with_the_checkpoints(B):
    """decode_layers over two blocks: packed panels (qkv_proj + fc_in in one loop, out_proj +
    fc_out + residual in another) against the row kernels of integer.py, bit for bit; n_inner 200
    leaves a partial panel."""
    rng = np.random.default_rng(B)
    E, H, n_inner, S = 64, 4, 200, 5
    layer = _int8_layer(rng, E, n_inner)
    packed_layer = {n: K.pack_int8(w) if w.ndim == 2 else w for n, w in layer.items()}
    x = rng.standard_normal((B, E)).astype(np.float32)
    sincos = rng.standard_normal((B, 8)).astype(np.float32)
    kv = rng.standard_normal((2, B, H, S, E // H)).astype(np.float32)
    allowed = np.ones((B, S), bool)
    outs = [K.decode_layers(x.copy(), [lay, lay], 1e-5, sincos, 8, H, [kv[0].copy()] * 2, [kv[1].copy()] * 2, S, allowed)
            for lay in (layer, packed_layer)]
    np.testing.assert_array_equal(outs[1], outs[0])
    with pytest.raises(ValueError, match="fc_in.weight: packed int8 weights must be"):
        K.decode_weights(packed_layer | {"mlp.fc_in.weight": packed_layer["mlp.fc_in.weight"][:1]}, E)


def test_the_model_packs_its_int8_matrices_for_batches_and_computes_the_same():
    """tiny (int8, tied head of 50,295 rows: a partial panel): a single stream keeps the
    checkpoint's matrices; the first decode step of PACK_MIN_ROWS rows packs the blocks' matrices
    and the head once (the embedding table stays as it is), and float activations do not pack;
    logits of a prompt and of decode steps of 1 and of 9 rows equal, bit for bit, those of the
    same model with packing turned off."""
    model = minicodegen.load("tiny")
    ids = np.array([[50256, 4299, 751, 7, 64, 11, 275, 2599]])

    def run(m, B):
        cache = M.new_cache(m.config, B, 16)
        out = [M.forward(m, np.repeat(ids, B, axis=0) + np.arange(B)[:, None], cache=cache)]
        for t in (198, 50284):
            out.append(M.forward(m, np.full((B, 1), t), cache=cache))
        return out

    single = run(model, 1)
    assert model._fast_weights is None  # (a single stream packs nothing)
    batch = run(model, M.PACK_MIN_ROWS + 1)
    fw = M.fast_weights(model, packed=True)
    assert fw is M.fast_weights(model, packed=True) and M.fast_weights(model) is model.weights
    assert fw["transformer.h.0.mlp.fc_in.weight"].ndim == 3 and fw["lm_head.weight"].ndim == 3
    assert fw["transformer.wte.weight"] is model.weights["transformer.wte.weight"]
    assert "lm_head.weight" not in model.weights

    plain = minicodegen.load("tiny")
    real = K.packs
    try:
        K.packs = lambda W: False
        assert M.fast_weights(plain, packed=True)["transformer.h.0.mlp.fc_in.weight"].ndim == 2
    finally:
        K.packs = real
    for a, b in zip(single + batch, run(plain, 1) + run(plain, M.PACK_MIN_ROWS + 1)):
        np.testing.assert_array_equal(a, b)
    model.int8_activations = "float32"
    assert M.fast_weights(model, packed=True)["transformer.h.0.mlp.fc_in.weight"].dtype == np.int8


def test_a_packed_head_takes_all_rows_of_a_step_in_one_call(monkeypatch):
    """Its integer sums are exact in any number of rows, so a step of more than STREAM_MAX_T rows
    reads the packed head once (float heads go in chunks of STREAM_MAX_T rows)."""
    model = minicodegen.load("tiny")
    B = K.STREAM_MAX_T * 2 + 1
    cache = M.new_cache(model.config, B, 4)
    M.forward(model, np.full((B, 2), 198), cache=cache)
    calls = []
    real = M.dense
    monkeypatch.setattr(M, "dense", lambda x, w, name, *a, **k: calls.append((name, len(x))) or real(x, w, name, *a, **k))
    M.forward(model, np.full((B, 1), 50284), cache=cache)
    assert calls == [("lm_head", B)] and M.fast_weights(model, packed=True)["lm_head.weight"].dtype == np.int32
