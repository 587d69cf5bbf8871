"""Each profile's model and tokenizer from the hub into the hub's cache layout, verified.

Every file is downloaded under ``DIR/.partial/`` (huggingface_hub resumes an interrupted
download there), checked against the hub's own metadata (the sha256 of a file kept in LFS, the
git blob id of a small file kept in git), and only then renamed into
``DIR/hf/hub/models--ORG--NAME/snapshots/REVISION/``. ``refs/main`` is written when the whole
model is there, so the hub's offline mode only ever finds complete models.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

from helpers.atomic import write_text
from tools.workshop.manifest import PARTIAL, file_hashes

# What a course run reads from a model repo: configs, safetensors weights, tokenizer files.
# Other weight formats (.bin pickles, .gguf, .onnx) are never downloaded.
WANTED = (
    "*.json",
    "*.safetensors",
    "*.jinja",
    "*.txt",
    "*.model",
    "*.tiktoken",
    "LICENSE*",
    "README.md",
)


@dataclass(frozen=True)
class RemoteFile:
    """One file of a model repository, as the hub describes it."""

    path: str  # relative to the repo root
    size: int | None = None
    sha256: str | None = None  # files kept in LFS
    git_sha1: str | None = None  # the git blob id: files kept in git itself


class FetchError(RuntimeError):
    """A model or a file could not be fetched or verified; the message names the repo and file."""


class Source(Protocol):
    """Where models come from: the hub, or (in tests) a local stand-in."""

    def listing(self, repo_id: str, revision: str | None) -> tuple[str, list[RemoteFile]]: ...

    def download(self, repo_id: str, revision: str, filename: str, staging: Path) -> Path: ...


class HubSource:
    """The Hugging Face hub through huggingface_hub (resumable downloads with progress bars)."""

    def listing(self, repo_id: str, revision: str | None) -> tuple[str, list[RemoteFile]]:
        """The repo's commit and files at ``revision`` (None: its main branch), with sizes and
        checksums."""
        from huggingface_hub import HfApi

        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
        files = [
            RemoteFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None, s.blob_id)
            for s in info.siblings or []
        ]
        return info.sha, files

    def download(self, repo_id: str, revision: str, filename: str, staging: Path) -> Path:
        """Download one file under ``staging`` (resuming a partial one); return its path."""
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, filename, revision=revision, local_dir=staging))


def repo_folder(dest: Path, repo_id: str) -> Path:
    """The repo's folder in the hub's cache layout under ``dest/hf/hub``."""
    return Path(dest) / "hf" / "hub" / ("models--" + repo_id.replace("/", "--"))


def _why(err: Exception) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    hint = (
        "HF_HUB_OFFLINE is set: unset it on a machine that can reach the hub"
        if offline
        else "check this machine's network and the model id"
    )
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} ({hint})"


def list_models(
    repo_ids: dict[str, str | None], source: Source
) -> dict[str, tuple[str, list[RemoteFile]]]:
    """Every repo's commit and wanted files, listed before anything is written.

    Args:
        repo_ids: ``{repo id: the revision the profiles pin (None: main)}``.
    Raises:
        FetchError: one line per repo that could not be listed, or that has no safetensors.
    """
    found, failed = {}, []
    for repo_id, pinned in repo_ids.items():
        try:
            revision, files = source.listing(repo_id, pinned)
        except Exception as err:  # noqa: BLE001 - any failure of the hub is reported by repo
            failed.append(f"{repo_id}: could not list its files: {_why(err)}")
            continue
        wanted = [f for f in files if any(fnmatch.fnmatch(f.path, p) for p in WANTED)]
        if not any(f.path.endswith(".safetensors") for f in wanted):
            failed.append(f"{repo_id}: no .safetensors weights (the course loads only those)")
        found[repo_id] = (revision, wanted)
    if failed:
        raise FetchError("Could not fetch:\n  " + "\n  ".join(failed))
    return found


def verify(path: Path, remote: RemoteFile, repo_id: str) -> str:
    """Check a downloaded file against the hub's checksum; return its sha256.

    Raises:
        FetchError: a checksum differs, or the hub gave none (names the repo and the file).
    """
    sha256, git_sha1 = file_hashes(path)
    expected = remote.sha256 or remote.git_sha1
    if expected is None:
        raise FetchError(f"{repo_id}/{remote.path}: the hub lists no checksum for it")
    got = sha256 if remote.sha256 else git_sha1
    if got != expected:
        kind = "sha256" if remote.sha256 else "git blob id"
        raise FetchError(f"{repo_id}/{remote.path}: {kind} {got}, the hub says {expected}")
    return sha256


def fetch_file(dest: Path, repo_id: str, revision: str, remote: RemoteFile, source: Source):
    """One verified file in its snapshot folder; kept as it is when already there and valid.

    Returns:
        ``(path relative to dest, sha256, size)``.
    """
    final = repo_folder(dest, repo_id) / "snapshots" / revision / remote.path
    if final.is_file():
        try:
            sha256 = verify(final, remote, repo_id)
            return final.relative_to(dest).as_posix(), sha256, final.stat().st_size
        except FetchError:
            final.unlink()  # corrupt: fetch it again
    staging = Path(dest) / PARTIAL / repo_id.replace("/", "--")
    try:
        staged = source.download(repo_id, revision, remote.path, staging)
    except Exception as err:  # noqa: BLE001 - reported with the repo and the file
        raise FetchError(f"Could not fetch {repo_id}/{remote.path}: {_why(err)}") from err
    try:
        sha256 = verify(staged, remote, repo_id)
    except FetchError:
        staged.unlink(missing_ok=True)
        raise
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, final)
    return final.relative_to(dest).as_posix(), sha256, final.stat().st_size


def prepare_models(dest: str | Path, listed: dict, source: Source) -> dict[str, dict]:
    """Fetch every listed model into ``dest`` (see the module docstring).

    Args:
        dest: the workshop folder.
        listed: ``{repo_id: (revision, [RemoteFile, ...])}`` from ``list_models``.
        source: where the files come from.
    Returns:
        ``{path relative to dest: {"sha256": ..., "size": ...}}`` for every file written.
    Raises:
        FetchError: a file could not be fetched or its checksum differs (nothing unverified is
            left outside ``dest/.partial``).
    """
    dest, entries = Path(dest), {}
    for repo_id, (revision, files) in listed.items():
        for remote in tqdm(files, desc=repo_id, unit="file"):
            rel, sha256, size = fetch_file(dest, repo_id, revision, remote, source)
            entries[rel] = {"sha256": sha256, "size": size}
        refs = repo_folder(dest, repo_id) / "refs"
        write_text(refs / "main", revision)  # atomic: a temporary name, then renamed
        entries[(refs / "main").relative_to(dest).as_posix()] = {
            "sha256": file_hashes(refs / "main")[0],
            "size": len(revision.encode()),
        }
        shutil.rmtree(dest / PARTIAL / repo_id.replace("/", "--"), ignore_errors=True)
    return entries
