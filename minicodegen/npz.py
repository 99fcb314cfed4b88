"""The minicodegen ``.npz``: one self-contained file per model, and conversion into it.

``convert`` turns a checkpoint directory (any layout minicodegen.hubfiles reads), a ``.npz`` or a
hub id into one self-contained ``.npz``::

    __config__                  uint8   the config.json (JSON text)
    __meta__                    uint8   format, version, dtype note, source (JSON text)
    __tokenizer__/vocab.json    uint8   raw tokenizer files: vocab.json, merges.txt,
    __tokenizer__/merges.txt            added_tokens.json, tokenizer.json (those present)
    transformer.wte.weight      weights under their checkpoint names:
    transformer.h.0.ln_1.weight   float32, float16, uint16 (= bfloat16 bit patterns), or int8
    ...                           with a float32 ``<name>.scale`` [n_out] beside it, or uint8
    lm_head.bias                  (int4: two 4-bit codes a byte, [n_out, n_in / 2]) with a float16
                                  ``<name>.scale`` [n_out, n_in / 64] beside it (see quantize_int4;
                                  an int4 file keeps wte and lm_head int8, INT4_KEEP_INT8)

Members are stored uncompressed with their data 64-byte aligned, so ``read_npz`` maps the file
and hands out arrays that are views of its pages: loading reads no weight until it is used.
``np.load(path)`` also reads the file (with ``allow_pickle=False``), which is handy for poking.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import mmap
import os
import secrets
import struct
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .hub import BYTES_PER_WEIGHT, check_disk_space, download, is_hub_id, local_path, split_revision
from .hubfiles import (
    WEIGHT_FILES,
    check_crc,
    checked_weights,
    map_file,
    member_start,
    open_zip,
    read_config,
    read_tokenizer_files,
    read_weight_file,
)
from . import ops
from .model import Config, config_from_dict, config_to_dict, dequantize

DTYPES = ("float32", "float16", "bfloat16", "int8", "int4")
INT4_GROUP = 64  # weights per int4 scale (tools/int4_layouts.py measured 32, 64 and 128)
# Matrices an int4 file keeps in int8: the token embedding and the output head.  On tiny (whose
# tied embedding is 84% of its weights) int4 everywhere moved the validation loss by +0.80%, int4
# with the embedding in int8 by +0.10% (tools/accuracy.py); at 16B they are 4% of the weights.
INT4_KEEP_INT8 = ("transformer.wte.weight", "lm_head.weight")
TINY = Path(__file__).parent / "data" / "tiny.npz"  # the demo model shipped in the package ("tiny")
NPZ_FORMAT = "minicodegen.npz"
NPZ_VERSION = 1
ALIGN = 64  # bytes: where each .npz member's data starts


# ----------------------------------------------------------------------------- the .npz: reading


def read_npz(path: str | os.PathLike, verify: bool = False, mapped: bool = True) -> tuple[Config, dict[str, np.ndarray], dict[str, bytes]]:
    """(config, weights, raw tokenizer files) of a minicodegen ``.npz``, weights memory-mapped.

    Each member's data offset is computed from its zip local header and .npy header, and the
    array is a read-only view of the mapped file: nothing is read until used. Object arrays are
    refused (``allow_pickle=False``). ``verify=True`` also checks every member's CRC (reads all).
    ``mapped=False`` reads every array into memory of its own instead (NumPy backs large arrays
    with huge pages where the system allows, which makes streaming them faster; see load_model).
    """
    path = Path(path)
    infos = open_zip(path, ".npz")
    mm = map_file(path)
    arrays = {}
    with contextlib.nullcontext() if mapped else open(path, "rb") as fh:
        for info in infos:
            if not info.filename.endswith(".npy"):
                raise ValueError(f"{path}: member {info.filename!r} is not a .npy array")
            arrays[info.filename[: -len(".npy")]] = _npy_member(mm, info, path, verify, fh)
    if "__config__" not in arrays:
        raise ValueError(f"{path}: not a minicodegen .npz (no __config__ member); make one with `minicodegen convert`")
    meta = _json_member(arrays.pop("__meta__", np.frombuffer(b"{}", np.uint8)), path, "__meta__")
    version = meta.get("version", NPZ_VERSION)
    if meta.get("format", NPZ_FORMAT) != NPZ_FORMAT or not isinstance(version, int) or version > NPZ_VERSION:
        raise ValueError(f"{path}: format {meta.get('format')} version {meta.get('version')} is not supported")
    cfg = config_from_dict(_json_member(arrays.pop("__config__"), path, "__config__"), f"{path}:__config__")
    tok = {k.split("/", 1)[1]: arrays.pop(k).tobytes() for k in list(arrays) if k.startswith("__tokenizer__/")}
    return cfg, arrays, tok


def _npy_member(mm: mmap.mmap, info: zipfile.ZipInfo, path: Path, verify: bool, fh: Any = None) -> np.ndarray:
    """The array stored in the zip member ``info``: a view of the mapped file, or (``fh``, the
    file open for reading) a new array read from it."""
    name = info.filename
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"{path}: member {name!r} is compressed and cannot be memory-mapped; convert the checkpoint again")
    start = member_start(mm, info, path)
    if verify:
        check_crc(mm, start, info, path)
    fp = io.BytesIO(mm[start : start + min(info.file_size, 1 << 16)])
    try:
        version = np.lib.format.read_magic(fp)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f".npy version {version} is not supported")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fp)
    except (ValueError, SyntaxError, EOFError, struct.error) as e:
        raise ValueError(f"{path}: member {name!r}: corrupted .npy header ({e})") from None
    if dtype.hasobject:
        raise ValueError(f"{path}: member {name!r} holds Python objects: refused (allow_pickle=False)")
    offset, count = start + fp.tell(), math.prod(shape)
    if fp.tell() + count * dtype.itemsize > info.file_size:
        raise ValueError(f"{path}: member {name!r} is truncated: shape {shape} of {dtype} does not fit")
    if count == 0:
        return np.zeros(shape, dtype)
    if fh is None:
        return np.frombuffer(mm, dtype, count, offset).reshape(shape, order="F" if fortran else "C")
    arr = np.empty(shape, dtype, order="F" if fortran else "C")
    fh.seek(offset)
    if fh.readinto(memoryview(arr).cast("B")) != arr.nbytes:
        raise ValueError(f"{path}: member {name!r} is truncated")
    arr.flags.writeable = False  # like the mapped arrays: weights are not changed by accident
    return arr


def _json_member(arr: np.ndarray, path: Path, name: str) -> dict[str, Any]:
    try:
        d = json.loads(arr.tobytes())
        assert isinstance(d, dict)
        return d
    except (UnicodeDecodeError, json.JSONDecodeError, AssertionError):
        raise ValueError(f"{path}: member {name!r} is not a JSON object (corrupted)") from None


# ----------------------------------------------------------------------------- a .npz or a checkpoint directory


def read_checkpoint(path: str | os.PathLike, mapped: bool = True) -> tuple[Config, dict[str, np.ndarray], dict[str, bytes]]:
    """(config, weights as stored, raw tokenizer files) of a checkpoint directory or a ``.npz``.

    Weights keep their stored dtype (float16 stays float16, bfloat16 is uint16) and are mapped
    from the files, not read (``mapped=False``: a ``.npz`` is read into memory, see read_npz).
    """
    path = Path(path)
    if path.suffix == ".npz" and path.is_file():
        return read_npz(path, mapped=mapped)
    if not path.is_dir():
        raise ValueError(f"{path}: not a checkpoint directory or a .npz file")
    cfg = read_config(path / "config.json")
    found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
    if not found:
        raise ValueError(f"{path}: no weights found (expected one of {', '.join(WEIGHT_FILES)})")
    return cfg, read_weight_file(found[0]), read_tokenizer_files(path)


# ----------------------------------------------------------------------------- the .npz: writing


@contextmanager
def atomic_output(out: Path, force: bool = False) -> Iterator[BinaryIO]:
    """A file to write ``out`` through: a temporary file beside it, synced, then renamed over it.

    If the block fails (or the process dies), ``out`` is untouched: the rename never happens.
    """
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists (pass --force / force=True to overwrite it)")
    tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if out.exists() and not force:
            raise FileExistsError(f"{out} appeared while it was being written; not overwritten")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(out.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _npy_header(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(arr))
    return buf.getvalue()


def _write_member(zf: zipfile.ZipFile, f: BinaryIO, name: str, arr: np.ndarray) -> None:
    """Appends ``arr`` as ``name.npy``, stored, its data starting on an ALIGN-byte boundary.

    The .npy header is a multiple of 64 bytes long, so the local zip header is padded (with an
    extra field) to end on a 64-byte boundary.
    """
    arr = np.ascontiguousarray(arr)
    header = _npy_header(arr)
    info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = len(header) + arr.nbytes
    zip64 = info.file_size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own rule; adds a 20-byte extra field
    used = f.tell() + 30 + len(info.filename.encode()) + (20 if zip64 else 0) + 4
    pad = -used % ALIGN
    info.extra = struct.pack("<HH", 0xD935, pad) + bytes(pad)  # 0xD935: the id zipalign uses for padding
    with zf.open(info, "w", force_zip64=zip64) as w:
        w.write(header)
        w.write(memoryview(arr.reshape(-1)).cast("B"))


def write_npz(
    out: str | os.PathLike,
    cfg: Config,
    weights: dict[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
    tokenizer_files: dict[str, bytes] | None = None,
    meta: dict[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Writes a minicodegen ``.npz`` atomically; ``weights`` are already in their stored dtype."""
    out = Path(out)
    meta = {"format": NPZ_FORMAT, "version": NPZ_VERSION, "dtype": "float32", **(meta or {})}
    items = weights.items() if isinstance(weights, dict) else weights
    with atomic_output(out, force) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        _write_member(zf, f, "__config__", _text(json.dumps(config_to_dict(cfg), indent=2)))
        _write_member(zf, f, "__meta__", _text(json.dumps(meta, indent=2)))
        for name, data in (tokenizer_files or {}).items():
            _write_member(zf, f, f"__tokenizer__/{name}", np.frombuffer(data, np.uint8))
        for name, arr in items:
            _write_member(zf, f, name, arr)
    return out


