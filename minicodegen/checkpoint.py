"""Checkpoints: hub files read without torch, converted to one ``.npz``, loaded memory-mapped.

``load_model`` takes a ``.npz``, a checkpoint directory, a hub id or ``"tiny"``; ``resolve`` turns
it into a local file or directory first: ``"tiny"`` is the small model shipped in the package, and
a hub id is downloaded and converted once into the cache. A ``.npz`` loads memory-mapped: no
weight is read until it is used.

The modules this one builds on, each importing only those before it:

- ``model``: the Config and the weights a model needs;
- ``hubfiles``: the hub's files (pytorch_model.bin, model.safetensors, shards, config.json, the
  tokenizer files) read with NumPy alone;
- ``hub``: hub ids, the local cache, downloads;
- ``npz``: the ``.npz`` format (read mapped, written atomically) and ``convert``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .hub import cache_path, is_hub_id, local_path, split_revision
from .hubfiles import checked_weights
from .model import Model, dequantize
from .npz import DTYPES, TINY, convert, convert_weights, read_checkpoint

# The dtype hub models are converted to unless one is asked for.  On tiny int8 moves the
# validation loss by +0.005% and int4 by +0.10%, but at the 350M and 16B shapes int4 moves the
# logits 6-7 times as far as int8 (README, "Which dtype"): int8, and int4 when asked.
HUB_DTYPE = "int8"


def resolve(path_or_id: str | os.PathLike, dtype: str | None = None) -> Path:
    """The local file or directory to load for ``path_or_id``.

    - ``"tiny"``: the small model shipped in the package (``minicodegen/data/tiny.npz``);
    - a local ``.npz`` or checkpoint directory: itself;
    - a hub id (``Salesforce/codegen-350M-mono``, optionally ``@revision``): downloaded and converted
      once to ``cache_path(id, dtype)`` (``dtype`` None: HUB_DTYPE); later calls use that file
      without the network.  Disk space for the download and the file is checked first.
    """
    s = str(path_or_id)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if s == "tiny":
        if not TINY.is_file():
            raise FileNotFoundError(f"the tiny model is not shipped in this install ({TINY} is missing)")
        return TINY
    path = Path(s).expanduser()
    if path.exists() or not is_hub_id(s):
        return local_path(path, s)
    repo, revision = split_revision(s)
    cached = cache_path(repo, revision, dtype or HUB_DTYPE)
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        convert(s, cached, dtype or HUB_DTYPE, force=True)
    return cached


# ----------------------------------------------------------------------------- loading


def tokenizer_from_files(files: dict[str, bytes], source: str = "checkpoint") -> Any:
    """A minicodegen Tokenizer from raw tokenizer files, or None if there are none (or no tokenizer module)."""
    if "tokenizer.json" not in files and not {"vocab.json", "merges.txt"} <= files.keys():
        return None
    try:
        from .tokenizer import Tokenizer
    except ImportError:
        return None
    try:
        return Tokenizer.from_bytes(files)
    except Exception as e:
        raise ValueError(f"{source}: cannot build the tokenizer from {', '.join(files)}: {e}") from e


def _for_model(name: str, w: np.ndarray) -> np.ndarray:
    """A weight as the model takes it: float16 (but not the float16 scales of int4 weights) and
    1-D bfloat16 widened to float32, C-contiguous."""
    if (w.dtype == np.float16 and not name.endswith(".scale")) or (w.dtype == np.uint16 and w.ndim == 1):
        return dequantize(w)
    return w if w.flags.c_contiguous else np.ascontiguousarray(w)


def load_model(path_or_id: str | os.PathLike, fast: bool = True, mapped: bool = True, dtype: str | None = None) -> Model:
    """A Model from a ``.npz``, a checkpoint directory, a hub id, or ``"tiny"`` (see ``resolve``).

    A ``.npz`` loads memory-mapped (weights are read as they are used); float16 weights are
    widened to float32 (NumPy matmul on float16 is slow); 2-D bfloat16 weights stay uint16 and
    int8 / int4 stay as they are; 1-D ones (norms, biases) are float32.

    ``dtype`` ("float32", "bfloat16", "int8", "int4"; None: as stored, HUB_DTYPE for a hub id):
    a hub id is converted once into the cache; a local checkpoint or ``.npz`` stored otherwise
    is converted in memory as it loads, one tensor at a time (``npz.convert_weights``), never
    widened to float32 as a whole.

    ``mapped=False`` reads a ``.npz`` into memory instead: loading takes longer (350M shape
    here: 0.2-0.5 s int8, 2-3 s float32), decoding is then faster (+8% int8, +6% bf16, +17% float32
    here: NumPy asks for huge pages for large arrays, and streaming the weights then misses the
    TLB far less than through the 4 KiB pages of a mapped file).
    """
    path = resolve(path_or_id, dtype)
    cfg, weights, tok = read_checkpoint(path, mapped=mapped)
    weights = checked_weights(cfg, weights, str(path))
    if dtype is not None and dtype != "float16":
        weights = convert_weights(weights, dtype)
    weights = {k: _for_model(k, w) for k, w in weights.items()}
    return Model(cfg, weights, tokenizer_from_files(tok, str(path)), fast=fast, source=str(path))
