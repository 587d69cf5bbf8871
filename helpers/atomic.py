"""Writes that happen whole or not at all: the one place the course writes files safely.

A file is written under a temporary name in its own folder (``.NAME.tmp-XXXXXXXX``), flushed to
disk, then renamed onto its real name. ``os.replace`` within one file system is atomic (POSIX
``rename(2)``; Windows ``MoveFileEx`` with replace), so a reader sees the old file or the new
one, never half of one. A folder that must change as a set (an adapter's weights and its config,
a checkpoint) is built the same way, in a temporary folder beside it, then renamed into place.

On any failure the temporary file or folder is removed, and an ``OSError`` names the file that
could not be written (a full disk, ``ENOSPC``, says so): nothing half-written is left behind.
Only a process killed outright (SIGKILL, a lost Colab runtime) can leave a temporary name; it is
never the real name, and ``remove_stale`` clears such leftovers.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

TMP_MARK = ".tmp-"  # every temporary name holds this, after a leading dot


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{secrets.token_hex(4)}")


def _named(err: OSError, path: Path) -> OSError:
    """The same kind of OSError (same errno), with a message that names ``path``."""
    reason = err.strerror or str(err)
    hint = " (the disk is full: free some space or write elsewhere)"
    text = f"could not write {path}: {reason}" + (hint if err.errno == errno.ENOSPC else "")
    return OSError(err.errno, text) if err.errno else OSError(text)


def _fsync(path: Path) -> None:
    """Push a written file's bytes to the disk before it is renamed into place."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` on success.

    Use it for writers that take a file name (``safetensors.torch.save_file``,
    ``gguf.GGUFWriter``)::

        with atomic_path(out) as tmp:
            save_file(tensors, tmp)

    Raises:
        OSError: the file could not be written; the message names ``path``. The temporary
            file is removed on this and on any other exception.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # umask applies
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _named(err, path) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); return ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; return ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data, **dumps_kwargs) -> Path:
    """Write ``data`` as JSON (``json.dumps(data, **dumps_kwargs)``) atomically.

    The text is built before anything is written, so data that is not JSON leaves the old
    file as it was.
    """
    return write_text(path, json.dumps(data, **dumps_kwargs))


@contextlib.contextmanager
def atomic_folder(
    path: str | Path, carry_over: Callable[[str], bool] | None = None
) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; it becomes ``path`` as a whole on success.

    An existing ``path`` is renamed aside, the new folder renamed in, then the old one deleted,
    so at every moment one complete folder is there (the old one, only between two renames,
    under its ``.NAME.tmp-`` name). On failure the temporary folder is removed and ``path`` is
    left as it was.

    Args:
        path: the folder to write.
        carry_over: for a folder that holds more than what is written (an adapter folder
            with a tokenizer saved beside it): the old folder's entries whose name it accepts
            and that the new folder lacks are copied into the new one before the swap.

    Raises:
        OSError: the folder could not be written or renamed; the message names ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = _temporary_name(path), None
    try:
        tmp.mkdir()
        yield tmp
        if carry_over is not None and path.is_dir():
            for entry in path.iterdir():
                if carry_over(entry.name) and not (tmp / entry.name).exists():
                    copy = shutil.copytree if entry.is_dir() else shutil.copy2
                    copy(entry, tmp / entry.name)
        for file in tmp.rglob("*"):
            if file.is_file():
                _fsync(file)
        if path.exists():
            old = _temporary_name(path)
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not path.exists():
            os.replace(old, path)  # the new one never arrived: the old one back
        if isinstance(err, OSError):
            raise _named(err, path) from err
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def is_temporary(path: str | Path) -> bool:
    """True for a name made by this module (``.NAME.tmp-XXXXXXXX``)."""
    name = Path(path).name
    return name.startswith(".") and TMP_MARK in name


def remove_stale(folder: str | Path, name: str | None = None) -> list[Path]:
    """Delete temporary files and folders left in ``folder`` by a killed process.

    Args:
        folder: where to look.
        name: only the leftovers of this real name (``.NAME.tmp-...``); None: all of them.
            Call it only when no other process is writing there.
    Returns:
        What was deleted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    prefix = f".{name}{TMP_MARK}" if name else None
    gone = []
    for entry in folder.iterdir():
        if is_temporary(entry) and (prefix is None or entry.name.startswith(prefix)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            gone.append(entry)
    return gone
