"""The Hugging Face hub's checkpoint files, read with NumPy alone (no torch).

Three layouts come from the hub, all read here:

- ``pytorch_model.bin``: what ``torch.save`` writes, a zip holding ``<dir>/data.pkl`` (a pickle of
  the state dict) and ``<dir>/data/<key>`` (the raw bytes of each storage). The pickle is read by
  an unpickler that knows only the handful of globals a state dict needs and refuses every other
  one, so a malicious file cannot run code. Tensors become NumPy views of the file's pages.
- ``model.safetensors``: 8 bytes of header length, a JSON header, then the raw tensors.
- sharded checkpoints: ``*.index.json`` maps each tensor name to the shard file that holds it.

Beside the weights, a checkpoint directory holds ``config.json`` and the tokenizer files
(TOKENIZER_FILES). The helpers for files mapped read-only and their zip members also serve the
``.npz`` (minicodegen.npz), which is a zip too.
"""

from __future__ import annotations

import collections
import io
import json
import math
import mmap
import os
import pickle
import struct
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .model import Config, check_weights, config_from_dict

TOKENIZER_FILES = ("vocab.json", "merges.txt", "added_tokens.json", "tokenizer.json")
# Looked for in this order in a checkpoint directory; the first one present is read.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


# ----------------------------------------------------------------------------- files and zip members


def map_file(path: Path) -> mmap.mmap:
    """The whole file, mapped read-only."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ValueError(f"{path}: empty file")
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def open_zip(path: Path, what: str) -> list[zipfile.ZipInfo]:
    """The members of the zip file ``path``, or a ValueError saying it is truncated or corrupted."""
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: not a valid {what}: truncated or corrupted zip ({e})") from None


def member_start(mm: mmap.mmap, info: zipfile.ZipInfo, path: Path) -> int:
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


def check_crc(mm: mmap.mmap, start: int, info: zipfile.ZipInfo, path: Path) -> None:
    """Raises ValueError if the bytes of the zip member ``info`` (at ``start``) fail its CRC."""
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
        start = member_start(self.mm, info, self.path)
        check_crc(self.mm, start, info, self.path)
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
    members = {i.filename: i for i in open_zip(path, "torch checkpoint")}
    pkl = [n for n in members if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise ValueError(f"{path}: not a torch checkpoint (no <dir>/data.pkl member)")
    prefix = pkl[0][: -len("data.pkl")]
    byteorder = members.get(prefix + "byteorder")
    mm = map_file(path)
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
    mm = map_file(path)
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
