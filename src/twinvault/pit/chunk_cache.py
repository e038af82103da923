"""Reading files of a point in time by offset: chunk lists mapped to reads, decoded chunks
cached, sequential readers served ahead.

A mounted file is never materialised. `OpenFile` maps ``read(offset, size)`` to the pieces
of its chunk list that cover it (holes read as zeros, no chunk); `ChunkCache` fetches the
chunks it lacks from the store in batches (one ``get_spans`` per batch: neighbours in a
pack are one read) on a small pool of threads, and keeps decoded chunks in an LRU bounded
in bytes, shared by every open file of the mount. A file read sequentially gets its next
pieces requested before they are asked for, the window doubling from `AHEAD_FIRST` to
`AHEAD_MAX` while the reads stay sequential, so the store's reads and decoding overlap the
kernel's requests instead of following them.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final, Protocol

from twinvault.repository.chunklist import HOLE_DIGEST, Piece
from twinvault.repository.chunkstore.fetch import Span

log = logging.getLogger(__name__)

CACHE_BYTES: Final = 96 << 20  # decoded chunks kept (64 KiB each on average)
AHEAD_FIRST: Final = 1 << 20  # read-ahead after the first sequential read ...
AHEAD_MAX: Final = 16 << 20  # ... doubling up to this while reads stay sequential
BATCH_BYTES: Final = 16 << 20  # chunks per store request: one segment (`Span`) per pack
# Fetch threads: one maps a run (its pages come from disk) while the other hashes its
# own (BLAKE3 and the map release the GIL); on the 2-core test machines four read no
# faster than two and cost a third more CPU in hand-offs.
FETCH_THREADS: Final = 2


_QUEUED: Final[Future[None]] = Future()  # in a batch being gathered (never waited on)
_QUEUED.set_result(None)


class ChunkSource(Protocol):
    """Where chunks come from: `ChunkStore` or `StoreReader`."""

    def get_spans(self, digests: Sequence[bytes]) -> Iterable[tuple[bytes, Span]]: ...

    def advise(self, digests: Sequence[bytes]) -> None: ...


class ChunkCache:
    """Decoded chunks by digest (LRU, bounded in bytes) and the fetches in flight."""

    def __init__(
        self,
        source: ChunkSource,
        *,
        capacity: int = CACHE_BYTES,
        batch_bytes: int = BATCH_BYTES,
        threads: int = FETCH_THREADS,
    ) -> None:
        self._source = source
        self._capacity = capacity
        # A reader's read-ahead must not push out what it is about to read.
        self.ahead_max = min(AHEAD_MAX, capacity // 4)
        self._batch_bytes = min(batch_bytes, max(capacity // 4, 1))  # a batch never evicts itself
        self._lock = threading.Lock()
        self._chunks: OrderedDict[bytes, Span] = OrderedDict()
        self._bytes = 0
        self._inflight: dict[bytes, Future[None]] = {}
        # Chunks whose last fetch failed, and why: a read that needs one fails with it;
        # the next request tries again (a backend may be back).
        self._failed: dict[bytes, Exception] = {}
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="chunk-fetch")
        # Advice has its own thread: queued behind the fetches it is meant to precede, it
        # came too late to matter (a cold 1 GiB read through two fetch threads: 360 MB/s
        # with the advice in their pool, 806 MB/s with it on its own thread).
        self._adviser = ThreadPoolExecutor(1, thread_name_prefix="chunk-advise")

    def cached(self, digest: bytes) -> Span | None:
        """The chunk if it is cached; raises what its last fetch failed with, if it did."""
        with self._lock:
            span = self._chunks.get(digest)
            if span is not None:
                self._chunks.move_to_end(digest)
                return span
            failure = self._failed.get(digest)
        if failure is not None:
            raise failure
        return None

    def request(self, pieces: Iterable[Piece], *, ahead: bool = False) -> list[Future[None]]:
        """Start fetching the data pieces not cached nor in flight; the futures to wait
        for before all of `pieces` are cached or failed (see `cached`). Pieces read
        `ahead` are also handed to the store's `advise` at once, on a thread of its own."""
        waits: dict[int, Future[None]] = {}
        batch: list[bytes] = []
        batches: list[list[bytes]] = []
        size = 0
        with self._lock:
            for piece in pieces:
                digest = piece.digest
                if digest == HOLE_DIGEST or digest in self._chunks:
                    continue
                running = self._inflight.get(digest)
                if running is not None:
                    waits[id(running)] = running
                    continue
                self._failed.pop(digest, None)
                self._inflight[digest] = _QUEUED  # a second piece of the same chunk waits
                batch.append(digest)
                size += piece.length
                if size >= self._batch_bytes:
                    batches.append(batch)
                    batch, size = [], 0
            if batch:
                batches.append(batch)
            if batches and (ahead or len(batches) > 1):
                # Read-ahead (or several batches): the disk starts on all of it now, with
                # its whole queue depth, not blob by blob when a fetch thread gets to it.
                self._adviser.submit(self._advise, [d for b in batches for d in b])
            for batch in batches:
                self._submit_locked(batch, waits)
        return list(waits.values())

    def _advise(self, digests: list[bytes]) -> None:
        try:
            self._source.advise(digests)
        except Exception as exc:  # advice only: the fetch itself reports what is wrong
            log.debug("read-ahead advice failed: %s", exc)

    def _submit_locked(self, digests: list[bytes], waits: dict[int, Future[None]]) -> None:
        future = self._pool.submit(self._load, digests)
        for digest in digests:
            self._inflight[digest] = future
        waits[id(future)] = future

    def _load(self, digests: list[bytes]) -> None:
        """Fetch a batch; if the store fails it (one missing or damaged chunk fails a whole
        `get_spans`), fetch what is left one by one so only the bad chunks fail."""
        try:
            try:
                self._keep(self._source.get_spans(digests))
            except Exception:
                for digest in digests:
                    if self.cached(digest) is not None:
                        continue
                    try:
                        self._keep(self._source.get_spans([digest]))
                    except Exception as exc:
                        with self._lock:
                            self._failed[digest] = exc
        finally:
            with self._lock:
                for digest in digests:
                    self._inflight.pop(digest, None)

    def _keep(self, spans: Iterable[tuple[bytes, Span]]) -> None:
        got = list(spans)  # fetched (and verified) before the lock is taken
        with self._lock:
            for digest, span in got:
                if digest in self._chunks:
                    continue
                self._chunks[digest] = span
                self._bytes += len(span.data)
            while self._bytes > self._capacity and len(self._chunks) > 1:
                _, old = self._chunks.popitem(last=False)
                self._bytes -= len(old.data)

    def close(self) -> None:
        self._adviser.shutdown(wait=True, cancel_futures=True)
        self._pool.shutdown(wait=True, cancel_futures=True)


