"""Change capture with fanotify filesystem marks (the preferred method, kernel >= 5.17).

One `FAN_MARK_FILESYSTEM` mark per filesystem holding a root sees every change on that
filesystem, from every process, with no per-directory watch to place or run out of. Events
name entries by directory file handle + name (`FAN_REPORT_DFID_NAME_TARGET`); directory
handles are turned into paths with `open_by_handle_at` + readlink of /proc/self/fd and kept
in a bounded cache, and paths outside the roots are dropped. A directory found outside
every root gets an ignore mark, so the kernel stops queueing the events about its files
(a repository, or any busy writer, on the same filesystem); a directory rename flushes
those marks. Renames arrive as one `FAN_RENAME` event carrying both sides. Whatever
cannot be resolved to a path for certain comes out as OVERFLOW, so the caller re-mirrors
instead of missing a change.

Neighbours: `events.py` (the interface, scope filter and feed), `inotify.py` (the fallback).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from twinvault.source.capture.events import (
    OVERFLOW,
    CaptureScope,
    CaptureUnavailable,
    Change,
    ChangeFeed,
    ChangeKind,
)

log = logging.getLogger(__name__)

# <linux/fanotify.h>
FAN_MODIFY = 0x0000_0002
FAN_ATTRIB = 0x0000_0004
FAN_CLOSE_WRITE = 0x0000_0008
FAN_MOVED_FROM = 0x0000_0040
FAN_MOVED_TO = 0x0000_0080
FAN_CREATE = 0x0000_0100
FAN_DELETE = 0x0000_0200
FAN_DELETE_SELF = 0x0000_0400
FAN_Q_OVERFLOW = 0x0000_4000
FAN_EVENT_ON_CHILD = 0x0800_0000
FAN_RENAME = 0x1000_0000
FAN_ONDIR = 0x4000_0000

FAN_CLOEXEC = 0x0001
FAN_NONBLOCK = 0x0002
FAN_CLASS_NOTIF = 0x0000
FAN_REPORT_FID = 0x0200
FAN_REPORT_DIR_FID = 0x0400
FAN_REPORT_NAME = 0x0800
FAN_REPORT_TARGET_FID = 0x1000
FAN_REPORT_DFID_NAME_TARGET = FAN_REPORT_DIR_FID | FAN_REPORT_NAME | FAN_REPORT_FID | FAN_REPORT_TARGET_FID

FAN_MARK_ADD = 0x0001
FAN_MARK_FLUSH = 0x0080
FAN_MARK_FILESYSTEM = 0x0100
FAN_MARK_IGNORED_SURV_MODIFY = 0x0040
FAN_MARK_IGNORE = 0x0400  # Linux 6.0: an ignore mask that honours FAN_EVENT_ON_CHILD

FAN_EVENT_INFO_TYPE_FID = 1
FAN_EVENT_INFO_TYPE_DFID_NAME = 2
FAN_EVENT_INFO_TYPE_OLD_DFID_NAME = 10
FAN_EVENT_INFO_TYPE_NEW_DFID_NAME = 12
FANOTIFY_METADATA_VERSION = 3

AT_FDCWD = -100
MARK_FLAGS = FAN_MARK_ADD | FAN_MARK_FILESYSTEM

# FAN_MOVED_FROM/TO are left out on purpose: FAN_RENAME reports both sides in one event, and
# the two extra events per rename would only eat queue slots. FAN_DELETE_SELF is kept: for a
# file it merges into the link-count FAN_ATTRIB the kernel queues anyway (no extra slot), and
# for a directory it tells us its handle is dead, which keeps rm -rf from looking like loss.
# FAN_EVENT_ON_CHILD is implied by a filesystem mark; the kernel accepts it.
MARK_MASK = (
    FAN_CREATE
    | FAN_MODIFY
    | FAN_CLOSE_WRITE
    | FAN_ATTRIB
    | FAN_DELETE
    | FAN_DELETE_SELF
    | FAN_RENAME
    | FAN_ONDIR
    | FAN_EVENT_ON_CHILD
)
_CONTENT_OR_META = FAN_CREATE | FAN_MODIFY | FAN_CLOSE_WRITE | FAN_ATTRIB
# What an ignore mark on a directory outside every root keeps out of the queue: the events
# about its files (their content and metadata through FAN_EVENT_ON_CHILD, their creation
# and deletion as entries of the directory). Not FAN_ONDIR: its subdirectories' entry events
# still arrive (each gets its own mark once a file event of it does). Not FAN_RENAME: a file
# moved from there into a root must be seen, and a directory rename is what flushes the marks.
IGNORE_MASK = FAN_CREATE | FAN_MODIFY | FAN_CLOSE_WRITE | FAN_ATTRIB | FAN_DELETE | FAN_EVENT_ON_CHILD
IGNORE_FLAGS = FAN_MARK_ADD | FAN_MARK_IGNORE | FAN_MARK_IGNORED_SURV_MODIFY
# Ignore marks held at once (each pins its directory's inode in the kernel); past this they
# are flushed and placed again as events come.
MAX_IGNORE_MARKS = 4096
# Events that keep the directory caches right (a directory created, deleted or moved):
# never dropped unparsed, wherever they happen.
_KEEPS_CACHES = FAN_RENAME | FAN_ONDIR

# One wakeup reads up to 16 x 256 KiB (~40,000 events) and then yields the loop, so a
# sustained storm cannot starve the daemon's sockets; the fd stays readable for the next turn.
READ_SIZE = 256 * 1024
READS_PER_WAKEUP = 16
# Directory handles resolved to paths. 64 Ki entries (~10 MB) covers the directories a busy
# selection touches between renames; a miss costs four syscalls.
DIR_CACHE_SIZE = 65_536
# An event whose directory handle no longer resolves waits this long for the directory's own
# delete event (the kernel removes the inode a moment before it queues that event).
UNRESOLVED_GRACE = 0.05
# Unresolved events held at once; past this the answer is OVERFLOW anyway.
MAX_UNRESOLVED = 100_000

_META = struct.Struct("=IBBHQii")
_INFO_HEADER = struct.Struct("=BBH")
_HANDLE_HEADER = struct.Struct("=Ii")
_INFO_FIXED = 20  # info header (4) + fsid (8) + handle_bytes/handle_type (8)


class _Libc:
    """The four libc calls, bound lazily so importing this module never fails."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fanotify_init = libc.fanotify_init
        self.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        self.fanotify_init.restype = ctypes.c_int
        self.fanotify_mark = libc.fanotify_mark
        c_int, c_uint = ctypes.c_int, ctypes.c_uint
        self.fanotify_mark.argtypes = [c_int, c_uint, ctypes.c_uint64, c_int, ctypes.c_char_p]
        self.fanotify_mark.restype = ctypes.c_int
        self.open_by_handle_at = libc.open_by_handle_at
        self.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.open_by_handle_at.restype = ctypes.c_int


