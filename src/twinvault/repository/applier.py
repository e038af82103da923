"""The applier: turns the op stream into changes of a live image, one op at a time.

Protection (source -> repository) and recovery (repository -> recovery server) use
this same code. Each op is atomic on disk: file bodies are built in a temporary file
beside their final name and renamed over it with their metadata already set, so a
reader of the image (or a crash) sees the old version or the new one, never a mix.
Writes use explicit offsets (``pwrite``) so that retrying a frame after a failure
(disk full, access denied) is idempotent.

Failures are retried with the seed's events (4110/4111/4112/4113, 4120 on success
after retries, 4150 when the retry limit discards the op). Runs in a worker thread;
``stop`` interrupts a retry wait.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import blake3

from twinvault import fsmeta
from twinvault.compression import FrameInvalid, decompress_frame
from twinvault.ops import events as ev
from twinvault.ops.errors import INVALID_PARAMETER, TwinvaultError
from twinvault.pagecache import DropBehind
from twinvault.protocol import messages as m
from twinvault.repository.image_index import ChunkPiece, ImageIndex, unpack_pieces
from twinvault.repository.image_tree import TEMP_PREFIX, ImageTree

if TYPE_CHECKING:
    from twinvault.repository.history import Recorder

log = logging.getLogger(__name__)

Emit = Callable[..., Any]
# A compressed segment claiming more than this is refused before anything is allocated
# (chunks are at most a few hundred KiB; a frame's data is bounded by MAX_FRAME_BYTES).
MAX_CHUNK_BYTES = 32 << 20
# A file this large is streamed out of the page cache as it is written (``pagecache``):
# a whole-server mirror would otherwise push everything else out of the cache.
DROP_BEHIND_SIZE = 16 << 20
# Written image files held open for the next group commit's release (at most this many:
# a commit every 50 ms sees a few hundred small files).
WRITTEN_KEPT = 1024


class Stopped(Exception):
    """The applier was stopped (link replaced, daemon shutting down) mid-op."""


class NeedData(Exception):
    """The op referred to bytes the repository does not hold: the source must resend."""


@dataclass(slots=True)
class Outcome:
    seq: int
    status: str  # "ok" | "need" | "failed" | "skipped"
    path: bytes = b""
    code: int = 0
    message: str = ""
    bytes_written: int = 0


@dataclass(slots=True)
class _FileTransfer:
    seq: int
    path: bytes
    size: int
    base: bytes
    dir_fd: int
    name: bytes
    temp_name: bytes  # b"" for an unnamed file (O_TMPFILE), linked at its end
    fd: int
    offset: int = 0
    pieces: list[ChunkPiece] = field(default_factory=list)
    failed: bool = False
    old_pieces: list[ChunkPiece] | None = None
    needs_data: bool = False
    data_end: int = 0  # end of the last bytes actually written (holes do not extend a file)
    body_done: bool = False  # a whole file's frame is written: a retry only redoes its end
    behind: DropBehind | None = None  # a large file leaves the page cache as it is written


_FILE_KINDS = frozenset({m.FILE, m.FBEGIN, m.FDATA, m.FEND})

_RETRY_EVENTS = {
    errno.ENOSPC: ev.TARGET_DISK_FULL,
    errno.EDQUOT: ev.TARGET_DISK_FULL,
    errno.ETXTBSY: ev.TARGET_SHARING,
    errno.EBUSY: ev.TARGET_SHARING,
    errno.EACCES: ev.TARGET_ACCESS_DENIED,
    errno.EPERM: ev.TARGET_ACCESS_DENIED,
    errno.EROFS: ev.TARGET_ACCESS_DENIED,
}


class Applier:
    def __init__(
        self,
        tree: ImageTree,
        index: ImageIndex,
        emit: Emit,
        *,
        retry_limit: int = 10,
        retry_delays: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0),
        on_retrying: Callable[[bool], None] = lambda retrying: None,
        recorder: Recorder | None = None,
    ) -> None:
        self._on_retrying = on_retrying
        # History (protection into a repository); a recovery target keeps none.
        self.recorder = recorder
        self.tree = tree
        self.index = index
        self._emit = emit
        self.retry_limit = retry_limit  # -1 = forever, as the seed's TGExecutionRetryLimit
        self._delays = retry_delays
        self._stopping = threading.Event()
        self._xfer: _FileTransfer | None = None
        self._retrying = False
        self._temp_tag = uuid.uuid4().hex[:12].encode()
        self._temp_counter = 0
        self._unnamed = True  # until the filesystem refuses O_TMPFILE
        # Times of the directories file bodies were written into, restored once per batch
        # of ops (see ``batch``) rather than once per file: two system calls per file less.
        self._held_times: dict[int, tuple[int, int]] = {}
        self._batching = 0
        tree.before_close = self._release_times
        # With ``hold_written`` (set by a receiver, whose group commit takes them), image
        # files written since the last commit are held open until it has made them
        # durable; their pages then leave the cache (``pagecache.release_written``).
        # Off, a written file is closed at once (a restore; an applier nobody commits).
        self.hold_written = False
        self._written: deque[int] = deque()
        self._written_lock = threading.Lock()

    def stop(self) -> None:
        self._stopping.set()

    @property
    def retrying(self) -> bool:
        return self._retrying

    @retrying.setter
    def retrying(self, value: bool) -> None:
        if value != self._retrying:
            self._retrying = value
            self._on_retrying(value)

    def abort_transfer(self) -> None:
        """Discard a half-received file (the connection ended mid-file)."""
        if self._xfer is not None:
            self._discard_temp(self._xfer)
            self._xfer = None
            if self.recorder is not None:
                self.recorder.file_aborted()
        if not self._batching:
            self._restore_held_times()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Apply several ops: the directory times that file bodies change are restored
        once at the end (and before any other kind of op, which may set those times itself)
        instead of after each file, and the recorder's thread is woken per group of tasks.
        Every op is still atomic and applied in order; only a directory's times lag until
        the batch ends, before its group commit."""
        self._batching += 1
        try:
            with self.recorder.holding() if self.recorder is not None else contextlib.nullcontext():
                yield
        finally:
            self._batching -= 1
            if not self._batching:
                self._restore_held_times()

    def close(self) -> None:
        """Close the image files still held for a commit (the tree is the caller's)."""
        for fd in self.take_written():
            os.close(fd)

    def take_written(self) -> list[int]:
        """(Any thread.) The descriptors of the image files written so far; the caller
        closes them, after a sync with ``release_written``."""
        with self._written_lock:
            taken = list(self._written)
            self._written.clear()
        return taken

    def _done_with(self, fd: int) -> None:
        if not self.hold_written:
            os.close(fd)
            return
        with self._written_lock:
            self._written.append(fd)
            oldest = self._written.popleft() if len(self._written) > WRITTEN_KEPT else -1
        if oldest >= 0:
            os.close(oldest)  # a stalled commit: just close

    def settle_times(self) -> None:
        """Restore the held directory times now (before the image is read mid-batch)."""
        self._restore_held_times()

    def _hold_times(self, dir_fd: int) -> None:
        if dir_fd not in self._held_times:
            self._held_times[dir_fd] = _times_of(dir_fd)

    def _restore_held_times(self) -> None:
        held, self._held_times = self._held_times, {}
        for dir_fd, times in held.items():
            _restore_times(dir_fd, times)

    def _release_times(self, dir_fd: int) -> None:
        times = self._held_times.pop(dir_fd, None)
        if times is not None:
            _restore_times(dir_fd, times)

    # -- entry point -------------------------------------------------------------

    def apply(self, message: list[Any]) -> Outcome | None:
        """Apply one op frame. Returns an outcome at op boundaries, None inside a file."""
        kind = message[0]
        if kind not in _FILE_KINDS:
            self._restore_held_times()
        try:
            return self._apply(kind, message)
        finally:
            if not self._batching:
                self._restore_held_times()

    def _apply(self, kind: str, message: list[Any]) -> Outcome | None:
        seq = int(message[1])
        attempt = 0
        first_error: OSError | None = None
        while True:
            try:
                outcome = self._apply_once(kind, seq, message)
            except TwinvaultError as exc:
                if exc.code != INVALID_PARAMETER:
                    raise  # a malformed op: the link is dropped
                # A path that would leave the image or target (``..``, not absolute): this op
                # is refused, the stream goes on.
                self.abort_transfer()
                self._emit(ev.TARGET_WRITE_DISCARDED, path=self._describe(message), retries=0)
                return Outcome(seq, "failed", os.fsencode(self._describe(message)), exc.code, exc.message)
            except NeedData as exc:
                if self._xfer is not None and kind in (m.FBEGIN, m.FDATA):
                    # Mid-file: drop the rest of this file's frames; its fend answers "need".
                    self._xfer.needs_data = True
                    self._xfer.failed = True
                    self._discard_temp(self._xfer, keep_state=True)
                    return None
                self.abort_transfer()
                return Outcome(seq, "need", os.fsencode(str(exc)))
            except OSError as exc:
                attempt += 1
                if first_error is None:
                    first_error = exc
                    self._emit(
                        _RETRY_EVENTS.get(exc.errno or 0, ev.TARGET_UNKNOWN_WRITE_ERROR),
                        path=self._describe(message),
                        retries="forever" if self.retry_limit < 0 else self.retry_limit,
                        error=exc.strerror or str(exc),
                    )
                if self._stopping.is_set():
                    self.retrying = False
                    raise Stopped from exc
                if 0 <= self.retry_limit < attempt:
                    return self._discard(kind, seq, message, exc, attempt - 1)
                self.retrying = True
                delay = self._delays[min(attempt - 1, len(self._delays) - 1)]
                if self._stopping.wait(delay):
                    self.retrying = False
                    raise Stopped from exc
                continue
            self.retrying = False
            if first_error is not None:
                self._emit(ev.TARGET_WRITE_RETRIED_OK, path=self._describe(message), retries=attempt)
            return outcome

    def _discard(self, kind: str, seq: int, message: list[Any], exc: OSError, retries: int) -> Outcome:
        self.retrying = False
        path = self._describe(message)
        self._emit(ev.TARGET_WRITE_DISCARDED, path=path, retries=retries)
        if self._xfer is not None:
            # The rest of this file's frames will be dropped until its fend.
            self._xfer.failed = True
            self._discard_temp(self._xfer, keep_state=True)
        code = -173 if exc.errno in (errno.ENOSPC, errno.EDQUOT) else -1
        return Outcome(seq, "failed", os.fsencode(path), code, exc.strerror or str(exc))

    def _describe(self, message: list[Any]) -> str:
        if message[0] in (m.FDATA, m.FEND) and self._xfer is not None:
            return os.fsdecode(self._xfer.path)
        if len(message) > 2 and isinstance(message[2], bytes):
            return os.fsdecode(message[2])
        return f"op {message[1]}"

    def _apply_once(self, kind: str, seq: int, msg: list[Any]) -> Outcome | None:
        if kind == m.FILE:
            if self._xfer is None or self._xfer.seq != seq:
                self._file_begin(seq, msg[2], int(msg[3]), msg[4])
            x = self._xfer
            if x is not None and not x.body_done:
                self._file_data(msg[5])
                x.body_done = True
            return self._file_end(seq, fsmeta.Meta.from_wire(msg[6]))
        if kind == m.FBEGIN:
            self._file_begin(seq, msg[2], int(msg[3]), msg[4])
            return None
        if kind == m.FDATA:
            self._file_data(msg[2])
            return None
        if kind == m.FEND:
            return self._file_end(seq, fsmeta.Meta.from_wire(msg[2]))
        if kind == m.MARK:
            if self.recorder is not None and len(msg) > 2 and isinstance(msg[2], str):
                self.recorder.mark(msg[2])
            return Outcome(seq, "ok")
        handler = self._SIMPLE.get(kind)
        if handler is None:
            raise TwinvaultError(-1007, f"unknown op kind {kind!r}")
        return handler(self, seq, msg)

    # -- simple ops ----------------------------------------------------------------

    def _mkdir(self, seq: int, msg: list[Any]) -> Outcome:
        path, meta = msg[2], fsmeta.Meta.from_wire(msg[3])
        if path == b"/":
            fsmeta.apply_meta(os.fsdecode(self.tree.real_path(b"")), meta)
            if self.recorder is not None:
                self.recorder.put(path, meta)
            return Outcome(seq, "ok", path)
        dir_fd, name = self.tree.parent(path, create=True)
        with _ParentTimes(dir_fd):
            try:
                st = os.lstat(name, dir_fd=dir_fd)
                if not stat.S_ISDIR(st.st_mode):
                    self._remove(dir_fd, name, path)
                    os.mkdir(name, 0o700, dir_fd=dir_fd)
            except FileNotFoundError:
                os.mkdir(name, 0o700, dir_fd=dir_fd)
        fsmeta.apply_meta(os.fsdecode(self.tree.proc_path(dir_fd, name)), meta)
        if self.recorder is not None:
            self.recorder.put(path, meta)
        return Outcome(seq, "ok", path)

    def _meta(self, seq: int, msg: list[Any]) -> Outcome:
        path, meta = msg[2], fsmeta.Meta.from_wire(msg[3])
        try:
            dir_fd, name = self.tree.parent(path, create=False) if path != b"/" else (-1, b"")
            target = self.tree.real_path(b"") if path == b"/" else self.tree.proc_path(dir_fd, name)
            st = os.lstat(target)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NeedData(os.fsdecode(path)) from exc
        if fsmeta.kind_of(st.st_mode) != meta.kind or (meta.kind == "file" and st.st_size != meta.size):
            raise NeedData(os.fsdecode(path))
        if meta.kind == "file" and len(msg) > 4 and msg[4]:
            current = self._current_file(path)
            if current is None or blake3.blake3(_digests(current)).digest() != msg[4]:
                raise NeedData(os.fsdecode(path))
        fsmeta.apply_meta(os.fsdecode(target), meta)
        if meta.kind == "file":
            self.index.update_mtime(path, meta.mtime_ns)
        if self.recorder is not None:
            self.recorder.meta(path, meta)
        return Outcome(seq, "ok", path)

    def _symlink(self, seq: int, msg: list[Any]) -> Outcome:
        path, meta = msg[2], fsmeta.Meta.from_wire(msg[3])
        dir_fd, name = self.tree.parent(path, create=True)
        temp = self._temp_name()
        with _ParentTimes(dir_fd):
            os.symlink(os.fsencode(meta.symlink_target), temp, dir_fd=dir_fd)
            fsmeta.apply_meta(os.fsdecode(self.tree.proc_path(dir_fd, temp)), meta)
            self._replace(dir_fd, temp, name, path)
        if self.recorder is not None:
            self.recorder.put(path, meta)
        return Outcome(seq, "ok", path)

    def _special(self, seq: int, msg: list[Any]) -> Outcome:
        path, meta = msg[2], fsmeta.Meta.from_wire(msg[3])
        dir_fd, name = self.tree.parent(path, create=True)
        temp = self._temp_name()
        temp_path = os.fsdecode(self.tree.proc_path(dir_fd, temp))
        with _ParentTimes(dir_fd):
            fsmeta.create_special(temp_path, meta)
            fsmeta.apply_meta(temp_path, meta)
            self._replace(dir_fd, temp, name, path)
        if self.recorder is not None:
            self.recorder.put(path, meta)
        return Outcome(seq, "ok", path)

    def _link(self, seq: int, msg: list[Any]) -> Outcome:
        path, existing = msg[2], msg[3]
        try:
            src_fd, src_name = self.tree.parent(existing, create=False)
            target = os.lstat(src_name, dir_fd=src_fd)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NeedData(os.fsdecode(path)) from exc
        dir_fd, name = self.tree.parent(path, create=True)
        with contextlib.suppress(FileNotFoundError):
            here = os.lstat(name, dir_fd=dir_fd)
            if (here.st_dev, here.st_ino) == (target.st_dev, target.st_ino):
                if self.recorder is not None:
                    self.recorder.link(path, existing)
                return Outcome(seq, "ok", path)  # already linked (a resent op)
        temp = self._temp_name()
        with _ParentTimes(dir_fd):
            try:
                os.link(src_name, temp, src_dir_fd=src_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError as exc:
                raise NeedData(os.fsdecode(path)) from exc
            self._replace(dir_fd, temp, name, path)
        indexed = self.index.file(existing)
        if indexed is not None:
            self.index.record_file(path, indexed.size, indexed.mtime_ns, unpack_pieces(indexed.pieces_blob))
        if self.recorder is not None:
            self.recorder.link(path, existing)
        return Outcome(seq, "ok", path)

    def _delete(self, seq: int, msg: list[Any]) -> Outcome:
        path = msg[2]
        if self.recorder is not None:
            self.recorder.delete(path)
        try:
            dir_fd, name = self.tree.parent(path, create=False)
        except (FileNotFoundError, NotADirectoryError):
            return Outcome(seq, "ok", path)
        with _ParentTimes(dir_fd):
            self._remove(dir_fd, name, path)
        return Outcome(seq, "ok", path)

    def _rename(self, seq: int, msg: list[Any]) -> Outcome:
        old, new = msg[2], msg[3]
        try:
            old_fd, old_name = self.tree.parent(old, create=False)
            os.lstat(old_name, dir_fd=old_fd)
        except (FileNotFoundError, NotADirectoryError):
            return Outcome(seq, "skipped", old)  # the source sends the new name's content anyway
        new_fd, new_name = self.tree.parent(new, create=True)
        with _ParentTimes(old_fd), _ParentTimes(new_fd):
            try:
                os.rename(old_name, new_name, src_dir_fd=old_fd, dst_dir_fd=new_fd)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                    raise
                self._remove(new_fd, new_name, new)
                os.rename(old_name, new_name, src_dir_fd=old_fd, dst_dir_fd=new_fd)
        self.tree.invalidate(old)
        self.tree.invalidate(new)
        self.index.move(old, new)
        if self.recorder is not None:
            self.recorder.rename(old, new)
        return Outcome(seq, "ok", new)

    _SIMPLE: dict[str, Callable[[Applier, int, list[Any]], Outcome]] = {
        m.MKDIR: _mkdir,
        m.META: _meta,
        m.SYMLINK: _symlink,
        m.SPECIAL: _special,
        m.LINK: _link,
        m.DELETE: _delete,
        m.RENAME: _rename,
    }

    # -- file bodies -------------------------------------------------------------------

    def _file_begin(self, seq: int, path: bytes, size: int, base: bytes) -> None:
        if self._xfer is not None and self._xfer.seq == seq:
            return  # a retried fbegin: the temp file already exists
        self.abort_transfer()
        dir_fd, name = self.tree.parent(path, create=True)
        self._hold_times(dir_fd)
        temp, fd = b"", self._open_unnamed(dir_fd)
        if fd < 0:
            temp = self._temp_name()
            # Read-write: history reads back reused chunks an old image never stored.
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        self._xfer = _FileTransfer(seq, path, size, base, dir_fd, name, temp, fd)
        if size >= DROP_BEHIND_SIZE:
            self._xfer.behind = DropBehind(fd)

    def _open_unnamed(self, dir_fd: int) -> int:
        """A file with no name yet in the directory (O_TMPFILE), or -1 where the filesystem
        has none. Why: linking it at its end costs the directory one entry change where a
        temporary name costs two (create, rename), and a crash leaves no temporary behind."""
        if not self._unnamed:
            return -1
        try:
            return os.open(".", os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            self._unnamed = False
            return -1

    def _file_data(self, segments: list[list[Any]]) -> None:
        x = self._xfer
        if x is None:
            raise TwinvaultError(-1007, "file data without a file")
        if x.failed:
            return
        offset, pieces = x.offset, []
        recorder = self.recorder
        for seg in segments:
            tag = seg[0]
            if tag == m.SEG_DATA:
                digest, data = seg[1], seg[2]
                pwrite_all(x.fd, data, offset)
                if recorder is not None:
                    recorder.chunk(digest, data)
                pieces.append(ChunkPiece(digest, offset, len(data)))
                offset += len(data)
            elif tag == m.SEG_ZDATA:
                digest, frame, length = seg[1], seg[2], int(seg[3])
                data = _decompressed(frame, length)
                pwrite_all(x.fd, data, offset)
                if recorder is not None:
                    recorder.chunk_frame(digest, frame, data)  # stored as it came
                pieces.append(ChunkPiece(digest, offset, length))
                offset += length
            elif tag == m.SEG_HOLE:
                offset += int(seg[1])
            elif tag == m.SEG_REF:
                digest, length = seg[1], int(seg[2])
                self._copy_chunk(x, digest, length, offset)
                if recorder is not None:
                    recorder.ensure_chunk(digest, _reader(x.fd, length, offset))
                pieces.append(ChunkPiece(digest, offset, length))
                offset += length
            elif tag == m.SEG_RUN:
                for piece in self._old_run(x, int(seg[1]), int(seg[2])):
                    self._copy_range(x, x.path, piece.offset, piece.length, offset)
                    if recorder is not None:
                        recorder.ensure_chunk(piece.digest, _reader(x.fd, piece.length, offset))
                    pieces.append(ChunkPiece(piece.digest, offset, piece.length))
                    offset += piece.length
            else:
                raise TwinvaultError(-1007, f"unknown segment tag {tag!r}")
        # Only advance once the whole frame is written: a retry rewrites it at the same offsets.
        x.offset = offset
        if x.behind is not None:
            x.behind.advance(offset)
        if pieces:
            x.data_end = max(x.data_end, pieces[-1].offset + pieces[-1].length)
        x.pieces.extend(pieces)

    def _old_run(self, x: _FileTransfer, first: int, count: int) -> list[ChunkPiece]:
        if x.old_pieces is None:
            indexed = self._current_file(x.path)
            if indexed is None or blake3.blake3(_digests(indexed)).digest() != x.base:
                raise NeedData(os.fsdecode(x.path))
            x.old_pieces = indexed
        if first < 0 or first + count > len(x.old_pieces):
            raise NeedData(os.fsdecode(x.path))
        return x.old_pieces[first : first + count]

    def _current_file(self, path: bytes) -> list[ChunkPiece] | None:
        """The index entry of ``path`` if it still describes the file on disk."""
        indexed = self.index.file(path)
        if indexed is None:
            return None
        try:
            dir_fd, name = self.tree.parent(path, create=False)
            st = os.lstat(name, dir_fd=dir_fd)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size != indexed.size or st.st_mtime_ns != indexed.mtime_ns:
            return None
        return unpack_pieces(indexed.pieces_blob)

    def _copy_chunk(self, x: _FileTransfer, digest: bytes, length: int, dst_offset: int) -> None:
        location = self.index.location(digest)
        if location is None:
            raise NeedData(os.fsdecode(x.path))
        path, offset, loc_length = location
        current = self._current_file(path)
        if current is None or loc_length != length or ChunkPiece(digest, offset, length) not in current:
            raise NeedData(os.fsdecode(x.path))
        self._copy_range(x, path, offset, length, dst_offset)

    def _copy_range(
        self, x: _FileTransfer, src: bytes, src_offset: int, length: int, dst_offset: int
    ) -> None:
        try:
            src_dir, src_name = self.tree.parent(src, create=False)
            src_fd = os.open(src_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NeedData(os.fsdecode(x.path)) from exc
        try:
            done = 0
            while done < length:
                n = os.copy_file_range(src_fd, x.fd, length - done, src_offset + done, dst_offset + done)
                if n == 0:
                    raise NeedData(os.fsdecode(x.path))  # the source file shrank under us
                done += n
        finally:
            os.close(src_fd)

    def _file_end(self, seq: int, meta: fsmeta.Meta) -> Outcome:
        x = self._xfer
        if x is None:
            raise TwinvaultError(-1007, "file end without a file")
        if x.failed:
            self._xfer = None
            if x.needs_data:
                return Outcome(seq, "need", x.path)
            return Outcome(seq, "failed", x.path, -1, "discarded after the retry limit")
        if x.data_end != meta.size:  # a trailing hole (or a shorter file) sets the size
            os.ftruncate(x.fd, meta.size)
        where = self.tree.proc_path(x.dir_fd, x.temp_name) if x.temp_name else _fd_path(x.fd)
        fsmeta.apply_meta(os.fsdecode(where), meta, fd=x.fd)
        self._hold_times(x.dir_fd)  # a file whose frames spanned batches
        if not x.temp_name:
            x.temp_name = self._link_unnamed(x)
        if x.temp_name:
            self._replace(x.dir_fd, x.temp_name, x.name, x.path, keep_parent_times=False)
        self._done_with(x.fd)
        self._xfer = None
        self.index.record_file(x.path, meta.size, meta.mtime_ns, x.pieces)
        if self.recorder is not None:
            self.recorder.put_file(x.path, meta, x.pieces)
        return Outcome(seq, "ok", x.path, bytes_written=x.offset)

    # -- helpers ---------------------------------------------------------------------------

    def _link_unnamed(self, x: _FileTransfer) -> bytes:
        """Give the unnamed file its name; when the name is taken, a temporary name to be
        renamed over it (b"" when it is linked under its own name already)."""
        try:
            os.link(_fd_path(x.fd), x.name, dst_dir_fd=x.dir_fd, follow_symlinks=True)
            return b""
        except FileExistsError:
            temp = self._temp_name()
            os.link(_fd_path(x.fd), temp, dst_dir_fd=x.dir_fd, follow_symlinks=True)
            return temp

    def _temp_name(self) -> bytes:
        # Unique per applier: a random part (once) and a counter, no syscall per file.
        self._temp_counter += 1
        return b"%s%s.%d" % (TEMP_PREFIX.encode(), self._temp_tag, self._temp_counter)

    def _replace(
        self, dir_fd: int, temp: bytes, name: bytes, path: bytes, *, keep_parent_times: bool = True
    ) -> None:
        """Atomically put ``temp`` at ``name``; a directory in the way is removed first.
        ``keep_parent_times=False`` when the caller holds the parent's times itself."""
        with _ParentTimes(dir_fd) if keep_parent_times else contextlib.nullcontext():
            try:
                os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except IsADirectoryError:
                self._remove(dir_fd, name, path)
                os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                self.tree.invalidate(path)

    def _remove(self, dir_fd: int, name: bytes, path: bytes) -> None:
        try:
            st = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            self.tree.invalidate(path)
            shutil.rmtree(name, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)
        self.index.forget(path)

    def _discard_temp(self, x: _FileTransfer, keep_state: bool = False) -> None:
        if x.fd >= 0:
            os.close(x.fd)  # an unnamed file is gone with its last descriptor
            x.fd = -1
            if x.temp_name:
                try:
                    self._hold_times(x.dir_fd)
                    os.unlink(x.temp_name, dir_fd=x.dir_fd)
                except OSError:
                    log.warning("could not remove temporary %r", x.temp_name)
        if not keep_state:
            self._xfer = None


def _digests(pieces: list[ChunkPiece]) -> bytes:
    return b"".join(p.digest for p in pieces)


def _decompressed(frame: object, length: int) -> bytes:
    if not isinstance(frame, bytes) or not 0 <= length <= MAX_CHUNK_BYTES:
        raise TwinvaultError(-1007, "malformed compressed segment")
    try:
        return decompress_frame(frame, length)
    except FrameInvalid as exc:
        raise TwinvaultError(-1007, f"compressed segment: {exc}") from None


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _fd_path(fd: int) -> bytes:
    return b"/proc/self/fd/%d" % fd


def _reader(fd: int, length: int, offset: int) -> Callable[[], bytes]:
    return lambda: os.pread(fd, length, offset)


def _times_of(dir_fd: int) -> tuple[int, int]:
    st = os.fstat(dir_fd)
    return (st.st_atime_ns, st.st_mtime_ns)


def _restore_times(dir_fd: int, times: tuple[int, int]) -> None:
    os.utime(f"/proc/self/fd/{dir_fd}", ns=times)


class _ParentTimes:
    """Keep a directory's times across an entry change: its own meta op sets them.

    Why: the source's directory times are replicated by that directory's own op; the
    entries the applier creates, renames and removes (temporaries included) must not
    leave the repository's times newer than the source's.
    """

    def __init__(self, dir_fd: int) -> None:
        self._fd = dir_fd
        self._times: tuple[int, int] | None = None

    def __enter__(self) -> None:
        self._times = _times_of(self._fd)

    def __exit__(self, *exc: object) -> None:
        if self._times is not None:
            _restore_times(self._fd, self._times)
