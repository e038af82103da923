"""The source's op queue: a bounded memory queue that spills to disk segments.

Frames wait here between the reader (which makes them) and the sender (which puts
them on the link). Sent replication frames stay in ``inflight`` until the repository
acknowledges them, so a reconnect can resend them; sent mirror frames are dropped at
once, because the difference mirror that runs after any reconnect finds whatever
they carried (keeping them would hold a whole mirror's bytes for nothing).

Limits are the seed's: memory max MB, disk folder, disk max MB (or unlimited) and a
minimum free MB on the disk folder's filesystem. When a frame fits nowhere the queue
is *exhausted*: it is emptied and the owner auto-disconnects (event 4007) and later
reconnects with a difference mirror. Segment record: ``u64 seq | u8 flags | u64 payload |
u32 len | [u64 wire payload if flags & 2] | frame`` (``docs/formats.md``, queue segment v2).
"""

from __future__ import annotations

import os
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_REC = struct.Struct("<QBQI")  # seq, flags, payload bytes, frame length
_WIRE = struct.Struct("<Q")  # wire payload bytes, present when flags & FLAG_WIRE_PAYLOAD
FLAG_REPLICATION = 1
FLAG_WIRE_PAYLOAD = 2  # version 2: the payload's size on the wire (compressed) follows


@dataclass(frozen=True, slots=True)
class QueueLimits:
    memory_max_bytes: int = 256 * 1024 * 1024
    disk_max_bytes: int | None = None  # None = unlimited
    min_free_bytes: int = 64 * 1024 * 1024


@dataclass(slots=True)
class QueuedFrame:
    seq: int
    frame: bytes
    replication: bool
    payload: int = 0  # file bytes the frame carries, for the sent-bytes statistics
    wire_payload: int = -1  # those bytes as they travel (compressed); -1: as many as payload

    @property
    def payload_on_wire(self) -> int:
        return self.payload if self.wire_payload < 0 else self.wire_payload


def _record_size(item: QueuedFrame) -> int:
    return _REC.size + (_WIRE.size if item.wire_payload >= 0 else 0) + len(item.frame)


class QueueExhausted(Exception):
    pass


class _DiskSegment:
    def __init__(self, path: Path, *, existing: bool = False) -> None:
        self.path = path
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if existing else os.O_TRUNC)
        self.write_fd = os.open(path, flags, 0o600)
        self.read_fd = -1
        self.read_pos = 0
        self.size = os.fstat(self.write_fd).st_size if existing else 0
        self.count = 0
        self.sealed = existing

    def append(self, item: QueuedFrame) -> None:
        flags = FLAG_REPLICATION if item.replication else 0
        wire = b""
        if item.wire_payload >= 0:
            flags |= FLAG_WIRE_PAYLOAD
            wire = _WIRE.pack(item.wire_payload)
        record = memoryview(_REC.pack(item.seq, flags, item.payload, len(item.frame)) + wire + item.frame)
        written = 0
        while written < len(record):  # a short write must not leave a torn record
            written += os.write(self.write_fd, record[written:])
        self.size += len(record)
        self.count += 1

    def read_next(self) -> QueuedFrame | None:
        if self.read_pos >= self.size:
            return None
        if self.read_fd < 0:
            self.read_fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        seq, flags, payload, length = _REC.unpack(os.pread(self.read_fd, _REC.size, self.read_pos))
        head = _REC.size
        wire = -1
        if flags & FLAG_WIRE_PAYLOAD:
            (wire,) = _WIRE.unpack(os.pread(self.read_fd, _WIRE.size, self.read_pos + head))
            head += _WIRE.size
        frame = os.pread(self.read_fd, length, self.read_pos + head)
        self.read_pos += head + length
        self.count -= 1
        return QueuedFrame(seq, frame, bool(flags & FLAG_REPLICATION), payload, wire)

    def remove(self) -> None:
        os.close(self.write_fd)
        if self.read_fd >= 0:
            os.close(self.read_fd)
        self.path.unlink(missing_ok=True)


