"""Numba kernels for the hot loops of CodeGen inference on a CPU, one module per concept.

Every kernel here is a faster way to compute something whose *definition* is a
line of NumPy in ``minicodegen.ops`` (and, in the tests, a float64 closed form).
The kernels never change what is computed, only how fast, so the docstring of
each one names the NumPy expression it must equal, and the docstring of each
module says what its kernels are tested against (in tests/test_kernels_<module>.py).

Modules, each importing only from those above it:

* ``threads``: the thread pool (briefly spinning OpenMP workers), ``set_threads``,
  ``get_threads``.
* ``cpu``: the CPU's instruction sets as Numba compiles for them, the choice of integer / bf16
  dot-product kernels, and ``Isa``, the token a kernel is compiled for one instruction set with.
* ``simd``: LLVM intrinsics and explicit SIMD code: exact bf16 / float16 widening,
  prefetch, a vectorizable ``exp``, the 16-lane dot product ``_dot``, small matrix
  products ``_matmul_rows``, a 16 x 16 transpose.
* ``arrays``: argument checks, read-only marking and scratch memory of the wrappers.
* ``prefill``: ``x @ widen(W).T`` for a prompt with float32 or bf16 weights (and int8 with float32
  activations).
* ``integer``: int8 weights times int8 activations: rows quantized on the fly, integer dot
  products (vpdpbusd / vpmaddwd) for decode steps and the fused block.
* ``int4``: int4 weights (4-bit codes in groups with float16 scales) times int8 activations:
  the group dot product, the prompt kernel, and its steps for integer's decode kernels.
* ``amx``: prompts with int8 weights on AMX tiles (Intel Xeon since Sapphire Rapids, where the
  system grants the tile registers).
* ``qgemm``: prompts on dot-product instructions (int8 panels for AVX512-VNNI, bf16 for
  AVX512-BF16) and ``linear_int8_rows``, the wrapper of the integer kernels (AMX first).
* ``packed``: int8 weights packed once into those panels (``pack_int8``, ``packs``), for decode
  steps of a batch (``linear_int8_packed`` and the fused block's steps; any number of rows).
* ``gemv``: decode matrix-vector products and the public ``linear*`` functions.
* ``attention``: ``attend_cached``, softmax attention over the KV cache (decode and prompt).
* ``elementwise``: ``layer_norm``, ``gelu_new``, ``apply_rotary``, ``rope_into_cache``.
* ``decode``: a decode step of whole blocks fused (``decode_layers``, ``decode_block``).
* ``cache``: the on-disk compile cache and its guard against stale code, ``warmup``,
  ``needs_compiling``.

Why kernels at all?

* Decoding one token is a chain of matrix-*vector* products: every weight is
  read from memory once per token and used for a single multiply-add.  The speed
  limit is memory bandwidth, so the kernel must (1) read each weight exactly
  once, (2) keep both cores streaming, and (3) do its arithmetic fast enough to
  keep up with memory.  Storing weights in bf16 or int8 halves or quarters the
  bytes to read; the kernels widen them to float32 *in registers*, so no float32
  copy of the matrix is ever written to memory (``gemv``).
* A decode step is also many small steps (10 per layer); launched one by one
  from Python, they cost a quarter of an int8 step.  ``decode_layers`` runs
  the blocks of a step with one call each, each block in three parallel loops
  (``decode``).
* Reading a prompt (prefill, T = hundreds of tokens) is a matrix-*matrix*
  product: compute-bound.  ``prefill._prefill_linear`` widens (bf16, int8) or
  copies (float32) panels of 128 rows into cache-sized float32 blocks and
  multiplies them with SIMD code of its own, as fast as BLAS sgemm here; BLAS
  is not used: unless minicodegen was imported before NumPy, its threads spin
  on the cores after each call and slow the Numba kernels in between
  (``gemv.linear_f32``).  (It also replaced
  float32 tiles of up to 32 MB fed to BLAS: about 25 MiB less peak RSS for the
  350M shape.)
  int8 weights multiply rows quantized to 8 bits with integer dot products (``qgemm``), on the
  AMX tile unit where the CPU has one (``amx``: 16,384 multiply-adds of bytes per instruction).
  Attention over a prompt runs in blocks of 4 queries with explicit SIMD code
  (``attention._attend_prompt``), everything in cache.
* Element-wise ops (layer norm, gelu, rotary) are one pass over memory here
  instead of NumPy's chain of temporaries (``elementwise``).

Conventions (shared with ``minicodegen.ops`` and ``minicodegen.model``):

* A linear layer stores ``W [n_out, n_in]`` like PyTorch and computes
  ``y = x @ W.T + b``.
* bf16 weights are ``uint16`` arrays holding the bf16 bit patterns.  Widening is
  exact: ``float32 = (uint32(u16) << 16) viewed as float32``.  float16 weights
  (``np.float16``) are widened exactly too.
* int8 weights are ``Wq int8 [n_out, n_in]`` plus ``scale float32 [n_out]``
  (symmetric, per output channel): ``y = (x @ Wq.T) * scale + b``, which equals
  ``x @ (Wq * scale[:, None]).T + b`` up to float32 rounding.  On AVX512-VNNI a decode step
  of a batch hands the kernels the same weights packed (``pack_int8``: int32
  ``[n_out / 64, n_in / 4, 64]``).
* Weights may be read-only (memory-mapped) or unaligned.  The public wrappers
  mark every input read-only before calling a kernel, so one compiled
  specialization serves both ordinary and memory-mapped arrays.

Floating point: the matrix-vector dot products are spelled out as SIMD code
(``simd._dot``: four accumulators of 16 lanes, fused multiply-add, a fixed order
of additions; see the comment above it).  The other loops with sums (attention,
layer norm) use ``fastmath={'reassoc', 'contract'}`` (``simd._FM``): ``reassoc``
lets LLVM keep several partial sums in SIMD registers (without it a float
reduction cannot be vectorized: the additions would have to happen in source
order); ``contract`` allows fused multiply-add.  Both only change the rounding
of a sum, and several partial sums are if anything *more* accurate than one
running sum.  No other fast-math flag is used (no ``nnan``/``ninf``:
masked attention scores are ``-inf`` on purpose).  ``error_model="numpy"``
gives IEEE division (x / 0 = inf, as NumPy) instead of Python's
ZeroDivisionError check, which would also block vectorization.  ``exp`` is
computed by ``simd._exp_f32`` (range reduction + polynomial, <= 1.2 ulp) because
libm's exp/tanh are scalar calls LLVM cannot vectorize.

Threads: ``set_threads(n)`` (default: ``NUMBA_NUM_THREADS``, i.e. all cores);
idle workers spin for some microseconds, then sleep (see
``threads._start_thread_pool``).
Compilation: ``cache=True`` writes machine code to this package's Numba cache
directory, so the compile cost (see ``warmup()``) is paid once per machine;
``needs_compiling(dtype)`` says whether it is still to be paid.  Importing the
package deletes cached code compiled from other sources (``cache.refresh_cache``:
Numba itself notices only edits of a kernel's own module).
"""

