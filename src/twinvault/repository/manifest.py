"""The repository's manifest of an image: what it holds under a job's selection.

The walk of the image is the truth (names, kinds, sizes, times, modes, owners);
chunk digests come from the image index when its entry still matches the file, or,
for a checksum mirror, from reading the file itself. Stale temporary files of an
interrupted transfer are removed on the way, so nothing a crash leaves behind needs
a human.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from typing import Any

from twinvault import fsmeta
from twinvault.repository.image_index import ImageIndex, digests_of
from twinvault.repository.image_tree import TEMP_PREFIX, ImageTree
from twinvault.source.chunker import file_digests

BATCH = 2000
_TEMP = TEMP_PREFIX.encode()


def manifest_batches(
    tree: ImageTree, index: ImageIndex, roots: list[bytes], *, checksum: bool
) -> Iterator[list[list[Any]]]:
    """Entries ``[path, kind, size, mtime_ns, mode, uid, gid, digests]`` in batches."""
    batch: list[list[Any]] = []
    base = os.fsencode(tree.root)
    ancestors: set[bytes] = set()
    for root in roots:
        parent = os.path.dirname(root)
        while parent not in ancestors:
            ancestors.add(parent)
            if parent == b"/":
                break
            parent = os.path.dirname(parent)
    for path in sorted(ancestors):
        entry = _entry(base, path, None, index, checksum)
        if entry is not None:
            batch.append(entry)
    for root in roots:
        indexed = index.files_under(root)
        stack = [root]
        first = _entry(base, root, indexed, index, checksum)
        if first is None:
            continue
        batch.append(first)
        if first[1] != "dir":
            continue
        while stack:
            directory = stack.pop()
            try:
                with os.scandir(base + directory) as it:
                    entries = list(it)
            except OSError:
                continue
            prefix = directory.rstrip(b"/") + b"/"
            for e in entries:
                name = e.name
                if name.startswith(_TEMP):
                    _remove_stale_temp(base + directory, e.path)
                    continue
                path = prefix + name
                entry = _entry(base, path, indexed, index, checksum, e)
                if entry is None:
                    continue
                batch.append(entry)
                if entry[1] == "dir":
                    stack.append(path)
                if len(batch) >= BATCH:
                    yield batch
                    batch = []
    yield batch


def _remove_stale_temp(directory: bytes, path: bytes) -> None:
    """Remove a crash's half-received file, keeping the directory's times: the entry of
    the directory is already in the manifest, and its times are the source's."""
    with contextlib.suppress(OSError):
        st = os.stat(directory)
        os.unlink(path)
        os.utime(directory, ns=(st.st_atime_ns, st.st_mtime_ns))


def _entry(
    base: bytes,
    path: bytes,
    indexed: dict[bytes, Any] | None,
    index: ImageIndex,
    checksum: bool,
    dirent: os.DirEntry[bytes] | None = None,
) -> list[Any] | None:
    try:
        st = dirent.stat(follow_symlinks=False) if dirent is not None else os.lstat(base + path)
    except OSError:
        return None
    kind = fsmeta.kind_of(st.st_mode)
    digests = b""
    if kind == "file":
        if checksum:
            try:
                digests, _ = file_digests(os.fsdecode(base + path))
            except OSError:
                digests = b""
        else:
            known = indexed.get(path) if indexed is not None else index.file(path)
            if known is not None and known.size == st.st_size and known.mtime_ns == st.st_mtime_ns:
                digests = digests_of(known.pieces_blob)
    size = st.st_size if kind == "file" else 0
    return [path, kind, size, st.st_mtime_ns, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, digests]
