"""Compiling the kernels: the on-disk cache and its guard against stale code, the warm-up, and
whether a model would have to compile.

Every kernel is compiled with ``cache=True``: Numba writes its machine code to ``*.nbi``
(index) and ``*.nbc`` (data) files in this package's cache directory (``$NUMBA_CACHE_DIR/
kernels_<hash of the package's path>`` when NUMBA_CACHE_DIR is set, else ``kernels/__pycache__``),
and a later process loads it instead of compiling.  (Measured on a shared 2-core machine: the
kernels of an int8 model compile in 121 s and load in 0.5 s.)

Stale code.  Numba takes a cached kernel for stale only when *its own* source file changes, but
the kernels of one module compile in functions of others (``simd._dot``,
``attention._attend_query``, ``elementwise._rotate``, ...): after an edit of simd.py the cached
``gemv._gemv`` would still run the old ``_dot``.  ``refresh_cache``, which the package's
``__init__`` runs at import (before any kernel is compiled or loaded), keeps a fingerprint of
the sources of the kernel modules and of the Numba version in a stamp file beside Numba's files;
when it differs, it deletes the package's index and data files (of this Python version), so that
every kernel compiles from the current sources.  It reads the sources (80 KB) and one small file:
0.6 ms.  (A process still running on the old sources can write old code under the new stamp if
it compiles a new specialization after the edit: restart such processes after an edit.)

Warm-up.  ``warmup(dtypes)`` runs the public functions on tiny inputs, step by step, so that
every kernel a model with weights of those dtypes calls from Python is compiled (cold cache) or
loaded.  ``needs_compiling(dtype)`` says, without compiling or loading anything, whether that
would compile: it looks the kernels' signatures (``_step_signatures``) up in Numba's index files.

Tested in tests/test_kernels_cache.py: an edit of simd.py in a copy of the package changes what a
kernel of elementwise.py computes in the next process; a process after ``warmup(["int8"])``
loads every kernel it calls from the cache and compiles none; ``_step_signatures`` equals what
the warm-up compiles.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numba
import numpy as np
from numba import types

from . import amx, attention, decode, elementwise, gemv, int4, integer, packed, prefill, qgemm
from .cpu import IsaType
from .attention import ATTEND_BLOCK_MIN_T, attend_cached
from .decode import decode_block
from .elementwise import apply_rotary, gelu_new, layer_norm, rope_into_cache
from .gemv import STREAM_MAX_T, linear_bf16, linear_f16, linear_f32, linear_int4, linear_int8
from .packed import linear_int8_packed, pack_int8

# Weight dtypes of a checkpoint (npz.DTYPES).
DTYPES = ("float32", "bfloat16", "int8", "int4", "float16")
INT4_GROUP = 64  # the group size of converted int4 files (npz.INT4_GROUP): the one warmed up

_HERE = Path(__file__).resolve().parent
_PY = f"py{sys.version_info[0]}{sys.version_info[1]}{getattr(sys, 'abiflags', '')}"  # as in Numba's file names
_STAMP = f"minicodegen-kernels.{_PY}.stamp"
_NUMBA_FILE = re.compile(rf".+\.{re.escape(_PY)}(\.nbi|\.\d+\.nbc)")  # <module>.<function>-<line>.py311[.<n>].nb[ic]


# ---------------------------------------------------------------------------
# The guard against stale code.
# ---------------------------------------------------------------------------


def _fingerprint(package: Path = _HERE) -> str:
    """sha256 of the Numba version and of the sources of the modules in ``package`` (this one's
    folder), all but this one and ``__init__`` (they hold no kernel)."""
    h = hashlib.sha256(numba.__version__.encode())
    for path in sorted(Path(package).glob("*.py")):
        if path.name not in ("__init__.py", "cache.py"):
            h.update(b"\0" + path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def cache_dir() -> str | None:
    """The directory Numba keeps the package's compiled kernels in (one for all its modules), as
    Numba's cache locator chose it for ``decode._decode_block``; None when caching is off."""
    return getattr(getattr(decode._decode_block, "_cache", None), "cache_path", None)


