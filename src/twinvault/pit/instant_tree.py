"""The image at one instant as a tree of inodes: what a mount of a point in time shows.

Reads only the catalog (STYLE: pit/ reads the catalog, never the live image): a name is
looked up with `Catalog.version_at`, a directory listed with `Catalog.children_at`, and
a file's chunk list is fetched when the file is opened. Nothing is materialised ahead:
an entry exists once the kernel has asked for it.

Inode numbers are stable for the life of the mount: one per path, handed out on first
sight, except that the names of one hard-link group valid at the instant share one inode
(the group's link count comes from `Catalog.link_counts_at`, read once at start).
Parents of the selection that were never protected themselves (``/srv`` when only
``/srv/data`` was) are synthetic directories: mode 0755, owned by root, times of the
instant. Directories report a link count of 1, as btrfs does: "not counted", which
``find`` and ``fts`` understand; counting subdirectories would cost a listing per stat.

A catalog connection serves one thread at a time: every method takes the tree's lock.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Final

from twinvault.fsmeta import Meta
from twinvault.repository.catalog import Catalog, Version
from twinvault.repository.chunklist import Piece, unpack_chunks
from twinvault.repository.history import unpack_meta

ROOT_INODE: Final = 1  # FUSE's root inode


@dataclass(frozen=True, slots=True)
class Entry:
    """One inode: its metadata at the instant, the path it is read through, its links."""

    inode: int
    path: bytes  # for a hard-linked file: the first of its names that was looked up
    meta: Meta
    nlink: int
    synthetic: bool = False  # a parent of the selection, not in the image

    @property
    def kind(self) -> str:
        return self.meta.kind


class InstantTree:
    def __init__(self, catalog: Catalog, image: str, t: int) -> None:
        self.catalog = catalog
        self.image = image
        self.t = t
        self._lock = threading.Lock()
        self._link_counts = catalog.link_counts_at(image, t)
        self._inode_of: dict[bytes, int] = {}  # path, or link group of a shared file
        self._entries: dict[int, Entry] = {}
        self._children: dict[int, dict[bytes, int]] = {}  # listed directories: name -> inode
        self._listings: dict[int, list[tuple[bytes, Entry]]] = {}  # ... and by name
        root = catalog.version_at(image, b"/", t)
        self._entries[ROOT_INODE] = self._entry(ROOT_INODE, b"/", root)
        self._inode_of[b"/"] = ROOT_INODE

    # -- reads (any thread) ----------------------------------------------------------------

    def entry(self, inode: int) -> Entry | None:
        """Without the lock: entries are immutable and only ever added (one dict look-up
        is atomic), so the event loop never waits for a listing running in a thread."""
        return self._entries.get(inode)

    def lookup(self, parent: int, name: bytes) -> Entry | None:
        """The entry `name` of directory `parent`, or None."""
        with self._lock:
            directory = self._entries.get(parent)
            if directory is None or directory.kind != "dir" or not _plain_name(name):
                return None
            listed = self._children.get(parent)
            if listed is not None:
                inode = listed.get(name)
                return None if inode is None else self._entries[inode]
            path = _join(directory.path, name)
            version = self.catalog.version_at(self.image, path, self.t)
            if version is None and not self.catalog.has_descendants_at(self.image, self.t, path):
                return None
            return self._adopt(path, version)

    def children(self, inode: int) -> list[tuple[bytes, Entry]]:
        """The entries of a directory, by name; listed from the catalog once."""
        with self._lock:
            listing = self._listings.get(inode)
            if listing is None:
                directory = self._entries[inode]
                found = self.catalog.children_at(self.image, self.t, directory.path, content=False)
                listing = sorted((name, self._adopt(_join(directory.path, name), v)) for name, v in found)
                self._children[inode] = {name: entry.inode for name, entry in listing}
                self._listings[inode] = listing
            return listing

    def chunk_list(self, entry: Entry) -> list[Piece]:
        """The pieces of a file's content at the instant (read when the file is opened)."""
        with self._lock:
            version = self.catalog.version_at(self.image, entry.path, self.t)
        if version is None or version.kind != "file":
            raise FileNotFoundError(os.fsdecode(entry.path))
        return unpack_chunks(version.content)

    # -- inodes ----------------------------------------------------------------------------

    def _adopt(self, path: bytes, version: Version | None) -> Entry:
        """The entry of `path` (None: a synthetic directory), with its inode number."""
        key = path
        if version is not None and version.kind == "file" and version.link in self._link_counts:
            key = b"link:" + version.link  # no path starts with "l": paths start with "/"
        inode = self._inode_of.get(key)
        if inode is None:
            inode = self._inode_of[key] = len(self._inode_of) + ROOT_INODE
            self._entries[inode] = self._entry(inode, path, version)
        return self._entries[inode]

    def _entry(self, inode: int, path: bytes, version: Version | None) -> Entry:
        if version is None:
            meta = Meta("dir", 0o755, 0, 0, self.t, self.t, 0, 0, "", ())
            return Entry(inode, path, meta, 1, synthetic=True)
        meta = unpack_meta(version.meta)
        nlink = self._link_counts.get(version.link, 1) if version.kind == "file" else 1
        return Entry(inode, path, meta, nlink)


def _join(directory: bytes, name: bytes) -> bytes:
    return b"/" + name if directory == b"/" else directory + b"/" + name


def _plain_name(name: bytes) -> bool:
    """A name a directory can hold (the kernel never sends others; a check costs nothing)."""
    return bool(name) and name not in (b".", b"..") and b"/" not in name and b"\0" not in name
