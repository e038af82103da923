"""Garbage collection: drop blobs no one references, crash-safe at every step.

Only packs on the backend (index state `stored`) are collected; the open pack is sealed and
the uploads flushed first, so in practice that is every pack. Per pack, blobs are live
when their plain digest is in `referenced` (or was found by `put`/`has` since
`begin()`, see below), else dead:

- no live blob: the pack is removed;
- live bytes under half of the pack: the live blobs are copied verbatim (header and
  payload: no decryption, no recompression) into new packs, and the old pack is removed;
- otherwise the pack is kept as it is.

Order, so that a kill at any point loses nothing referenced:
1. new packs are written to the backend (durable when `save` returns);
2. one index transaction, synced to disk, moves the live blobs to the new packs, drops
   the dead ones and marks the old packs `deleting`;
3. the old packs are removed from the backend, then forgotten by the index.
A kill before 2 leaves new packs the index does not know: `reconcile_backend` (at the next
unclean open, and at the start of every collection) removes them, since every blob in them
is still indexed in its old pack. A kill after 2 leaves `deleting` packs, which the
uploader removes.

Dedup against a collection: a `put` that finds its chunk already stored returns False, and
the caller references a chunk the collector may be about to drop. Two guards: from
`begin()` on, every such hit is recorded and counted as live; once the plan is made, a put
of a chunk planned dead stores a fresh copy instead (its index row replaces the old one).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Container, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.repository.chunkstore import index as ix
from twinvault.repository.chunkstore.codec import BlobCodec
from twinvault.repository.chunkstore.index import Index, PackRow
from twinvault.repository.chunkstore.layout import new_pack_id, pack_key
from twinvault.repository.chunkstore.pack import BLOB_HEADER, BlobEntry, encode_trailer, pack_header
from twinvault.repository.chunkstore.recovery import reconcile_backend
from twinvault.repository.chunkstore.retry import RetryingBackend
from twinvault.repository.chunkstore.uploader import Uploader
from twinvault.repository.chunkstore.writer import PackWriter

log = logging.getLogger(__name__)

LIVE_RATIO = 0.5  # a pack with less live bytes than this share is rewritten
Progress = Callable[[str], None]


@dataclass(frozen=True)
class GcReport:
    chunks_removed: int
    bytes_removed: int
    packs_removed: int
    packs_written: int


@dataclass
class _Plan:
    remove: list[PackRow]
    rewrite: list[PackRow]
    live: dict[int, list[BlobEntry]]
    dead: dict[int, list[BlobEntry]]


class GarbageCollector:
    def __init__(
        self,
        index: Index,
        codec: BlobCodec,
        backend: RetryingBackend,
        store_uuid: bytes,
        pack_size: int,
        writer: PackWriter,
        uploader: Uploader,
    ) -> None:
        self.index = index
        self.codec = codec
        self.backend = backend
        self.store_uuid = store_uuid
        self.pack_size = pack_size
        self.writer = writer
        self.uploader = uploader
        # Both read and written under writer.lock (the put path consults them).
        self.dead: AbstractSet[bytes] = frozenset()
        self.touched: set[bytes] | None = None
        self._one_at_a_time = threading.Lock()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """No collection runs inside this block (a check would see its moves half done)."""
        with self._one_at_a_time:
            yield

    def begin(self) -> None:
        """From now on, chunks that put/has find already stored count as live."""
        with self.writer.lock:
            if self.touched is None:
                self.touched = set()

    def collect(
        self, referenced: Container[bytes], *, flush_timeout: float, on_progress: Progress | None = None
    ) -> GcReport:
        progress = on_progress or (lambda step: None)
        with self._one_at_a_time:
            self.begin()
            try:
                return self._collect(referenced, flush_timeout, progress)
            finally:
                with self.writer.lock:
                    self.dead = frozenset()
                    self.touched = None

    def _collect(self, referenced: Container[bytes], flush_timeout: float, progress: Progress) -> GcReport:
        self.writer.rotate()
        self.writer.wait_sealed(flush_timeout)
        if not self.uploader.wait_idle(flush_timeout):
            log.warning("garbage collection: some packs are not on the backend yet and are skipped")
        _, orphans = reconcile_backend(self.index, self.codec, self.backend, self.store_uuid)
        progress("sealed")
        plan = self._plan(referenced)
        progress("planned")
        written, moves = self._copy_live(plan, progress)
        chunks_removed = self._commit_plan(plan, written, moves)
        progress("indexed")
        removed = self._remove_old(plan.remove + plan.rewrite, progress)
        bytes_removed = sum(p.size for p in plan.remove + plan.rewrite) - sum(size for _, size in written)
        progress("done")
        return GcReport(chunks_removed, bytes_removed, removed + orphans, len(written))

    def _plan(self, referenced: Container[bytes]) -> _Plan:
        packs = {row.id: row for row in self.index.packs(ix.STORED)}
        live: dict[int, list[BlobEntry]] = defaultdict(list)
        dead: dict[int, list[BlobEntry]] = defaultdict(list)
        for pack_id, entry in self.index.iter_blobs():
            if pack_id in packs:
                (live if entry.digest in referenced else dead)[pack_id].append(entry)
        remove, rewrite = _classify(packs, live, dead)
        doomed = {e.store_id: row.id for row in remove + rewrite for e in dead[row.id]}
        # The switch from `touched` to `dead` is atomic for the put path; the work inside
        # the lock is proportional to the dedup hits since begin(), not to the store.
        with self.writer.lock:
            rescued = [(sid, doomed.pop(sid)) for sid in self.touched or () if sid in doomed]
            self.dead = doomed.keys()
            self.touched = None
        if rescued:  # found by a put or has since begin(): live after all
            for sid, pack_id in rescued:
                entry = next(e for e in dead[pack_id] if e.store_id == sid)
                dead[pack_id].remove(entry)
                live[pack_id].append(entry)
                live[pack_id].sort(key=lambda e: e.offset)
            # A pack may move from remove to rewrite, or from rewrite to keep; `dead` then
            # holds a few ids more than will be dropped, which only costs a fresh copy.
            remove, rewrite = _classify(packs, live, dead)
        return _Plan(remove, rewrite, live, dead)

    def _copy_live(
        self, plan: _Plan, progress: Progress
    ) -> tuple[list[tuple[str, int]], list[tuple[str, int, BlobEntry, int]]]:
        """Write the live blobs of the packs to rewrite into new packs on the backend.

        Returns the new packs (name, size) and the moves (new pack, old pack id, blob, new offset).
        """
        written: list[tuple[str, int]] = []
        moves: list[tuple[str, int, BlobEntry, int]] = []
        builder = _PackBuilder(self.store_uuid, self.codec)
        pending: list[tuple[int, BlobEntry, int]] = []

        def flush() -> None:
            if not pending:
                return
            data = builder.finish()
            self.backend.save(pack_key(builder.name), data)
            written.append((builder.name, len(data)))
            moves.extend((builder.name, old, entry, at) for old, entry, at in pending)
            progress(f"written {builder.name}")
            pending.clear()

        keep: list[PackRow] = []
        for row in plan.rewrite:
            data = self.backend.load(pack_key(row.name))
            entries = plan.live[row.id]
            if any(e.end > len(data) for e in entries):
                # Part of a live blob is gone (a truncated pack): rewriting would lose it.
                log.error("pack %s is shorter than its index says; not rewritten", row.name)
                keep.append(row)
                continue
            for entry in entries:
                blob = data[entry.offset : entry.end]
                if builder.blobs and builder.size + len(blob) > self.pack_size:
                    flush()
                    builder = _PackBuilder(self.store_uuid, self.codec)
                pending.append((row.id, entry, builder.add(entry, blob)))
        flush()
        if keep:
            plan.rewrite = [row for row in plan.rewrite if row not in keep]
        return written, moves

    def _commit_plan(
        self, plan: _Plan, written: list[tuple[str, int]], moves: list[tuple[str, int, BlobEntry, int]]
    ) -> int:
        removed = 0
        with self.index.writing(durable=True) as w:
            ids = {name: w.add_pack(name, ix.STORED, size) for name, size in written}
            for name, old, entry, at in moves:
                w.move_blob(entry.store_id, old, ids[name], at)
            for row in plan.remove + plan.rewrite:
                for entry in plan.dead[row.id]:
                    removed += w.delete_blob(entry.store_id, row.id)
                w.set_pack(row.name, ix.DELETING)
        return removed

    def _remove_old(self, rows: list[PackRow], progress: Progress) -> int:
        removed = 0
        for row in rows:
            try:
                self.backend.remove(pack_key(row.name))
            except TwinvaultError as exc:
                if exc.code != errors.STORE_UNREACHABLE:
                    raise
                log.warning("garbage collection: old packs left for the uploader to remove: %s", exc)
                self.uploader.wake()
                return removed
            with self.index.writing() as w:
                w.delete_pack(row.name)
            removed += 1
            progress(f"removed {row.name}")
        return removed


def _classify(
    packs: dict[int, PackRow], live: dict[int, list[BlobEntry]], dead: dict[int, list[BlobEntry]]
) -> tuple[list[PackRow], list[PackRow]]:
    """(packs to remove, packs to rewrite); the rest are kept as they are."""
    remove, rewrite = [], []
    for pack_id, row in packs.items():
        live_bytes = sum(BLOB_HEADER.size + e.stored_len for e in live[pack_id])
        if not live[pack_id]:
            remove.append(row)
        elif dead[pack_id] and live_bytes < LIVE_RATIO * row.size:
            rewrite.append(row)
    return remove, rewrite


class _PackBuilder:
    """A new pack in memory, filled with blobs copied verbatim from other packs."""

    def __init__(self, store_uuid: bytes, codec: BlobCodec) -> None:
        self.name = new_pack_id()
        self._codec = codec
        self._parts = [pack_header(store_uuid, bytes.fromhex(self.name))]
        self.size = len(self._parts[0])
        self.blobs: list[BlobEntry] = []

    def add(self, entry: BlobEntry, blob: bytes) -> int:
        at = self.size
        self._parts.append(blob)
        self.blobs.append(
            BlobEntry(entry.store_id, entry.digest, at, entry.raw_len, entry.stored_len, entry.flags)
        )
        self.size += len(blob)
        return at

    def finish(self) -> bytes:
        seal = self._codec.seal_trailer if self._codec.encrypted else None
        return b"".join([*self._parts, encode_trailer(self.blobs, seal, self.size)])