@functools.cache
def _libc() -> _Libc:
    try:
        return _Libc()
    except (OSError, AttributeError) as exc:
        raise CaptureUnavailable(f"libc has no fanotify calls: {exc}", errno.ENOSYS) from exc


def _fsid_of(path: str) -> bytes:
    """The 8 bytes the kernel puts in every info record for the filesystem holding `path`.

    glibc folds statfs's `__kernel_fsid_t {int val[2]}` into statvfs's u64 as
    val[0] | val[1] << 32; unfold it so the bytes equal the record's on any byte order.
    """
    fsid = os.statvfs(path).f_fsid
    return struct.pack("=II", fsid & 0xFFFF_FFFF, fsid >> 32)


@dataclass(frozen=True, slots=True)
class _Group:
    fd: int
    mounts: dict[bytes, int]  # fsid -> fd of a directory on that filesystem, for open_by_handle_at


def open_group(scope: CaptureScope) -> _Group:
    """Create the fanotify group and mark every filesystem that holds a root.

    Raises CaptureUnavailable when the kernel refuses (no CAP_SYS_ADMIN, kernel < 5.17, a
    filesystem without file handles or with a non-uniform fsid such as a btrfs subvolume).
    """
    libc = _libc()
    if not os.path.isdir("/proc/self/fd"):
        raise CaptureUnavailable("fanotify capture resolves handles through /proc, which is not mounted")
    # Roots that do not exist are a selection error for the caller, not a capture limit.
    by_dev: dict[int, str] = {}
    for root in scope.real_roots:
        by_dev.setdefault(os.stat(root).st_dev, root)
    fd = libc.fanotify_init(
        FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME_TARGET,
        os.O_RDONLY | getattr(os, "O_LARGEFILE", 0),
    )
    if fd < 0:
        err = ctypes.get_errno()
        reason = {
            errno.EPERM: "fanotify needs CAP_SYS_ADMIN",
            errno.EINVAL: "kernel lacks FAN_REPORT_DFID_NAME_TARGET (needs Linux 5.17)",
            errno.ENOSYS: "kernel built without fanotify",
        }.get(err, "fanotify_init failed")
        raise CaptureUnavailable(reason, err)
    mounts: dict[bytes, int] = {}
    try:
        for root in by_dev.values():
            placed = libc.fanotify_mark(fd, MARK_FLAGS, MARK_MASK, AT_FDCWD, os.fsencode(root))
            if placed < 0:
                err = ctypes.get_errno()
                raise CaptureUnavailable(f"cannot place a fanotify filesystem mark on {root}", err)
            # open_by_handle_at wants a real fd on the filesystem (an O_PATH one gives EBADF);
            # a directory always opens read-only, a root that is a file may not.
            anchor = root if os.path.isdir(root) else os.path.dirname(root)
            mounts.setdefault(_fsid_of(anchor), os.open(anchor, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    except BaseException:
        os.close(fd)
        for mount_fd in mounts.values():
            os.close(mount_fd)
        raise
    return _Group(fd, mounts)


def check_fanotify(roots: Sequence[str]) -> None:
    """Raise CaptureUnavailable unless fanotify capture can start on `roots` (used by "auto")."""
    group = open_group(CaptureScope(roots))
    os.close(group.fd)
    for mount_fd in group.mounts.values():
        os.close(mount_fd)


# A directory handle that no longer resolves, because the directory was deleted.
_GONE = "\0gone"

# A parsed event: (mask, dir record, old-side record, new-side record, child/target handle key).
# A record is (handle key, name); a handle key is fsid + struct file_handle, as in the record.
_Record = tuple[bytes, str]
_Event = tuple[int, _Record | None, _Record | None, _Record | None, bytes | None]


class FanotifyCapture:
    """Capture changes under `roots` with fanotify filesystem marks."""

    method = "fanotify"

    def __init__(self, roots: Sequence[str]) -> None:
        self._scope = CaptureScope(roots)
        self._group: _Group | None = None
        self._feed: ChangeFeed | None = None
        # Directory handle key -> canonical path with a trailing slash. Kept correct by
        # clearing it on every directory rename the group sees (any on the filesystem: a
        # rename of an ancestor outside the roots moves the directories below it too).
        self._dirs: OrderedDict[bytes, str] = OrderedDict()
        # Directories whose delete we saw, by handle key: events that name them are dropped,
        # since the directory's own DELETED (or its absence from the roots) says it all.
        self._dead: set[bytes] = set()
        # Directories no root is in or under, by handle key: an event about a file in one
        # can never be reported, so it is dropped before it is parsed. The mark covers the
        # whole filesystem, and on a host that is also a repository (or shares a disk with
        # one) most events are the repository's own writes: parsing each one cost the
        # source's event loop 1.8 s per 20,000 files mirrored. Cleared with `_dirs` (a
        # directory rename can move such a directory into a root).
        self._unrelated: set[bytes] = set()
        # The directories of `_unrelated` that also carry an ignore mark, which keeps the
        # events about their files out of the kernel queue altogether: the repository's
        # own image files cost the source a link-count event each still (those name only
        # the file, not its directory), but no more than that. Flushed with `_unrelated`.
        self._ignored: set[bytes] = set()
        self._ignore_marks = True  # until the kernel refuses one (before Linux 6.0)
        # Events whose directory handle did not resolve, with the drain round they came in.
        self._unresolved: list[tuple[int, _Event]] = []
        self._round = 0
        self._overflowed = False  # this drain already emitted OVERFLOW
        self._overflows = 0

    async def start(self) -> None:
        if self._group is not None:
            return
        self._group = open_group(self._scope)
        self._feed = ChangeFeed(self._group.fd, self._drain)
        self._feed.attach()

    async def get_batch(self, max_wait: float) -> list[Change]:
        if self._feed is None:
            raise RuntimeError("change capture is not started")
        return await self._feed.get_batch(max_wait)

    def close(self) -> None:
        if self._feed is not None:
            self._feed.detach()
        if self._group is not None:
            os.close(self._group.fd)
            for mount_fd in self._group.mounts.values():
                os.close(mount_fd)
            self._group = None

    # --- reading -----------------------------------------------------------------------

    def _drain(self) -> list[Change]:
        assert self._group is not None
        out: list[Change] = []
        self._overflowed = False
        for _ in range(READS_PER_WAKEUP):
            try:
                data = os.read(self._group.fd, READ_SIZE)
            except BlockingIOError:
                self._settle(out)
                break
            self._parse(data, out)
        return out

    def _parse(self, data: bytes, out: list[Change]) -> None:
        offset, end = 0, len(data)
        while offset < end:
            event_len, version, _, meta_len, mask, _, _ = _META.unpack_from(data, offset)
            if version != FANOTIFY_METADATA_VERSION:
                raise RuntimeError(f"fanotify metadata version {version} is not {FANOTIFY_METADATA_VERSION}")
            if mask & FAN_Q_OVERFLOW:
                self._overflow(out)
            elif not self._about_unrelated_file(data, offset + meta_len, offset + event_len, mask):
                event = _parse_records(data, offset + meta_len, offset + event_len, mask)
                if not self._apply(event, out, final=False):
                    self._unresolved.append((self._round, event))
            offset += event_len
        if len(self._unresolved) > MAX_UNRESOLVED:
            self._overflow(out)

    def _about_unrelated_file(self, data: bytes, offset: int, end: int, mask: int) -> bool:
        """Whether the event (its info records at data[offset:end]) is about a file of a
        directory known to be outside every root: dropped unparsed, it can never be reported."""
        return (
            bool(self._unrelated)
            and not mask & _KEEPS_CACHES
            and _dir_key(data, offset, end) in self._unrelated
        )

    def _settle(self, out: list[Change]) -> None:
        """At the end of the queue: retry unresolved events; after one grace period, give up."""
        waiting, self._unresolved = self._unresolved, []
        overflows = self._overflows
        for round_, event in waiting:
            if not self._apply(event, out, final=round_ < self._round):
                self._unresolved.append((round_, event))
            if self._overflows != overflows:
                # OVERFLOW stands for every other waiting event too (and cleared the list).
                break
        if self._unresolved:
            assert self._feed is not None
            self._feed.poll_later(UNRESOLVED_GRACE)
        else:
            # Dead directories only matter to events still waiting; none are.
            self._dead.clear()
        self._round += 1

    def _overflow(self, out: list[Change]) -> None:
        self._overflows += 1
        if not self._overflowed:
            out.append(OVERFLOW)
            self._overflowed = True
        # Renames were lost with the events: no cached path can be trusted any more.
        self._dirs.clear()
        self._forget_unrelated()
        self._dead.clear()
        self._unresolved.clear()

    # --- turning an event into changes -------------------------------------------------

    def _apply(self, event: _Event, out: list[Change], final: bool) -> bool:
        """Append the event's change to `out`; False if a directory handle is not resolvable yet."""
        mask, record, old, new, child = event
        is_dir = bool(mask & FAN_ONDIR)
        if mask & FAN_RENAME:
            return self._apply_rename(old, new, child, is_dir, out, final)
        if record is None:
            # Only the object's own handle: the link-count ATTRIB of link()/unlink() and a
            # file's DELETE_SELF, whose names came with CREATE/DELETE events; or a change
            # through a disconnected dentry (an NFS export), which only the handle can name.
            if child is not None and not mask & FAN_DELETE_SELF:
                path = self._resolve(child)
                reported = self._scope.report(path) if path is not None else None
                if reported is not None:
                    out.append(Change(ChangeKind.CHANGED, reported, is_dir=is_dir))
            return True
        key, name = record
        if name == "." and mask & FAN_DELETE_SELF:
            # A directory's own deletion: its parent's DELETE event names it.
            self._dead.add(key)
            self._dirs.pop(key, None)
            self._unrelated.discard(key)
            self._ignored.discard(key)  # its mark went with the inode
            return True
        prefix = self._resolve_dir(key)
        if prefix is None:
            if final:
                self._overflow(out)
            return final
        if prefix is _GONE:
            return True
        path = (prefix[:-1] or "/") if name == "." else prefix + name
        if is_dir and child is not None:
            if mask & FAN_DELETE:
                self._dead.add(child)
                self._dirs.pop(child, None)
            elif mask & FAN_CREATE:
                self._remember_dir(child, path + "/")
        reported = self._scope.report(path)
        if reported is None:
            if not is_dir and self._scope.unrelated(prefix):
                if len(self._unrelated) >= DIR_CACHE_SIZE:
                    self._forget_unrelated()
                self._unrelated.add(key)
                self._ignore(key)
            return True
        # Queued events on one (directory, name, inode) merge into one mask and lose their
        # order: CREATE|DELETE is create-then-delete or unlink-then-relink. Ask the disk.
        deleted = mask & FAN_DELETE and (not mask & _CONTENT_OR_META or not os.path.lexists(path))
        change = Change(ChangeKind.DELETED if deleted else ChangeKind.CHANGED, reported, is_dir=is_dir)
        # CREATE read before its CLOSE_WRITE was queued cannot merge in the kernel: report once.
        if not (out and out[-1] == change):
            out.append(change)
        return True

    def _apply_rename(
        self,
        old: _Record | None,
        new: _Record | None,
        child: bytes | None,
        is_dir: bool,
        out: list[Change],
        final: bool,
    ) -> bool:
        if old is None or new is None:
            raise RuntimeError("FAN_RENAME event without both directory records")
        old_prefix = self._resolve_dir(old[0])
        new_prefix = self._resolve_dir(new[0])
        if old_prefix is None or new_prefix is None:
            if final:
                self._overflow(out)
            return final
        # A side in a directory deleted since is outside the roots for our purpose: if that
        # directory was inside, its own DELETED covers everything that was in it.
        old_path = None if old_prefix is _GONE else old_prefix + old[1]
        new_path = None if new_prefix is _GONE else new_prefix + new[1]
        if is_dir:
            # Every cached path below the moved directory is stale now, and a directory
            # outside the roots may be inside one now: its ignore mark must go before the
            # reader walks what came in (a change made between the rename and this flush
            # was kept out of the queue; the walk reads it).
            self._dirs.clear()
            self._forget_unrelated()
            if child is not None and new_path is not None:
                self._remember_dir(child, new_path + "/")
        old_reported = self._scope.report(old_path) if old_path is not None else None
        new_reported = self._scope.report(new_path) if new_path is not None else None
        if old_reported is not None and new_reported is not None:
            out.append(Change(ChangeKind.RENAMED, old_reported, new_reported, is_dir))
        elif old_reported is not None:
            out.append(Change(ChangeKind.DELETED, old_reported, is_dir=is_dir))
        elif new_reported is not None:
            out.append(Change(ChangeKind.CHANGED, new_reported, is_dir=is_dir))
        return True

    # --- directories outside the roots -------------------------------------------------

    def _ignore(self, key: bytes) -> None:
        """Have the kernel drop the events about the files of the directory whose handle is
        `key` (found outside every root). The mark goes on that very inode, through the
        handle, not on whatever a path names by now; only a directory rename, which
        flushes every ignore mark, can bring it inside a root."""
        if not self._ignore_marks or key in self._ignored:
            return
        assert self._group is not None
        mount_fd = self._group.mounts.get(key[:8])
        if mount_fd is None:
            return
        if len(self._ignored) >= MAX_IGNORE_MARKS:
            self._flush_ignore_marks()
        libc = _libc()
        fd = libc.open_by_handle_at(mount_fd, key[8:], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if fd < 0:
            return  # deleted meanwhile: nothing left to ignore
        try:
            placed = libc.fanotify_mark(self._group.fd, IGNORE_FLAGS, IGNORE_MASK, fd, None)
            err = ctypes.get_errno()
        finally:
            os.close(fd)
        if placed == 0:
            self._ignored.add(key)
            return
        # EINVAL before Linux 6.0, ENOSPC at the user's mark limit: filter after reading.
        self._ignore_marks = False
        log.info("fanotify ignore marks are not available (%s): events outside the selection "
                 "are filtered after they are read", os.strerror(err))  # fmt: skip

    def _forget_unrelated(self) -> None:
        self._unrelated.clear()
        self._flush_ignore_marks()

    def _flush_ignore_marks(self) -> None:
        if not self._ignored:
            return
        self._ignored.clear()
        assert self._group is not None
        # Removes every inode mark of the group, all of them ignore marks; the filesystem
        # marks stay. It cannot fail on a group that placed them; if it did, events of the
        # roots could be dropped unseen, so the capture stops (the job re-mirrors).
        if _libc().fanotify_mark(self._group.fd, FAN_MARK_FLUSH, 0, AT_FDCWD, None) != 0:
            raise RuntimeError(f"fanotify: cannot flush ignore marks: {os.strerror(ctypes.get_errno())}")

    # --- handles to paths --------------------------------------------------------------

    def _resolve_dir(self, key: bytes) -> str | None:
        """The directory's path with a trailing slash, `_GONE` if it was deleted, None if unknown."""
        prefix = self._dirs.get(key)
        if prefix is not None:
            self._dirs.move_to_end(key)
            return prefix
        path = self._resolve(key)
        if path is None:
            return _GONE if key in self._dead else None
        prefix = path if path.endswith("/") else path + "/"
        self._remember_dir(key, prefix)
        return prefix

    def _remember_dir(self, key: bytes, prefix: str) -> None:
        self._dirs[key] = prefix
        self._dirs.move_to_end(key)
        if len(self._dirs) > DIR_CACHE_SIZE:
            self._dirs.popitem(last=False)

    def _resolve(self, key: bytes) -> str | None:
        """The current canonical path of the object a handle names, None if it has none."""
        assert self._group is not None
        mount_fd = self._group.mounts.get(key[:8])
        if mount_fd is None:
            return None
        fd = _libc().open_by_handle_at(mount_fd, key[8:], os.O_PATH | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            if err not in (errno.ESTALE, errno.ENOENT):
                log.warning("open_by_handle_at failed: %s", os.strerror(err))
            return None
        try:
            # A deleted object that is still referenced resolves to "path (deleted)"; its link
            # count says so without guessing from the text.
            if os.fstat(fd).st_nlink == 0:
                return None
            return os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)


def _dir_key(data: bytes, offset: int, end: int) -> bytes | None:
    """The directory handle key of an event's first info record if it names one (the
    kernel puts the DFID_NAME record first), without parsing the rest."""
    if offset + _INFO_FIXED > end:
        return None
    info_type, _, _ = _INFO_HEADER.unpack_from(data, offset)
    if info_type != FAN_EVENT_INFO_TYPE_DFID_NAME:
        return None
    handle_bytes, _ = _HANDLE_HEADER.unpack_from(data, offset + 12)
    return data[offset + 4 : offset + _INFO_FIXED + handle_bytes]


def _parse_records(data: bytes, offset: int, end: int, mask: int) -> _Event:
    """Split one event's info records: `u8 type, u8 pad, u16 len`, fsid, file_handle, [name]."""
    record: _Record | None = None
    old: _Record | None = None
    new: _Record | None = None
    child: bytes | None = None
    while offset + _INFO_FIXED <= end:
        info_type, _, info_len = _INFO_HEADER.unpack_from(data, offset)
        handle_bytes, _ = _HANDLE_HEADER.unpack_from(data, offset + 12)
        handle_end = offset + _INFO_FIXED + handle_bytes
        key = data[offset + 4 : handle_end]
        if info_type == FAN_EVENT_INFO_TYPE_FID:
            child = key
        elif info_type in (
            FAN_EVENT_INFO_TYPE_DFID_NAME,
            FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
            FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
        ):
            name_end = data.index(b"\0", handle_end, offset + info_len)
            named = (key, os.fsdecode(data[handle_end:name_end]))
            if info_type == FAN_EVENT_INFO_TYPE_DFID_NAME:
                record = named
            elif info_type == FAN_EVENT_INFO_TYPE_OLD_DFID_NAME:
                old = named
            else:
                new = named
        if info_len <= 0:
            raise RuntimeError("fanotify info record of length 0")
        offset += info_len
    return mask, record, old, new, child
