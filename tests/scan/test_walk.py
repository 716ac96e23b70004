"""Listing a folder's images, and the checks on client-given folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from convscope.errors import InvalidRequestError, NotFoundError
from convscope.scan.walk import list_images, safe_subfolder


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_lists_image_files_recursively_sorted_by_relative_path(tmp_path: Path) -> None:
    for name in ("b.PNG", "a/z.jpeg", "a/b/c.webp", "c.bmp", "d.JPG", "e.gif", "f.txt", "a.jpg"):
        touch(tmp_path / name)
    assert list_images(tmp_path) == ["a.jpg", "a/b/c.webp", "a/z.jpeg", "b.PNG", "c.bmp", "d.JPG"]
    with pytest.raises(NotFoundError):
        list_images(tmp_path / "missing")


def test_confine_leaves_out_links_that_lead_outside(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    touch(root / "in.png")
    touch(outside / "secret.png")
    os.symlink(outside, root / "linked-dir")
    os.symlink(outside / "secret.png", root / "linked.png")
    os.symlink(root / "in.png", root / "alias.png")  # stays inside: kept
    os.symlink(root, root / "loop")  # a cycle
    assert list_images(root, confine=True) == ["alias.png", "in.png"]
    assert list_images(root) == ["alias.png", "in.png", "linked-dir/secret.png", "linked.png"]


def test_safe_subfolder_refuses_paths_that_leave_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "cats" / "small").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "escape")
    assert safe_subfolder(root, "cats/small") == (root / "cats" / "small").resolve()
    assert safe_subfolder(root, "") == root.resolve()
    for bad in ("../elsewhere", "cats/../../elsewhere", "/etc", "escape"):
        with pytest.raises(InvalidRequestError):
            safe_subfolder(root, bad)
    with pytest.raises(NotFoundError):
        safe_subfolder(root, "dogs")
