"""The workshop folder's manifest: written last by ``prepare``, verified by ``check``."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

MANIFEST = "workshop-manifest.json"
PARTIAL = ".partial"  # downloads in progress, never listed in the manifest
CHUNK = 1 << 20


def file_hashes(path: Path) -> tuple[str, str]:
    """The sha256 of a file and its git blob id (the sha1 the hub lists for files kept in git).

    Returns:
        ``(sha256 hex, git sha1 hex)``.
    """
    sha256, git_sha1 = hashlib.sha256(), hashlib.sha1()
    git_sha1.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha256.update(chunk)
            git_sha1.update(chunk)
    return sha256.hexdigest(), git_sha1.hexdigest()


def write_json_atomically(path: Path, data: dict) -> None:
    """Write JSON to a temporary name beside ``path``, then rename: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(f.name, path)


def read_manifest(folder: Path) -> dict:
    """The manifest of a prepared folder.

    Raises:
        FileNotFoundError: no manifest (``prepare`` never finished there).
        ValueError: the manifest is not JSON with a ``files`` mapping (names the file).
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: {folder} is not a finished workshop folder "
            "(run `python -m helpers.workshop prepare` again: it resumes)."
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"{path}: no 'files' mapping; write it again with prepare")
    return manifest


def check_folder(folder: str | Path, progress: bool = True) -> list[str]:
    """Verify every file the manifest lists: present, same size, same sha256.

    Args:
        folder: a folder written by ``prepare``.
        progress: show a progress bar over the bytes hashed.
    Returns:
        One line per problem (``missing: PATH``, ``corrupt: PATH ...``); empty when all is well.
    """
    folder = Path(folder)
    try:
        files = read_manifest(folder)["files"]
    except (FileNotFoundError, ValueError) as err:
        return [str(err)]
    problems = []
    total = sum(int(meta.get("size", 0)) for meta in files.values())
    with tqdm(total=total, unit="B", unit_scale=True, desc="check", disable=not progress) as bar:
        for rel, meta in sorted(files.items()):
            path = folder / rel
            if not path.is_file():
                problems.append(f"missing: {rel}")
            elif path.stat().st_size != meta["size"]:
                size = path.stat().st_size
                problems.append(f"corrupt: {rel} ({size} bytes, manifest says {meta['size']})")
            elif (digest := file_hashes(path)[0]) != meta["sha256"]:
                problems.append(f"corrupt: {rel} (sha256 {digest}, manifest says {meta['sha256']})")
            bar.update(int(meta.get("size", 0)))
    return problems
