"""Durable writes: a file or a folder appears whole under its name, or not at all.

A crash at any point leaves the previous version or the new one, never a torn file:
the content goes to a temporary name in the same folder, is fsynced, renamed over the
target, and the folder is fsynced so that the rename itself survives a power cut.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from layerwise._checks import InvalidInput


def check_out(path: str | os.PathLike, force: bool = False, *, name_it: str = "name a .npz file") -> Path:
    """An output file a command may write: not a folder, and not an existing file unless
    ``force``. Called before the work, so that nothing is computed for a refused path."""
    path = Path(path)
    if path.is_dir():
        raise InvalidInput(f"--out '{path}' is a folder; {name_it}")
    if path.exists() and not force:
        raise FileExistsError(f"--out '{path}' already exists; pass --force to replace it")
    return path


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync(path: Path) -> None:
    """Flush a file or a folder (its entries: a rename in it) to disk; read-only files too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike, write: Callable[[BinaryIO], object], *, keep_previous: str | os.PathLike | None = None
) -> Path:
    """Replace ``path`` by what ``write(f)`` writes into a binary file object. With
    ``keep_previous``, the version being replaced stays there: at every moment ``path``
    holds the old version or the new one, and ``keep_previous`` the one before or the old."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            link = f"{tmp}.prev"
            try:
                os.link(path, link)  # a second name for the old version, then moved over the older one
            except OSError:  # a file system without hard links (vfat, SMB, some FUSE mounts): a copy
                shutil.copyfile(path, link)
            os.replace(link, keep_previous)
            if os.path.exists(link):  # both already named one file (a write killed after this step): rename did nothing
                os.unlink(link)
        os.replace(tmp, path)
        fsync(path.parent)
    except BaseException:
        for leftover in (tmp, f"{tmp}.prev"):
            if os.path.exists(leftover):
                os.unlink(leftover)
        raise
    return path


def atomic_folder(folder: str | os.PathLike, fill: Callable[[Path], object]) -> Path:
    """Create ``folder`` with what ``fill(tmp)`` writes into a temporary folder beside it
    (every file fsynced), renamed into place; an existing folder is never replaced."""
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"folder '{folder}' already exists; it is never overwritten")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        fill(tmp)
        for p in tmp.iterdir():
            if p.is_file():
                fsync(p)
        os.chmod(tmp, 0o755)
        os.rename(tmp, folder)
        fsync(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
