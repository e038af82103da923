"""The repository's journal: an append-only log of every applied op, with its time.

It is the write-ahead log of the catalog (``docs/history.md``): the catalog is an index
over it and is rebuilt from it when it is missing or damaged. Records are appended in
memory by the history recorder and written + fsynced by ``commit`` in the receiver's
group commit, before the source's ops are acknowledged.

Format (version 1, ``docs/formats.md``): segment files ``NNNNNNNNNNNNNNNN.tvj`` (hex
segment number) that start with an 8-byte header ``b"TVJ" + version(u8) + 4 reserved``,
then records ``u32 length, u32 crc32(body), body`` where the body is a msgpack list.
A torn tail (a crash mid-append) fails its length or CRC and is cut off at open: only
committed records count, and a commit returns only after fsync. Sealed segments are also
saved with the chunk store (encrypted when it is), so a lost state directory does not
lose history.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgpack

log = logging.getLogger(__name__)

FORMAT_VERSION: Final = 1
_HEADER: Final = b"TVJ" + bytes([FORMAT_VERSION]) + b"\0\0\0\0"
_RECORD: Final = struct.Struct("<II")
SEGMENT_MAX: Final = 64 << 20
_OFFSET_BITS: Final = 32
_SUFFIX: Final = ".tvj"

SaveObject = Callable[[str, bytes], None]


def position_of(segment: int, offset: int) -> int:
    """One integer for (segment, offset): what the catalog stores as its position."""
    return (segment << _OFFSET_BITS) | offset


def split_position(position: int) -> tuple[int, int]:
    return position >> _OFFSET_BITS, position & ((1 << _OFFSET_BITS) - 1)


@dataclass(frozen=True, slots=True)
class JournalEntry:
    position: int  # the position just after this record (what the catalog stores once applied)
    record: list[Any]


class Journal:
    """Append-only segments in ``directory``; one writer lock, readers open their own files."""

    def __init__(self, directory: Path, *, save_sealed: SaveObject | None = None) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._save_sealed = save_sealed
        self._lock = threading.Lock()
        self._buffer: list[bytes] = []
        segments = self.segments()
        self.repaired_bytes = 0
        self.last_time = 0  # the instant of the last committed record (records are [kind, t, ...])
        if segments:
            self._segment = segments[-1]
            self._offset = self._repair(self._segment)
            for earlier in reversed(segments[:-1]):
                if self.last_time:
                    break  # a segment just rotated holds no record yet: look further back
                for _, body in _records(self._path(earlier).read_bytes(), len(_HEADER)):
                    self.last_time = int(msgpack.unpackb(body, raw=False)[1])
        else:
            self._segment = 1
            self._offset = self._create(self._segment)
        self._fd = os.open(self._path(self._segment), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    # -- writing -----------------------------------------------------------------------

    def append(self, record: list[Any]) -> None:
        body = msgpack.packb(record, use_bin_type=True)
        with self._lock:
            self._buffer.append(_RECORD.pack(len(body), zlib.crc32(body)) + body)
            self.last_time = max(self.last_time, int(record[1]))

    def commit(self) -> int:
        """Write and fsync every appended record; return the end position."""
        position = self.write()
        self.sync()
        return position

    def write(self) -> int:
        """Write every appended record (not yet durable: ``sync`` is); return the end
        position. Split from ``sync`` so appends can go on while the disk syncs."""
        with self._lock:
            if self._buffer:
                data = b"".join(self._buffer)
                self._buffer.clear()
                _write_all(self._fd, data)
                self._offset += len(data)
                if self._offset >= SEGMENT_MAX:
                    os.fsync(self._fd)  # a sealed segment is whole before it is copied
                    self._rotate()
            return position_of(self._segment, self._offset)

    def sync(self) -> None:
        """fsync what ``write`` wrote, without holding the append lock. Callers serialise
        write/sync pairs (one group commit at a time), so the descriptor stays open."""
        with self._lock:
            fd = self._fd
        os.fsync(fd)

    def end(self) -> int:
        with self._lock:
            return position_of(self._segment, self._offset)

    def close(self) -> None:
        self.commit()
        with self._lock:
            os.close(self._fd)
            self._fd = -1

    def _rotate(self) -> None:
        sealed = self._segment
        os.close(self._fd)
        self._segment += 1
        self._offset = self._create(self._segment)
        self._fd = os.open(self._path(self._segment), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        if self._save_sealed is not None:
            # A copy beside the chunk store: the catalog can be rebuilt even if this
            # state directory is lost. A failure here only delays that copy.
            try:
                self._save_sealed(f"journal/{sealed:016x}", self._path(sealed).read_bytes())
            except Exception as exc:  # the copy is retried by save_unsent at next start
                log.warning("journal segment %d not copied to the store yet: %s", sealed, exc)

    def save_unsent(self, already: set[str]) -> int:
        """Copy sealed segments the store does not hold yet; returns how many."""
        if self._save_sealed is None:
            return 0
        sent = 0
        for segment in self.segments()[:-1]:
            name = f"journal/{segment:016x}"
            if name not in already:
                self._save_sealed(name, self._path(segment).read_bytes())
                sent += 1
        return sent

    # -- reading -------------------------------------------------------------------------

    def segments(self) -> list[int]:
        found = []
        for entry in os.listdir(self.directory):
            if entry.endswith(_SUFFIX):
                try:
                    found.append(int(entry[: -len(_SUFFIX)], 16))
                except ValueError:
                    continue
        return sorted(found)

    def entries_after(self, position: int) -> Iterator[JournalEntry]:
        """Every committed record after ``position`` (0 = from the beginning), in order."""
        start_segment, start_offset = split_position(position)
        for segment in self.segments():
            if segment < start_segment:
                continue
            offset = start_offset if segment == start_segment else len(_HEADER)
            offset = max(offset, len(_HEADER))
            data = self._path(segment).read_bytes()
            for end, body in _records(data, offset):
                yield JournalEntry(position_of(segment, end), msgpack.unpackb(body, raw=False))

    # -- files ---------------------------------------------------------------------------

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:016x}{_SUFFIX}"

    def _create(self, segment: int) -> int:
        path = self._path(segment)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, _HEADER)
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(self.directory)
        return len(_HEADER)

    def _repair(self, segment: int) -> int:
        """Cut a torn tail off the last segment; return its committed length."""
        path = self._path(segment)
        data = path.read_bytes()
        if len(data) < len(_HEADER) or data[:3] != _HEADER[:3]:
            # A crash between creating the file and its header reaching the disk.
            with open(path, "wb") as f:
                f.write(_HEADER)
                f.flush()
                os.fsync(f.fileno())
            self.repaired_bytes = len(data)
            return len(_HEADER)
        if data[3] != FORMAT_VERSION:
            raise ValueError(f"journal segment {path} has format version {data[3]}")
        end = len(_HEADER)
        last = b""
        for record_end, body in _records(data, len(_HEADER)):
            end, last = record_end, body
        if last:
            self.last_time = int(msgpack.unpackb(last, raw=False)[1])
        if end != len(data):
            self.repaired_bytes = len(data) - end
            log.warning("journal %s: cut %d bytes of a torn tail", path, len(data) - end)
            os.truncate(path, end)
        return end


def _records(data: bytes, offset: int) -> Iterator[tuple[int, bytes]]:
    view = memoryview(data)
    while offset + _RECORD.size <= len(data):
        length, crc = _RECORD.unpack_from(data, offset)
        start = offset + _RECORD.size
        end = start + length
        if end > len(data):
            return
        body = bytes(view[start:end])
        if zlib.crc32(body) != crc:
            return
        yield end, body
        offset = end


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
