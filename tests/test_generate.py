"""Generation against transformers' generate, sampling filters against their definitions,
streaming, CodeGen's truncation, scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minicodegen
from minicodegen import generation as G
from minicodegen.tokenizer import Tokenizer, bytes_to_unicode

VOCAB = 50295  # the CodeGen tokenizer's ids: real text prompts
SHAPE = dict(vocab_size=VOCAB, n_embd=64, n_head=4, rotary_dim=8, n_layer=2, n_positions=256,
             bos_token_id=50256, eos_token_id=50256)  # fmt: skip


@pytest.fixture(scope="module")
def pair(checkpoint_factory):
    """(transformers model, minicodegen model with the CodeGen tokenizer), NumPy path."""
    hf, path = checkpoint_factory("generate", seed=3, **SHAPE)
    model = minicodegen.load(path, fast=False)
    model.tokenizer = Tokenizer.codegen()
    return hf, model


def hf_generate(hf, prompt: list[int], **kw) -> list[int]:
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), pad_token_id=50256, **kw)
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_equals_transformers(pair, penalty):
    hf, model = pair
    prompt = model.tokenizer.encode("def fibonacci(n):\n    ")
    ours = minicodegen.generate(model, prompt, max_new_tokens=24, repetition_penalty=penalty)
    assert ours == hf_generate(hf, prompt, max_new_tokens=24, do_sample=False, repetition_penalty=penalty)


def test_left_padded_batch_equals_prompts_alone(pair):
    _, model = pair
    prompts = ["def f():", "import os\nclass A:\n    def __init__(self):", "x = ["]
    batch = minicodegen.generate(model, prompts, max_new_tokens=16)
    assert batch == [minicodegen.generate(model, p, max_new_tokens=16) for p in prompts]
    ids = [model.tokenizer.encode(p) for p in prompts]
    assert minicodegen.generate(model, ids, max_new_tokens=16) == [minicodegen.generate(model, i, max_new_tokens=16) for i in ids]


def test_sampling_is_reproducible_per_seed(pair):
    _, model = pair
    kw = dict(max_new_tokens=20, temperature=1.0, top_p=0.95)
    a = minicodegen.generate(model, [1, 2, 3], seed=7, **kw)
    assert a == minicodegen.generate(model, [1, 2, 3], seed=7, **kw)
    assert a != minicodegen.generate(model, [1, 2, 3], seed=8, **kw)
    # a prompt samples the same tokens alone or as row 0 of a batch
    assert minicodegen.generate(model, [[1, 2, 3], [4, 5]], seed=7, **kw)[0] == a


def test_top_k_1_is_greedy(pair):
    _, model = pair
    greedy = minicodegen.generate(model, [10, 20, 30], max_new_tokens=16)
    assert minicodegen.generate(model, [10, 20, 30], max_new_tokens=16, temperature=1.5, top_k=1, seed=1) == greedy


logit_arrays = st.builds(
    lambda seed, n, scale: (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32),
    st.integers(0, 2**32 - 1), st.integers(1, 300), st.floats(0.1, 10),
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(logit_arrays, st.integers(1, 320))
def test_top_k_keeps_exactly_the_k_largest(z, k):
    kept = np.isfinite(G.top_k_filter(z, k))
    if k >= len(z):
        assert kept.all()
    else:
        kth = np.sort(z)[::-1][k - 1]
        np.testing.assert_array_equal(kept, z >= kth)  # the k largest, and ties with the k-th
    np.testing.assert_array_equal(G.top_k_filter(z, k)[kept], z[kept])


@settings(max_examples=200, deadline=None)
@given(logit_arrays, st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_set_reaching_p(z, p):
    probs = np.exp(z.astype(np.float64) - z.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    before = np.concatenate([[0.0], np.cumsum(probs[order])[:-1]])  # mass of the tokens ranked above
    assume(np.abs(before - p).min() > 1e-6)  # float32 vs float64 sums may differ right at the edge
    kept = np.isfinite(G.top_p_filter(z, p))
    expected = np.zeros(len(z), bool)
    expected[order[before < p]] = True  # a token stays while the more likely ones hold less than p
    if len(np.unique(z)) == len(z):
        np.testing.assert_array_equal(kept, expected)
    assert probs[kept].sum() >= min(p, 1.0) - 1e-6


@settings(max_examples=50, deadline=None)
@given(logit_arrays, st.floats(0.05, 0.99), st.integers(0, 50), st.floats(0.3, 2.0))
def test_filters_equal_transformers_warpers(z, p, k, temperature):
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    scores = torch.tensor(z)[None]
    scores = TemperatureLogitsWarper(temperature)(None, scores)
    if k:
        scores = TopKLogitsWarper(k)(None, scores)
    theirs = TopPLogitsWarper(p)(None, scores)[0].numpy()
    probs = G.sample_probs(z, temperature, k, p)
    cum = np.sort(probs)  # skip draws where the float32 cumulative sum sits at the cut
    assume(np.abs(np.cumsum(cum) - (1 - p)).min() > 1e-5)
    np.testing.assert_array_equal(probs > 0, np.isfinite(theirs))


def test_repetition_penalty_definition():
    z = np.array([2.0, -2.0, 1.0, 0.5], np.float32)
    np.testing.assert_allclose(G.apply_repetition_penalty(z, np.array([0, 1, 1]), 2.0), [1.0, -4.0, 1.0, 0.5])


# ----------------------------------------------------------------------------- streaming and stops


def scripted(monkeypatch, model, token_ids: list[int]):
    """Makes the model emit exactly ``token_ids`` (then EOS), whatever the prompt."""
    it = iter(token_ids + [model.config.eos_token_id] * 1000)

    def fake_forward(model_, ids, attention_mask=None, position_ids=None, cache=None, last_only=False, trace=None):
        z = np.zeros((np.asarray(ids).shape[0], 1, model_.config.vocab_size), np.float32)
        z[:, 0, next(it)] = 1.0
        if cache is not None:
            cache.length += np.asarray(ids).shape[1]
        return z

    monkeypatch.setattr(G, "forward", fake_forward)


def byte_token(tok: Tokenizer, b: int) -> int:
    return tok.encode(bytes([b]).decode("latin-1"))[0] if b < 128 else tok.vocab[bytes_to_unicode()[b]]


def test_stream_never_splits_a_character(pair, monkeypatch):
    _, model = pair
    tok = model.tokenizer
    euro = [byte_token(tok, b) for b in "€".encode()]  # three tokens, one character
    ids = tok.encode("x = '") + euro + tok.encode("' + '") + euro + euro + tok.encode("'")
    scripted(monkeypatch, model, ids)
    pieces = list(minicodegen.stream(model, "s = ", max_new_tokens=len(ids)))
    assert "".join(pieces) == "x = '€' + '€€'"
    assert all("\ufffd" not in p for p in pieces)


def test_stream_equals_generate_with_stops_and_truncation(pair, monkeypatch):
    _, model = pair
    tok = model.tokenizer
    text = "    return 1\n\n\ndef g():\n    pass\n"
    for kw, expected in [
        (dict(truncate=True), "    return 1"),  # cut before the three newlines
        (dict(stop=["\ndef"]), "    return 1\n\n"),
        (dict(stop=["urn"]), "    ret"),
        (dict(), text),
    ]:
        ids = tok.encode(text)
        scripted(monkeypatch, model, ids)
        assert minicodegen.generate(model, "def f():\n", max_new_tokens=40, **kw) == expected
        scripted(monkeypatch, model, ids)
        assert "".join(minicodegen.stream(model, "def f():\n", max_new_tokens=40, **kw)) == expected


SAMPLES = [
    "    return a + b\n\n# test\nprint(f(1, 2))\n",
    "    x = 1\n    return x\n\n\n\nclass A:\n    pass",
    "    '''doc'''\n    pass\nprint(1)\nprint(2)\n",
    "    return 0\ndef g():\n    return 1\ndef h():\n    pass\n",
    '    """\n    Docstring.\n    """\n    return 1\n"""\nstray',
    "    return 2<|endoftext|>junk",
    "    pass\n#comment\n",
]


