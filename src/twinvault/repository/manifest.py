"""The repository's manifest of an image: what it holds under a job's selection.

The walk of the image is the truth (names, kinds, sizes, times, modes, owners);
chunk digests come from the image index when its entry still matches the file, or,
for a checksum mirror, from reading the file itself.

An entry may be in the image and nowhere else: a crash between an op's change of the image
and the group commit that records it (index, history) leaves it there, and a difference
mirror that trusted it would never record it. So an entry changed since the last commit
(its ctime, which no utime can set back, is in no commit: see ``Session.committed``) and a file
the index does not know at its size and time are flagged ``indexed: false``, and the
source sends them again. Stale temporary files of an
interrupted transfer are removed on the way, so nothing a crash leaves behind needs
a human.
"""

from __future__ import annotations

import contextlib
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterator
from typing import Any

from twinvault import fsmeta
from twinvault.repository.image_index import ImageIndex, IndexedRow, digests_of
from twinvault.repository.image_tree import TEMP_PREFIX, ImageTree
from twinvault.source.chunker import file_digests

BATCH = 2000  # entries of a manifest frame, at most
# Chunk digests of a manifest frame, about (a frame may hold 32 MiB; a file of 2 GiB
# has ~1 MiB of them, so a count of entries alone does not bound a frame).
BATCH_BYTES = 4 << 20
# How far the image walk's thread reads ahead of the entries made: up to this many
# slices of at most READ_AHEAD_SLICE entries (~30 MB of DirEntry objects with their
# stat at most). Cold, it reads on while the index is loaded (16 directories did not
# cover that, and the walk then stopped on a full queue).
READ_AHEAD_SLICES = 64
READ_AHEAD_SLICE = 1000
_TEMP = TEMP_PREFIX.encode()


def manifest_batches(
    tree: ImageTree,
    index: ImageIndex,
    roots: list[bytes],
    *,
    checksum: bool,
    committed: Callable[[int], bool] | None = None,
) -> Iterator[list[list[Any]]]:
    """Entries ``[path, kind, size, mtime_ns, mode, uid, gid, digests, indexed]`` in
    batches (``indexed``: False for what no commit may hold: ``committed`` says whether a
    change made at a ctime is committed; None: the commit times are unknown, only the index
    is asked)."""
    is_committed = committed if committed is not None else _always
    batch: list[list[Any]] = []
    batch_bytes = 0
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
        entry = _entry(base, path, None, index, checksum, is_committed)
        if entry is not None:
            batch.append(entry)
    for root in roots:
        # The image's directories are read on a thread while the index is loaded and
        # entries are made of what was read before: cold, the reads wait for the disk.
        walk = _ImageWalk(base, root)
        try:
            indexed = index.files_under(root)
            first = _entry(base, root, indexed, index, checksum, is_committed)
            if first is None:
                continue
            batch.append(first)
            batch_bytes += len(first[7])
            if first[1] != "dir":
                continue
            for directory, entries in walk:
                prefix = directory.rstrip(b"/") + b"/"
                at = 0
                while at < len(entries):
                    at, added = _add_entries(
                        batch, base, prefix, entries, at, indexed, index, checksum, is_committed,
                        room=(BATCH - len(batch), BATCH_BYTES - batch_bytes),
                    )  # fmt: skip
                    batch_bytes += added
                    if len(batch) >= BATCH or batch_bytes >= BATCH_BYTES:
                        yield batch
                        batch, batch_bytes = [], 0
        finally:
            walk.close()
    yield batch


