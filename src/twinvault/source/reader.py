"""The reader: turns a changed path into ops, sending only the chunks the repository lacks.

Runs in the job's reader thread. A path is read as it is *now* (changes are
coalesced upstream), cut into content-defined chunks (FastCDC, ~64 KiB average)
and hashed (BLAKE3). Chunks that sit where they sat in the repository's copy go as
*runs* (a few bytes for any length), chunks the repository holds elsewhere as
*references*, new chunks as data, sparse holes as holes. Small files travel in one
frame; large ones stream in frames of at most ``FRAME_PAYLOAD`` bytes, so memory
does not grow with file size.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import blake3

from twinvault import fsmeta, pagecache
from twinvault.compression import ChunkCompressor
from twinvault.protocol import messages as m
from twinvault.source.changeset import Barrier, Dirty, Item
from twinvault.source.chunker import SMALL_FILE, iter_pieces, might_be_sparse
from twinvault.source.opstream import OpStream
from twinvault.source.remote_view import RemoteEntry, RemoteView
from twinvault.source.selection import Selection

log = logging.getLogger(__name__)

FRAME_PAYLOAD = 4 * 1024 * 1024
PREFETCH_THREADS = 4
VANISHED_KEPT = 10_000
HASH = 32


@dataclass(slots=True)
class ReadCounters:
    files_sent: int = 0
    bytes_read: int = 0
    bytes_new: int = 0  # chunk bytes that travelled as data
    bytes_deduplicated: int = 0  # chunk bytes replaced by runs or references


class Reader:
    def __init__(
        self,
        selection: Selection,
        view: RemoteView,
        stream: OpStream,
        mark_again: Callable[[str], None],
        on_mark: Callable[[str, int], None] = lambda name, seq: None,
    ) -> None:
        self._on_mark = on_mark
        self.selection = selection
        self.view = view
        self.stream = stream
        self._mark_again = mark_again
        self._inodes: dict[tuple[int, int], list[str]] = {}
        self.counters = ReadCounters()
        # The job's transmission compression (None: chunks travel as they are); the job
        # may swap it at any time, a file's chunks all use the one it started with.
        self.compression: ChunkCompressor | None = None
        # Small files of the next batch, read ahead in parallel: a cold disk answers
        # several reads at once far faster than one after another.
        self._pool = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="prefetch")
        self._prefetched: dict[str, tuple[os.stat_result, bytes]] = {}
        # Called between the frames of a large file: holds the reader back while the
        # queue is full and the link is draining it (set by the job).
        self.wait_for_room: Callable[[], None] = lambda: None
        # Changed paths that were gone when read: a rename of a directory above them may
        # still be on its way (its barrier queued behind them); it brings them back.
        self._vanished: set[str] = set()

    def prefetch(self, items: list[Item]) -> None:
        """Read the small regular files among ``items`` ahead (results used by ``_file``
        only when the file is still the same version)."""
        paths = [i.path for i in items if isinstance(i, Dirty)]
        # One task per thread, each a share of the batch (interleaved, so big and small
        # files spread evenly): a task per file was a future, a lock and a wake-up each.
        shares = [paths[i::PREFETCH_THREADS] for i in range(PREFETCH_THREADS)]
        self._prefetched = {
            path: got
            for share, results in zip(shares, self._pool.map(_read_all, shares), strict=True)
            for path, got in zip(share, results, strict=True)
            if got
        }

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    def process(self, item: Item) -> None:
        if isinstance(item, Barrier):
            self._barrier(item)
        else:
            self._dirty(item)

    # -- barriers -----------------------------------------------------------------

    def _barrier(self, b: Barrier) -> None:
        if b.kind == "mark":
            self._on_mark(b.path, self.stream.emit_mark(b.path))
            return
        old_in = self.selection.contains(b.path)
        if b.kind == "delete":
            if old_in:
                self.stream.emit(m.DELETE, [m.wire_path(b.path)], replication=True)
                self.view.deleted(b.path, is_dir=b.is_dir)
            return
        new_in = self.selection.contains(b.new_path)
        if old_in and new_in:
            self.stream.emit(m.RENAME, [m.wire_path(b.path), m.wire_path(b.new_path)], replication=True)
            self.view.renamed(b.path, b.new_path)
            self._found_again(b.path, b.new_path)
        elif old_in:
            self.stream.emit(m.DELETE, [m.wire_path(b.path)], replication=True)
            self.view.deleted(b.path)

    # -- paths --------------------------------------------------------------------

    def _dirty(self, d: Dirty) -> None:
        path = d.path
        replication = not d.mirror
        if not self.selection.contains(path) and not self._is_ancestor(path):
            return
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if path in self.view.entries or replication:
                self.stream.emit(m.DELETE, [m.wire_path(path)], replication=replication)
                self.view.deleted(path)
            if replication:
                if len(self._vanished) >= VANISHED_KEPT:
                    self._vanished.clear()  # old ones: the next difference mirror covers them
                self._vanished.add(path)
            return
        except OSError as exc:
            log.warning("cannot stat %s: %s", path, exc.strerror)
            return
        try:
            meta = fsmeta.read_meta(path, st)
        except FileNotFoundError:
            self._mark_again(path)
            return
        kind = meta.kind
        if kind == "dir":
            is_new = path not in self.view.entries
            self.stream.emit(m.MKDIR, [m.wire_path(path), meta.to_wire()], replication=replication)
            self.view.sent_other(path, _entry(meta, b""))
            if is_new and replication and self.selection.contains(path):
                # A directory the repository has never seen (moved in from outside the
                # selection, or created faster than capture could watch it): its
                # entries may never produce events of their own, so walk it.
                self._mark_children(path)
        elif kind == "symlink":
            self.stream.emit(m.SYMLINK, [m.wire_path(path), meta.to_wire()], replication=replication)
            self.view.sent_other(path, _entry(meta, b""))
        elif kind == "file":
            self._file(path, st, meta, replication)
        else:
            self.stream.emit(m.SPECIAL, [m.wire_path(path), meta.to_wire()], replication=replication)
            self.view.sent_other(path, _entry(meta, b""))

    def _found_again(self, old: str, new: str) -> None:
        """Paths read (and found gone) before the rename of a directory above them reached
        the reader are under the new name now: read them again there."""
        if not self._vanished:
            return
        prefix = old.rstrip("/") + "/"
        for path in [p for p in self._vanished if p == old or p.startswith(prefix)]:
            self._vanished.discard(path)
            self._mark_again(new + path[len(old) :])

    def _mark_children(self, path: str) -> None:
        try:
            with os.scandir(path) as it:
                names = [e.path for e in it]
        except OSError:
            return  # gone or unreadable: its own events (or the next mirror) follow
        for child in names:
            if not self.selection.excluded(child):
                self._mark_again(child)

    def _is_ancestor(self, path: str) -> bool:
        return any(root.startswith(path.rstrip("/") + "/") for root in self.selection.roots)

    def _file(self, path: str, st: os.stat_result, meta: fsmeta.Meta, replication: bool) -> None:
        if st.st_nlink > 1 and self._hard_link(path, st, replication):
            return
        old = self.view.entries.get(path)
        if (
            old is not None
            and old.kind == "file"
            and old.size == meta.size
            and old.mtime_ns == meta.mtime_ns
            and old.digests
            and path not in self.view.full_resend
            and path not in self.view.content_differs
        ):
            # Same size and time as the repository's copy: only metadata can differ.
            # The digest of the content we believe the repository holds lets it refuse
            # (answer "need") if its copy is not that content, e.g. after a discarded write.
            base = blake3.blake3(old.digests).digest()
            self.stream.emit(m.META, [m.wire_path(path), meta.to_wire(), base], replication=replication)
            self.view.sent_other(path, _entry(meta, old.digests))
            return
        ahead = self._prefetched.pop(path, None)
        if ahead is not None and _same_version(ahead[0], st):
            digests = self._send_body(path, -1, st, meta, old, replication, data=ahead[1])
            after = ahead[0]
        else:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOATIME)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ELOOP):
                    self._mark_again(path)
                    return
                log.warning("cannot open %s: %s", path, exc.strerror)
                return
            try:
                cold = meta.size > 0 and not pagecache.first_page_cached(fd, st.st_dev)
                digests = self._send_body(path, fd, st, meta, old, replication, cold=cold)
                after = os.fstat(fd)
            finally:
                os.close(fd)
        if after.st_size != meta.size or after.st_mtime_ns != meta.mtime_ns:
            self._mark_again(path)  # written while we read it: a newer version follows
        self.view.sent_file(path, _entry(meta, digests))
        self.counters.files_sent += 1
        if st.st_nlink > 1:
            for other in self._inodes.get((st.st_dev, st.st_ino), []):
                if other != path:
                    self._mark_again(other)

    def _hard_link(self, path: str, st: os.stat_result, replication: bool) -> bool:
        """Send ``path`` as a link to a name of the same inode already sent, if any."""
        key = (st.st_dev, st.st_ino)
        names = self._inodes.setdefault(key, [])
        if replication and not any(n != path for n in names):
            # A link made after its first name was sent (that name had one link then,
            # and link(2) reports no name for it): look for the other names on disk.
            names.extend(n for n in self._other_names(path, st) if n not in names)
        for other in names:
            if other == path:
                continue
            try:
                ost = os.lstat(other)
            except OSError:
                continue
            known = self.view.entries.get(other)
            if (
                ost.st_ino == st.st_ino
                and ost.st_dev == st.st_dev
                and known is not None
                and known.size == st.st_size
                and known.mtime_ns == st.st_mtime_ns
            ):
                self.stream.emit(m.LINK, [m.wire_path(path), m.wire_path(other)], replication=replication)
                self.view.sent_other(path, self.view.entries[other])
                if path not in names:
                    names.append(path)
                return True
        if path not in names:
            names.append(path)
        return False

    def _other_names(self, path: str, st: os.stat_result) -> list[str]:
        """Other names of ``path``'s inode inside the selection: its own directory
        first, then the whole selection (``d_ino`` from getdents, no stat per entry).
        Rare (a hard link created while protected), so a walk is affordable."""
        found: list[str] = []
        wanted = st.st_nlink - 1
        parent = os.path.dirname(path)
        searched: set[str] = set()
        for top in (parent, *self.selection.roots):
            stack = [top]
            while stack and len(found) < wanted:
                directory = stack.pop()
                if directory in searched:
                    continue
                searched.add(directory)
                try:
                    with os.scandir(directory) as it:
                        for entry in it:
                            if (
                                entry.inode() == st.st_ino
                                and entry.path != path
                                and entry.is_file(follow_symlinks=False)
                            ):
                                found.append(entry.path)
                            elif top != parent and entry.is_dir(follow_symlinks=False):
                                stack.append(entry.path)
                except OSError:
                    continue
            if len(found) >= wanted:
                break
        return [f for f in found if self.selection.contains(f)]

    def _send_body(
        self,
        path: str,
        fd: int,
        st: os.stat_result,
        meta: fsmeta.Meta,
        old: RemoteEntry | None,
        replication: bool,
        data: bytes | None = None,
        *,
        cold: bool = False,
    ) -> bytes:
        """Send the file's content (``data`` when read ahead, else read from ``fd``);
        ``cold``: it was not in the page cache, and leaves it as it is read."""
        full = path in self.view.full_resend
        old_digests = old.digests if (old is not None and old.kind == "file" and not full) else b""
        base = blake3.blake3(old_digests).digest() if old_digests else b""
        planner = _SegmentPlanner(old_digests, set() if full else self.view.known_chunks, self.compression)
        wpath = m.wire_path(path)
        size = meta.size
        if data is not None:
            if data:
                planner.add_chunk(blake3.blake3(data).digest(), data)
                self.counters.bytes_read += len(data)
            size = len(data)
        if data is None and size <= SMALL_FILE and not might_be_sparse(st):
            for digest, chunk in iter_pieces(fd, size, drop_behind=cold):
                if digest is not None:
                    planner.add_chunk(digest, chunk)  # type: ignore[arg-type]
                    self.counters.bytes_read += len(chunk)  # type: ignore[arg-type]
        if data is not None or (size <= SMALL_FILE and not might_be_sparse(st)):
            segments = planner.flush()
            self._count(planner)
            self.stream.emit(
                m.FILE,
                [wpath, size, base, segments, meta.to_wire()],
                replication=replication,
                payload=planner.take_payload(),
                wire_payload=planner.take_wire_payload(),
            )
            return planner.digests()
        self.stream.emit(m.FBEGIN, [wpath, size, base], replication=replication)
        for digest, piece in iter_pieces(fd, size, sparse=might_be_sparse(st), drop_behind=cold):
            if digest is None:
                planner.add_hole(piece)  # type: ignore[arg-type]
                continue
            planner.add_chunk(digest, piece)  # type: ignore[arg-type]
            self.counters.bytes_read += len(piece)  # type: ignore[arg-type]
            if planner.pending_payload >= FRAME_PAYLOAD:
                segments = planner.flush()
                self._emit_data(planner, segments, replication)
                self.wait_for_room()
        segments = planner.flush()
        if segments:
            self._emit_data(planner, segments, replication)
        self._count(planner)
        self.stream.emit(m.FEND, [meta.to_wire()], replication=replication)
        return planner.digests()

    def _emit_data(self, planner: _SegmentPlanner, segments: list[list[Any]], replication: bool) -> None:
        self.stream.emit(m.FDATA, [segments], replication=replication, payload=planner.take_payload(),
                         wire_payload=planner.take_wire_payload())  # fmt: skip

    def _count(self, planner: _SegmentPlanner) -> None:
        self.counters.bytes_new += planner.new_bytes
        self.counters.bytes_deduplicated += planner.reused_bytes


class _SegmentPlanner:
    """Decides, chunk by chunk, whether a chunk travels as a run, a reference or data."""

    def __init__(
        self, old_digests: bytes, known: set[bytes], compressor: ChunkCompressor | None = None
    ) -> None:
        self._compressor = compressor
        self._wire = 0  # payload bytes as they travel (compressed or not) since the last take
        self._old = old_digests
        self._old_index: dict[bytes, int] | None = None
        self._known = known
        self._segments: list[list[Any]] = []
        self._digests: list[bytes] = []
        self._run_first = -1
        self._run_count = 0
        self.pending_payload = 0
        self._payload = 0
        self.new_bytes = 0
        self.reused_bytes = 0

    def _old_position(self, digest: bytes, expected: int) -> int:
        old = self._old
        if not old:
            return -1
        if expected >= 0 and old[expected * HASH : (expected + 1) * HASH] == digest:
            return expected
        if self._old_index is None:
            self._old_index = {old[i : i + HASH]: i // HASH for i in range(0, len(old), HASH)}
        return self._old_index.get(digest, -1)

    def add_chunk(self, digest: bytes, data: bytes | memoryview) -> None:
        self._digests.append(digest)
        expected = self._run_first + self._run_count if self._run_count else -1
        pos = self._old_position(digest, expected)
        if pos >= 0:
            self.reused_bytes += len(data)
            if self._run_count and pos == expected:
                self._run_count += 1
            else:
                self._close_run()
                self._run_first, self._run_count = pos, 1
            return
        self._close_run()
        if digest in self._known:
            self._segments.append([m.SEG_REF, digest, len(data)])
            self.reused_bytes += len(data)
            return
        frame = self._compressor.compress(data) if self._compressor is not None else None
        if frame is not None:
            self._segments.append([m.SEG_ZDATA, digest, frame, len(data)])
            self._wire += len(frame)
        else:
            # The bytes go as they are (a view of the read window): msgpack copies them
            # into the frame, the one copy they need.
            self._segments.append([m.SEG_DATA, digest, data])
            self._wire += len(data)
        self._known.add(digest)
        self.pending_payload += len(data)
        self.new_bytes += len(data)

    def add_hole(self, length: int) -> None:
        self._close_run()
        self._segments.append([m.SEG_HOLE, length])

    def _close_run(self) -> None:
        if self._run_count:
            self._segments.append([m.SEG_RUN, self._run_first, self._run_count])
            self._run_count = 0
            self._run_first = -1

    def flush(self) -> list[list[Any]]:
        self._close_run()
        out, self._segments = self._segments, []
        self._payload += self.pending_payload
        self.pending_payload = 0
        return out

    def take_payload(self) -> int:
        payload, self._payload = self._payload, 0
        return payload

    def take_wire_payload(self) -> int:
        wire, self._wire = self._wire, 0
        return wire

    def digests(self) -> bytes:
        return b"".join(self._digests)


def _read_all(paths: list[str]) -> list[tuple[os.stat_result, bytes] | None]:
    return [_read_small(path) for path in paths]


def _read_small(path: str) -> tuple[os.stat_result, bytes] | None:
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > SMALL_FILE or might_be_sparse(st):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOATIME)
    except OSError:
        return None
    try:
        cold = st.st_size > 0 and not pagecache.first_page_cached(fd, st.st_dev)
        data = os.pread(fd, st.st_size, 0) if st.st_size else b""
        after = os.fstat(fd)
        if cold:
            pagecache.drop(fd, 0, 0)  # brought in by this read only: give the pages back
    except OSError:
        return None
    finally:
        os.close(fd)
    # Only a read that no write overlapped is a version of the file: the same
    # size, times and inode before and after, and every byte of that size.
    if not _same_version(st, after) or len(data) != st.st_size:
        return None
    return after, data


def _same_version(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino, a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (
        b.st_ino,
        b.st_size,
        b.st_mtime_ns,
        b.st_ctime_ns,
    )


def _entry(meta: fsmeta.Meta, digests: bytes) -> RemoteEntry:
    return RemoteEntry(meta.kind, meta.size, meta.mtime_ns, meta.mode, meta.uid, meta.gid, digests)
