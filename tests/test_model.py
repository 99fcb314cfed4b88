"""The forward pass against transformers' CodeGenForCausalLM (fp32, random weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import CONFIGS, REAL_350M, hf_logits
from hypothesis import given, settings
from hypothesis import strategies as st

import minicodegen
from minicodegen import model as M
from minicodegen.hubfiles import read_config

VOCAB = 1000
SMALL = {name: dict(kw, vocab_size=VOCAB, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1) for name, kw in CONFIGS.items()}


@pytest.fixture(scope="module", params=list(SMALL))
def pair(request, checkpoint_factory):
    """(transformers model, minicodegen NumPy-path model) for one small config."""
    hf, path = checkpoint_factory(request.param, **SMALL[request.param])
    return hf, minicodegen.load(path, fast=False)


def random_ids(seed: int, *shape: int, vocab: int = VOCAB) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=shape)


def test_logits_match_transformers(pair):
    hf, model = pair
    ids = random_ids(1, 2, 40)
    ours, theirs = model.logits(ids), hf_logits(hf, ids)
    assert ours.dtype == np.float32 and ours.shape == (2, 40, VOCAB)
    assert np.abs(ours - theirs).max() <= 1e-4


def test_explicit_position_ids_match_transformers(pair):
    """Rotary sees only relative positions inside one prompt; shifted absolute positions must agree too."""
    hf, model = pair
    ids = random_ids(2, 2, 16)
    pos = np.stack([np.arange(16) + 37, np.arange(16) + 200])  # contiguous: transformers reads a jump
    # in position_ids as the start of a new packed sequence and masks across it
    assert np.abs(model.logits(ids, position_ids=pos) - hf_logits(hf, ids, position_ids=pos)).max() <= 1e-4
    # A constant shift of every position leaves the logits as they were (rotary is relative): the
    # absolute positions are checked where queries and keys come from different calls, in
    # test_cached_decode_equals_recompute and the padded-cache part of the left-padding test.
    assert np.abs(model.logits(ids, position_ids=pos) - model.logits(ids)).max() <= 1e-4


def test_greedy_32_tokens_match_transformers_generate(pair):
    import torch

    hf, model = pair
    prompt = random_ids(3, 7).tolist()
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, pad_token_id=VOCAB - 1)
    theirs = out[0, len(prompt) :].tolist()
    ours = minicodegen.generate(model, prompt, max_new_tokens=32, temperature=0.0)
    assert ours == theirs
    assert len(ours) == 32 or ours[-1] == VOCAB - 1


def test_cached_decode_equals_recompute(pair):
    _, model = pair
    ids = random_ids(4, 2, 20)
    full = model.logits(ids)
    cache = M.new_cache(model.config, 2, 4)  # small on purpose: it must grow
    steps = [M.forward(model, ids[:, :12], cache=cache)]
    for t in range(12, 20):
        steps.append(M.forward(model, ids[:, t : t + 1], cache=cache))
    assert cache.length == 20
    assert np.abs(np.concatenate(steps, axis=1) - full).max() <= 1e-5


def test_left_padded_batch_equals_rows_alone(pair):
    hf, model = pair
    prompts = [random_ids(5, 5), random_ids(6, 12), random_ids(7, 9)]
    T = max(len(p) for p in prompts)
    ids = np.zeros((3, T), np.int64)
    mask = np.zeros((3, T), np.int64)
    for b, p in enumerate(prompts):
        ids[b, T - len(p) :], mask[b, T - len(p) :] = p, 1
    batch = model.logits(ids, attention_mask=mask)
    pos = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)
    theirs = hf_logits(hf, ids, attention_mask=mask, position_ids=pos)
    for b, p in enumerate(prompts):
        alone = model.logits(p[None])[0]
        assert np.abs(batch[b, T - len(p) :] - alone).max() <= 1e-5
        assert np.abs(batch[b, T - len(p) :] - theirs[b, T - len(p) :]).max() <= 1e-4
    # decoding on from the padded cache: each row continues as it would alone
    cache = M.new_cache(model.config, 3, T + 3)
    M.forward(model, ids, attention_mask=mask, cache=cache)
    nxt = random_ids(8, 3, 1)
    step = M.forward(model, nxt, cache=cache)
    for b, p in enumerate(prompts):
        alone = model.logits(np.concatenate([p, nxt[b]])[None])[0, -1]
        assert np.abs(step[b, 0] - alone).max() <= 1e-5


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_causality_later_tokens_never_change_earlier_logits(checkpoint_factory, data):
    _, path = checkpoint_factory("narrow", **SMALL["narrow"])
    model = minicodegen.load(path, fast=False)
    T = data.draw(st.integers(2, 24))
    ids = np.array(data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=T, max_size=T)))
    j = data.draw(st.integers(1, T - 1))
    changed = ids.copy()
    changed[j:] = (changed[j:] + data.draw(st.integers(1, VOCAB - 1))) % VOCAB
    a, b = model.logits(ids[None]), model.logits(changed[None])
    np.testing.assert_array_equal(a[0, :j], b[0, :j])
    assert np.abs(a[0, j:] - b[0, j:]).max() > 0


@pytest.mark.slow
def test_real_350m_shape(checkpoint_factory):
    hf, path = checkpoint_factory("350M", **REAL_350M)
    model = minicodegen.load(path, fast=False)
    ids = random_ids(9, 1, 48, vocab=50295)
    diff = np.abs(model.logits(ids) - hf_logits(hf, ids)).max()
    assert diff <= 5e-4, diff


# ----------------------------------------------------------------------------- bad input


def test_bad_input_ids_are_named(pair):
    _, model = pair
    with pytest.raises(ValueError, match=r"token id 1000 at \[0, 2\] is outside the vocabulary \[0, 1000\)"):
        model.logits([[1, 2, 1000]])
    with pytest.raises(ValueError, match=r"token id -1"):
        model.logits([[-1]])
    with pytest.raises(ValueError, match="empty"):
        model.logits(np.zeros((1, 0), np.int64))
    with pytest.raises(ValueError, match="longer than n_positions=256"):
        model.logits(np.zeros((1, 257), np.int64))
    with pytest.raises(ValueError, match="integers"):
        model.logits([[0.5, 1.0]])
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model.logits([[1, 2]], attention_mask=[[1, 1, 1]])


def test_bad_weights_are_named(pair):
    _, model = pair
    weights = dict(model.weights)
    weights["transformer.h.1.mlp.fc_in.weight"] = weights["transformer.h.1.mlp.fc_in.weight"][:, :-1]
    with pytest.raises(ValueError, match=r"'transformer.h.1.mlp.fc_in.weight' has shape \(\d+, \d+\), expected \(\d+, \d+\)"):
        M.Model(model.config, weights)
    weights = {k: v for k, v in model.weights.items() if k != "transformer.ln_f.bias"}
    with pytest.raises(ValueError, match="missing weight 'transformer.ln_f.bias'"):
        M.Model(model.config, weights)
    # buffers the 2022 hub files carry are ignored
    weights = dict(model.weights) | {"transformer.h.0.attn.causal_mask": np.ones((1, 1, 4, 4), bool),
                                     "transformer.h.0.attn.masked_bias": np.array(-1e9, np.float32)}  # fmt: skip
    M.Model(model.config, weights)


def test_bad_config_is_named(tmp_path, pair):
    _, model = pair
    d = M.config_to_dict(model.config) | {"activation_function": "relu"}
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"config.json: activation_function 'relu' is not supported"):
        read_config(tmp_path / "config.json")
    del d["n_layer"]
    with pytest.raises(ValueError, match="missing field.*n_layer"):
        M.config_from_dict(d, "x.json")


def test_tied_lm_head_matches_transformers(checkpoint_factory):
    """tie_word_embeddings: lm_head uses wte's matrix (and keeps its own bias)."""
    hf, path = checkpoint_factory("tied", **dict(SMALL["narrow"], tie_word_embeddings=True))
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    model = minicodegen.load(path, fast=False)
    assert model.config.tie_word_embeddings and "lm_head.weight" not in model.weights
    ids = random_ids(10, 2, 30)
    assert np.abs(model.logits(ids) - hf_logits(hf, ids)).max() <= 1e-4
    assert np.abs(minicodegen.load(path, fast=True).logits(ids) - hf_logits(hf, ids)).max() <= 1e-4
