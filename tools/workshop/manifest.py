"""The workshop folder's manifest: written last by ``prepare``, verified by ``check``.

``check`` verifies exactly the manifest: each listed path is a plain relative path inside the
folder (``../x``, ``/etc/x``, links leading out are refused without being read), each size is a
whole number and each sha256 64 hex digits, each file matches; no file under ``hf/`` or
``wheels/`` is unlisted (a room would load or install it); the list is not empty; and the
manifest's own sha256, written by ``prepare``, still matches its content (an edit is named).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from tqdm.auto import tqdm

from helpers.atomic import write_json

MANIFEST = "workshop-manifest.json"
SELF_HASH = "manifest_sha256"  # the manifest's own content hash, written by prepare
PARTIAL = ".partial"  # downloads in progress, never listed in the manifest
LISTED_TREES = ("hf", "wheels")  # every file under these must be listed
HUB_BOOKKEEPING = {".locks", ".no_exist"}  # huggingface_hub's own markers, not content
HEX64 = re.compile(r"[0-9a-f]{64}")
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
    """Write JSON to a temporary name beside ``path``, then rename: never half a file
    (``helpers.atomic``; a failed write leaves no temporary file and names ``path``)."""
    write_json(path, data, indent=2, sort_keys=True)


def _canonical_sha256(manifest: dict) -> str:
    """The sha256 of a manifest's content, its own ``SELF_HASH`` field left out: the JSON text
    with sorted keys and no spaces, so the file's layout does not matter."""
    body = {k: v for k, v in manifest.items() if k != SELF_HASH}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_manifest(folder: Path, manifest: dict) -> Path:
    """Write ``folder/MANIFEST`` atomically, with the sha256 of its own content in ``SELF_HASH``
    (``check`` then says when the file was edited by hand: a mistake is found, though anyone
    who edits it on purpose can also recompute the hash)."""
    path = Path(folder) / MANIFEST
    write_json_atomically(path, {**manifest, SELF_HASH: _canonical_sha256(manifest)})
    return path


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
            "(run `python -m tools.workshop prepare` again: it resumes)."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"{path}: no 'files' mapping; write it again with prepare")
    return manifest


def _seal_problems(manifest: dict) -> list[str]:
    """A line if the manifest was edited after ``prepare`` wrote it, or carries no seal."""
    recorded, actual = manifest.get(SELF_HASH), _canonical_sha256(manifest)
    if recorded is None:
        return [f"unsealed: {MANIFEST} records no {SELF_HASH} (run prepare again)"]
    if recorded != actual:
        return [
            f"edited: {MANIFEST} was changed after prepare wrote it "
            f"(its content hashes to {actual}, it records {recorded})"
        ]
    return []


def _entry_problems(folder: Path, files: dict) -> tuple[list[str], dict[str, dict]]:
    """Each entry's path must be a plain relative path inside ``folder``, its size a whole
    number and its sha256 64 hex digits. Returns the problems and the entries that pass."""
    if not files:
        return [f"empty: {MANIFEST} lists no files (a prepared folder lists every file)"], {}
    problems, good, root = [], {}, folder.resolve()
    for rel, meta in files.items():
        parts = PurePosixPath(rel).parts
        if (
            not rel
            or "\\" in rel
            or PurePosixPath(rel).is_absolute()
            or PureWindowsPath(rel).drive
            or any(p in ("", ".", "..") for p in parts)
            or rel != PurePosixPath(rel).as_posix()
        ):
            problems.append(f"refused: {rel!r} is not a path inside the folder; nothing read")
            continue
        size = meta.get("size") if isinstance(meta, dict) else None
        sha256 = meta.get("sha256") if isinstance(meta, dict) else None
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            problems.append(f"manifest: {rel}: size {size!r} is not a whole number of bytes")
        elif not isinstance(sha256, str) or not HEX64.fullmatch(sha256):
            problems.append(f"manifest: {rel}: sha256 {sha256!r} is not 64 hex digits")
        elif _outside(folder, rel, root):
            problems.append(f"refused: {rel} leads outside the folder (a link); nothing read")
        else:
            good[rel] = meta
    return problems, good


def _outside(folder: Path, rel: str, root: Path) -> bool:
    """True when ``rel`` or a folder on its way is a link, or it resolves outside ``root``."""
    parts = PurePosixPath(rel).parts
    if any(folder.joinpath(*parts[: i + 1]).is_symlink() for i in range(len(parts))):
        return True
    return not folder.joinpath(*parts).resolve().is_relative_to(root)


def _unlisted(folder: Path, listed: set[str]) -> list[str]:
    """Files under the wheelhouse and model folders that the manifest does not list (a wheel
    added there would be installed by the room). The hub's own bookkeeping (``.locks``,
    ``.no_exist`` markers of files a model does not have) is not content."""
    found = []
    for top in LISTED_TREES:
        for dirpath, dirnames, filenames in os.walk(folder / top):
            dirnames[:] = sorted(d for d in dirnames if d not in HUB_BOOKKEEPING)
            for name in sorted(filenames):
                rel = (Path(dirpath) / name).relative_to(folder).as_posix()
                if rel not in listed:
                    found.append(
                        f"unlisted: {rel} (not in the manifest: remove it or prepare again)"
                    )
    return found


def check_folder(folder: str | Path, progress: bool = True) -> list[str]:
    """Verify the folder is exactly what the manifest lists: every file present with the same
    size and sha256, nothing else in the wheelhouse and model folders, the manifest unedited.

    Args:
        folder: a folder written by ``prepare``.
        progress: show a progress bar over the bytes hashed.
    Returns:
        One line per problem (``missing: PATH``, ``corrupt: PATH ...``, ``unlisted: PATH``,
        ``refused: PATH ...`` for a path outside the folder, which is never opened,
        ``empty: ...``, ``edited: ...``); empty when all is well.
    """
    folder = Path(folder)
    try:
        manifest = read_manifest(folder)
    except (FileNotFoundError, ValueError) as err:
        return [str(err)]
    problems = _seal_problems(manifest)
    entry_problems, files = _entry_problems(folder, manifest["files"])
    problems += entry_problems
    total = sum(meta["size"] for meta in files.values())
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
            bar.update(meta["size"])
    if manifest["files"]:
        problems += _unlisted(folder, set(manifest["files"]))
    return problems
