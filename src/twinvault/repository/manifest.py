"""The repository's manifest of an image: what it holds under a job's selection.

The walk of the image is the truth (names, kinds, sizes, times, modes, owners);
chunk digests come from the image index when its entry still matches the file, or,
for a checksum mirror, from reading the file itself.

An entry may be in the image and nowhere else: a crash between an op's change of the image
and the group commit that records it (index, history) leaves it there, and a difference
mirror that trusted it would never record it. So an entry changed since the last commit
(its ctime, which no utime can set back, is after the commit's ``settled_ns``) and a file
the index does not know at its size and time are flagged ``indexed: false``, and the
source sends them again. Stale temporary files of an
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
    tree: ImageTree, index: ImageIndex, roots: list[bytes], *, checksum: bool, settled_ns: int | None = None
) -> Iterator[list[list[Any]]]:
    """Entries ``[path, kind, size, mtime_ns, mode, uid, gid, digests, indexed]`` in
    batches (``indexed``: False for what the last commit may not hold; ``settled_ns`` None:
    the commit time is unknown, only the index is asked)."""
    changed_after = (1 << 63) if settled_ns is None else settled_ns
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
        entry = _entry(base, path, None, index, checksum, changed_after)
        if entry is not None:
            batch.append(entry)
    for root in roots:
        indexed = index.files_under(root)
        stack = [root]
        first = _entry(base, root, indexed, index, checksum, changed_after)
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
                entry = _entry(base, path, indexed, index, checksum, changed_after, e)
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
    changed_after: int,
    dirent: os.DirEntry[bytes] | None = None,
) -> list[Any] | None:
    try:
        st = dirent.stat(follow_symlinks=False) if dirent is not None else os.lstat(base + path)
    except OSError:
        return None
    kind = fsmeta.kind_of(st.st_mode)
    digests = b""
    known_here = st.st_ctime_ns < changed_after
    if kind == "file":
        known = indexed.get(path) if indexed is not None else index.file(path)
        matches = known is not None and known.size == st.st_size and known.mtime_ns == st.st_mtime_ns
        known_here = known_here and matches
        if checksum:
            try:
                digests, _ = file_digests(os.fsdecode(base + path))
            except OSError:
                digests = b""
        elif matches and known is not None:
            digests = digests_of(known.pieces_blob)
    size = st.st_size if kind == "file" else 0
    mode = stat.S_IMODE(st.st_mode)
    return [path, kind, size, st.st_mtime_ns, mode, st.st_uid, st.st_gid, digests, known_here]
