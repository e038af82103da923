"""A point in time as an op stream: the image at an instant, in the ops the applier takes.

Restore and data recovery do not get their own writer: they replay the versions valid
at the chosen instant as the same ops protection sends (``mkdir``, ``file`` with data and
hole segments, ``symlink``, ``special``, ``link`` for the other names of a hard-linked
inode, ``meta``), so the one applier writes them, atomically, with exact metadata and
the same path safety (ARCHITECTURE: one applier for protection and recovery).

Reads only the catalog and the chunk store, never the live image (STYLE: pit/ reads the
catalog). Chunks are fetched a window at a time so a large file never sits in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.protocol import messages as m
from twinvault.repository.catalog import Catalog, Version
from twinvault.repository.chunklist import HOLE_DIGEST, Piece, unpack_chunks
from twinvault.repository.chunkstore import ChunkStore
from twinvault.repository.history import unpack_meta

WINDOW_BYTES: Final = 4 << 20  # new data per fdata frame, as protection sends it
SMALL_FILE: Final = 64 << 10


@dataclass(slots=True)
class StreamTotals:
    files: int = 0
    directories: int = 0
    links: int = 0
    file_bytes: int = 0
    # Files left out because a chunk is missing or damaged: (path, error); the rest of
    # the point in time is still reconstructed.
    damaged: list[tuple[bytes, str]] = field(default_factory=list)


def versions_for(catalog: Catalog, image: str, t: int | None, includes: Iterable[bytes]) -> Iterator[Version]:
    """The versions valid at ``t`` (None = live) under any of ``includes`` (none = all), by path."""
    roots = sorted(set(includes))
    # An include under another include adds nothing.
    roots = [r for i, r in enumerate(roots) if not any(_within(r, o) for o in roots[:i])]
    if not roots:
        yield from catalog.versions_at(image, t)
        return
    for root in roots:
        yield from catalog.versions_at(image, t, root)


def _within(path: bytes, root: bytes) -> bool:
    return path == root or path.startswith(root.rstrip(b"/") + b"/")


class PointInTimeStream:
    """Iterates ops for the image at one instant; ``totals`` counts what it produced."""

    def __init__(
        self,
        store: ChunkStore,
        versions: Iterable[Version],
        *,
        skip_through: int = 0,
        compressed: Callable[[], bool] = lambda: False,
    ) -> None:
        """``skip_through``: ops up to that sequence number were applied by an earlier,
        interrupted run (the stream is deterministic for one point): not sent again.
        ``compressed``: whether the link carries compressed chunks now (asked per window,
        so a change on a running job applies from the next window)."""
        self._store = store
        self._compressed = compressed
        self._versions = versions
        self._seq = 0
        self._skip = skip_through
        self.totals = StreamTotals()

    def __iter__(self) -> Iterator[list[Any]]:
        for op in self._ops():
            if op[1] > self._skip:
                yield op

    def _ops(self) -> Iterator[list[Any]]:
        linked: dict[bytes, bytes] = {}  # hard-link group -> the first name written
        directories: list[Version] = []
        for version in self._versions:
            if version.kind == "dir":
                directories.append(version)
                self.totals.directories += 1
                yield [m.MKDIR, self._next(), version.path, unpack_meta(version.meta).to_wire()]
            elif version.kind == "file":
                first = linked.get(version.link)
                if first is not None:
                    self.totals.links += 1
                    yield [m.LINK, self._next(), version.path, first]
                    continue
                try:
                    yield from self._file(version)
                except TwinvaultError as exc:
                    if exc.code not in (errors.CHUNK_MISSING, errors.CHUNK_CORRUPT, errors.STORE_UNREACHABLE):
                        raise
                    # A half-sent file is dropped by the applier at the next op.
                    self.totals.damaged.append((version.path, exc.message))
                    continue
                linked[version.link] = version.path
                self.totals.files += 1
                self.totals.file_bytes += version.size
            elif version.kind == "symlink":
                yield [m.SYMLINK, self._next(), version.path, unpack_meta(version.meta).to_wire()]
            else:
                yield [m.SPECIAL, self._next(), version.path, unpack_meta(version.meta).to_wire()]
        # Directory times last, deepest first: writing their entries moved them.
        for version in reversed(directories):
            yield [m.META, self._next(), version.path, unpack_meta(version.meta).to_wire()]

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _file(self, version: Version) -> Iterator[list[Any]]:
        meta = unpack_meta(version.meta).to_wire()
        pieces = unpack_chunks(version.content)
        seq = self._next()
        if seq <= self._skip:
            yield [m.MARK, seq, "skipped"]  # done by an earlier run: no chunk is read
            return
        if version.size <= SMALL_FILE:
            segments = self._segments(pieces)  # before the op: a damaged chunk sends nothing
            yield [m.FILE, seq, version.path, version.size, b"", segments, meta]
            return
        yield [m.FBEGIN, seq, version.path, version.size, b""]
        for window in _windows(pieces):
            yield [m.FDATA, seq, self._segments(window)]
        yield [m.FEND, seq, meta]

    def _segments(self, pieces: list[Piece]) -> list[list[Any]]:
        wanted = [p.digest for p in pieces if p.digest != HOLE_DIGEST]
        if not self._compressed():
            data = dict(self._store.get_many(wanted)) if wanted else {}
            return [
                [m.SEG_HOLE, p.length] if p.digest == HOLE_DIGEST else [m.SEG_DATA, p.digest, data[p.digest]]
                for p in pieces
            ]
        # A chunk the store holds compressed goes as its stored frame: never compressed
        # twice. One the store holds plain was found not worth compressing when it was
        # stored: it goes plain, without a second try.
        stored = {digest: (plain, frame) for digest, plain, frame in self._store.get_frames(wanted)}
        segments: list[list[Any]] = []
        for piece in pieces:
            if piece.digest == HOLE_DIGEST:
                segments.append([m.SEG_HOLE, piece.length])
                continue
            plain, frame = stored[piece.digest]
            if frame is None:
                segments.append([m.SEG_DATA, piece.digest, plain])
            else:
                segments.append([m.SEG_ZDATA, piece.digest, frame, len(plain)])
        return segments


def payload_of(op: list[Any]) -> tuple[int, int]:
    """(file bytes, the same bytes as they travel) of one op, for the sent statistics."""
    if op[0] == m.FILE:
        segments = op[5]
    elif op[0] == m.FDATA:
        segments = op[2]
    else:
        return 0, 0
    plain = wire = 0
    for seg in segments:
        if seg[0] == m.SEG_DATA:
            plain += len(seg[2])
            wire += len(seg[2])
        elif seg[0] == m.SEG_ZDATA:
            plain += seg[3]
            wire += len(seg[2])
    return plain, wire


def _windows(pieces: list[Piece]) -> Iterator[list[Piece]]:
    window: list[Piece] = []
    size = 0
    for piece in pieces:
        window.append(piece)
        if piece.digest != HOLE_DIGEST:
            size += piece.length
        if size >= WINDOW_BYTES:
            yield window
            window, size = [], 0
    if window:
        yield window
