"""The repository's history: every applied op becomes chunks, a journal record and catalog versions.

Neighbours: the applier calls a ``Recorder`` (one per image session) after each op it
applied; the receiver calls ``History.commit`` in its group commit, before it
acknowledges; the chunk store (``chunkstore``) keeps the chunks, the ``journal`` the
records, the ``catalog`` the temporal versions built from them. ``docs/history.md`` is the
design: the store and the journal are the truth, the catalog an index over the journal,
rebuilt from it when it is missing or damaged.

Times are the repository's clock in integer nanoseconds, strictly increasing per
repository, so every op has its own instant and "the image at T" is never ambiguous.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

import msgpack

from twinvault import fsmeta
from twinvault.ops import errors
from twinvault.ops import events as ev
from twinvault.ops.errors import TwinvaultError
from twinvault.protocol import messages as m
from twinvault.repository.catalog import Catalog, Snapshot
from twinvault.repository.chunklist import HOLE_DIGEST, Piece, pack_chunks
from twinvault.repository.chunkstore import ChunkStore
from twinvault.repository.image_index import ChunkPiece
from twinvault.repository.journal import Journal

log = logging.getLogger(__name__)

Emit = Callable[..., Any]

USER_REQUEST: Final = "User Request"
_VERSION_KINDS: Final = frozenset({"file", "dir", "symlink"})
SCHEDULED: Final = "Scheduled"

# Journal record kinds (docs/history.md, "Journal records")
PUT: Final = "put"
META: Final = "meta"
LINK: Final = "link"
DELETE: Final = "delete"
RENAME: Final = "rename"
RANGE: Final = "range"
SNAPSHOT: Final = "snapshot"
UNSNAPSHOT: Final = "unsnapshot"
IMAGE: Final = "image"
PRUNE: Final = "prune"


def pack_meta(meta: fsmeta.Meta) -> bytes:
    packed: bytes = msgpack.packb(meta.to_wire(), use_bin_type=True)
    return packed


def unpack_meta(blob: bytes) -> fsmeta.Meta:
    return fsmeta.Meta.from_wire(msgpack.unpackb(blob, raw=False))


def file_content(pieces: Iterable[tuple[bytes, int, int]], size: int) -> bytes:
    """A file's chunk list from its (digest, offset, length) pieces; gaps become holes."""
    out: list[Piece] = []
    at = 0
    for digest, offset, length in pieces:
        if offset > at:
            out.append(Piece(HOLE_DIGEST, offset - at))
        out.append(Piece(digest, length))
        at = offset + length
    if size > at:
        out.append(Piece(HOLE_DIGEST, size - at))
    return pack_chunks(out)


