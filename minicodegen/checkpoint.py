"""Checkpoints: hub files read without torch, converted to one ``.npz``, loaded memory-mapped.

Three layouts come from the Hugging Face hub, all read here with NumPy alone:

- ``pytorch_model.bin``: what ``torch.save`` writes, a zip holding ``<dir>/data.pkl`` (a pickle of
  the state dict) and ``<dir>/data/<key>`` (the raw bytes of each storage). The pickle is read by
  an unpickler that knows only the handful of globals a state dict needs and refuses every other
  one, so a malicious file cannot run code. Tensors become NumPy views of the file's pages.
- ``model.safetensors``: 8 bytes of header length, a JSON header, then the raw tensors.
- sharded checkpoints: ``*.index.json`` maps each tensor name to the shard file that holds it.

``convert`` turns any of them (or a hub id) into one self-contained ``.npz``::

    __config__                  uint8   the config.json (JSON text)
    __meta__                    uint8   format, version, dtype note, source (JSON text)
    __tokenizer__/vocab.json    uint8   raw tokenizer files: vocab.json, merges.txt,
    __tokenizer__/merges.txt            added_tokens.json, tokenizer.json (those present)
    transformer.wte.weight      weights under their checkpoint names:
    transformer.h.0.ln_1.weight   float32, float16, uint16 (= bfloat16 bit patterns), or int8
    ...                           with a float32 ``<name>.scale`` [n_out] beside it
    lm_head.bias

Members are stored uncompressed with their data 64-byte aligned, so ``read_npz`` maps the file
and hands out arrays that are views of its pages: loading reads no weight until it is used.
``np.load(path)`` also reads the file (with ``allow_pickle=False``), which is handy for poking.

Hub ids are downloaded with ``huggingface_hub`` (its cache, resume and progress bar; ``HF_ENDPOINT``
is honoured) and converted once to ``<cache>/<org>--<name>.npz`` (float32), where ``<cache>`` is
``$MINICODEGEN_CACHE``, else ``$XDG_CACHE_HOME/minicodegen``, else ``~/.cache/minicodegen``.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import math
import mmap
import os
import pickle
import re
import secrets
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .model import Config, Model, check_weights, config_from_dict, config_to_dict, dequantize

DTYPES = ("float32", "float16", "bfloat16", "int8")
TOKENIZER_FILES = ("vocab.json", "merges.txt", "added_tokens.json", "tokenizer.json")
# Looked for in this order in a checkpoint directory; the first one present is read.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
NPZ_FORMAT = "minicodegen.npz"
NPZ_VERSION = 1
ALIGN = 64  # bytes: where each .npz member's data starts
TINY = Path(__file__).parent / "data" / "tiny.npz"


class HubError(RuntimeError):
    """A hub id could not be turned into a local checkpoint (not found, no weights, ...)."""


class HubUnreachableError(HubError):
    """The hub (``HF_ENDPOINT``) could not be reached and the files are not in the local cache."""


# ----------------------------------------------------------------------------- files and zip members


def _map(path: Path) -> mmap.mmap:
    """The whole file, mapped read-only."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ValueError(f"{path}: empty file")
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _open_zip(path: Path, what: str) -> list[zipfile.ZipInfo]:
    """The members of the zip file ``path``, or a ValueError saying it is truncated or corrupted."""
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: not a valid {what}: truncated or corrupted zip ({e})") from None


def _member_start(mm: mmap.mmap, info: zipfile.ZipInfo, path: Path) -> int:
    """Offset in the file of the first byte of the zip member ``info`` (after its local header)."""
    h = info.header_offset
    head = mm[h : h + 30]
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        raise ValueError(f"{path}: corrupted zip: bad local header for member {info.filename!r}")
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    start = h + 30 + name_len + extra_len
    if start + info.compress_size > len(mm):
        raise ValueError(f"{path}: truncated: member {info.filename!r} ends past the end of the file")
    return start


