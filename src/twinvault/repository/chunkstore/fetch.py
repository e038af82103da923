"""Reading chunks back: find each blob's pack wherever it is now, read it, decode, verify.

One read path for `ChunkStore` (the daemon's store, which also knows the blobs of its
open pack that are not indexed yet) and `StoreReader` (a read-only view of that store
from another process, `reader.py`): each hands `BlobFetcher` its way of locating a blob.
A pack is looked for in ``open/``, then ``sealed/``, then on the backend; every move of a
pack makes it appear in the next place before it leaves the previous one, so that order
always finds it, and a blob that a collection moved meanwhile is located once more.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final, NamedTuple

from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.repository.chunkstore.backend import Backend, FileBackedBackend
from twinvault.repository.chunkstore.codec import DIGEST_BYTES, BlobCodec, BlobInvalid, digest_of
from twinvault.repository.chunkstore.index import Index
from twinvault.repository.chunkstore.layout import StateDir, pack_key
from twinvault.repository.chunkstore.pack import (
    BLOB_HEADER,
    FLAG_COMPRESSED,
    BlobEntry,
    parse_blob_header,
)
from twinvault.repository.chunkstore.retry import RetryingBackend

_RUN_GAP: Final = 256 << 10  # get_many reads neighbours closer than this in one range
_RUN_MAX: Final = 8 << 20  # ... up to this many bytes per read
_MAP_AT_LEAST: Final = 1 << 20  # get_views maps runs this long when their pack is a local file
_BUFFER_GRAIN: Final = 1 << 20  # segment buffers are made in multiples of this
_BUFFERS_KEPT: Final = 64 << 20  # free segment buffers kept for reuse, at most

# [(store id, plain digest)] -> [(pack, entry)] in the same order; CHUNK_MISSING when the
# store has no such blob.
Locate = Callable[[list[tuple[bytes, bytes]]], list[tuple[str, BlobEntry]]]


class Span(NamedTuple):
    """A plain chunk and where it lies: `segment` is the buffer it was read into with the
    other chunks stored as they are of the same run, back to back in pack order, and
    ``data == segment[start:start + len(data)]``; None where the chunk was decoded (its
    own buffer). A reader of neighbouring chunks of one segment gets them as one slice."""

    data: bytes | memoryview
    segment: memoryview | None
    start: int


class _Buffers:
    """Segment buffers for reuse. A new ``bytearray`` is zeroed and its pages faulted in:
    a pass over memory as costly as the read into it. A buffer is free again when no view
    of it is left (every chunk of its segment left the cache, every reply went out);
    Python says so by refusing to resize a buffer that has views."""

    def __init__(self, kept: int = _BUFFERS_KEPT) -> None:
        self._kept = kept
        self._lock = threading.Lock()
        self._lent: list[bytearray] = []
        self._free: list[bytearray] = []

    def take(self, size: int) -> memoryview:
        """A view of `size` bytes of a buffer nothing else uses (the view is made here,
        under the lock: a buffer without one would look free to the next `take`)."""
        with self._lock:
            lent: list[bytearray] = []
            for buffer in self._lent:
                (self._free if _unviewed(buffer) else lent).append(buffer)
            fits = [b for b in self._free if size <= len(b) <= size + _BUFFER_GRAIN]
            if fits:
                buffer = min(fits, key=len)
                self._free.remove(buffer)
            else:
                buffer = bytearray(-(-max(size, 1) // _BUFFER_GRAIN) * _BUFFER_GRAIN + 1)
                del buffer[-1:]  # one byte of room: `_unviewed` grows it without a reallocation
            while sum(map(len, self._free)) > self._kept:
                self._free.pop(0)
            lent.append(buffer)
            self._lent = lent
            return memoryview(buffer)[:size]


def _unviewed(buffer: bytearray) -> bool:
    try:
        buffer.append(0)
    except BufferError:
        return False
    del buffer[-1:]
    return True


_BUFFERS: Final = _Buffers()


class _PackGone(Exception):
    """The pack a location names is in none of its places (moved by GC meanwhile?)."""


def checked_digest(digest: bytes) -> bytes:
    if len(digest) != DIGEST_BYTES:
        raise TwinvaultError(
            errors.INVALID_ARGUMENT, f"a chunk digest has {DIGEST_BYTES} bytes, not {len(digest)}"
        )
    return bytes(digest)


def locate_in(
    index: Index, wanted: list[tuple[bytes, bytes]], pending: Callable[[bytes], tuple[str, BlobEntry] | None]
) -> list[tuple[str, BlobEntry]]:
    """A `Locate` over an index and the blobs `pending` knows that the index does not yet."""
    hits = [pending(store_id) for store_id, _ in wanted]
    missing = [store_id for (store_id, _), hit in zip(wanted, hits, strict=True) if hit is None]
    indexed = index.locate_many(missing) if missing else {}
    out = []
    for (store_id, digest), hit in zip(wanted, hits, strict=True):
        found = hit or indexed.get(store_id)
        if found is None:
            raise TwinvaultError(errors.CHUNK_MISSING, digest.hex())
        out.append(found)
    return out


class BlobFetcher:
    def __init__(self, state: StateDir, backend: Backend, codec: BlobCodec, locate: Locate) -> None:
        self._state = state
        self._backend = backend
        self._codec = codec
        self._locate = locate

    def get(self, digest: bytes) -> bytes:
        """The plain chunk, verified: CHUNK_MISSING, CHUNK_CORRUPT or STORE_UNREACHABLE otherwise."""
        store_id = self._codec.store_id(checked_digest(digest))
        for attempt in (1, 2):
            ((pack, entry),) = self._locate([(store_id, digest)])
            try:
                blob = self._read(pack, entry.offset, BLOB_HEADER.size + entry.stored_len)
            except _PackGone:
                if attempt == 1:
                    continue  # a collection may have moved it: look it up again
                raise TwinvaultError(errors.CHUNK_MISSING, f"{digest.hex()}: pack {pack} is gone") from None
            return bytes(self._decode(digest, store_id, pack, entry, blob))
        raise AssertionError("unreachable")

    def get_many(self, digests: Sequence[bytes]) -> Iterator[tuple[bytes, bytes]]:
        """Every distinct chunk of `digests` once, in pack order (neighbours read as one range).

        Raises CHUNK_MISSING before yielding anything if a digest is unknown.
        """
        for digest, data in self.get_views(digests):
            yield digest, bytes(data)  # no copy of what is bytes already

    def get_frames(self, digests: Sequence[bytes]) -> Iterator[tuple[bytes, bytes, bytes | None]]:
        """`get_many` with each chunk's stored zstd frame (None: stored uncompressed). The
        chunk is decompressed and verified all the same: a frame is only handed out once
        it is known to decode to its digest."""
        frames: dict[bytes, bytes] = {}
        for digest, plain in self.get_views(digests, frames):
            yield digest, bytes(plain), frames.pop(digest, None)

    def get_views(
        self, digests: Sequence[bytes], frames: dict[bytes, bytes] | None = None
    ) -> Iterator[tuple[bytes, bytes | memoryview]]:
        """`get_many`, but a blob stored as it is (neither compressed nor encrypted) comes
        as a view into the buffer its run was read into (or the mapping of a run of at
        least 1 MiB of a pack that is a local file): no copy. With `frames`, the stored
        zstd frame of each compressed chunk is put there (by digest) before it is yielded."""
        for pack, items in self._by_pack(digests).items():
            for run in _runs(items):
                for digest, span in self._run_or_each(pack, run, mapped=True, frames=frames):
                    yield digest, span.data

    def get_spans(self, digests: Sequence[bytes]) -> Iterator[tuple[bytes, Span]]:
        """`get_views` for a reader that passes neighbouring chunks on together (a mount):
        with where each chunk lies (`Span`). The blobs of a pack that is a local file are
        read blob by blob into one segment (`_local_run`); others as `get_views` does."""
        for pack, items in self._by_pack(digests).items():
            local = self._local_run(pack, items)  # one segment per pack: no run to split
            if local is not None:
                yield from local
                continue
            for run in _runs(items):
                yield from self._run_or_each(pack, run, mapped=False)

    def _run_or_each(
        self,
        pack: str,
        run: list[tuple[BlobEntry, bytes]],
        *,
        mapped: bool,
        frames: dict[bytes, bytes] | None = None,
    ) -> list[tuple[bytes, Span]]:
        """A run read at once and decoded in place; blob by blob (`get`, no frames: sent
        plain) if its pack has moved meanwhile."""
        start, end = run[0][0].offset, run[-1][0].end
        try:
            view = self._map(pack, start, end - start) if mapped and end - start >= _MAP_AT_LEAST else None
            if view is None:  # each blob decoded in place, not copied out first
                view = memoryview(self._read(pack, start, end - start))
        except _PackGone:
            return [(digest, Span(self.get(digest), None, 0)) for _, digest in run]
        # A view keeps its run's buffer alive: where the wanted blobs are less than half of
        # it (the rest is gaps between them), they are copied out instead.
        dense = 2 * sum(entry.end - entry.offset for entry, _ in run) >= len(view)
        out = []
        for entry, digest in run:
            blob = view[entry.offset - start : entry.end - start]
            plain = self._decode(digest, entry.store_id, pack, entry, blob, frames)
            out.append((digest, Span(plain if dense else bytes(plain), None, 0)))
        return out

    def _local_run(self, pack: str, run: list[tuple[BlobEntry, bytes]]) -> list[tuple[bytes, Span]] | None:
        """A run of a pack that is a local file now (None: it is not), read blob by blob
        with ``preadv`` (header, payload) and each verified at once, while it is still in
        the CPU's cache: payloads stored as they are land back to back in one segment."""
        fd = self._open_local(pack)
        if fd is None:
            return None
        unkeyed = self._codec.keys is None
        stored_as_is = [unkeyed and e.flags == 0 and e.raw_len == e.stored_len for e, _ in run]
        size = sum(e.stored_len for (e, _), s in zip(run, stored_as_is, strict=True) if s)
        segment = _BUFFERS.take(size)
        readonly = segment.toreadonly()
        head = memoryview(bytearray(BLOB_HEADER.size))
        out = []
        placed = 0
        try:
            for (entry, digest), as_is in zip(run, stored_as_is, strict=True):
                if as_is:
                    body = segment[placed : placed + entry.stored_len]
                else:
                    body = memoryview(bytearray(entry.stored_len))
                if os.preadv(fd, [head, body], entry.offset) < BLOB_HEADER.size + entry.stored_len:
                    raise TwinvaultError(
                        errors.CHUNK_MISSING, f"pack {pack} ends before {entry.end} (truncated)"
                    )
                plain = self._decode_parts(digest, entry.store_id, pack, head, body)
                if as_is and plain is body:
                    out.append((digest, Span(readonly[placed : placed + len(body)], readonly, placed)))
                else:  # decoded (or its header disagrees with the index: decoded anyway)
                    out.append((digest, Span(bytes(plain) if as_is else plain, None, 0)))
                if as_is:
                    placed += entry.stored_len
        finally:
            os.close(fd)
        return out

    def advise(self, digests: Sequence[bytes]) -> None:
        """Ask the kernel to start reading the runs of `digests` from disk now (where their
        packs are local files), so a later `get_views` finds them in memory: a thread that
        maps a run only when it gets to it waits for the disk each time."""
        for pack, items in self._by_pack(digests).items():
            fd = self._open_local(pack)
            if fd is None:
                continue
            try:
                os.posix_fadvise(
                    fd, items[0][0].offset, items[-1][0].end - items[0][0].offset, os.POSIX_FADV_WILLNEED
                )
            finally:
                os.close(fd)

    def _by_pack(self, digests: Sequence[bytes]) -> dict[str, list[tuple[BlobEntry, bytes]]]:
        """The blobs of `digests` (each once) by pack, in offset order."""
        by_pack: dict[str, list[tuple[BlobEntry, bytes]]] = defaultdict(list)
        wanted = [(self._codec.store_id(checked_digest(d)), d) for d in dict.fromkeys(digests)]
        for (pack, entry), (_, digest) in zip(self._locate(wanted), wanted, strict=True):
            by_pack[pack].append((entry, digest))
        for items in by_pack.values():
            items.sort(key=lambda item: item[0].offset)
        return by_pack

    def _map(self, pack: str, offset: int, length: int) -> memoryview | None:
        """`length` bytes of a pack that is a local file, mapped (None: it is not local).

        Mapping saves the copy a read makes. A pack file is never cut short under a
        mapping of committed blobs: packs are immutable once sealed, and recovery only cuts
        an open pack's tail past its last committed blob; removal (GC) leaves a mapping
        valid."""
        fd = self._open_local(pack)
        if fd is None:
            return None
        try:
            if os.fstat(fd).st_size < offset + length:
                raise TwinvaultError(
                    errors.CHUNK_MISSING, f"pack {pack} ends before {offset + length} (truncated)"
                )
            base = offset - offset % mmap.ALLOCATIONGRANULARITY
            # MAP_POPULATE: the pages are read in one go, not faulted in 4 KiB at a time.
            flags = mmap.MAP_SHARED | mmap.MAP_POPULATE
            mapped = mmap.mmap(fd, offset + length - base, flags, mmap.PROT_READ, offset=base)
        finally:
            os.close(fd)
        return memoryview(mapped)[offset - base :]

    def _open_local(self, pack: str) -> int | None:
        """A descriptor of the pack's file where it is a local one now (open, sealed, or a
        backend of files), else None."""
        for path in (self._state.open_pack(pack), self._state.sealed_pack(pack), self._backend_file(pack)):
            if path is None:
                continue
            try:
                return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
        return None

    def _backend_file(self, pack: str) -> Path | None:
        backend = self._backend
        if isinstance(backend, RetryingBackend):
            return backend.local_path(pack_key(pack))
        if isinstance(backend, FileBackedBackend):
            return backend.local_path(pack_key(pack))
        return None

    def _read(self, pack: str, offset: int, length: int) -> bytes:
        """`length` bytes of a pack wherever it is now: open, sealed, or on the backend."""
        for path in (self._state.open_pack(pack), self._state.sealed_pack(pack)):
            try:
                with open(path, "rb") as f:
                    data = os.pread(f.fileno(), length, offset)
            except FileNotFoundError:
                continue
            break
        else:
            try:
                data = self._backend.load(pack_key(pack), offset, length)
            except FileNotFoundError:
                raise _PackGone(pack) from None
        if len(data) < length:
            raise TwinvaultError(
                errors.CHUNK_MISSING, f"pack {pack} ends before {offset + length} (truncated)"
            )
        return data

    def _decode(
        self,
        digest: bytes,
        store_id: bytes,
        pack: str,
        entry: BlobEntry,
        blob: bytes | memoryview,
        frames: dict[bytes, bytes] | None = None,
    ) -> bytes | memoryview:
        blob = memoryview(blob)
        if len(blob) != BLOB_HEADER.size + entry.stored_len:
            raise TwinvaultError(errors.CHUNK_CORRUPT, f"{digest.hex()}: blob header damaged (pack {pack})")
        head, payload = blob[: BLOB_HEADER.size], blob[BLOB_HEADER.size :]
        return self._decode_parts(digest, store_id, pack, head, payload, frames)

    def _decode_parts(
        self,
        digest: bytes,
        store_id: bytes,
        pack: str,
        head_bytes: memoryview,
        payload: memoryview,
        frames: dict[bytes, bytes] | None = None,
    ) -> bytes | memoryview:
        """The plain chunk of a blob (its header, its payload: the payload itself where it
        is stored as it is), verified by its BLAKE3: CHUNK_CORRUPT otherwise. With `frames`,
        a compressed chunk's stored zstd frame is put there once it is known to decode to
        its digest."""
        head = parse_blob_header(head_bytes, 0)
        if head is None or head[1] != store_id or head[3] != len(payload):
            raise TwinvaultError(errors.CHUNK_CORRUPT, f"{digest.hex()}: blob header damaged (pack {pack})")
        frame: bytes | memoryview | None = None
        if head[0] == 0 and self._codec.keys is None and len(payload) == head[2]:
            plain: bytes | memoryview = payload  # stored as it is: the payload is the chunk
        else:
            try:
                unsealed = self._codec.unseal(store_id, head[0], payload)
                if head[0] & FLAG_COMPRESSED:
                    frame = unsealed
                    plain = self._codec.decompress(unsealed, head[2])
                elif len(unsealed) == head[2]:
                    plain = unsealed
                else:
                    raise BlobInvalid(f"length {len(unsealed)}, header says {head[2]}")
            except BlobInvalid as exc:
                raise TwinvaultError(errors.CHUNK_CORRUPT, f"{digest.hex()}: {exc} (pack {pack})") from None
        if digest_of(plain) != digest:
            raise TwinvaultError(errors.CHUNK_CORRUPT, f"{digest.hex()}: content hash mismatch (pack {pack})")
        if frames is not None and frame is not None:
            frames[digest] = bytes(frame)
        return plain


def _runs(items: list[tuple[BlobEntry, bytes]]) -> Iterator[list[tuple[BlobEntry, bytes]]]:
    """Group blobs sorted by offset into ranges worth one read each."""
    run: list[tuple[BlobEntry, bytes]] = []
    for item in items:
        if run and (item[0].offset - run[-1][0].end > _RUN_GAP or item[0].end - run[0][0].offset > _RUN_MAX):
            yield run
            run = []
        run.append(item)
    if run:
        yield run
