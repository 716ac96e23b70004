"""Listing the images of a folder for a scan, and hashing their contents.

The list is every file with an image extension under the folder, recursively,
sorted by its path relative to the folder (as a POSIX string), so the same
folder gives the same order on every machine and in every process.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from convscope.errors import InvalidRequestError, NotFoundError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def list_images(folder: str | Path, *, confine: bool = False) -> list[str]:
    """Relative POSIX paths of the image files under `folder`, sorted.

    `confine=True` leaves out files (and does not enter folders) whose real location
    is outside the folder's, so symbolic links cannot reach out of it (the server
    uses this for client-started scans).
    """
    root = Path(folder)
    if not root.is_dir():
        raise NotFoundError(f"image folder not found: {root}")
    real_root = root.resolve()
    found: list[str] = []
    seen: set[Path] = {real_root}
    for directory, subdirs, files in os.walk(root, followlinks=not confine):
        base = Path(directory)
        if confine:
            subdirs[:] = [name for name in subdirs if not (base / name).is_symlink()]
        else:  # followed links: never enter a folder twice (no cycles)
            keep = []
            for name in subdirs:
                real = (base / name).resolve()
                if real not in seen:
                    seen.add(real)
                    keep.append(name)
            subdirs[:] = keep
        subdirs.sort()
        for name in files:
            if not is_image_name(name):
                continue
            path = base / name
            if confine and not _inside(path.resolve(), real_root):
                continue
            found.append(path.relative_to(root).as_posix())
    found.sort()
    return found


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def list_digest(paths: Iterable[str]) -> str:
    """One hash for an ordered list of relative paths (detects a changed folder on --resume)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.encode("utf-8", "surrogateescape"))
        digest.update(b"\0")
    return digest.hexdigest()


def safe_subfolder(root: str | Path, relative: str) -> Path:
    """`root/relative` for a client-given relative path, refusing anything that leaves `root`.

    Refused: absolute paths, `..` components, and paths whose real location (after
    resolving symbolic links) is outside the root's real location.
    """
    text = relative.strip().replace("\\", "/")
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if text.startswith("/") or any(part == ".." for part in parts) or "\0" in text:
        raise InvalidRequestError(f"folder {relative!r} must be a relative path without '..'")
    real_root = Path(root).resolve()
    target = Path(root).joinpath(*parts)
    real = target.resolve()
    if not _inside(real, real_root):
        raise InvalidRequestError(f"folder {relative!r} leads outside its scan root")
    if not real.is_dir():
        raise NotFoundError(f"folder {relative!r} does not exist under its scan root")
    return real