def _check_crc(mm: mmap.mmap, start: int, info: zipfile.ZipInfo, path: Path) -> None:
    if zlib.crc32(memoryview(mm)[start : start + info.file_size]) != info.CRC:
        raise ValueError(f"{path}: corrupted: member {info.filename!r} fails its CRC check")


# ----------------------------------------------------------------------------- pytorch_model.bin

# The storage types a state dict names, and the NumPy dtype of their elements. bfloat16 has no
# NumPy dtype: its 16-bit words are kept as uint16 (the model widens them on use).
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "HalfStorage": np.float16, "BFloat16Storage": np.uint16,
    "DoubleStorage": np.float64, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}  # fmt: skip


class _StorageType:
    """Stands for ``torch.<name>Storage`` in the pickle; not callable, it only carries a dtype."""

    def __init__(self, name: str, dtype: type) -> None:
        self.name, self.dtype = name, np.dtype(dtype)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2``: a strided view of ``storage`` (a 1-D array)."""
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise ValueError("tensor without a storage")
    size, stride = tuple(size), tuple(stride)
    if not all(type(v) is int and v >= 0 for v in (offset, *size, *stride)) or len(size) != len(stride):
        raise ValueError(f"bad tensor geometry: offset {offset!r}, size {size!r}, stride {stride!r}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise ValueError(f"tensor of size {size} at offset {offset} overruns its storage of {storage.size} elements")
    strides = tuple(s * storage.itemsize for s in stride)
    return np.lib.stride_tricks.as_strided(storage[offset:], size, strides, writeable=False)


def _rebuild_parameter(data: Any, *_: Any) -> np.ndarray:
    """``torch._utils._rebuild_parameter``: a Parameter is its data."""
    if not isinstance(data, np.ndarray):
        raise ValueError("parameter without a tensor")
    return data


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict: tensors become NumPy views of the zip's storage members.

    ``find_class`` is the only way a pickle can reach a Python object; it returns the few safe
    stand-ins above and refuses every other global, so nothing else is ever called.
    """

    def __init__(self, data: bytes, path: Path, mm: mmap.mmap, members: dict[str, zipfile.ZipInfo], prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.path, self.mm, self.members, self.prefix = path, mm, members, prefix
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        safe = _SAFE_GLOBALS.get((module, name))
        if safe is None:
            raise ValueError(
                f"{self.path}: refusing to unpickle global {module}.{name}: a state dict only needs tensors "
                "and OrderedDict (this file may be malicious)"
            )
        return safe

    def persistent_load(self, pid: Any) -> np.ndarray:
        """``('storage', StorageType, key, location, numel)`` -> the storage as a 1-D array."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise ValueError(f"{self.path}: unexpected persistent id {pid!r:.80} in the pickle")
        _, stype, key, _, numel = pid
        if str(key) not in self.storages:
            self.storages[str(key)] = self._storage(str(key), stype.dtype, numel)
        return self.storages[str(key)]

    def _storage(self, key: str, dtype: np.dtype, numel: Any) -> np.ndarray:
        info = self.members.get(f"{self.prefix}data/{key}")
        if info is None:
            raise ValueError(f"{self.path}: storage {key!r} is missing from the archive (truncated or corrupted)")
        if type(numel) is not int or numel < 0 or numel * dtype.itemsize > info.file_size:
            raise ValueError(f"{self.path}: storage {key!r} holds {info.file_size} bytes, not {numel!r} × {dtype}")
        if info.compress_type != zipfile.ZIP_STORED:  # torch never compresses, a re-zipped file might
            with zipfile.ZipFile(self.path) as zf:
                return np.frombuffer(zf.read(info), dtype, numel)
        start = _member_start(self.mm, info, self.path)
        _check_crc(self.mm, start, info, self.path)
        return np.frombuffer(self.mm, dtype, numel, start) if numel else np.zeros(0, dtype)


def read_torch_bin(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a ``torch.save`` zip file (``pytorch_model.bin``) without torch.

    Returns the state dict with tensors as read-only arrays mapped from the file (bfloat16 as
    uint16). Refuses any pickle global a state dict does not need; a truncated or corrupted file
    raises ValueError naming it.
    """
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:1] == b"\x80":  # a bare pickle: torch.save before 1.6
        raise ValueError(f"{path}: legacy (pre-1.6) torch.save format is not supported; re-save it with a recent torch")
    members = {i.filename: i for i in _open_zip(path, "torch checkpoint")}
    pkl = [n for n in members if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise ValueError(f"{path}: not a torch checkpoint (no <dir>/data.pkl member)")
    prefix = pkl[0][: -len("data.pkl")]
    byteorder = members.get(prefix + "byteorder")
    mm = _map(path)
    try:
        with zipfile.ZipFile(path) as zf:
            data = zf.read(pkl[0])
            order = zf.read(byteorder).decode() if byteorder else "little"
        if order != sys.byteorder:
            raise ValueError(f"{path}: written on a {order}-endian machine; only {sys.byteorder}-endian is supported")
        state = _StateDictUnpickler(data, path, mm, members, prefix).load()
    except ValueError as e:
        raise e if str(e).startswith(str(path)) else ValueError(f"{path}: {e}") from None
    except Exception as e:  # anything a damaged pickle can raise: UnpicklingError, EOFError, TypeError, ...
        raise ValueError(f"{path}: corrupted pickle: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()):
        raise ValueError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    return dict(state)


# ----------------------------------------------------------------------------- model.safetensors

_SAFETENSORS_DTYPES = {
    "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64, "I64": np.int64,
    "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}  # fmt: skip


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a ``.safetensors`` file into read-only arrays mapped from it (bfloat16 as uint16)."""
    path = Path(path)
    mm = _map(path)
    if len(mm) < 8:
        raise ValueError(f"{path}: truncated safetensors file ({len(mm)} bytes)")
    (n,) = struct.unpack("<Q", mm[:8])
    if 8 + n > len(mm):
        raise ValueError(f"{path}: truncated or corrupted safetensors file: header of {n} bytes in a file of {len(mm)}")
    try:
        header = json.loads(mm[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupted safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupted safetensors header: not a JSON object")
    header.pop("__metadata__", None)
    return {name: _safetensors_tensor(mm, 8 + n, name, entry, path) for name, entry in header.items()}


def _safetensors_tensor(mm: mmap.mmap, base: int, name: str, entry: Any, path: Path) -> np.ndarray:
    try:
        dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
        shape = tuple(int(s) for s in entry["shape"])
        begin, end = (int(o) for o in entry["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: tensor {name!r}: corrupted or unsupported header entry {entry!r:.100}") from None
    count = math.prod(shape)
    if begin < 0 or end - begin != count * dtype.itemsize or min(shape, default=0) < 0:
        raise ValueError(f"{path}: tensor {name!r}: offsets {begin}..{end} do not fit shape {shape} of {dtype}")
    if base + end > len(mm):
        raise ValueError(f"{path}: truncated: tensor {name!r} ends past the end of the file")
    return np.frombuffer(mm, dtype, count, base + begin).reshape(shape) if count else np.zeros(shape, dtype)


# ----------------------------------------------------------------------------- directories and shards


def read_index_map(path: str | os.PathLike) -> dict[str, str]:
    """The ``weight_map`` of a ``*.index.json``: tensor name -> shard file name."""
    try:
        weight_map = json.loads(Path(path).read_text())["weight_map"]
        assert isinstance(weight_map, dict)
        return weight_map
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AssertionError) as e:
        raise ValueError(f"{path}: corrupted index (expected JSON with a 'weight_map'): {e}") from None


def read_index(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a sharded checkpoint through its ``*.index.json`` (safetensors or torch shards)."""
    path = Path(path)
    weight_map = read_index_map(path)
    weights: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
            raise ValueError(f"{path}: shard name {shard!r} is not a plain file name")
        if not (path.parent / shard).is_file():
            raise ValueError(f"{path}: shard {shard} is missing")
        if shard.endswith(".index.json"):
            raise ValueError(f"{path}: shard {shard} is an index, not a weight file")
        weights |= read_weight_file(path.parent / shard)
    missing = [name for name, shard in weight_map.items() if name not in weights]
    if missing:
        raise ValueError(f"{path}: tensor {missing[0]!r} is not in its shard {weight_map[missing[0]]}")
    return weights


def read_weight_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads one weight file: ``*.safetensors``, a torch ``*.bin``, or an ``*.index.json``."""
    path = Path(path)
    if path.name.endswith(".index.json"):
        return read_index(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return read_torch_bin(path)


def read_config(path: str | os.PathLike) -> Config:
    """Reads a Hugging Face ``config.json``: ValueError if it cannot be read or is not a CodeGen config."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read config: {e}") from None
    return config_from_dict(d, str(path))


def read_tokenizer_files(directory: str | os.PathLike) -> dict[str, bytes]:
    """The raw bytes of the tokenizer files present in ``directory`` (see TOKENIZER_FILES)."""
    directory = Path(directory)
    return {name: (directory / name).read_bytes() for name in TOKENIZER_FILES if (directory / name).is_file()}


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


def checked_weights(cfg: Config, weights: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """The weights the model reads, under their checkpoint names, shapes checked.

    Accepts a bare ``CodeGenModel`` state dict (no ``transformer.`` prefix), drops a tied
    ``lm_head.weight`` and the buffers hub files carry. Raises ValueError naming the tensor.
    """
    if "transformer.wte.weight" not in weights and "wte.weight" in weights:
        weights = {(k if k.startswith("lm_head.") else "transformer." + k): v for k, v in weights.items()}
    if cfg.tie_word_embeddings:
        weights = {k: v for k, v in weights.items() if k != "lm_head.weight"}
    weights = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in weights.items()}
    return check_weights(cfg, weights, source)


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
    infos = _open_zip(path, ".npz")
    mm = _map(path)
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
    start = _member_start(mm, info, path)
    if verify:
        _check_crc(mm, start, info, path)
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


def quantize_int8(w: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: (q int8 [n_out, n_in], scale float32 [n_out]), w ≈ q * scale[:, None].

    scale = max|row| / 127 (0 for an all-zero row); done ``chunk`` rows at a time to bound memory.
    """
    q = np.empty(w.shape, np.int8)
    scale = np.empty(w.shape[0], np.float32)
    for r in range(0, w.shape[0], chunk):
        rows = np.asarray(w[r : r + chunk], dtype=np.float32)
        s = np.abs(rows).max(axis=1) / np.float32(127)
        q[r : r + chunk] = np.clip(np.rint(rows / np.where(s > 0, s, 1)[:, None]), -127, 127)
        scale[r : r + chunk] = s
    return q, scale


def encode(name: str, w: np.ndarray, dtype: str, scale: np.ndarray | None = None) -> list[tuple[str, np.ndarray]]:
    """The .npz member(s) for weight ``name`` stored as ``dtype`` (1-D tensors stay float32).

    ``w`` is as read (float32, float16, uint16 = bfloat16, or int8 with its ``scale``).
    """
    if w.ndim != 2 or dtype == "float32":
        return [(name, dequantize(w, scale))]
    if dtype == "int8":
        q, s = (w, scale) if w.dtype == np.int8 else quantize_int8(w)
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
    path = _local_source(src)
    cfg, weights, tok = read_checkpoint(path)
    weights = checked_weights(cfg, weights, str(path))
    meta = {"dtype": dtype, "note": _META_NOTES[dtype], "source": str(src)}
    return write_npz(out, cfg, _encoded(weights, dtype, log or (lambda _: None)), tok, meta, force)


def _local_source(src: str | os.PathLike) -> Path:
    """A local checkpoint directory or .npz for ``src`` (a hub id is downloaded, not converted)."""
    path = Path(src).expanduser()
    if path.exists() or not is_hub_id(str(src)):
        return _local_path(path, str(src))
    repo, revision = split_revision(str(src))
    return download(repo, revision)


# ----------------------------------------------------------------------------- hub and cache

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?")


def is_hub_id(s: str) -> bool:
    """True for ``org/name`` or ``org/name@revision`` (``Salesforce/codegen-350M-mono``)."""
    return bool(_HUB_ID.fullmatch(s)) and not s.endswith(".npz")


def split_revision(hub_id: str) -> tuple[str, str | None]:
    """``"org/name@rev"`` -> ``("org/name", "rev")``; no ``@`` -> revision None (the default branch)."""
    repo, _, revision = hub_id.partition("@")
    return repo, revision or None


def cache_dir() -> Path:
    """Where converted hub checkpoints go: $MINICODEGEN_CACHE, $XDG_CACHE_HOME/minicodegen, ~/.cache/minicodegen."""
    if os.environ.get("MINICODEGEN_CACHE"):
        return Path(os.environ["MINICODEGEN_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minicodegen"


def cache_path(repo: str, revision: str | None = None) -> Path:
    """The cached .npz of hub repo ``repo`` at ``revision``: ``<cache>/<org>--<name>[@<revision>].npz``."""
    name = repo.replace("/", "--") + (f"@{revision.replace('/', '--')}" if revision else "")
    return cache_dir() / f"{name}.npz"


def _endpoint() -> str:
    """HF_ENDPOINT read now (huggingface_hub reads it once, at import)."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _unreachable(repo: str, cause: BaseException) -> HubUnreachableError:
    detail = " ".join(f"{type(cause).__name__}: {cause}".split())[:300]
    return HubUnreachableError(
        f"could not reach the hub at {_endpoint()} to fetch {repo} ({detail}); check your connection or HF_ENDPOINT, "
        "or use a local model instead: a checkpoint directory or a converted .npz (--model PATH), "
        "or 'tiny', the small demo model that ships with minicodegen and works offline (--model tiny)"
    )


def _weight_files(repo: str, files: list[str]) -> list[str]:
    """The files of a hub repo to fetch for the model: the first weight layout of WEIGHT_FILES present."""
    for name in WEIGHT_FILES:
        if name in files:
            return [name]
    raise HubError(f"{repo}: the repo has none of {', '.join(WEIGHT_FILES)} (files: {', '.join(sorted(files)[:10])})")


def download(repo: str, revision: str | None = None) -> Path:
    """Downloads the files of hub repo ``repo`` that minicodegen needs; returns the snapshot directory.

    Uses huggingface_hub's cache (resumes, shows a progress bar, honours HF_ENDPOINT and HF_TOKEN).
    Raises HubUnreachableError if the hub cannot be reached and the files are not cached.
    """
    import huggingface_hub as hf
    from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    endpoint = _endpoint()
    wanted = ["config.json", *TOKENIZER_FILES]
    try:
        info = hf.HfApi(endpoint=endpoint).model_info(repo, revision=revision)
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as e:
        what = f"revision {revision} of {repo}" if isinstance(e, RevisionNotFoundError) else repo
        raise HubError(f"{what} not found on {endpoint} (a private or gated repo needs HF_TOKEN)") from None
    except Exception as e:  # offline, refused, timed out, 5xx: the files may still be in the local cache
        cached = _cached_snapshot(repo, revision)
        if cached is None:
            raise _unreachable(repo, e) from None
        return cached
    files = [s.rfilename for s in info.siblings or []]
    weights = _weight_files(repo, files)
    try:
        snapshot = Path(hf.snapshot_download(repo, revision=info.sha, allow_patterns=wanted + weights, endpoint=endpoint))
        if weights[0].endswith(".index.json"):  # then the shards the index names
            shards = sorted(set(read_index_map(snapshot / weights[0]).values()))
            hf.snapshot_download(repo, revision=info.sha, allow_patterns=shards, endpoint=endpoint)
    except ValueError:  # a corrupted index: says so, naming it
        raise
    except Exception as e:
        raise _unreachable(repo, e) from None
    return snapshot


def _cached_snapshot(repo: str, revision: str | None) -> Path | None:
    """A complete snapshot of ``repo`` already in huggingface_hub's cache, or None."""
    import huggingface_hub as hf

    shards = {"model.safetensors.index.json": "model-*.safetensors", "pytorch_model.bin.index.json": "pytorch_model-*.bin"}
    for name in WEIGHT_FILES:
        patterns = ["config.json", *TOKENIZER_FILES, name, *([shards[name]] if name in shards else [])]
        try:
            snapshot = Path(hf.snapshot_download(repo, revision=revision, local_files_only=True, allow_patterns=patterns))
        except Exception:
            continue
        if (snapshot / name).is_file():
            return snapshot
    return None


def resolve(path_or_id: str | os.PathLike) -> Path:
    """The local file or directory to load for ``path_or_id``.

    - ``"tiny"``: the small model shipped in the package (``minicodegen/data/tiny.npz``);
    - a local ``.npz`` or checkpoint directory: itself;
    - a hub id (``Salesforce/codegen-350M-mono``, optionally ``@revision``): downloaded and converted
      once to ``cache_path(id)`` (float32); later calls use that file without the network.
    """
    s = str(path_or_id)
    if s == "tiny":
        if not TINY.is_file():
            raise FileNotFoundError(f"the tiny model is not shipped in this install ({TINY} is missing)")
        return TINY
    path = Path(s).expanduser()
    if path.exists() or not is_hub_id(s):
        return _local_path(path, s)
    repo, revision = split_revision(s)
    cached = cache_path(repo, revision)
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        convert(s, cached, "float32", force=True)
    return cached


def _local_path(path: Path, given: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{given}: no such file or directory (nor a hub id like Salesforce/codegen-350M-mono)")
    if path.is_dir() or path.suffix == ".npz":
        return path
    raise ValueError(f"{path}: give a checkpoint directory (with config.json) or a .npz file, not another file")


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


def _for_model(w: np.ndarray) -> np.ndarray:
    """A weight as the model takes it: float16 and 1-D bfloat16 widened to float32, C-contiguous."""
    if w.dtype == np.float16 or (w.dtype == np.uint16 and w.ndim == 1):
        return dequantize(w)
    return w if w.flags.c_contiguous else np.ascontiguousarray(w)


def load_model(path_or_id: str | os.PathLike, fast: bool = True, mapped: bool = True) -> Model:
    """A Model from a ``.npz``, a checkpoint directory, a hub id, or ``"tiny"`` (see ``resolve``).

    A ``.npz`` loads memory-mapped (weights are read as they are used); float16 weights are
    widened to float32 (NumPy matmul on float16 is slow); 2-D bfloat16 weights stay uint16 and
    int8 stays int8; 1-D ones (norms, biases) are float32.

    ``mapped=False`` reads a ``.npz`` into memory instead: loading takes longer (350M shape
    here: 0.2-0.5 s int8, 2-3 s float32), decoding is then faster (+8% int8, +6% bf16, +17% float32
    here: NumPy asks for huge pages for large arrays, and streaming the weights then misses the
    TLB far less than through the 4 KiB pages of a mapped file).
    """
    path = resolve(path_or_id)
    cfg, weights, tok = read_checkpoint(path, mapped=mapped)
    weights = {k: _for_model(w) for k, w in checked_weights(cfg, weights, str(path)).items()}
    return Model(cfg, weights, tokenizer_from_files(tok, str(path)), fast=fast, source=str(path))
