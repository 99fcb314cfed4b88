"""The Hugging Face hub and the local cache: hub ids, where converted checkpoints go, downloads.

Hub ids are downloaded with ``huggingface_hub`` (its cache, resume and progress bar; ``HF_ENDPOINT``
is honoured) and converted once to ``<cache>/<org>--<name>.npz`` (float32), where ``<cache>`` is
``$MINICODEGEN_CACHE``, else ``$XDG_CACHE_HOME/minicodegen``, else ``~/.cache/minicodegen``.
The conversion is ``npz.convert``; ``checkpoint.resolve`` puts the two together.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .hubfiles import TOKENIZER_FILES, WEIGHT_FILES, read_index_map

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?")


class HubError(RuntimeError):
    """A hub id could not be turned into a local checkpoint (not found, no weights, ...)."""


class HubUnreachableError(HubError):
    """The hub (``HF_ENDPOINT``) could not be reached and the files are not in the local cache."""


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


def local_path(path: Path, given: str) -> Path:
    """``path`` (given as ``given``) if it is a checkpoint directory or a ``.npz``; else FileNotFoundError or ValueError."""
    if not path.exists():
        raise FileNotFoundError(f"{given}: no such file or directory (nor a hub id like Salesforce/codegen-350M-mono)")
    if path.is_dir() or path.suffix == ".npz":
        return path
    raise ValueError(f"{path}: give a checkpoint directory (with config.json) or a .npz file, not another file")
