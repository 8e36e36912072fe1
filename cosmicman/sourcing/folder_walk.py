"""The walk of a folder dataset: every entry under its root accounted for, no link followed out of it.

Each entry the walk meets that is not a directory (a file, a link of any kind, a pipe ...) ends as
either a *listed* image, offered to sourcing batches, or a *skipped* entry with a reason code and a
short description. The description never quotes the entry's content: a link out of the root is refused
by where it points, before anything is opened, and nothing here reads a file at all.

On local disk the walk is a streaming ``os.scandir`` descent that never follows a link: a link to a file
is resolved and kept only when its target lies inside the root (it is then read like any file, and its
bytes de-duplicate against the target's); a link to a directory is never descended (the directory, when
it lies inside the root, is walked under its own path, so nothing is counted twice and no link loop can
trap the walk). Object stores (any other fsspec filesystem) have no links: their files are classified
by name only.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from fsspec.implementations.local import LocalFileSystem

from cosmicman.core.imageio import FORMAT_EXTENSIONS

# The suffixes of every format the ingest's decode check takes (core.imageio.FORMAT_EXTENSIONS), with
# their usual spellings: a folder source offers no fewer formats than the pool accepts from the web.
IMAGE_SUFFIXES = tuple(sorted({f".{ext}" for ext in FORMAT_EXTENSIONS.values()} | {".jpeg", ".jpe", ".jfif", ".tiff"}))

# Reason codes of a skipped entry.
LINK_OUTSIDE_ROOT = "link_outside_root"
BROKEN_LINK = "broken_link"
LINK_TO_DIRECTORY = "link_to_directory"
NOT_A_REGULAR_FILE = "not_a_regular_file"
UNREADABLE_DIRECTORY = "unreadable_directory"
UNSUPPORTED_EXTENSION = "unsupported_extension"
OUTSIDE_IMAGE_FOLDER = "outside_image_folder"
CAPTIONS_FILE = "captions_file"
SKIP_REASONS = (
    LINK_OUTSIDE_ROOT,
    BROKEN_LINK,
    LINK_TO_DIRECTORY,
    NOT_A_REGULAR_FILE,
    UNREADABLE_DIRECTORY,
    UNSUPPORTED_EXTENSION,
    OUTSIDE_IMAGE_FOLDER,
    CAPTIONS_FILE,
)


@dataclass(frozen=True)
class WalkEntry:
    """One entry under the root: ``path`` relative to the root (posix), ``reason`` None when listed."""

    path: str
    reason: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class FolderLayout:
    """Where a layout keeps its photos (``image_dir``, relative to the root, "" for anywhere) and which
    files beside them are its caption files."""

    image_dir: str
    caption_files: tuple[str, ...]


class RefusedRead(ValueError):
    """An item the folder source will not read; ``reason`` is one of ``SKIP_REASONS``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def is_inside(path: str, root: str) -> bool:
    """Whether an absolute, resolved ``path`` is ``root`` itself or lies below it (by path components:
    ``/data/ds2`` is not inside ``/data/ds``)."""
    return os.path.commonpath([path, root]) == root


def walk_folder(fs, root: str, layout: FolderLayout) -> Iterator[WalkEntry]:
    """Every non-directory entry under ``root``, classified; local disk without following any link."""
    if isinstance(fs, LocalFileSystem):
        real_root = os.path.realpath(root)
        for rel, entry in _scan(real_root, ""):
            yield _classify_local(rel, entry, real_root, layout)
        return
    base = root.rstrip("/")
    for path in fs.find(base):
        yield _classify_name(posixpath.relpath(path, base), layout)


def _scan(directory: str, rel_dir: str) -> Iterator[tuple[str, os.DirEntry | None]]:
    """(relative path, entry) for each non-directory entry, depth first; a directory that cannot be read
    is yielded with entry None, so that it is accounted for too."""
    try:
        it = os.scandir(directory)
    except OSError:
        yield rel_dir, None
        return
    with it:  # streamed: a flat folder of millions of files is never held as a list of entries
        for entry in it:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.is_dir(follow_symlinks=False):
                yield from _scan(entry.path, rel)
            else:
                yield rel, entry


def _classify_local(rel: str, entry: os.DirEntry | None, real_root: str, layout: FolderLayout) -> WalkEntry:
    if entry is None:
        return WalkEntry(rel, UNREADABLE_DIRECTORY, "a directory the walk cannot list; its files are not counted")
    if entry.is_symlink():
        target = os.path.realpath(entry.path)
        if not is_inside(target, real_root):
            return WalkEntry(rel, LINK_OUTSIDE_ROOT, "a link that points out of the dataset root; not followed")
        if not os.path.exists(target):
            return WalkEntry(rel, BROKEN_LINK, "a link whose target does not exist")
        if os.path.isdir(target):
            return WalkEntry(
                rel, LINK_TO_DIRECTORY, "a link to a directory inside the root, walked under its own path instead"
            )
        if not stat.S_ISREG(os.stat(target).st_mode):
            return WalkEntry(rel, NOT_A_REGULAR_FILE, "a link to something that is not a regular file")
        return _classify_name(rel, layout)
    if not entry.is_file(follow_symlinks=False):
        return WalkEntry(rel, NOT_A_REGULAR_FILE, "not a regular file (a pipe, socket or device)")
    return _classify_name(rel, layout)


def _classify_name(rel: str, layout: FolderLayout) -> WalkEntry:
    if rel in layout.caption_files:
        return WalkEntry(rel, CAPTIONS_FILE, "the dataset's captions, read as captions")
    if layout.image_dir and not rel.startswith(f"{layout.image_dir}/"):
        return WalkEntry(rel, OUTSIDE_IMAGE_FOLDER, f"not in the layout's image folder {layout.image_dir}/")
    suffix = posixpath.splitext(rel)[1].lower()
    if suffix not in IMAGE_SUFFIXES:
        shown = suffix if suffix and len(suffix) <= 16 and suffix.isprintable() else "no extension"
        return WalkEntry(rel, UNSUPPORTED_EXTENSION, f"{shown}: not an image extension the pool takes")
    return WalkEntry(rel)


def read_inside_root(path: str, root: str) -> bytes:
    """A local file's bytes, refused (``RefusedRead``) unless its resolved path lies inside ``root`` and
    is a regular file. Resolved at read time, so a file swapped for a link after the listing is caught."""
    real_root = os.path.realpath(root)
    target = os.path.realpath(path)
    if not is_inside(target, real_root):
        raise RefusedRead(LINK_OUTSIDE_ROOT, "a link that points out of the dataset root; not followed")
    # O_NOFOLLOW: the resolved path has no link left, unless one was put there since; O_NONBLOCK: a pipe
    # swapped in must not hang the open.
    fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise RefusedRead(NOT_A_REGULAR_FILE, "not a regular file (a pipe, socket or device)")
        return f.read()
