"""Whole small files of a batch written ahead, on a few threads, as files with no name yet.

The applier applies ops one at a time, in stream order; for a run of small files most of
that time is the kernel creating, filling and stamping each one (open, write, chown,
chmod, utime), one after another. ``FilesAhead`` does that part for the whole files
(``file`` ops of new chunks and holes only) of the batch the applier is about to apply,
on ``THREADS`` threads, into unnamed files (O_TMPFILE): nothing is visible in the image
until the applier, reaching the op in its turn, links the file under its name. So the
image still changes in stream order, one atomic op at a time, and a file prepared but
never linked (the batch stopped, the daemon died) simply never existed.

Neighbours: ``applier`` (asks for a prepared file by sequence number, links it and does
the rest of the op: index, history, outcome); ``image_tree`` (parent directories, which
are resolved, and created when missing, on the applier's thread before any work starts).
"""

from __future__ import annotations

import errno
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

from twinvault import fsmeta
from twinvault.ops.errors import TwinvaultError
from twinvault.protocol import messages as m
from twinvault.repository.image_index import ChunkPiece
from twinvault.repository.image_tree import ImageTree

THREADS: Final = 2
AHEAD: Final = 32  # files in progress or waiting at once (each holds a descriptor)
# Files a thread prepares per task: a task per file was a future, a lock and a wake-up
# of the applier each.
GROUP: Final = 8
_DATA_SEGMENTS: Final = frozenset({m.SEG_DATA, m.SEG_HOLE})
_MOVES_TREE: Final = frozenset({m.DELETE, m.RENAME})
_MAKES_ENTRY: Final = frozenset({m.FILE, m.FBEGIN, m.SYMLINK, m.SPECIAL, m.LINK})


@dataclass(slots=True)
class PreparedFile:
    """An unnamed file holding the op's whole body and metadata, ready to be linked."""

    fd: int
    pieces: list[ChunkPiece]
    written: int  # bytes of data written (the outcome's bytes_written)


@dataclass(frozen=True, slots=True)
class _Job:
    seq: int
    dir_fd: int
    segments: list[list[Any]]
    meta: fsmeta.Meta


class FilesAhead:
    def __init__(self, tree: ImageTree) -> None:
        self._tree = tree
        self._pool: ThreadPoolExecutor | None = None
        self._waiting: deque[_Job] = deque()
        # Each op's group: the future of the task preparing it and its neighbours.
        self._running: dict[int, Future[dict[int, PreparedFile | None]]] = {}
        self.enabled = True  # False once the filesystem refuses O_TMPFILE
        self.taken = 0  # files the applier took prepared (for tests and profiles)

    def start(self, batch: list[list[Any]]) -> None:
        """Begin preparing the whole files of ``batch`` that can be: up to the first delete
        or rename (which may move the tree under them), each path once, none below a path
        that an op of the run makes a file, a link or a special file."""
        if not self.enabled:
            return
        files: list[list[Any]] = []
        paths: set[bytes] = set()
        for msg in batch:
            kind = msg[0]
            if kind in _MOVES_TREE:
                break
            if kind == m.FILE and len(msg) >= 7:
                files.append(msg)
            if kind in _MAKES_ENTRY and len(msg) > 2 and isinstance(msg[2], bytes):
                paths.add(msg[2])
        if len(files) < 2:
            return  # one file (replication's usual batch): a hand-over would only add latency
        seen: set[bytes] = set()
        for msg in files:
            path = msg[2]
            if not isinstance(path, bytes) or path in seen or _below_any(path, paths):
                continue
            seen.add(path)
            job = self._job(msg)
            if job is not None:
                self._waiting.append(job)
        self._refill()

    def _job(self, msg: list[Any]) -> _Job | None:
        segments = msg[5]
        if not isinstance(segments, list) or any(
            not isinstance(s, list) or not s or s[0] not in _DATA_SEGMENTS for s in segments
        ):
            return None  # runs and references need the index: the applier's own path
        try:
            meta = fsmeta.Meta.from_wire(msg[6])
            dir_fd, _ = self._tree.parent(msg[2], create=True)
        except (TwinvaultError, OSError, ValueError, TypeError, KeyError, IndexError):
            return None  # the applier meets (and reports, or retries) the same problem
        return _Job(int(msg[1]), dir_fd, segments, meta)

    def _refill(self) -> None:
        while self._waiting and len(self._running) < AHEAD:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="file-ahead")
            group = [self._waiting.popleft() for _ in range(min(GROUP, len(self._waiting)))]
            future = self._pool.submit(self._prepare_group, group)
            for job in group:
                self._running[job.seq] = future

    def take(self, seq: int) -> PreparedFile | None:
        """The prepared file of op ``seq`` (the caller owns its descriptor), or None."""
        future = self._running.pop(seq, None)
        if future is None:
            return None
        prepared = future.result()[seq]
        self._refill()
        if prepared is not None:
            self.taken += 1
        return prepared

    def drop(self) -> None:
        """Forget every file not taken (end of the batch): their descriptors are closed,
        and with them the files."""
        self._waiting.clear()
        running, self._running = self._running, {}
        for seq, future in running.items():
            prepared = future.result()[seq]
            if prepared is not None:
                os.close(prepared.fd)

    def close(self) -> None:
        self.drop()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _prepare_group(self, jobs: list[_Job]) -> dict[int, PreparedFile | None]:
        return {job.seq: self._prepare(job) for job in jobs}

    def _prepare(self, job: _Job) -> PreparedFile | None:
        """On a pool thread: None on any failure, and the applier does the op itself
        (with its retries and events)."""
        try:
            fd = os.open(".", os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o600, dir_fd=job.dir_fd)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                self.enabled = False
            return None
        try:
            offset, written, pieces = 0, 0, []
            for seg in job.segments:
                if seg[0] == m.SEG_DATA:
                    data = seg[2]
                    pwrite_all(fd, data, offset)
                    pieces.append(ChunkPiece(seg[1], offset, len(data)))
                    offset += len(data)
                    written = offset
                else:
                    offset += int(seg[1])
            if written != job.meta.size:
                os.ftruncate(fd, job.meta.size)
            fsmeta.apply_meta(f"/proc/self/fd/{fd}", job.meta, fd=fd)
        except (OSError, ValueError, TypeError):
            os.close(fd)
            return None
        return PreparedFile(fd, pieces, offset)


def _below_any(path: bytes, paths: set[bytes]) -> bool:
    parent = path.rpartition(b"/")[0]
    while parent:
        if parent in paths:
            return True
        parent = parent.rpartition(b"/")[0]
    return False


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
