"""What the CPU can do, as Numba compiles for it, and which dot-product instructions the kernels
use: ``target_features``, ``int8_dot``, ``bf16_dot``, and ``Isa``, the token a kernel takes to
be compiled for one instruction set.

Numba compiles for the machine it runs on, unless the environment names another CPU:
``NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=+avx2,+fma,+f16c`` compiles for a laptop without
AVX-512 on any machine that runs AVX2 (the tests do this, to run the fallbacks).  The choice
here reads the same source, so it never asks for an instruction the compiled code may not use.

Integer dot products (int8 weights; see ``integer``), best first:

* ``avx512_vnni``: ``vpdpbusd`` on 512-bit registers, 64 multiply-adds of bytes per instruction
  (Intel Xeon since Cascade Lake, AMD EPYC since Zen 4);
* ``avx_vnni``: the same instruction on 256-bit registers (Intel laptops since Alder Lake, which
  have no AVX-512);
* ``widen``: bytes widened to 16 bits and multiplied in pairs (``vpmaddwd``), everywhere else.

bf16 dot products (bf16 weights; see ``bf16dot``): ``avx512_bf16`` (``vdpbf16ps``, two products
per lane and instruction: AMD Zen 4, Intel Sapphire Rapids) or ``widen`` (bf16 widened to float32,
exact, as before).

Tile matrix products (``amx``): ``amx_int8`` / ``amx_bf16`` where the CPU has AMX-TILE and
AMX-INT8 / AMX-BF16 (Intel Xeon since Sapphire Rapids; no AMD CPU so far) *and* the operating
system lets the process use the tile registers: Linux hands them out on request
(``arch_prctl(ARCH_REQ_XCOMP_PERM)``, since 5.16), and a tile instruction without that permission
kills the process (SIGILL).  ``request_amx`` asks once per process; ``amx_int8`` and ``amx_bf16``
are true only when the request succeeded.

Tested in tests/test_kernels_integer.py and tests/test_kernels_bf16dot.py (the choice for given
feature strings, and the kernels of every choice against their NumPy definitions).
"""

from __future__ import annotations

import ctypes
import functools
import platform
import sys

from llvmlite import binding as llvm
from numba import types
from numba.core import config
from numba.extending import NativeValue, models, register_model, typeof_impl, unbox

INT8_DOTS = ("avx512_vnni", "avx_vnni", "widen")
BF16_DOTS = ("avx512_bf16", "widen")
TILE_DOTS = ("amx_int8",)  # int8 weights packed into panels, on AMX tiles (packed.py, amx.py)


def target_features(cpu_name: str | None = None, cpu_features: str | None = None) -> set[str]:
    """The LLVM feature names (``avx512vnni``, ``avx2``, ...) of the CPU Numba compiles for.

    By default Numba's own settings: NUMBA_CPU_FEATURES when set; the host's features when
    neither NUMBA_CPU_NAME nor NUMBA_CPU_FEATURES is set (or the name is ``host``).  A CPU named
    without features gets an empty set here (LLVM's defaults for that name are not known to
    Python), so only the ``widen`` kernels are used."""
    name = config.CPU_NAME if cpu_name is None else cpu_name
    feats = config.CPU_FEATURES if cpu_features is None else cpu_features
    if feats is None or feats == "":
        if name not in (None, "", "host"):
            return set()
        feats = _host_features()
    return {f[1:] for f in feats.split(",") if f.startswith("+")}


@functools.cache
def _host_features() -> str:
    """LLVM's feature string of this machine's CPU (read once: 0.3 ms a read)."""
    return llvm.get_host_cpu_features().flatten()


def int8_dot(features: set[str] | None = None) -> str:
    """The integer dot product for int8 weights on a CPU with ``features`` (default: the target's)."""
    f = target_features() if features is None else features
    if {"avx512vnni", "avx512bw", "avx512f"} <= f:
        return "avx512_vnni"
    if "avxvnni" in f and "avx2" in f:
        return "avx_vnni"
    return "widen"


def bf16_dot(features: set[str] | None = None) -> str:
    """The bf16 dot product for bf16 weights on a CPU with ``features`` (default: the target's)."""
    f = target_features() if features is None else features
    return "avx512_bf16" if {"avx512bf16", "avx512bw", "avx512f"} <= f else "widen"


_SYS_ARCH_PRCTL = 158  # x86-64 Linux system call number
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18  # the state of the eight tile registers (8 KB)


@functools.cache
def request_amx() -> bool:
    """Ask Linux for the tile registers for this process (all its threads, those started later
    too); True when granted.  False on other systems, other machines, and older kernels."""
    if not (sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


def amx_int8(features: set[str] | None = None) -> bool:
    """Whether the int8 prompt kernels may use AMX tiles on a CPU with ``features`` (default: the
    target's, and then only if ``request_amx()`` succeeds)."""
    return _amx("amx-int8", features)


def amx_bf16(features: set[str] | None = None) -> bool:
    """As amx_int8, for the bf16 prompt kernel (AMX-BF16)."""
    return _amx("amx-bf16", features)


def _amx(unit: str, features: set[str] | None) -> bool:
    f = target_features() if features is None else features
    return {"amx-tile", unit} <= f and (features is not None or request_amx())


# ---------------------------------------------------------------------------
# Isa: a kernel argument whose Numba type is the name of an instruction set, so that a kernel
# called with Isa("avx512_vnni") and with Isa("widen") compiles (and caches) one specialization
# for each; the intrinsics read the name from the type at compile time.  Its value holds nothing.
# ---------------------------------------------------------------------------


class Isa:
    """An instruction set to compile a kernel for (one of INT8_DOTS, BF16_DOTS or TILE_DOTS)."""

    def __init__(self, name: str) -> None:
        if name not in INT8_DOTS + BF16_DOTS + TILE_DOTS:
            known = INT8_DOTS + BF16_DOTS[:1] + TILE_DOTS
            raise ValueError(f"unknown instruction set {name!r}; known: {', '.join(known)}")
        self.name = name

    def __repr__(self) -> str:
        return f"Isa({self.name!r})"


class IsaType(types.Dummy):
    def __init__(self, isa: str) -> None:
        self.isa = isa
        super().__init__(name=f"Isa({isa})")


@typeof_impl.register(Isa)
def _typeof_isa(val, c):
    return IsaType(val.name)


register_model(IsaType)(models.OpaqueModel)


@unbox(IsaType)
def _unbox_isa(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())