def refresh_cache(directory: str | os.PathLike | None = None) -> list[str]:
    """Delete the package's cached kernels of this Python version in ``directory`` (default: the
    package's Numba cache directory) unless its stamp file holds the current fingerprint of the
    sources; then write the fingerprint.  Returns the names of the files deleted.

    The directory holds only this package's files (Numba names it after the package's path), so
    every ``*.nbi`` / ``*.nbc`` of this Python version in it goes.  An unwritable directory is
    left as it is (Numba does not cache there either)."""
    directory = cache_dir() if directory is None else os.fspath(directory)
    if directory is None:
        return []
    fingerprint = _fingerprint()
    stamp = Path(directory, _STAMP)
    with contextlib.suppress(OSError):
        if stamp.read_text() == fingerprint:
            return []
    deleted = []
    try:
        for entry in os.scandir(directory):
            if _NUMBA_FILE.fullmatch(entry.name):
                with contextlib.suppress(FileNotFoundError):  # (another process was faster)
                    os.remove(entry.path)
                    deleted.append(entry.name)
        tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.tmp")
        tmp.write_text(fingerprint)
        os.replace(tmp, stamp)
    except OSError:
        pass
    return sorted(deleted)


# ---------------------------------------------------------------------------
# Warm-up: steps that run the public functions on tiny inputs.
# ---------------------------------------------------------------------------

_N_OUT, _N_IN = 24, 16
_PACKED_N_IN = 64  # packed int8 weights: n_in of whole AMX tiles, as every CodeGen matrix has