class OpQueue:
    def __init__(self, folder: Path, limits: QueueLimits, notify: Callable[[], None] = lambda: None) -> None:
        self.folder = folder
        self.limits = limits
        self._notify = notify
        self._lock = threading.Lock()
        self._memory: deque[QueuedFrame] = deque()
        self._memory_bytes = 0
        self._disk: deque[_DiskSegment] = deque()
        self._disk_bytes = 0
        self._segment_no = 0
        self.inflight: deque[QueuedFrame] = deque()
        self._inflight_bytes = 0
        self.replication_bytes_queued = 0
        self.mirror_bytes_queued = 0
        self.exhausted = False
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("segment-*.q"):
            stale.unlink()  # a crash's leftovers: the difference mirror after a restart covers them

    # -- producer side -----------------------------------------------------------

    def append(self, item: QueuedFrame) -> None:
        """Queue one frame; raises QueueExhausted when neither memory nor disk can take it."""
        with self._lock:
            if self.exhausted:
                raise QueueExhausted("queue was exhausted; waiting for the auto-disconnect")
            size = len(item.frame)
            was_empty = not self._memory and not self._disk
            if not self._disk and self._memory_bytes + size <= self.limits.memory_max_bytes:
                self._memory.append(item)
                self._memory_bytes += size
            else:
                self._append_disk(item)
            self._count(item, +1)
        if was_empty:
            # Waking the sender crosses threads (a syscall); it only sleeps on an empty
            # queue, and re-checks after clearing its event, so one wake per fill is enough.
            self._notify()

    def _append_disk(self, item: QueuedFrame) -> None:
        size = _record_size(item)
        limit = self.limits.disk_max_bytes
        if limit is not None and self._disk_bytes + size > limit:
            self._exhaust()
        st = os.statvfs(self.folder)
        if st.f_bavail * st.f_frsize - size < self.limits.min_free_bytes:
            self._exhaust()
        if not self._disk or self._disk[-1].sealed or self._disk[-1].size > 64 * 1024 * 1024:
            if self._disk:
                self._disk[-1].sealed = True
            self._segment_no += 1
            self._disk.append(_DiskSegment(self.folder / f"segment-{self._segment_no:08d}.q"))
        try:
            self._disk[-1].append(item)
        except OSError as exc:
            self._exhaust(f"disk queue write failed: {exc.strerror}")
        self._disk_bytes += size

    def _exhaust(self, reason: str = "the disk-based queue is full") -> None:
        self.exhausted = True
        raise QueueExhausted(reason)

    def _count(self, item: QueuedFrame, sign: int) -> None:
        if item.replication:
            self.replication_bytes_queued += sign * len(item.frame)
        else:
            self.mirror_bytes_queued += sign * len(item.frame)

    # -- consumer side ----------------------------------------------------------------

    def take_many(self, max_bytes: int) -> list[QueuedFrame]:
        """Frames to send together, up to about ``max_bytes`` (at least one if any)."""
        out: list[QueuedFrame] = []
        size = 0
        while size < max_bytes:
            item = self.take()
            if item is None:
                break
            out.append(item)
            size += len(item.frame)
        return out

    def take(self) -> QueuedFrame | None:
        """Next frame to send, or None. Replication frames move to ``inflight``."""
        with self._lock:
            item: QueuedFrame | None = None
            if self._memory:
                item = self._memory.popleft()
                self._memory_bytes -= len(item.frame)
            else:
                while self._disk:
                    seg = self._disk[0]
                    item = seg.read_next()
                    if item is not None:
                        self._disk_bytes -= _record_size(item)
                        break
                    # Drained: drop it, so that new frames go to memory again once
                    # every older frame has left the disk (order is kept).
                    self._disk.popleft().remove()
            if item is None:
                return None
            self._count(item, -1)
            if item.replication:
                self.inflight.append(item)
                self._inflight_bytes += len(item.frame)
            return item

    def acknowledge(self, seq: int) -> None:
        with self._lock:
            while self.inflight and self.inflight[0].seq <= seq:
                self._inflight_bytes -= len(self.inflight.popleft().frame)

    def rewind(self) -> None:
        """After a reconnect: unacknowledged frames go back to the front, to be resent."""
        with self._lock:
            for item in reversed(self.inflight):
                self._memory.appendleft(item)
                self._memory_bytes += len(item.frame)
                self._count(item, +1)
            self.inflight.clear()
            self._inflight_bytes = 0

    def clear(self) -> None:
        """Drop everything (auto-disconnect): the difference mirror replaces it."""
        with self._lock:
            self._memory.clear()
            self._memory_bytes = 0
            for seg in self._disk:
                seg.remove()
            self._disk.clear()
            self._disk_bytes = 0
            self.inflight.clear()
            self._inflight_bytes = 0
            self.replication_bytes_queued = 0
            self.mirror_bytes_queued = 0
            self.exhausted = False

    # -- clean shutdown and restart --------------------------------------------------

    def save(self) -> Path | None:
        """Write every unacknowledged and unsent frame, in order, to ``saved.q``
        (fsynced) so that a clean restart resends them: changes a difference mirror
        cannot see (an xattr-only change) survive a restart too."""
        self.rewind()
        target = self.folder / "saved.q"
        with self._lock:
            if not self._memory and not self._disk:
                target.unlink(missing_ok=True)
                return None
            temp = self.folder / "saved.q.tmp"
            seg = _DiskSegment(temp)
            for item in self._memory:
                seg.append(item)
            for disk in self._disk:
                while (frame := disk.read_next()) is not None:
                    seg.append(frame)
            os.fsync(seg.write_fd)
            os.close(seg.write_fd)
            os.replace(temp, target)
            return target

    def load_saved(self) -> bool:
        """Queue the frames a clean shutdown saved (they go first)."""
        saved = self.folder / "saved.q"
        if not saved.exists():
            return False
        self._segment_no += 1
        segment_path = self.folder / f"segment-{self._segment_no:08d}.q"
        os.replace(saved, segment_path)
        seg = _DiskSegment(segment_path, existing=True)
        with self._lock:
            self._disk.appendleft(seg)
            self._disk_bytes += seg.size
        return True

    # -- figures ------------------------------------------------------------------------

    @property
    def memory_bytes(self) -> int:
        return self._memory_bytes

    @property
    def disk_bytes(self) -> int:
        return self._disk_bytes

    @property
    def inflight_bytes(self) -> int:
        return self._inflight_bytes

    def empty(self) -> bool:
        with self._lock:
            return not self._memory and not self._disk
