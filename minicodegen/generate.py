"""Generation: greedy decoding over the KV cache (sampling, batches and streaming come next)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .model import Model, forward, new_cache


def generate(model: Model, prompt: Any, max_new_tokens: int = 32, temperature: float = 0.0) -> list[int]:
    """Greedy continuation of a prompt of token ids: the new ids only (EOS included if reached)."""
    ids: list[int] = []
    cache = new_cache(model.config, 1, len(prompt) + max_new_tokens)
    logits = forward(model, [list(prompt)], cache=cache, last_only=True)
    for _ in range(max_new_tokens):
        nxt = int(np.argmax(logits[0, -1]))
        ids.append(nxt)
        if nxt == model.config.eos_token_id or cache.length >= model.config.n_positions:
            break
        logits = forward(model, [[nxt]], cache=cache, last_only=True)
    return ids
