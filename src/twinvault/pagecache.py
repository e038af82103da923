"""Streaming data through the page cache without filling it: write-behind and drop-behind.

A mirror moves the whole selection once. Left to itself the kernel keeps every byte
it read or wrote in the page cache until memory runs short: the server's working set
is evicted for data nobody will read soon, and every new page the stream needs is a
page the system had to find, zero and (on a virtual machine whose free memory goes
back to the host: virtio balloon free page reporting) fault in from the host, which
measured here ~3 s per GiB against ~0.3 s for a page freed a moment ago and reused.

So the streams release what they are done with, as RocksDB and PostgreSQL do:

- writers (packs, large image files) start writeback of each step as it fills and,
  two steps later, wait for it and drop it (``DropBehind``): the cache holds about three
  steps of each stream, and the pages freed are the next step's;
- the repository's small image files are dropped after the group commit that made them
  durable (``release_written``: clean by then, so the drop is immediate);
- readers drop the pages a read brought in, and only those: a file that was already
  cached when the read began (``first_page_cached``) belongs to someone's working set
  and stays.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os

_SYNC_FILE_RANGE_WAIT_BEFORE = 1
_SYNC_FILE_RANGE_WRITE = 2
_SYNC_FILE_RANGE_WAIT_AFTER = 4
_libc = ctypes.CDLL(None, use_errno=True)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]

_PROBE = bytearray(1)
_SYS_CACHESTAT = 451  # x86-64 and arm64 alike (the syscall table is shared since 5.x)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in
                ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")]  # fmt: skip


_cachestat_works = True
# Filesystems whose files have no page cache of their own (overlayfs: the pages are the
# upper or lower layer's file's), where cachestat always answers "none cached".
_STACKED_TYPES = frozenset({0x794C7630})  # OVERLAYFS_SUPER_MAGIC
_stacked_devices: dict[int, bool] = {}
_fstatfs = _libc.fstatfs
_fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range out, without waiting (sync_file_range(2));
    only a head start for fdatasync, which remains the durability point."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def drop(fd: int, offset: int, length: int) -> None:
    """Drop a range's clean pages (a dirty one is only queued for writeback: harmless)."""
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def cached_pages(fd: int, offset: int, length: int, dev: int | None = None) -> int | None:
    """Pages of the range in the page cache (cachestat(2), Linux 6.5: no I/O, no side
    effect); None where the kernel lacks it or the filesystem cannot tell (overlayfs).
    ``dev``: the file's st_dev when the caller has it (else one fstat more)."""
    global _cachestat_works
    if not _cachestat_works or _stacked(fd, os.fstat(fd).st_dev if dev is None else dev):
        return None
    rng, out = _CachestatRange(offset, length), _Cachestat()
    result = _syscall(
        _SYS_CACHESTAT, ctypes.c_uint(fd), ctypes.byref(rng), ctypes.byref(out), ctypes.c_uint(0)
    )
    if result != 0:
        if ctypes.get_errno() == errno.ENOSYS:
            _cachestat_works = False
        return None
    return int(out.nr_cache)


def _stacked(fd: int, dev: int) -> bool:
    """Whether ``fd``'s filesystem (device ``dev``) is one whose page cache cachestat
    cannot see (asked once per device: fstatfs's f_type, struct statfs's first field)."""
    stacked = _stacked_devices.get(dev)
    if stacked is None:
        buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit
        fs_type = ctypes.c_long.from_buffer(buf).value if _fstatfs(fd, buf) == 0 else 0
        stacked = _stacked_devices[dev] = fs_type in _STACKED_TYPES
    return stacked


def first_page_cached(fd: int, dev: int) -> bool:
    """Whether the file's first page is in the page cache now (``dev``: its st_dev, which
    every caller has from its stat). Without cachestat, a read that may not wait for the
    disk (RWF_NOWAIT) tells, at the price of starting the readahead the caller's read
    wants anyway. Unknown counts as cached: nothing is dropped."""
    pages = cached_pages(fd, 0, 1, dev)
    if pages is not None:
        return pages > 0
    try:
        os.preadv(fd, [_PROBE], 0, os.RWF_NOWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


class DropBehind:
    """Write-behind and drop-behind for one file written front to back.

    ``advance(end)`` after each write: every ``step`` bytes the new step's writeback
    starts, and the step started the time before last, written back by now or waited
    for, leaves the cache. Two steps of lag, not one: the writer (the recorder, under the
    pack writer's lock) then almost never waits for the disk, and the stream's dirty
    pages stay bounded by what the disk can take.
    """

    def __init__(self, fd: int, start: int = 0, step: int = 4 << 20) -> None:
        self._fd = fd
        self._step = step
        self._started = start  # writeback started up to here
        self._previous = start  # ... and up to here the time before
        self._dropped = start  # dropped up to here

    def advance(self, end: int) -> None:
        if end - self._started < self._step:
            return
        start_writeback(self._fd, self._started, end - self._started)
        if self._previous > self._dropped and _sync_file_range is not None:
            _sync_file_range(
                self._fd,
                self._dropped,
                self._previous - self._dropped,
                _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER,
            )
            # The kernel keeps a partial last page: the next write may still need it.
            drop(self._fd, self._dropped, self._previous - self._dropped)
            self._dropped = self._previous
        self._previous = self._started
        self._started = end


def release_written(fds: list[int]) -> None:
    """Files written and since made durable (a sync returned after their writes): drop
    their pages and close them. Their pages are clean now, so they really go."""
    for fd in fds:
        drop(fd, 0, 0)
        os.close(fd)
