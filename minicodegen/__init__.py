"""minicodegen: Salesforce CodeGen in plain NumPy + Numba.

>>> import minicodegen
>>> model = minicodegen.load("tiny")                               # doctest: +SKIP
>>> minicodegen.generate(model, "def f():", max_new_tokens=16)     # doctest: +SKIP
"""

from __future__ import annotations

import os as _os

# OpenBLAS (NumPy's BLAS, used for prompts) keeps its worker threads spinning for up to 2^28
# cycles after each call; between calls Numba's kernels then fight them for the cores (a
# 512-token prompt took 1.39 s instead of 1.30 s on 2 cores).  2^4 cycles makes them sleep at
# once.  OpenBLAS reads this when NumPy is first imported, so it only takes effect if
# minicodegen is imported before NumPy (as `python -m minicodegen` does); a value set in the
# environment wins.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .checkpoint import load_model as _load_model  # noqa: E402
from .generation import generate, score, stream  # noqa: E402
from .model import BF16_ACTIVATIONS, INT8_ACTIVATIONS, Config, Model, forward, new_cache  # noqa: E402
from .tokenizer import Tokenizer  # noqa: E402


def load(path: str | _os.PathLike, fast: bool = True, mapped: bool = True, int8_activations: str = "int8",
         dtype: str | None = None, bf16_activations: str = "float32") -> Model:
    """Loads a model from a checkpoint directory, a converted ``.npz``, a hub id or ``"tiny"``.

    ``dtype``: how the matrices are stored, "float32", "bfloat16", "int8" or "int4" (None: as the
    file stores them; a hub id: int8, converted once and cached, one file per dtype; a local file
    stored otherwise is converted as it loads; see checkpoint.load_model).
    ``mapped=False``: read a ``.npz`` into memory rather than mapping it (slower to load, faster
    to decode; see checkpoint.load_model).  ``int8_activations``: what int8 weights multiply,
    activations rounded to 8 bits per row ("int8", integer dot products) or "float32" ones
    (``Model.int8_activations``; README, "What int8 costs"); int4 weights always take 8-bit ones.
    ``bf16_activations``: what bf16 weights multiply in a prompt, "float32" activations (exact) or
    ones rounded to "bf16" (``Model.bf16_activations``; bf16 dot products, AMX tiles where the CPU
    has them)."""
    if int8_activations not in INT8_ACTIVATIONS:
        raise ValueError(f"int8_activations must be one of {', '.join(INT8_ACTIVATIONS)}, got {int8_activations!r}")
    if bf16_activations not in BF16_ACTIVATIONS:
        raise ValueError(f"bf16_activations must be one of {', '.join(BF16_ACTIVATIONS)}, got {bf16_activations!r}")
    model = _load_model(path, fast=fast, mapped=mapped, dtype=dtype)
    model.int8_activations = int8_activations
    model.bf16_activations = bf16_activations
    return model


__all__ = ["Config", "Model", "Tokenizer", "forward", "generate", "load", "new_cache", "score", "stream"]