def _weights(dtype: str, n: int = _N_IN) -> np.ndarray:
    """A [n, n] ([24, 16] by default) weight matrix stored as ``dtype`` (bfloat16: uint16 bits;
    int4: the packed codes, [n_out, n / 2])."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((_N_OUT if n == _N_IN else n, n), dtype=np.float32)
    if dtype == "int4":
        return rng.integers(0, 256, (w.shape[0], n // 2), dtype=np.uint8)
    if dtype == "bfloat16":
        return (w.view(np.uint32) >> 16).astype(np.uint16)
    if dtype == "int8":
        return rng.integers(-127, 128, w.shape, dtype=np.int8)
    return w.astype(np.float16) if dtype == "float16" else w


def _linear(dtype: str, T: int, int8_activations: bool = True, n: int = _N_IN, bf16_activations: bool = False) -> None:
    """linear_* for weights of ``dtype`` and T rows of x, without and with a bias (n = 64: the
    shapes that take qgemm._qgemm_vnni)."""
    x = np.random.default_rng(T).standard_normal((T, n), dtype=np.float32)
    W = _weights(dtype, n)
    for b in (None, np.zeros(W.shape[0], np.float32)):
        if dtype == "float32":
            linear_f32(x, W, b)
        elif dtype == "bfloat16" and bf16_activations:
            linear_bf16(x, W, b, bf16_activations=True)
        elif dtype == "bfloat16":
            linear_bf16(x, W, b)
            linear_bf16(x[:, :-1], W[:, :-1], b)  # odd n_in path
        elif dtype == "int8":
            linear_int8(x, W, np.ones(W.shape[0], np.float32), b, int8_activations)
        elif dtype == "int4":
            linear_int4(x, W, _int4_scale(W), b)
        else:
            linear_f16(x, W, b)


def _linear_packed() -> None:
    """linear_int8_packed (int8 weights packed into panels, as the model hands them to the kernels on
    AVX512-VNNI; one kernel for any number of rows), without and with a bias."""
    x = np.random.default_rng(1).standard_normal((2, _PACKED_N_IN), dtype=np.float32)
    Wp = pack_int8(np.resize(_weights("int8"), (_N_OUT, _PACKED_N_IN)))
    for b in (None, np.zeros(_N_OUT, np.float32)):
        linear_int8_packed(x, Wp, np.ones(_N_OUT, np.float32), b)


def _int4_scale(W: np.ndarray) -> np.ndarray:
    """float16 scales of one group of INT4_GROUP weights for the int4 codes W."""
    return np.ones((W.shape[0], 2 * W.shape[1] // INT4_GROUP), np.float16)


def _block(dtype: str, int8_activations: bool = True, pack: bool = False) -> None:
    """The fused decode block (E = 16, 4 heads, n_inner = 32; int4: E = 64, n_inner = 128) with
    weights of ``dtype`` (``pack``: int8 packed into panels, E = 64 as int4: whole AMX tiles)."""
    E, H, n_inner = (64, 4, 128) if dtype == "int4" or pack else (16, 4, 32)
    w = _weights(dtype)

    def mat(n_out, n_in):
        return np.ascontiguousarray(np.resize(w, (n_out, n_in // 2 if dtype == "int4" else n_in)))

    layer = {"ln_1.weight": np.ones(E, np.float32), "ln_1.bias": np.zeros(E, np.float32),
             "attn.qkv_proj.weight": mat(3 * E, E), "attn.out_proj.weight": mat(E, E),
             "mlp.fc_in.weight": mat(n_inner, E), "mlp.fc_in.bias": np.zeros(n_inner, np.float32),
             "mlp.fc_out.weight": mat(E, n_inner), "mlp.fc_out.bias": np.zeros(E, np.float32)}
    if w.dtype == np.int8:
        layer |= {n + ".scale": np.ones(layer[n].shape[0], np.float32) for n in list(layer) if layer[n].ndim == 2}
    if w.dtype == np.uint8:
        layer |= {n + ".scale": _int4_scale(layer[n]) for n in list(layer) if layer[n].ndim == 2}
    if pack:
        layer |= {n: pack_int8(m) for n, m in layer.items() if m.ndim == 2}
    kv = np.zeros((1, H, 2, E // H), np.float32)
    decode_block(np.zeros((1, E), np.float32), layer, 1e-5, np.zeros((1, 2), np.float32), 2, H, kv, kv.copy(), 1,
                 np.ones((1, 1), bool), int8_activations=int8_activations)


def _attention(T: int) -> None:
    """attend_cached with T queries over T keys: a boolean and an additive mask."""
    rng = np.random.default_rng(T)
    q = rng.standard_normal((1, 2, T, 8), dtype=np.float32)
    kc = rng.standard_normal((1, 2, max(T, 4), 8), dtype=np.float32)
    S = max(T, 3)
    attend_cached(q, kc, kc, S, np.ones((1, S), bool))
    attend_cached(q, kc, kc, S, np.zeros((1, S), np.float32))  # additive mask


def _rotary() -> None:
    """apply_rotary on a strided view (as split from the fused projection) and on a contiguous array."""
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((1, 2, 3 * 4 * 8), dtype=np.float32).reshape(1, 2, 4, 3, 8)
    apply_rotary(qkv[:, :, :, 0], rng.standard_normal((1, 2, 4), dtype=np.float32), 4)
    apply_rotary(np.ascontiguousarray(qkv[:, :, :, 0]), rng.standard_normal((1, 2, 4), dtype=np.float32), 4)


def _rope_into_cache() -> None:
    """rope_into_cache of a prompt of 2 tokens, 4 heads of 8."""
    rng = np.random.default_rng(0)
    kv = np.zeros((1, 4, 3, 8), np.float32)
    rope_into_cache(rng.standard_normal((1, 2, 96), dtype=np.float32), rng.standard_normal((1, 2, 4), dtype=np.float32),
                    4, 4, kv, kv.copy(), 1)


_E = 8
_VNNI = packed.INT8_ISA.name == "avx512_vnni"  # (packed int8 weights: this CPU only)
_STEPS: dict[str, Callable[[], object]] = {  # step -> what it runs
    "layer norm": lambda: layer_norm(np.random.default_rng(0).standard_normal((2, _E), dtype=np.float32),
                                     np.ones(_E, np.float32), np.zeros(_E, np.float32), 1e-5),
    "gelu_new": lambda: gelu_new(np.random.default_rng(0).standard_normal((2, _E), dtype=np.float32)),
    "rotary": _rotary,
    "rotary into the cache": _rope_into_cache,
    "attention (decode)": lambda: _attention(1),
    "attention (prompt)": lambda: _attention(ATTEND_BLOCK_MIN_T),
    "linear float32": lambda: (_linear("float32", 1), _linear("float32", STREAM_MAX_T + 1)),
    "decode block float32": lambda: _block("float32"),
    "linear bfloat16 (decode)": lambda: _linear("bfloat16", 1),
    "linear bfloat16 (prompt)": lambda: _linear("bfloat16", STREAM_MAX_T + 1),
    "decode block bfloat16": lambda: _block("bfloat16"),
    "linear int8 (decode)": lambda: _linear("int8", 1),
    "linear int8 (prompt)": lambda: (_linear("int8", STREAM_MAX_T + 1), _linear("int8", STREAM_MAX_T + 1, n=64)),
    "decode block int8": lambda: _block("int8"),
    **({"linear int8 (packed)": _linear_packed, "decode block int8 (packed)": lambda: _block("int8", pack=True)}
       if _VNNI else {}),
    "linear int4 (decode)": lambda: _linear("int4", 1, n=2 * INT4_GROUP),
    "linear int4 (prompt)": lambda: _linear("int4", STREAM_MAX_T + 1, n=2 * INT4_GROUP),
    "decode block int4": lambda: _block("int4"),
    "linear int8, float activations (decode)": lambda: _linear("int8", 1, False),
    "linear int8, float activations (prompt)": lambda: _linear("int8", STREAM_MAX_T + 1, False),
    "decode block int8, float activations": lambda: _block("int8", False),
    "linear bfloat16, bf16 activations (prompt)": lambda: _linear("bfloat16", STREAM_MAX_T + 1, n=64,
                                                                  bf16_activations=True),
    "linear float16": lambda: (_linear("float16", 1), _linear("float16", STREAM_MAX_T + 1)),
}

# The steps a model with weights of each dtype needs.  float16 checkpoints are widened to float32
# when loaded (checkpoint.load_model), so their models run the float32 kernels; linear_f16 (float16
# weights as they are, which no model calls) is warmed only by warmup() for all dtypes, and so are
# the float-activation kernels of int8 weights (Model.int8_activations = "float32") and the
# bf16-activation prompt kernels of bf16 weights (kernels.linear_bf16(..., bf16_activations=True)).
# On AVX512-VNNI a decode step of many rows hands the kernels the int8 matrices packed
# (model.fast_weights): int8 models run the packed steps too, int4 models their int8 head through
# linear int8 (packed).  (A single stream, the model run _model_signatures describes, does not.)
_PACKED = ["linear int8 (packed)", "decode block int8 (packed)"] if _VNNI else []
_COMMON = ["layer norm", "gelu_new", "rotary", "rotary into the cache", "attention (decode)", "attention (prompt)"]
_BY_DTYPE = {
    "float32": ["linear float32", "decode block float32"],
    "bfloat16": ["linear bfloat16 (decode)", "linear bfloat16 (prompt)", "decode block bfloat16"],
    "int8": ["linear int8 (decode)", "linear int8 (prompt)", "decode block int8", *_PACKED],
    "int4": ["linear int4 (decode)", "linear int4 (prompt)", "decode block int4", "linear int8 (decode)",
             *_PACKED[:1]],  # (head: int8)
    "float16": ["linear float32", "decode block float32"],
}


def _steps(dtypes: Sequence[str] | str | None) -> list[str]:
    """The warm-up steps for models with weights of ``dtypes`` (None: every step), each once."""
    if isinstance(dtypes, str):
        dtypes = [dtypes]
    unknown = [d for d in dtypes or () if d not in DTYPES]
    if unknown:
        raise ValueError(f"unknown weight dtype(s) {unknown}; known: {', '.join(DTYPES)}")
    if dtypes is None:
        return list(_STEPS)
    return list(dict.fromkeys(_COMMON + [s for d in dtypes for s in _BY_DTYPE[d]]))


def warmup(dtypes: Sequence[str] | str | None = None) -> list[tuple[str, float]]:
    """Compile, or load from the on-disk cache, every kernel that models with weights of
    ``dtypes`` call ("float32", "bfloat16", "int8", "int4", "float16"; a single name is accepted too;
    None: every kernel, including linear_f16, which no model calls).

    Returns ``[(step, seconds), ...]`` in the order run: the steps are layer norm, gelu_new,
    rotary (also into the cache), attention (decode / prompt), and per dtype linear (decode / prompt) and the fused
    decode block.  The total is ``sum(s for _, s in warmup(...))``.
    """
    done = []
    for name in _steps(dtypes):
        t0 = time.perf_counter()
        _STEPS[name]()
        done.append((name, time.perf_counter() - t0))
    return done


# ---------------------------------------------------------------------------
# Would a model compile?
# ---------------------------------------------------------------------------


def _step_signatures() -> dict[str, list[tuple[Callable, tuple]]]:
    """For each warm-up step, the kernels it calls from Python and the Numba types of what the
    wrappers pass them: inputs read-only, C-contiguous and aligned, outputs writeable, Python ints
    int64, floats float64.  (The kernels these call from compiled code are compiled into them.)
    tests/test_kernels_cache.py checks that these are what the warm-up compiles."""
    f32, i64, f64, none = types.float32, types.int64, types.float64, types.none

    def a(ndim, dtype=f32, readonly=True, layout="C"):
        return types.Array(dtype, ndim, layout, readonly=readonly)

    out1, out2, out3, out4 = (a(n, readonly=False) for n in (1, 2, 3, 4))
    mask = a(2, types.boolean)
    W = {"float32": a(2), "bfloat16": a(2, types.uint16), "int8": a(2, types.int8), "int4": a(2, types.uint8)}
    scale = {"float32": none, "bfloat16": none, "int8": a(1), "int4": a(2, types.uint16)}
    i8, i32 = IsaType(integer.INT8_ISA.name), types.int32
    pk = IsaType(packed.packed_isa(_PACKED_N_IN).name)  # (the packed steps of n_in % 64 == 0: AMX tiles where granted)
    vnni = integer.INT8_ISA.name == "avx512_vnni"  # (then prompts of n_in % 64 == 0 take _qgemm_vnni, or AMX tiles)
    quantize = (integer._quantize_rows, (a(2), a(2, types.int8, readonly=False), out1, a(1, i32, readonly=False)))
    xq_args = (a(2, types.int8), a(1, i32), a(1), W["int8"], a(1))

    def streamed(dt):  # T <= STREAM_MAX_T, without and with a bias
        return [(gemv._gemv, (a(2), W[dt], scale[dt], b, out2, i64)) for b in (none, a(1))]

    def prefill_panels(dt):  # T > STREAM_MAX_T (the bias is always an array)
        return [(prefill._pack_tokens, (a(2), out3, a(1))),
                (prefill._gemm_panels, (a(3), i64, W[dt], scale[dt], a(1), out2, out3, out4))]

    def fused(dt, isa=none):
        w, s = W[dt], scale[dt]
        return [(decode._decode_block, (out2, a(1), a(1), f64, w, s, w, s, w, s, a(1), w, s, a(1),
                                        a(2), i64, i64, i64, out4, out4, i64, mask, i64, isa))]

    def integer_rows(kernel, *extra):  # int8 weights, x quantized per row, without and with a bias
        return [quantize] + [(kernel, (*xq_args, b, out2, *extra)) for b in (none, a(1))]

    def tiles(dt, x_dt, *int8_args):  # x's tiles, W's panels, the kernel without and with a bias
        return [(amx._x_tiles, (a(2, x_dt), a(4, x_dt, readonly=False))),
                (amx._pack_panels, (W[dt], a(3, i32, readonly=False)))] + [
            (amx._gemm_amx, (a(4, x_dt), a(3, i32), *int8_args, b, out2)) for b in (none, a(1))]

    q4 = int4.Q4Type(integer.INT8_ISA.name, INT4_GROUP)
    quantize4 = (int4._quantize_rows4, (a(2), a(2, types.int8, readonly=False), out1, a(2, i32, readonly=False)))

    def int4_rows(kernel, *extra):  # int4 weights: x quantized per row, per-group sums
        return [quantize4] + [(kernel, (a(2, types.int8), a(2, i32), a(1), W["int4"], scale["int4"], b, out2, *extra))
                              for b in (none, a(1))]

    return {
        "layer norm": [(elementwise._layer_norm, (a(2), a(1), a(1), f64, out2))],
        "gelu_new": [(elementwise._gelu_new, (out1, out1))],
        "rotary": [(elementwise._rotary, (x, a(3), i64, out4)) for x in (a(4, layout="A"), a(4))],
        "rotary into the cache": [(elementwise._rope_into_cache, (a(3), a(3), i64, i64, i64, out4, out4, i64, out4))],
        "attention (decode)": [(attention._attend, (a(4), a(4), a(4), i64, mask, b, out3)) for b in (none, a(2))],
        "attention (prompt)": [(attention._attend_prompt, (a(4), a(4), a(4), i64, mask, b, out3, out3, out3))
                               for b in (none, a(2))],
        "linear float32": streamed("float32") + prefill_panels("float32"),
        "decode block float32": fused("float32"),
        "linear bfloat16 (decode)": streamed("bfloat16"),
        "linear bfloat16 (prompt)": prefill_panels("bfloat16"),
        "decode block bfloat16": fused("bfloat16"),
        "linear int8 (decode)": integer_rows(integer._qgemv, i64, i8),
        "linear int8 (prompt)": integer_rows(qgemm._qgemm, i8) + (tiles("int8", types.int8, a(1, i32), a(1), a(1))
                                                                  if amx.AMX_INT8 else
                                                                  integer_rows(qgemm._qgemm_vnni, i8)[1:] if vnni else []),
        "decode block int8": fused("int8", i8),
        **({"linear int8 (packed)": [quantize] + [(packed._qgemm_packed, (a(2, types.int8), a(1, i32), a(1),
                                                                         a(3, i32), a(1), b, out2, pk)) for b in (none, a(1))],
            "decode block int8 (packed)": [(decode._decode_block, (out2, a(1), a(1), f64, *(a(3, i32), a(1)) * 3, a(1),
                                                                   a(3, i32), a(1), a(1), a(2), i64, i64, i64, out4,
                                                                   out4, i64, mask, i64, pk))]} if _VNNI else {}),
        "linear int4 (decode)": int4_rows(int4._q4gemv, i64, q4),
        "linear int4 (prompt)": int4_rows(int4._q4gemm, q4),
        "decode block int4": fused("int4", q4),
        "linear int8, float activations (decode)": streamed("int8"),
        "linear int8, float activations (prompt)": prefill_panels("int8"),
        "decode block int8, float activations": fused("int8"),
        "linear bfloat16, bf16 activations (prompt)": [(qgemm._round_bf16, (a(2), a(2, types.uint16, readonly=False)))] + (
            tiles("bfloat16", types.uint16, none, none, none) if amx.AMX_BF16 else
            [(qgemm._gemm_bf16dp, (a(2, types.uint16), W["bfloat16"], b, out2)) for b in (none, a(1))]
            if qgemm.BF16_ISA.name == "avx512_bf16" else prefill_panels("bfloat16")),
        "linear float16": [(gemv._gemv_f16, (a(2), a(2, types.uint16), b, out2, i64)) for b in (none, a(1))],
    }


def _model_signatures(dtype: str, prompt_tokens: int) -> list[tuple[Callable, tuple]]:
    """The kernels and signatures that ``model.forward`` calls for one prompt of ``prompt_tokens``
    tokens (a batch of one row) and then decode steps, with weights of ``dtype``:
    a subset of the warm-up's (the model passes boolean masks only).
    tests/test_kernels_cache.py checks that a process which ran such a generation compiles
    nothing in the next one."""
    sig = _step_signatures()
    dt = "float32" if dtype == "float16" else dtype  # float16 checkpoints are widened at load
    streamed, panels = sig["linear float32"][:2], sig["linear float32"][2:]  # (float32: up to / over STREAM_MAX_T rows)
    head = streamed if dt == "float32" else sig[f"linear {'int8' if dt == 'int4' else dt} (decode)"]  # (int4 files: int8 head)
    out = sig["layer norm"] + sig[f"decode block {dt}"] + head  # ln_f, the blocks, lm_head
    T = prompt_tokens
    if T > 1:  # the prompt, block by block (boolean mask, no additive bias)
        out += sig["gelu_new"] + sig["rotary into the cache"]
        out += sig["attention (prompt)" if T >= ATTEND_BLOCK_MIN_T else "attention (decode)"][:1]
        if T > STREAM_MAX_T:
            prompt = panels if dt == "float32" else sig[f"linear {dt} (prompt)"]
            if dt == "int8":  # CodeGen's n_in are multiples of 64: AMX or VNNI where they run, else _qgemm
                prompt = prompt[:1] + (prompt[3:] or prompt[1:3])
            out += prompt
    return out


def needs_compiling(dtype: str | None = None, prompt_tokens: int | None = None) -> bool:
    """Whether running a model with weights of ``dtype`` (None: any kernel of the package) may
    have to compile kernels rather than load them from the on-disk cache, i.e. whether
    ``warmup([dtype])`` would compile anything; compiles and loads nothing.

    True on an empty cache (e.g. a fresh NUMBA_CACHE_DIR), and after an edit of a kernel module
    (the import deleted the cached code, see ``refresh_cache``); False once a process ran
    ``warmup([dtype])`` (or ``warmup()``) with the same cache.  A process that only ran a model
    may leave True: one prompt length compiles either the decode or the prompt attention kernel
    (``ATTEND_BLOCK_MIN_T``), and float attention masks come only from callers of attend_cached;
    ``warmup([dtype])`` then loads what is cached and compiles the rest.
    With ``prompt_tokens``: whether a generation from a prompt of that many tokens would compile,
    i.e. only the kernels a model run calls (``_model_signatures``); this is what the command
    line asks before it runs a model, so that it can say that it compiles.
    How: for each kernel and signature of the dtype's warm-up steps (``_step_signatures``), it is
    either loaded in this process already or listed in the kernel's Numba index file (``*.nbi``),
    under the key Numba itself would look up: signature, CPU and bytecode.  Reading the index
    files relies on Numba's cache internals (``Dispatcher._cache``, its index reader and key, as
    in Numba 0.68); where they differ, the answer is True.  A few milliseconds (it reads at most
    one small index file per kernel).
    """
    steps = _steps(dtype)
    if numba.config.DISABLE_JIT:
        return False
    if prompt_tokens is None:
        signatures = _step_signatures()
        wanted = [ks for step in steps for ks in signatures[step]]
    else:
        wanted = [ks for d in ([dtype] if dtype else DTYPES) for ks in _model_signatures(d, prompt_tokens)]
    indexes: dict[int, dict] = {}
    try:
        for kernel, sig in wanted:
            if sig in kernel.overloads:
                continue
            if id(kernel) not in indexes:
                indexes[id(kernel)] = kernel._cache._cache_file._load_index()
            if kernel._cache._index_key(sig, kernel.targetctx.codegen()) not in indexes[id(kernel)]:
                return True
    except (AttributeError, OSError):
        return True
    return False