@pytest.mark.parametrize("completion", SAMPLES)
def test_truncation_equals_transformers(completion):
    import re

    from transformers import CodeGenTokenizer

    patterns = ["^#", re.escape("<|endoftext|>"), "^'''", '^"""', "\n\n\n"]
    tok = CodeGenTokenizer(vocab={"a": 0}, merges=[])
    assert G.truncate(completion, G.CODEGEN_TRUNCATE_PATTERNS) == tok.truncate(completion, patterns)


@pytest.mark.parametrize("completion", SAMPLES)
def test_generation_stops_at_the_cut(pair, monkeypatch, completion):
    from transformers import CodeGenTokenizer

    _, model = pair
    ids = model.tokenizer.encode(completion)
    scripted(monkeypatch, model, ids)
    rows = list(G.decode_steps(model, [[1]], 60, codegen_truncate=True))
    row = rows[-1][0]
    assert G.completion_text(row) == CodeGenTokenizer(vocab={"a": 0}, merges=[]).truncate(completion, G.CODEGEN_TRUNCATE_PATTERNS)
    if G.truncate(completion, G.CODEGEN_TRUNCATE_PATTERNS) != completion:
        assert row.done in ("stop", "eos") and len(row.ids) <= len(ids)  # stopped at the cut, not at the end