class OpenFile:
    """One open file: its pieces by offset, and where its reader is heading."""

    def __init__(self, path: bytes, pieces: list[Piece], ahead_max: int = AHEAD_MAX) -> None:
        self.path = path
        self.pieces = pieces
        self._ahead_max = ahead_max
        self.starts: list[int] = []
        at = 0
        for piece in pieces:
            self.starts.append(at)
            at += piece.length
        self.size = at
        self._next = 0  # where a sequential reader reads next
        self._window = 0  # read-ahead window, 0 until reads are sequential
        self._ahead = 0  # pieces before this index have been requested

    def span(self, offset: int, size: int) -> tuple[int, int]:
        """Indexes [first, last) of the pieces covering [offset, offset + size)."""
        end = min(offset + size, self.size)
        if offset >= end:
            return (0, 0)
        first = bisect.bisect_right(self.starts, offset) - 1
        last = bisect.bisect_left(self.starts, end)
        return (first, last)

    def plan(self, offset: int, size: int) -> tuple[list[Piece], list[Piece]]:
        """The pieces this read needs, and those to request ahead of it.

        A read near the head of the stream (the kernel sends several of one sequential
        reader's requests at once, and they need not arrive in order) keeps it
        sequential; a read anywhere else is a jump, which drops the read-ahead until the
        reads prove sequential again."""
        first, last = self.span(offset, size)
        needed = self.pieces[first:last]
        slack = max(self._window, AHEAD_FIRST)
        if self._next - slack <= offset <= self._next + slack:
            self._window = min(max(self._window * 2, AHEAD_FIRST), self._ahead_max)
            self._next = max(self._next, offset + size)
        else:
            self._window = 0
            self._ahead = last
            self._next = offset + size
        if not self._window:
            return needed, []
        _, until = self.span(self._next, self._window)
        start = max(last, self._ahead)
        if until <= start or self.starts[start] - self._next >= self._window // 2:
            return needed, []  # more than half a window is requested already
        # Topped up half a window or more at a time: the store reads it in large runs.
        self._ahead = until
        return needed, self.pieces[start:until]

    def assemble(self, offset: int, size: int, cache: ChunkCache) -> bytes | memoryview | None:
        """The bytes of [offset, offset + size) cut to the file's end; None if a piece
        is not cached (evicted meanwhile: request it again). Raises what the fetch of a
        needed chunk failed with.

        Neighbouring chunks read into one segment (`Span`) are one slice of it: a read
        that lies in one segment is answered without a copy; one across segments, holes
        or decoded chunks is joined (one copy)."""
        first, last = self.span(offset, size)
        end = min(offset + size, self.size)
        parts: list[bytes | memoryview] = []
        segment: memoryview | None = None  # the segment of the slice being extended ...
        seg_lo = seg_hi = 0  # ... and its bounds in it
        for index in range(first, last):
            piece, start = self.pieces[index], self.starts[index]
            lo, hi = max(offset, start) - start, min(end, start + piece.length) - start
            if piece.digest == HOLE_DIGEST:
                part: bytes | memoryview = bytes(hi - lo)
            else:
                found = cache.cached(piece.digest)
                if found is None:
                    return None
                if found.segment is not None:
                    if found.segment is segment and found.start + lo == seg_hi:
                        seg_hi = found.start + hi  # the next bytes of the same segment
                        continue
                    if segment is not None:
                        parts.append(segment[seg_lo:seg_hi])
                    segment, seg_lo, seg_hi = found.segment, found.start + lo, found.start + hi
                    continue
                data = found.data
                part = data if lo == 0 and hi == len(data) else memoryview(data)[lo:hi]
            if segment is not None:
                parts.append(segment[seg_lo:seg_hi])
                segment = None
            parts.append(part)
        if segment is not None:
            parts.append(segment[seg_lo:seg_hi])
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)  # the one copy of a read that spans several buffers