from __future__ import annotations

# The modules in the order they build on each other; threads first: importing it starts the pool.
from .threads import get_threads, set_threads  # noqa: I001
from .arrays import release_scratch
from .packed import linear_int8_packed, pack_int8, packs
from .gemv import (PREFETCH_BF16, PREFETCH_F32, PREFETCH_INT8, STREAM_MAX_T, linear, linear_bf16, linear_f16,
                   linear_f32, linear_int4, linear_int8)
from .attention import ATTEND_BLOCK_MIN_T, attend_cached
from .elementwise import apply_rotary, gelu_new, layer_norm, rope_into_cache
from .decode import decode_block, decode_layers, decode_weights
from .cache import DTYPES, cache_dir, needs_compiling, refresh_cache, warmup

__all__ = [
    "linear",
    "linear_f32",
    "linear_bf16",
    "linear_int4",
    "linear_int8",
    "linear_f16",
    "linear_int8_packed",
    "pack_int8",
    "packs",
    "attend_cached",
    "layer_norm",
    "gelu_new",
    "apply_rotary",
    "rope_into_cache",
    "decode_block",
    "decode_layers",
    "decode_weights",
    "set_threads",
    "get_threads",
    "warmup",
    "needs_compiling",
    "cache_dir",
    "release_scratch",
    "STREAM_MAX_T",
    "ATTEND_BLOCK_MIN_T",
    "PREFETCH_F32",
    "PREFETCH_BF16",
    "PREFETCH_INT8",
    "DTYPES",
]

refresh_cache()  # before any kernel is compiled or loaded in this process