class _ImageWalk:
    """The directories under ``root`` in the image, each with its entries and their lstat
    already taken (`os.DirEntry` keeps it), in the walk's order (a directory's entries,
    then its subdirectories, depth first), read on a thread of its own up to
    `READ_AHEAD_SLICES` slices ahead; stale temporary files are removed on the way. Why:
    a cold walk of 50,000 entries waited ~0.6 s on the disk and spent ~0.3 s making
    entries, one after the other; the thread's reads wait without the GIL while the
    caller works."""

    def __init__(self, base: bytes, root: bytes) -> None:
        self._base = base
        self._ready: queue.Queue[tuple[bytes, list[os.DirEntry[bytes]]] | None] = queue.Queue(
            READ_AHEAD_SLICES
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(root,), name="manifest-walk", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[tuple[bytes, list[os.DirEntry[bytes]]]]:
        while (item := self._ready.get()) is not None:
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _read(self, root: bytes) -> None:
        try:
            stack = [root]
            while stack and not self._stop.is_set():
                directory = stack.pop()
                try:
                    with os.scandir(self._base + directory) as it:
                        entries = list(it)
                except OSError:
                    continue  # gone or unreadable: the manifest simply has nothing under it
                prefix = directory.rstrip(b"/") + b"/"
                kept: list[os.DirEntry[bytes]] = []
                for e in entries:
                    if e.name.startswith(_TEMP):
                        _remove_stale_temp(self._base + directory, e.path)
                        continue
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    kept.append(e)
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(prefix + e.name)
                # In slices: the queue's bound is then one of entries, whatever a
                # directory holds.
                for at in range(0, len(kept), READ_AHEAD_SLICE):
                    self._put((directory, kept[at : at + READ_AHEAD_SLICE]))
        finally:
            self._put(None)

    def _put(self, item: tuple[bytes, list[os.DirEntry[bytes]]] | None) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(queue.Full):
                self._ready.put(item, timeout=0.1)
                return


def _row(index: ImageIndex, path: bytes) -> IndexedRow | None:
    known = index.file(path)
    return None if known is None else (path, known.size, known.mtime_ns, known.pieces_blob)


def _always(ctime_ns: int) -> bool:
    return True


def _remove_stale_temp(directory: bytes, path: bytes) -> None:
    """Remove a crash's half-received file, keeping the directory's times: the entry of
    the directory is already in the manifest, and its times are the source's."""
    with contextlib.suppress(OSError):
        st = os.stat(directory)
        os.unlink(path)
        os.utime(directory, ns=(st.st_atime_ns, st.st_mtime_ns))


def _add_entries(
    batch: list[list[Any]],
    base: bytes,
    prefix: bytes,
    entries: list[os.DirEntry[bytes]],
    at: int,
    indexed: dict[bytes, IndexedRow],
    index: ImageIndex,
    checksum: bool,
    committed: Callable[[int], bool],
    *,
    room: tuple[int, int],
) -> tuple[int, int]:
    """`_entry` of ``entries[at:]`` into ``batch`` until ``room`` (entries, digest bytes)
    is used up; returns where it stopped and the digest bytes added. Regular files of a
    difference mirror are made inline: they are nearly all of an image, and this loop is
    most of the manifest's CPU (its wall time is the walk's, in the kernel)."""
    room_entries, room_bytes = room
    added = 0
    stop = min(len(entries), at + room_entries)
    while at < stop and added < room_bytes:
        e = entries[at]
        at += 1
        path = prefix + e.name
        st = e.stat(follow_symlinks=False)  # taken on the walk's thread
        mode = st.st_mode
        if checksum or not stat.S_ISREG(mode):
            entry = _entry(base, path, indexed, index, checksum, committed, e)
            if entry is not None:
                batch.append(entry)
                added += len(entry[7])
            continue
        size, mtime_ns = st.st_size, st.st_mtime_ns
        row = indexed.get(path)
        if row is not None and row[1] == size and row[2] == mtime_ns:
            digests = digests_of(row[3])
            added += len(digests)
            known = committed(st.st_ctime_ns)
            batch.append(
                [path, "file", size, mtime_ns, stat.S_IMODE(mode), st.st_uid, st.st_gid, digests, known]
            )
        else:
            batch.append([path, "file", size, mtime_ns, stat.S_IMODE(mode), st.st_uid, st.st_gid, b"", False])
    return at, added


def _entry(
    base: bytes,
    path: bytes,
    indexed: dict[bytes, IndexedRow] | None,
    index: ImageIndex,
    checksum: bool,
    committed: Callable[[int], bool],
    dirent: os.DirEntry[bytes] | None = None,
) -> list[Any] | None:
    try:
        st = dirent.stat(follow_symlinks=False) if dirent is not None else os.lstat(base + path)
    except OSError:
        return None
    kind = fsmeta.kind_of(st.st_mode)
    digests = b""
    known_here = committed(st.st_ctime_ns)
    if kind == "file":
        known = indexed.get(path) if indexed is not None else _row(index, path)
        matches = known is not None and known[1] == st.st_size and known[2] == st.st_mtime_ns
        known_here = known_here and matches
        if checksum:
            try:
                digests, _ = file_digests(os.fsdecode(base + path))
            except OSError:
                digests = b""
        elif matches and known is not None:
            digests = digests_of(known[3])
    size = st.st_size if kind == "file" else 0
    mode = stat.S_IMODE(st.st_mode)
    return [path, kind, size, st.st_mtime_ns, mode, st.st_uid, st.st_gid, digests, known_here]
