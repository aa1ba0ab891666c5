"""Hugging Face Hub repository ids as model sources: ``resolve_model(id_or_dir, ...)`` → the local folder to read.

A folder that exists is used as it is (a folder wins over an id of the same spelling). Anything else that reads as
a Hub repository id (``org/name``) is fetched through ``huggingface_hub.snapshot_download`` into the Hub's own cache
(``cache_dir``, else ``HF_HUB_CACHE`` / ``HF_HOME``), only the files a reader needs:

* ``"processor"``: config and tokenizer files (``config.json``, ``*_config.json``, ``tokenizer.model``,
  ``vision_tower/config.json``, the model card);
* ``"model"``: those plus the weights, safetensors when the repository has them (``*.safetensors`` + index), else
  the ``*.bin`` pickles, and the released layout's ``vision_tower/`` folder.

``revision`` (branch, tag or commit), ``cache_dir`` and ``local_files_only`` are passed through; ``HF_HUB_OFFLINE=1``
(read when called) acts as ``local_files_only=True``: the cached snapshot of the revision is used, nothing is asked
of the network. Every failure is one ``CheckpointError`` line naming the id and what to do (offline: the cache that
was looked in). Pure file logic: no model class is imported.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rsfuse.checkpoints.io import CheckpointError

__all__ = ["ModelSource", "resolve_model", "looks_like_repo_id", "hub_offline", "HUB_EXTRA"]

HUB_EXTRA = "pip install rsfuse[hub]"
Need = Literal["processor", "model"]

CONFIG_PATTERNS = (
    "config.json", "*_config.json", "tokenizer.model", "README.md", "vision_tower/config.json",
    "vision_tower/preprocessor_config.json",
)
SAFETENSORS_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "vision_tower/*")
PICKLE_PATTERNS = ("*.bin", "*.bin.index.json", "vision_tower/*")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: ``path`` (the folder read), and for a Hub id its ``repo_id`` and the commit hash
    of the snapshot read (``revision``); both None for a local folder."""

    path: Path
    repo_id: str | None = None
    revision: str | None = None

    def describe(self) -> str:
        """``org/name@commit`` for a Hub snapshot, else the folder."""
        return f"{self.repo_id}@{self.revision}" if self.repo_id else str(self.path)


def looks_like_repo_id(text: str) -> bool:
    """Whether ``text`` is spelled as a Hub repository id (``org/name``, no path syntax)."""
    return bool(_REPO_ID.match(text)) and ".." not in text and not text.endswith((".git", "."))


def hub_offline(local_files_only: bool = False) -> bool:
    """``local_files_only`` or ``HF_HUB_OFFLINE`` set (read now, not at import)."""
    return local_files_only or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def resolve_model(
    id_or_dir: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    need: Need = "model",
) -> ModelSource:
    """The folder to read for ``id_or_dir``: itself when it exists, else a Hub snapshot holding what ``need`` says."""
    text = os.fspath(id_or_dir)
    folder = Path(text).expanduser()
    if folder.exists():
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: not a folder (give a model folder or a Hub repository id org/name)")
        if revision is not None:
            raise CheckpointError(f"{folder}: revision={revision!r} applies to Hub repository ids, not to a folder")
        return ModelSource(folder)
    if not looks_like_repo_id(text):
        raise CheckpointError(f"{text}: no such folder (nor a Hub repository id, which reads org/name)")
    try:
        import huggingface_hub  # noqa: F401, PLC0415
    except ImportError:
        raise CheckpointError(
            f"{text}: no such folder; reading it as a Hub repository id needs huggingface_hub: {HUB_EXTRA}"
        ) from None
    offline = hub_offline(local_files_only)
    snapshot = _snapshot(text, CONFIG_PATTERNS, revision, cache_dir, offline)
    if need == "model" and not offline:
        snapshot = _snapshot(text, CONFIG_PATTERNS + SAFETENSORS_PATTERNS, revision, cache_dir, offline)
        if not any(snapshot.glob("*.safetensors")):
            snapshot = _snapshot(text, CONFIG_PATTERNS + PICKLE_PATTERNS, revision, cache_dir, offline)
    return ModelSource(snapshot, repo_id=text, revision=snapshot.name)


def _cache_folder(cache_dir: str | os.PathLike | None) -> str:
    from huggingface_hub import constants  # noqa: PLC0415

    return os.fspath(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE


def _snapshot(repo_id: str, patterns, revision, cache_dir, offline: bool) -> Path:
    """``snapshot_download`` of ``patterns``; its errors become one ``CheckpointError`` line each."""
    from huggingface_hub import snapshot_download  # noqa: PLC0415
    from huggingface_hub.errors import (  # noqa: PLC0415
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}@{revision or 'main'}"
    try:
        return Path(snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, local_files_only=offline, allow_patterns=list(patterns),
        ))
    except LocalEntryNotFoundError:
        cache = _cache_folder(cache_dir)
        if offline:
            raise CheckpointError(
                f"{where}: not in the Hub cache {cache} and the Hub may not be asked (HF_HUB_OFFLINE / "
                f"local_files_only); download it once with network access (hf download {repo_id}) or give a folder"
            ) from None
        raise CheckpointError(
            f"{where}: the Hub cannot be reached and the cache {cache} does not hold it; check the network or give "
            "a folder"
        ) from None
    except GatedRepoError:
        raise CheckpointError(
            f"{where}: a gated repository: accept its terms on the Hub, then `hf auth login`"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{repo_id}: no such Hub repository (or a private one: `hf auth login`), and no folder of that name"
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(
            f"{where}: the repository has no revision {revision!r} (a branch, tag or commit)"
        ) from None
    except HFValidationError as error:
        raise CheckpointError(f"{repo_id}: not a valid Hub repository id ({_first_line(error)})") from None
    except (HfHubHTTPError, OSError) as error:
        raise CheckpointError(f"{where}: the Hub download failed: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
