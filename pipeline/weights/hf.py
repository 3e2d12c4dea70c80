"""`hf://org/name[@revision]`: a Hugging Face Hub snapshot in `cache_dir/hf` (the hub's own cache layout).

huggingface_hub already stages blobs and links snapshots atomically; the entry lock on top only keeps
several replicas on one node from downloading the same repository side by side.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pipeline.errors import ModelLoadError
from pipeline.weights.cache import entry_lock
from pipeline.weights.progress import DownloadProgress, hub_tqdm_class

# The hub's repo-id rules: alphanumerics and '._-', no '--' or '..', at most 96 characters.
_REPO_PART: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_REVISION: Final = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")  # branch, tag, commit or refs/pr/N
_TRUE: Final = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class HfSource:
    repo_id: str
    revision: str | None  # None: the default branch

    def __str__(self) -> str:
        return f"hf://{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


def parse_hf_source(source: str) -> HfSource:
    """'hf://org/name' or 'hf://org/name@revision'; anything else is a ModelLoadError saying why."""
    if not source.startswith("hf://"):
        raise ModelLoadError(f"{source!r} is not an hf:// source")
    repo_id, at, revision = source[len("hf://"):].partition("@")
    parts = repo_id.split("/")
    if (len(parts) != 2 or not all(_REPO_PART.fullmatch(p) for p in parts)
            or "--" in repo_id or ".." in repo_id or len(repo_id) > 96):
        raise ModelLoadError(f"{source!r}: expected hf://org/name[@revision] with a valid Hub repo id "
                             "(letters, digits, '._-'; no '--' or '..')")
    if at and (not _REVISION.fullmatch(revision) or ".." in revision):
        raise ModelLoadError(f"{source!r}: bad revision {revision!r} after '@' (a branch, tag or commit)")
    return HfSource(repo_id=repo_id, revision=revision or None)


def hf_offline() -> bool:
    """Read at call time: huggingface_hub reads HF_HUB_OFFLINE only once, when first imported."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return flag.strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def _prefetch_hint(hf: HfSource, hub_cache: Path) -> str:
    revision = f" --revision {hf.revision}" if hf.revision else ""
    return (f"pre-fetch it with `hf download {hf.repo_id}{revision} --cache-dir {hub_cache}` on a machine "
            f"with network, or download it anywhere (`hf download {hf.repo_id}{revision} --local-dir DIR`) "
            "and point `source` at that directory")


def resolve_hf(source: str, *, cache_dir: Path, files: Sequence[str] | None, timeout_s: float) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    hf = parse_hf_source(source)
    hub_cache = cache_dir / "hf"
    offline = hf_offline()
    progress = DownloadProgress(str(hf))  # lines only when bytes actually arrive (not for a cached snapshot)
    try:
        with entry_lock(cache_dir, f"hf/{hf.repo_id}"):
            path = snapshot_download(
                hf.repo_id, revision=hf.revision, cache_dir=hub_cache,
                allow_patterns=list(files) if files is not None else None,
                local_files_only=offline, etag_timeout=timeout_s, tqdm_class=hub_tqdm_class(progress),
            )
        progress.finish()
    except RevisionNotFoundError:
        raise ModelLoadError(f"{hf}: revision {hf.revision!r} does not exist in {hf.repo_id}") from None
    except RepositoryNotFoundError:  # also gated repos
        raise ModelLoadError(f"{hf}: repository not found, private or gated; check the name, or set "
                             "HF_TOKEN to a token that can read it") from None
    except IncompleteSnapshotError as exc:
        raise ModelLoadError(f"{hf}: the cached copy in {hub_cache} is incomplete and the hub cannot be "
                             f"reached; {_prefetch_hint(hf, hub_cache)} ({exc})") from None
    except LocalEntryNotFoundError:
        reason = "offline mode (HF_HUB_OFFLINE=1)" if offline else "no network"
        raise ModelLoadError(f"cannot download {hf}: {reason} and not in the cache {hub_cache}; "
                             f"{_prefetch_hint(hf, hub_cache)}") from None
    except HfHubHTTPError as exc:
        raise ModelLoadError(f"cannot download {hf}: the hub answered {exc}; "
                             f"{_prefetch_hint(hf, hub_cache)}") from exc
    except Exception as exc:  # transport and xet errors come in many types, not all OSError
        raise ModelLoadError(f"cannot download {hf}: {type(exc).__name__}: {exc}; "
                             f"{_prefetch_hint(hf, hub_cache)}") from exc
    return Path(path)