def _text(s: str) -> np.ndarray:
    return np.frombuffer(s.encode(), np.uint8)


# ----------------------------------------------------------------------------- conversion

_META_NOTES = {
    "float32": "weights float32",
    "float16": "2-D weights float16, 1-D (norms, biases) float32; loading widens float16 to float32",
    "bfloat16": "2-D weights stored as uint16 holding bfloat16 bit patterns (the high half of a float32); "
    "1-D (norms, biases) float32",
    "int8": "2-D weights int8 with a float32 <name>.scale [n_out]: W = q * scale[:, None] (symmetric, per output "
    "row; per token row for wte); 1-D (norms, biases) float32",
    "int4": f"2-D weights as 4-bit codes q + 8 packed two to a byte (uint8 [n_out, n_in / 2]; in each group of "
    f"{INT4_GROUP} weights along n_in, byte j holds weight j in its low nibble and weight j + {INT4_GROUP // 2} in its "
    f"high nibble) with a float16 <name>.scale [n_out, n_in / {INT4_GROUP}]: W = q * scale of the group, q in -8..7; "
    "the token embedding and lm_head int8 as in int8 files; 1-D (norms, biases) float32",
}


def to_bfloat16(w: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """float -> bfloat16 bit patterns (uint16), rounding to nearest even; NaN stays NaN.

    The high half of the float32, plus 0x7FFF and the lowest kept bit (round half to even).
    Done ``chunk`` elements at a time to bound memory.
    """
    flat = np.asarray(w).reshape(-1)
    out = np.empty(flat.size, np.uint16)
    for i in range(0, flat.size, chunk):
        x = np.ascontiguousarray(flat[i : i + chunk], dtype=np.float32)
        bits = x.view(np.uint32)
        rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
        out[i : i + chunk] = np.where(np.isnan(x), np.uint32(0x7FC0), rounded)
    return out.reshape(np.shape(w))


def _rows_f32(w: np.ndarray, scale: np.ndarray | None, r: int, chunk: int) -> np.ndarray:
    """Rows r .. r + chunk of the float32 matrix the stored ``w`` (and ``scale``) stand for."""
    return dequantize(w[r : r + chunk], None if scale is None else scale[r : r + chunk])


def quantize_int8(w: np.ndarray, chunk: int = 4096, scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: (q int8 [n_out, n_in], scale float32 [n_out]), w ≈ q * scale[:, None].

    scale = max|row| / 127 (0 for an all-zero row).  ``w`` is as stored (any dtype
    ``model.dequantize`` reads, with ``scale``); done ``chunk`` rows at a time to bound memory.
    """
    q = np.empty(w.shape, np.int8)
    out = np.empty(w.shape[0], np.float32)
    for r in range(0, w.shape[0], chunk):
        rows = _rows_f32(w, scale, r, chunk)
        s = np.abs(rows).max(axis=1) / np.float32(127)
        q[r : r + chunk] = np.clip(np.rint(rows / np.where(s > 0, s, 1)[:, None]), -127, 127)
        out[r : r + chunk] = s
    return q, out


def quantize_int4(w: np.ndarray, group: int = INT4_GROUP, chunk: int = 1024, name: str = "weight",
                  scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Group-wise int4: (codes packed uint8 [n_out, n_in / 2], scale float16 [n_out, n_in / group]).

    In each group the weight of largest magnitude m gets q = -8 exactly: scale = m / -8 (rounded
    to float16 first), q = clip(rint(w / scale), -8, 7), so the other sign reaches 7/8 of |m|
    (16 levels rather than 15; llama.cpp's q4_0 does the same).  Packed by ``ops.pack_int4``.
    ``w`` is as stored (any dtype ``model.dequantize`` reads, with ``scale``); done ``chunk`` rows
    at a time, so memory stays bounded whatever the size of ``w``.

    >>> p, s = quantize_int4(np.array([[0.5, -1.0, 0.25, 0.0]], np.float32), group=4)
    >>> s, ops.unpack_int4(p, 4)
    (array([[0.125]], dtype=float16), array([[ 4, -8,  2,  0]], dtype=int8))
    """
    n_out, n_in = w.shape
    if group <= 0 or group % 2 or n_in % group:
        raise ValueError(f"{name}: an int4 group of {group} weights does not divide n_in={n_in} (or is odd)")
    packed = np.empty((n_out, n_in // 2), np.uint8)
    out = np.empty((n_out, n_in // group), np.float16)
    for r in range(0, n_out, chunk):
        g = _rows_f32(w, scale, r, chunk).reshape(-1, n_in // group, group)
        if not np.isfinite(g).all():
            raise ValueError(f"{name}: non-finite values in rows {r}..{r + len(g) - 1}; cannot quantize to int4")
        m = np.take_along_axis(g, np.abs(g).argmax(axis=2)[..., None], axis=2)[..., 0]
        with np.errstate(over="ignore"):
            d = (m / np.float32(-8)).astype(np.float16)
        if np.isinf(d).any():
            raise ValueError(f"{name}: values beyond the float16 range of int4 scales (max |w| = {np.abs(g).max():.4g})")
        d32 = d.astype(np.float32)[..., None]
        q = np.clip(np.rint(g / np.where(d32 != 0, d32, np.float32(1))), -8, 7).astype(np.int8)
        packed[r : r + chunk] = ops.pack_int4(q.reshape(len(g), n_in), group)
        out[r : r + chunk] = d
    return packed, out


def encode(name: str, w: np.ndarray, dtype: str, scale: np.ndarray | None = None) -> list[tuple[str, np.ndarray]]:
    """The .npz member(s) for weight ``name`` stored as ``dtype`` (1-D tensors stay float32).

    ``w`` is as read (float32, float16, uint16 = bfloat16, or int8 with its ``scale``).
    """
    if w.ndim != 2 or dtype == "float32":
        return [(name, dequantize(w, scale))]
    if dtype == "int4" and name in INT4_KEEP_INT8:
        dtype = "int8"
    if dtype == "int4":
        q, s = (w, scale) if w.dtype == np.uint8 else quantize_int4(w, name=name, scale=scale)
        return [(name, q), (name + ".scale", s)]
    if dtype == "int8":
        q, s = (w, scale) if w.dtype == np.int8 else quantize_int8(w, scale=scale)
        return [(name, q), (name + ".scale", s)]
    if dtype == "bfloat16":
        if w.dtype == np.uint16:
            return [(name, w)]
        return [(name, to_bfloat16(w if w.dtype.kind == "f" else dequantize(w, scale)))]
    if w.dtype == np.float16:
        return [(name, w)]
    w32 = dequantize(w, scale)
    h = w32.astype(np.float16)
    if np.isinf(h).any() and not np.isinf(w32).any():
        raise ValueError(f"{name}: values beyond the float16 range (max |w| = {np.abs(w32).max():.4g}); use bfloat16")
    return [(name, h)]


def _encoded(weights: dict[str, np.ndarray], dtype: str, log: Callable[[str], None]) -> Iterator[tuple[str, np.ndarray]]:
    names = [n for n in weights if not n.endswith(".scale")]
    for i, name in enumerate(names):
        log(f"[{i + 1}/{len(names)}] {name}")
        yield from encode(name, weights[name], dtype, weights.get(name + ".scale"))


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    dtype: str = "float32",
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Converts a checkpoint directory, a ``.npz`` or a hub id into one ``.npz`` at ``out``.

    ``dtype`` is how the 2-D weights are stored (see DTYPES); norms and biases stay float32.
    Written atomically: an existing ``out`` is kept unless ``force``, and a failed or killed
    conversion leaves no ``out`` behind. ``log`` gets one line per tensor.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"{out}: the output file name must end in .npz")
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists (pass --force / force=True to overwrite it)")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out.parent}: no such directory for the output")
    path = _local_source(src, (out, dtype))
    cfg, weights, tok = read_checkpoint(path)
    weights = checked_weights(cfg, weights, str(path))
    check_disk_space([(out.parent, converted_size(weights, dtype), f"{path.name} converted to {dtype}")])
    meta = {"dtype": dtype, "note": _META_NOTES[dtype], "source": str(src)}
    return write_npz(out, cfg, _encoded(weights, dtype, log or (lambda _: None)), tok, meta, force)


def converted_size(weights: dict[str, np.ndarray], dtype: str) -> int:
    """About the bytes of the weights stored as ``dtype`` (1-D ones stay float32)."""
    weights = {k: w for k, w in weights.items() if not k.endswith(".scale")}
    n2 = sum(w.size * (2 if w.dtype == np.uint8 else 1) for w in weights.values() if w.ndim == 2)
    return int(n2 * BYTES_PER_WEIGHT[dtype]) + sum(4 * w.size for w in weights.values() if w.ndim != 2)


def convert_weights(weights: dict[str, np.ndarray], dtype: str, log: Callable[[str], None] | None = None) -> dict[str, np.ndarray]:
    """The checked ``weights`` (as read, mapped from their files) stored as ``dtype`` in memory,
    one tensor at a time: peak memory is the result plus about one tensor in float32."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return dict(_encoded(weights, dtype, log or (lambda _: None)))


def _local_source(src: str | os.PathLike, output: tuple[Path, str] | None = None) -> Path:
    """A local checkpoint directory or .npz for ``src`` ("tiny": the shipped demo model; a hub id is
    downloaded, not converted; ``output``, the file and dtype it is for, counts in the check of
    disk space)."""
    if str(src) == "tiny":
        return TINY
    path = Path(src).expanduser()
    if path.exists() or not is_hub_id(str(src)):
        return local_path(path, str(src))
    repo, revision = split_revision(str(src))
    return download(repo, revision, output)

