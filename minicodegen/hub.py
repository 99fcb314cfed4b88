"""The Hugging Face hub and the local cache: hub ids, where converted checkpoints go, downloads.

Hub ids are downloaded with ``huggingface_hub`` (its cache, resume and progress bar; ``HF_ENDPOINT``
is honoured) and converted once per dtype to ``<cache>/<org>--<name>-<dtype>.npz``, where
``<cache>`` is ``$MINICODEGEN_CACHE``, else ``$XDG_CACHE_HOME/minicodegen``, else
``~/.cache/minicodegen``.  Before a download, ``download`` checks that the disks hold the files and
the converted file (``check_disk_space``).  The conversion is ``npz.convert``;
``checkpoint.resolve`` puts the two together.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from .hubfiles import TOKENIZER_FILES, WEIGHT_FILES, read_index_map

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?")


class HubError(RuntimeError):
    """A hub id could not be turned into a local checkpoint (not found, no weights, ...)."""


class HubUnreachableError(HubError):
    """The hub (``HF_ENDPOINT``) could not be reached and the files are not in the local cache."""


class DiskSpaceError(OSError):
    """A download or a conversion would not fit on its disk (checked before it starts)."""


# Bytes a weight takes when stored as each dtype (int8: its float32 row scale, about 1/1000 of a
# byte, is left out; int4: two codes a byte plus a float16 scale per group of 64).
BYTES_PER_WEIGHT = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0, "int8": 1.0, "int4": 0.5 + 2 / 64}


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def check_disk_space(needs: list[tuple[Path, int, str]]) -> None:
    """Raises DiskSpaceError (one line: how much is needed, for what, where, and how much is
    free) unless each filesystem has room for all it is to receive; ``needs`` holds (directory,
    bytes, what) for every file to be written, the directory existing or not."""
    per_fs: dict[int, tuple[Path, int, list[str]]] = {}
    for directory, n, what in needs:
        at = Path(directory).absolute()
        while not at.exists():
            at = at.parent
        fs = os.stat(at).st_dev
        where, total, whats = per_fs.get(fs, (at, 0, []))
        per_fs[fs] = (where, total + n, [*whats, f"{what} ({_gb(n)}) in {directory}"])
    for where, total, whats in per_fs.values():
        free = shutil.disk_usage(where).free
        if total > free:
            raise DiskSpaceError(f"not enough disk space: {' and '.join(whats)} need {_gb(total)}, but the filesystem "
                                 f"of {where} has {_gb(free)} free; free some space, or set MINICODEGEN_CACHE (converted "
                                 "files) or HF_HOME (downloads) to a disk with room")

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


def cache_path(repo: str, revision: str | None = None, dtype: str = "float32") -> Path:
    """The cached .npz of hub repo ``repo`` at ``revision`` converted to ``dtype``:
    ``<cache>/<org>--<name>[@<revision>]-<dtype>.npz``."""
    name = repo.replace("/", "--") + (f"@{revision.replace('/', '--')}" if revision else "")
    return cache_dir() / f"{name}-{dtype}.npz"


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


def download(repo: str, revision: str | None = None, output: tuple[Path, str] | None = None) -> Path:
    """Downloads the files of hub repo ``repo`` that minicodegen needs; returns the snapshot directory.

    Uses huggingface_hub's cache (resumes, shows a progress bar, honours HF_ENDPOINT and HF_TOKEN).
    Raises HubUnreachableError if the hub cannot be reached and the files are not cached.
    ``output`` = (path, dtype) of the file the download is to be converted into: before the weights
    are fetched, DiskSpaceError says so if the download and that file do not both fit.
    """
    import huggingface_hub as hf
    from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    endpoint = _endpoint()
    wanted = ["config.json", *TOKENIZER_FILES]
    try:
        info = hf.HfApi(endpoint=endpoint).model_info(repo, revision=revision, files_metadata=True)
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
        snapshot = Path(hf.snapshot_download(repo, revision=info.sha, allow_patterns=wanted, endpoint=endpoint))
        _check_room(repo, snapshot, info, weights, output)
        snapshot = Path(hf.snapshot_download(repo, revision=info.sha, allow_patterns=wanted + weights, endpoint=endpoint))
        if weights[0].endswith(".index.json"):  # then the shards the index names
            shards = sorted(set(read_index_map(snapshot / weights[0]).values()))
            hf.snapshot_download(repo, revision=info.sha, allow_patterns=shards, endpoint=endpoint)
    except (ValueError, DiskSpaceError):  # a corrupted index, or no room: says so, naming it
        raise
    except Exception as e:
        raise _unreachable(repo, e) from None
    return snapshot


def _check_room(repo: str, snapshot: Path, info, weights: list[str], output: tuple[Path, str] | None) -> None:
    """check_disk_space for the weight files still to download (sizes from the hub: the files
    and, for an index, the shards beside it) and the converted file (parameters estimated from
    the weights' bytes and config.json's torch_dtype)."""
    sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
    if weights[0].endswith(".index.json"):
        stem = weights[0][: -len(".index.json")].rsplit(".", 1)
        names = [n for n in sizes if n.startswith(stem[0] + "-") and n.endswith("." + stem[1])]
    else:
        names = weights
    weight_bytes = sum(sizes.get(n, 0) for n in names)
    to_fetch = sum(sizes.get(n, 0) for n in names if not (snapshot / n).is_file())
    needs = [(Path(_hf_cache()), to_fetch, f"the download of {repo}")] if to_fetch else []
    if output is not None:
        try:
            stored = json.loads((snapshot / "config.json").read_text()).get("torch_dtype") or "float32"
        except (OSError, ValueError):
            stored = "float32"
        params = weight_bytes / BYTES_PER_WEIGHT.get(str(stored), 4.0)
        needs.append((output[0].parent, int(params * BYTES_PER_WEIGHT[output[1]]), f"{repo} converted to {output[1]}"))
    check_disk_space(needs)


def _hf_cache() -> str:
    """huggingface_hub's download cache (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub)."""
    import huggingface_hub.constants as hfc

    return hfc.HF_HUB_CACHE


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


def local_path(path: Path, given: str) -> Path:
    """``path`` (given as ``given``) if it is a checkpoint directory or a ``.npz``; else FileNotFoundError or ValueError."""
    if not path.exists():
        raise FileNotFoundError(f"{given}: no such file or directory (nor a hub id like Salesforce/codegen-350M-mono)")
    if path.is_dir() or path.suffix == ".npz":
        return path
    raise ValueError(f"{path}: give a checkpoint directory (with config.json) or a .npz file, not another file")