class History:
    """Chunk store + journal + catalog of one repository, shared by every image session.

    One lock orders records: the instant a record gets, its place in the journal and its
    place in the catalog's pending list are taken together, so replaying the journal
    rebuilds exactly the catalog that was committed.
    """

    def __init__(
        self,
        store: ChunkStore,
        journal: Journal,
        catalog: Catalog,
        emit: Emit,
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.store = store
        self.journal = journal
        self.catalog = catalog
        self.emit = emit
        self._clock = clock
        self.lock = threading.RLock()
        self._commit_lock = threading.Lock()  # one group commit at a time
        self._pending: list[list[Any]] = []
        self._good: dict[str, set[str]] = {}  # image -> jobs whose mirror is complete and linked
        self._jobs_of: Callable[[str], set[str]] = lambda image: set()
        self._recorders: set[Recorder] = set()
        self._holds: dict[int, tuple[str, int]] = {}  # hold id -> (image, instant)
        self._next_hold = 1
        self._last_t = journal.last_time

    # -- time --------------------------------------------------------------------------

    def now(self) -> int:
        """The next instant: the clock, made strictly increasing (a clock stepped back
        by NTP must not reorder history)."""
        with self.lock:
            self._last_t = max(self._clock(), self._last_t + 1)
            return self._last_t

    # -- holds -------------------------------------------------------------------------

    def hold(self, image: str, t: int) -> int:
        """Keep the versions valid at `t` in `image` (and so their chunks) from retention
        until `release`: a mount serving `t` holds it for as long as it lives. Holds live in
        this process only: a restart of the daemon ends every mount, and so every hold."""
        with self.lock:
            hold_id = self._next_hold
            self._next_hold += 1
            self._holds[hold_id] = (image, t)
            return hold_id

    def release(self, hold_id: int) -> None:
        with self.lock:
            self._holds.pop(hold_id, None)

    def held_since(self, image: str) -> int | None:
        """The oldest instant of `image` a hold keeps, or None."""
        with self.lock:
            held = [t for name, t in self._holds.values() if name == image]
        return min(held) if held else None

    # -- recording ---------------------------------------------------------------------

    def record(self, kind: str, image: str, *fields: Any, right_after_last: bool = False) -> int:
        """Journal one record and queue it for the catalog; returns its instant.
        ``right_after_last``: at the instant just after the last record, not now."""
        with self.lock:
            if right_after_last:
                self._last_t += 1
                t = self._last_t
            else:
                t = self.now()
            rec = [kind, t, image, *fields]
            self.journal.append(rec)
            self._pending.append(rec)
            return t

    def recorder(self, image: str, job: str) -> Recorder:
        recorder = Recorder(self, image, job)
        with self.lock:
            self._recorders.add(recorder)
        return recorder

    def forget_recorder(self, recorder: Recorder) -> None:
        with self.lock:
            self._recorders.discard(recorder)

    def collect_garbage(self) -> tuple[int, int]:
        """Drop chunks no version references; returns (chunks, bytes) removed.

        Under the history lock, after a commit: every chunk a committed record names is in
        the catalog, and the chunks of files still arriving are held by their recorders
        (a chunk put, or found already stored, is pinned under this same lock), so a chunk
        a file is about to reference can never be collected. Replication waits meanwhile;
        the sources queue, nothing is lost.
        """
        with self.lock:
            self.commit()
            # The store's own guard too: dedup hits from here on count as referenced.
            self.store.begin_collection()
            referenced = self.catalog.referenced_digests()
            for recorder in self._recorders:
                referenced |= recorder.pinned
            report = self.store.collect_garbage(referenced)
            return report.chunks_removed, report.bytes_removed

    def commit(self) -> None:
        """Make every recorded chunk and record durable, then index the records.

        First every recorder records what its applier queued so far (so the ops applied
        before this call are in this commit); not from a thread holding the history
        lock, which the recorders need: such a caller commits what is recorded already.
        Order (docs/history.md): chunks, then the journal (fsync each), then one catalog
        transaction that also stores the journal position it reached. A crash between
        the journal and the catalog is repaired by ``catch_up`` at the next start.
        """
        if not self.lock._is_owned():  # type: ignore[attr-defined]
            with self.lock:
                recorders = list(self._recorders)
            for recorder in recorders:  # a failed one is its own session's business
                recorder.wait_recorded(check=False)
        with self._commit_lock:
            # Under the history lock only what must be atomic: which records this commit
            # covers and where they end in the journal. The syncs run outside it, so the
            # appliers keep recording while the disk works.
            with self.lock:
                pending, self._pending = self._pending, []
                position = self.journal.write()
            try:
                self.store.commit()  # every chunk put so far, a superset of what pending needs
                self.journal.sync()
                if not pending:
                    return
                with self.lock, self.catalog.transaction():
                    for rec in pending:
                        apply_record(self.catalog, rec)
                    self.catalog.set_position(position)
            except BaseException:
                with self.lock:  # retried at the next commit (the journal has them anyway)
                    self._pending[:0] = pending
                raise

    def catch_up(self) -> int:
        """Apply journal records the catalog has not seen (a crash after the journal's
        fsync and before the catalog's commit); returns how many."""
        with self.lock:
            position = self.catalog.position()
            count = 0
            last_t = 0
            batch: list[list[Any]] = []
            end = position
            for entry in self.journal.entries_after(position):
                batch.append(entry.record)
                end = entry.position
                if len(batch) >= 4096:
                    self._apply_batch(batch, end)
                    count += len(batch)
                    last_t = max(last_t, int(batch[-1][1]))
                    batch = []
            if batch:
                self._apply_batch(batch, end)
                count += len(batch)
                last_t = max(last_t, int(batch[-1][1]))
            self._last_t = max(self._last_t, last_t, self.journal.last_time)
            if count:
                self.emit(ev.CATALOG_REPLAYED, records=count)
            return count

    def _apply_batch(self, batch: list[list[Any]], position: int) -> None:
        with self.catalog.transaction():
            for rec in batch:
                apply_record(self.catalog, rec)
            self.catalog.set_position(position)

    def rebuild(self, reason: str) -> int:
        """Empty the catalog and replay the whole journal (event 9013)."""
        started = time.monotonic()
        with self.lock:
            self.catalog.reset()
            count = self.catch_up()
        self.emit(
            ev.CATALOG_REBUILT,
            reason=reason,
            records=count,
            seconds=f"{time.monotonic() - started:.1f}",
        )
        return count

    # -- images, ranges, snapshots -------------------------------------------------------

    def set_jobs_of(self, jobs_of: Callable[[str], set[str]]) -> None:
        """How History learns which jobs write into an image (the host's job table)."""
        self._jobs_of = jobs_of

    def ensure_image(self, image: str, cdp_days: float | None) -> None:
        with self.lock:
            self.record(IMAGE, image, cdp_days)
            self.commit()

    def job_good(self, image: str, job: str) -> None:
        """A job's mirror completed on a live link: the image may be valid for recovery."""
        with self.lock:
            good = self._good.setdefault(image, set())
            was_good = self.image_good(image)
            good.add(job)
            if not was_good and self.image_good(image):
                self.record(RANGE, image, "open")

    def job_bad(self, image: str, job: str) -> None:
        """A job's link went down or a mirror started: the range valid for recovery ends."""
        with self.lock:
            was_good = self.image_good(image)
            self._good.get(image, set()).discard(job)
            if was_good:
                self.record(RANGE, image, "close")

    def image_good(self, image: str) -> bool:
        jobs = self._jobs_of(image)
        good = self._good.get(image, set())
        return bool(good) and jobs <= good

    def close_open_ranges(self) -> None:
        """At start: a range still open ended with the last record before the stop (or
        crash). Later than that, nobody knows what the source did."""
        with self.lock:
            for info in self.catalog.images():
                ranges = self.catalog.ranges(info.name)
                if ranges and ranges[-1].end is None:
                    self.record(RANGE, info.name, "close", right_after_last=True)
            self.commit()

    def take_snapshot(self, image: str, kind: str) -> Snapshot:
        """O(1): one record and one catalog row, whatever the image size."""
        with self.lock:
            if image not in {i.name for i in self.catalog.images()}:
                raise TwinvaultError(errors.IMAGE_NOT_FOUND, image)
            t = self.record(SNAPSHOT, image, kind)
            self.commit()
            for snap in reversed(self.catalog.snapshots(image)):
                if snap.time == t:
                    return snap
        raise TwinvaultError(errors.INTERNAL_ERROR, f"snapshot of {image} at {t} not in the catalog")

    def delete_snapshot(self, image: str, snapshot_id: int) -> None:
        with self.lock:
            self.catalog.snapshot(image, snapshot_id)  # SNAPSHOT_NOT_FOUND before journalling
            self.record(UNSNAPSHOT, image, snapshot_id)
            self.commit()

    def close(self, upload_timeout: float = 10.0) -> None:
        """Clean stop: everything committed, the open pack sealed and, where the backend
        answers, uploaded (what is not waits in the state dir for the next start)."""
        with self.lock:
            self.commit()
            self.journal.close()
            self.store.seal()
            self.store.flush_uploads(upload_timeout)
            self.store.close()
            self.catalog.close()


def apply_record(catalog: Catalog, rec: list[Any]) -> None:
    """Apply one journal record to the catalog (also what a rebuild replays)."""
    kind, t, image = rec[0], int(rec[1]), rec[2]
    if kind == PUT:
        _, _, _, path, vkind, meta, content, size = rec[:8]
        catalog.put(image, path, t, vkind, meta, content, int(size), None)
    elif kind == META:
        path, meta = rec[3], rec[4]
        current = catalog.version_at(image, path, None)
        if current is not None:
            catalog.put(image, path, t, current.kind, meta, current.content, current.size, current.link)
    elif kind == LINK:
        path, existing = rec[3], rec[4]
        current = catalog.version_at(image, existing, None)
        if current is not None:
            catalog.put(
                image, path, t, current.kind, current.meta, current.content, current.size, current.link
            )
    elif kind == DELETE:
        catalog.delete_tree(image, rec[3], t)
    elif kind == RENAME:
        catalog.rename_tree(image, rec[3], rec[4], t)
    elif kind == RANGE:
        if rec[3] == "open":
            catalog.open_range(image, t)
        else:
            catalog.close_range(image, t)
    elif kind == SNAPSHOT:
        catalog.add_snapshot(image, t, rec[3])
    elif kind == UNSNAPSHOT:
        catalog.delete_snapshot(image, int(rec[3]))
    elif kind == IMAGE:
        catalog.ensure_image(image, None if rec[3] is None else float(rec[3]))
    elif kind == PRUNE:
        catalog.prune(image, int(rec[3]))
    else:
        raise ValueError(f"unknown journal record {kind!r}")


# A recorder's queue holds at most about this many chunk bytes; the applier waits beyond it.
RECORD_QUEUE_BYTES: Final = 32 * 1024 * 1024
# While the applier works through a batch (``Recorder.holding``), the recorder's thread is
# woken once this many tasks wait, not for each: a wake-up per op was a pair of context
# switches per small file, and this machine is CPU-bound in the kernel on a mirror.
WAKE_TASKS: Final = 64

# What the applier hands its recorder: a new chunk (digest, data), a new chunk that
# arrived compressed (digest, zstd frame, data), or a step to run in order on the
# recorder's thread (a record, a pin, the end of a file).
_Task = tuple[bytes, bytes] | tuple[bytes, bytes, bytes] | Callable[[], None]


class Recorder:
    """What one image session's applier tells history.

    The applier's calls only queue; a thread of the recorder's own stores the chunks (a
    batch at a time, with one index look-up for the batch) and journals the records, in
    the order the applier made them, so no record is journalled before the chunks it
    names are in the store. The receiver's group commit calls ``History.commit``, which
    first waits until every recorder has done what was queued (``wait_recorded``): the
    history of every op it acknowledges is in that commit. Why a thread: storing a chunk
    (hash check, compression probe, pack write) took a third of the applier's time, and
    runs mostly without the GIL beside the applier's own file writes.
    """

    def __init__(self, history: History, image: str, job: str) -> None:
        self.history = history
        self.image = image
        self.job = job
        self._store = history.store
        self.lock = history.lock
        # Chunks of the files being received: referenced by no record yet, so garbage
        # collection must keep them (see History.collect_garbage). Changed under the lock.
        self.pinned: set[bytes] = set()
        self._file_digests: list[bytes] = []  # pins of the file in progress (recorder thread)
        self._changed = threading.Condition()
        self._queue: list[_Task] = []
        self._sizes: list[int] = []  # the bytes each queued task holds, for the bound
        self._queued_bytes = 0
        self._submitted = 0
        self._done = 0
        self._error: TwinvaultError | None = None
        self._stopping = False
        self._holding = 0
        self._thread = threading.Thread(target=self._run, name=f"history-{job}", daemon=True)
        self._thread.start()

    # -- the applier's side ---------------------------------------------------------------

    def chunk(self, digest: bytes, data: bytes) -> None:
        self._submit((digest, data), len(data))

    def chunk_frame(self, digest: bytes, frame: bytes, data: bytes) -> None:
        """A chunk that arrived compressed: its zstd frame is stored as it is (``data``
        is that frame decompressed, hashed by the store before it files the frame)."""
        self._submit((digest, frame, data), len(frame) + len(data))

    def ensure_chunk(self, digest: bytes, read: Callable[[], bytes]) -> None:
        """A chunk the op reused from the live image: stored already, unless the image
        predates its history (then it is read back from the image now, while the file
        is open, and stored like a new chunk)."""
        if self._store.has(digest):  # a True answer also protects it from a running GC
            self._submit(lambda: self._pin(digest))
        else:
            self.chunk(digest, read())

    def file_aborted(self) -> None:
        with self._changed:
            if self._error is not None or self._stopping:
                return  # nothing more will be recorded: no pin to drop
        self._submit(self._unpin_file)

    def put(self, path: bytes, meta: fsmeta.Meta, content: bytes = b"") -> None:
        self._submit(lambda: self._record_put(path, meta, content))

    def put_file(self, path: bytes, meta: fsmeta.Meta, pieces: Iterable[ChunkPiece]) -> None:
        content = file_content(((p.digest, p.offset, p.length) for p in pieces), meta.size)
        self._submit(lambda: self._record_file(path, meta, content))

    def meta(self, path: bytes, meta: fsmeta.Meta) -> None:
        packed = pack_meta(meta)
        self._submit(lambda: self._record(META, path, packed))

    def link(self, path: bytes, existing: bytes) -> None:
        self._submit(lambda: self._record(LINK, path, existing))

    def delete(self, path: bytes) -> None:
        self._submit(lambda: self._record(DELETE, path))

    def rename(self, old: bytes, new: bytes) -> None:
        self._submit(lambda: self._record(RENAME, old, new))

    def mark(self, name: str) -> None:
        if name == m.MARK_MIRROR_START:
            self._submit(lambda: self.history.job_bad(self.image, self.job))
        elif name == m.MARK_MIRROR_COMPLETE:
            self._submit(lambda: self.history.job_good(self.image, self.job))

    def link_down(self) -> None:
        """The link ended: the range valid for recovery ends after what was recorded."""
        self.history.job_bad(self.image, self.job)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Within: queued tasks wake the recorder's thread `WAKE_TASKS` at a time; on the
        way out, whatever waits is handed over."""
        with self._changed:
            self._holding += 1
        try:
            yield
        finally:
            with self._changed:
                self._holding -= 1
                if self._queue:
                    self._changed.notify_all()

    def _submit(self, task: _Task, size: int = 0) -> None:
        with self._changed:
            while self._queued_bytes > RECORD_QUEUE_BYTES and self._error is None and not self._stopping:
                self._changed.notify_all()  # a held queue: the recorder may not know yet
                self._changed.wait()
            if self._error is not None:
                raise self._error
            if self._stopping:
                raise TwinvaultError(errors.INTERNAL_ERROR, f"the recorder of {self.image} is closed")
            self._queue.append(task)
            self._sizes.append(size)
            self._queued_bytes += size
            self._submitted += 1
            if not self._holding or len(self._queue) >= WAKE_TASKS:
                self._changed.notify_all()

    def wait_recorded(self, *, check: bool = True) -> None:
        """Return once everything queued so far is stored and journalled; with ``check``,
        raise what stopped the recorder's thread (its session must not acknowledge)."""
        with self._changed:
            target = self._submitted
            if self._done < target:
                self._changed.notify_all()  # a held queue: the recorder may not know yet
            while self._done < target and self._error is None:
                self._changed.wait()
            if check and self._error is not None:
                raise self._error

    def close(self) -> None:
        """Record what is queued, then stop the thread (a failure is logged: the ops it
        lost were not acknowledged, the source sends them again)."""
        try:
            self.wait_recorded()
        except TwinvaultError as exc:
            log.error("history of %s: %s", self.image, exc)
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join()

    # -- the recorder's thread --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._stopping:
                    self._changed.wait()
                if not self._queue:
                    return
                tasks, self._queue = self._queue, []
                sizes, self._sizes = self._sizes, []
            try:
                self._do(tasks)
            except Exception as exc:
                error = (
                    exc
                    if isinstance(exc, TwinvaultError)
                    else TwinvaultError(errors.INTERNAL_ERROR, f"history of {self.image}: {exc}")
                )
                log.error("history of %s stopped: %s", self.image, error)
                with self._changed:
                    self._error = error
                    self._queue, self._sizes = [], []
                    self._changed.notify_all()
                return
            with self._changed:
                self._done += len(tasks)
                self._queued_bytes -= sum(sizes)
                self._changed.notify_all()

    def _do(self, tasks: list[_Task]) -> None:
        """Store the chunks of ``tasks`` (a record only needs its chunks stored before it,
        so all of them go first, in one batch), then run the rest in order. Frames go
        before plain chunks: the same chunk can come plain too in one batch (a reference
        to it read back by `ensure_chunk` before its frame was stored), and the frame as
        it came is what the store keeps."""
        frames = [t for t in tasks if isinstance(t, tuple) and len(t) == 3]
        chunks = [t for t in tasks if isinstance(t, tuple) and len(t) == 2]
        if frames or chunks:
            with self.lock:
                self.pinned.update(t[0] for t in frames)
                self.pinned.update(t[0] for t in chunks)
            for digest, frame, data in frames:
                self._store.put_compressed(digest, len(data), frame, plain=data)
            self._store.put_many(chunks)
        with self.lock:
            for task in tasks:
                if isinstance(task, tuple):
                    self._file_digests.append(task[0])
                else:
                    task()

    def _pin(self, digest: bytes) -> None:
        self.pinned.add(digest)
        self._file_digests.append(digest)

    def _unpin_file(self) -> None:
        """The file's chunks are referenced by its record now (or it was abandoned)."""
        self.pinned.difference_update(self._file_digests)
        self._file_digests = []

    def _record(self, kind: str, *fields: Any) -> None:
        self.history.record(kind, self.image, *fields)

    def _record_put(self, path: bytes, meta: fsmeta.Meta, content: bytes) -> None:
        if meta.kind == "symlink":
            content = os.fsencode(meta.symlink_target)
        kind = meta.kind if meta.kind in _VERSION_KINDS else "special"  # fifo, devices, sockets
        self._record(PUT, path, kind, pack_meta(meta), content, meta.size)

    def _record_file(self, path: bytes, meta: fsmeta.Meta, content: bytes) -> None:
        self._record_put(path, meta, content)
        self._unpin_file()