# ----------------------------------------------------------------------------- scoring


def test_score_equals_transformers_loss(pair):
    hf, model = pair
    text = "def add(a, b):\n    return a + b\n"
    s = minicodegen.score(model, text)
    ids = torch.tensor([s.tokens])
    with torch.no_grad():
        loss = hf(input_ids=ids, labels=ids).loss.item()
    assert np.isnan(s.logprobs[0]) and not np.isnan(s.logprobs[1:]).any()
    assert abs(s.nll - loss) < 1e-5
    # windows: each window's first token is unscored
    s2 = minicodegen.score(model, text, window=5)
    assert np.isnan(s2.logprobs[::5]).all() and not np.isnan(np.delete(s2.logprobs, np.s_[::5])).any()


def test_bad_arguments_are_named(pair):
    _, model = pair
    for kw, msg in [
        (dict(temperature=-1.0), "temperature must be >= 0"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(top_k=-1), "top_k must be"),
        (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
        (dict(max_new_tokens=-1), "max_new_tokens must be"),
    ]:
        with pytest.raises(ValueError, match=msg):
            minicodegen.generate(model, [1, 2], **kw)
    with pytest.raises(ValueError, match="empty prompt"):
        minicodegen.generate(model, "")
    with pytest.raises(ValueError, match="leaves no room"):
        minicodegen.generate(model, [1] * 256)


def test_text_generation_never_picks_padding_rows(checkpoint_factory):
    """CodeGen's vocab_size (51200) has rows past the tokenizer's last id (50294): text mode skips
    them, id mode keeps transformers' exact choice."""
    _, path = checkpoint_factory("padded-vocab", **dict(SHAPE, vocab_size=51200))
    model = minicodegen.load(path, fast=False)
    model.tokenizer = Tokenizer.codegen()
    model.weights["lm_head.bias"] = model.weights["lm_head.bias"].copy()
    model.weights["lm_head.bias"][51000] = 1e4  # the model "wants" a padding row
    assert minicodegen.generate(model, [1, 2], max_new_tokens=3) == [51000] * 3
    text = minicodegen.generate(model, "def", max_new_tokens=3)
    assert text == model.tokenizer.decode(model.tokenizer.encode(text))  # decodable, no error
