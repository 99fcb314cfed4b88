"""Shared fixtures: CodeGen checkpoints with random weights, written by transformers itself.

No hub checkpoint can be downloaded where the tests run, so every test builds its own:
``CodeGenForCausalLM(config)`` with a seed, weights perturbed so that layer norms and biases are
not the trivial 1/0 they start as, saved with ``save_pretrained`` (``model.safetensors``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# The test machine has 2 cores: keep torch from fighting Numba and BLAS for them.
os.environ.setdefault("OMP_NUM_THREADS", "2")

SHARED_VOCAB = Path(__file__).resolve().parents[1].parent / "shared" / "vocab"

# Small configs shaped like the family (head_dim 64 / 80 / 256, rotary_dim < head_dim, n_head a
# multiple of 4, n_inner left to its default 4·n_embd), and the real 350M shape.
CONFIGS = {
    "350M-like": dict(n_embd=256, n_head=4, rotary_dim=32, n_layer=3),  # head_dim 64
    "2B-like": dict(n_embd=320, n_head=4, rotary_dim=64, n_layer=2),  # head_dim 80
    "6B-like": dict(n_embd=1024, n_head=4, rotary_dim=64, n_layer=2),  # head_dim 256
    "narrow": dict(n_embd=128, n_head=8, rotary_dim=8, n_layer=4),  # head_dim 16, 4 layers
}
REAL_350M = dict(n_embd=1024, n_head=16, rotary_dim=32, n_layer=20, vocab_size=51200, n_positions=2048)


def codegen_config(**kw):
    """A transformers CodeGenConfig with every field set (its defaults are a 6B shape)."""
    from transformers import CodeGenConfig

    fields = dict(
        vocab_size=1000, n_positions=256, n_ctx=256, n_embd=128, n_layer=2, n_head=4, rotary_dim=16,
        n_inner=None, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5, initializer_range=0.02, use_cache=True, bos_token_id=50256,
        eos_token_id=50256, tie_word_embeddings=False,
    )  # fmt: skip
    fields.update(kw)
    if "n_positions" in kw:
        fields["n_ctx"] = kw["n_positions"]
    return CodeGenConfig(**fields)


def random_codegen(seed: int = 0, **kw):
    """CodeGenForCausalLM in eval mode with random weights: matrices N(0, 0.02), the rest perturbed."""
    import torch
    from transformers import CodeGenForCausalLM

    torch.manual_seed(seed)
    model = CodeGenForCausalLM(codegen_config(**kw)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "ln" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    """factory(name, seed=0, **config) -> (transformers model, checkpoint dir), built once per session."""
    built: dict = {}

    def make(name: str, seed: int = 0, **kw):
        key = (name, seed, tuple(sorted(kw.items())))
        if key not in built:
            model = random_codegen(seed, **kw)
            path = tmp_path_factory.mktemp(name.replace("/", "_"))
            model.save_pretrained(path)
            built[key] = (model, path)
        return built[key]

    return make


def hf_logits(model, ids, attention_mask=None, position_ids=None) -> np.ndarray:
    """transformers' fp32 logits as NumPy."""
    import torch

    with torch.no_grad():
        out = model(
            input_ids=torch.as_tensor(np.asarray(ids), dtype=torch.long),
            attention_mask=None if attention_mask is None else torch.as_tensor(np.asarray(attention_mask)),
            position_ids=None if position_ids is None else torch.as_tensor(np.asarray(position_ids), dtype=torch.long),
            use_cache=False,
        )
    return out.logits.float().numpy()


@pytest.fixture(scope="session")
def int8_compiled_cache(tmp_path_factory):
    """(a Numba cache directory, what the process reported) after ``cold_cache.WARMUP_INT8`` ran in
    it, cold: every kernel an int8 model runs, compiled once for the tests that need such a cache."""
    from cold_cache import WARMUP_INT8, run_python

    cache_dir = tmp_path_factory.mktemp("numba-int8")
    return cache_dir, run_python(WARMUP_INT8, cache_dir)

