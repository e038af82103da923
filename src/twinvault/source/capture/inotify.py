"""Change capture with inotify watches (the fallback when fanotify is unavailable).

inotify watches one directory at a time, so this backend keeps a watch on every directory
under each root, held as a tree of `_Dir` nodes so a directory rename is one re-parenting,
plus a watch on each root's parent (an "anchor") that reports only the root's own name, so
a root that is replaced, renamed or recreated is seen. A new or moved-in directory gets a
watch and is scanned right away: entries created before its watch existed raise no event.
Renames pair IN_MOVED_FROM/IN_MOVED_TO by cookie. The per-user watch limit
(fs.inotify.max_user_watches) is the weak point: reaching it reports OVERFLOW and leaves part
of the tree unwatched until the next resync, which every queue overflow also triggers.

Neighbours: `events.py` (the interface, scope filter and feed), `fanotify.py` (preferred).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import functools
import logging
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from twinvault.source.capture.events import (
    OVERFLOW,
    CaptureScope,
    CaptureUnavailable,
    Change,
    ChangeFeed,
    ChangeKind,
)

log = logging.getLogger(__name__)

# <sys/inotify.h>
IN_MODIFY = 0x0000_0002
IN_ATTRIB = 0x0000_0004
IN_CLOSE_WRITE = 0x0000_0008
IN_MOVED_FROM = 0x0000_0040
IN_MOVED_TO = 0x0000_0080
IN_CREATE = 0x0000_0100
IN_DELETE = 0x0000_0200
IN_DELETE_SELF = 0x0000_0400
IN_MOVE_SELF = 0x0000_0800
IN_Q_OVERFLOW = 0x0000_4000
IN_IGNORED = 0x0000_8000
IN_ONLYDIR = 0x0100_0000
IN_DONT_FOLLOW = 0x0200_0000
IN_EXCL_UNLINK = 0x0400_0000
IN_ISDIR = 0x4000_0000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# IN_ONLYDIR|IN_DONT_FOLLOW: a path that turned into a file or a symlink between the event
# and the watch must fail, not watch the wrong thing. IN_EXCL_UNLINK: writes to files that
# are already unlinked concern no name in the selection.
DIR_MASK = (
    IN_CREATE
    | IN_MODIFY
    | IN_CLOSE_WRITE
    | IN_ATTRIB
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
    | IN_EXCL_UNLINK
)
# An anchor also reports its own move: the roots under it then live at other paths.
ANCHOR_MASK = DIR_MASK | IN_MOVE_SELF
_CONTENT_OR_META = IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB

READ_SIZE = 256 * 1024
READS_PER_WAKEUP = 16  # then yield the loop; see fanotify.py

_EVENT = struct.Struct("=iIII")


class _Libc:
    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.inotify_init1 = libc.inotify_init1
        self.inotify_init1.argtypes = [ctypes.c_int]
        self.inotify_init1.restype = ctypes.c_int
        self.inotify_add_watch = libc.inotify_add_watch
        self.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.inotify_add_watch.restype = ctypes.c_int
        self.inotify_rm_watch = libc.inotify_rm_watch
        self.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        self.inotify_rm_watch.restype = ctypes.c_int


@functools.cache
def _libc() -> _Libc:
    try:
        return _Libc()
    except (OSError, AttributeError) as exc:
        raise CaptureUnavailable(f"libc has no inotify calls: {exc}", errno.ENOSYS) from exc


# The path vanished or changed kind since we saw it; its own event tells the rest.
_VANISHED = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES})


def _add_watch(fd: int, path: str, mask: int) -> int:
    """The watch descriptor, or -ENOSPC / -errno of a path that vanished (thread-safe).

    Any other failure (EBADF after close, ENOMEM) raises: it is not about this path.
    """
    wd: int = _libc().inotify_add_watch(fd, os.fsencode(path), mask)
    if wd >= 0:
        return wd
    err = ctypes.get_errno()
    if err == errno.ENOSPC or err in _VANISHED:
        return -err
    raise OSError(err, os.strerror(err), path)


class _Dir:
    """A watched directory inside the roots: a root (fixed canonical path) or a named child."""

    __slots__ = ("_prefix", "children", "name", "parent", "root", "wd")

    def __init__(self, wd: int, name: str, parent: _Dir | None, root: str | None) -> None:
        self.wd = wd
        self.name = name
        self.parent = parent
        self.root = root
        self.children: dict[str, _Dir] = {}
        self._prefix: str | None = None

    def prefix(self) -> str:
        """The path with a trailing slash; cached, since every event in the directory needs it."""
        if self._prefix is None:
            if self.root is not None:
                self._prefix = self.root if self.root.endswith("/") else self.root + "/"
            else:
                assert self.parent is not None, "a detached directory has no path"
                self._prefix = self.parent.prefix() + self.name + "/"
        return self._prefix

    def forget_paths(self) -> None:
        """Drop the cached paths of this directory and all below it (it moved)."""
        stack = [self]
        while stack:
            node = stack.pop()
            node._prefix = None
            stack.extend(node.children.values())


@dataclass(slots=True)
class _Anchor:
    """A root's parent directory, watched for the root's own name only."""

    path: str
    names: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Walk:
    dirs: list[tuple[str, int]]  # (canonical path, wd), parents before children
    anchors: list[tuple[str, int, str]]  # (anchor path, wd, root name)
    limit_hit: bool


# Where a name lives: (parent directory, name) inside a root, or (None, root path) for a root.
_Place = tuple[_Dir | None, str]
# A pending IN_MOVED_FROM: (slot in the output, old path, its watched node if a directory, is_dir).
_MoveFrom = tuple[int, str, _Dir | None, bool]


class InotifyCapture:
    """Capture changes under `roots` with a recursive set of inotify watches."""

    method = "inotify"

    def __init__(self, roots: Sequence[str]) -> None:
        self._scope = CaptureScope(roots)
        self._fd = -1
        self._feed: ChangeFeed | None = None
        self._dirs: dict[int, _Dir] = {}
        self._roots: dict[str, _Dir] = {}
        self._anchors: dict[int, _Anchor] = {}
        self._resync_task: asyncio.Task[None] | None = None
        self._overflowed = False  # this drain already emitted OVERFLOW
        self._limit_reported = False

    async def start(self) -> None:
        if self._fd >= 0:
            return
        for root in self._scope.real_roots:
            os.stat(root)  # a missing root is a selection error, not a capture limit
        fd = _libc().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise CaptureUnavailable("inotify_init1 failed (fs.inotify.max_user_instances?)", err)
        self._fd = fd
        self._feed = ChangeFeed(fd, self._drain)
        try:
            walk = await asyncio.to_thread(self._walk)
        except BaseException:
            self.close()
            raise
        self._install(walk)
        self._feed.attach()

    async def get_batch(self, max_wait: float) -> list[Change]:
        if self._feed is None:
            raise RuntimeError("change capture is not started")
        return await self._feed.get_batch(max_wait)

    def close(self) -> None:
        if self._resync_task is not None:
            self._resync_task.cancel()
            self._resync_task = None
        if self._feed is not None:
            self._feed.detach()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._dirs.clear()
        self._roots.clear()
        self._anchors.clear()

    # --- placing watches ---------------------------------------------------------------

    def _walk(self) -> _Walk:
        """Watch every directory under the roots and each root's parent (runs in a thread)."""
        walk = _Walk([], [], limit_hit=False)
        for root in self._scope.real_roots:
            if root != "/":
                anchor = os.path.dirname(root)
                wd = _add_watch(self._fd, anchor, ANCHOR_MASK)
                if wd == -errno.ENOSPC:
                    walk.limit_hit = True
                    return walk
                if wd >= 0:
                    walk.anchors.append((anchor, wd, os.path.basename(root)))
            stack = [root]
            while stack:
                path = stack.pop()
                wd = _add_watch(self._fd, path, DIR_MASK)
                if wd == -errno.ENOSPC:
                    walk.limit_hit = True
                    return walk
                if wd < 0:
                    continue
                walk.dirs.append((path, wd))
                try:
                    with os.scandir(path) as entries:
                        stack.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
                except OSError:
                    continue  # gone or unreadable since we listed its parent
        return walk

    def _install(self, walk: _Walk) -> None:
        """Replace the watch tree with a fresh walk's, dropping watches the walk did not meet."""
        previous = set(self._dirs) | set(self._anchors)
        self._dirs, self._roots, self._anchors = {}, {}, {}
        for path, wd, name in walk.anchors:
            self._anchors.setdefault(wd, _Anchor(path)).names.add(name)
        by_path: dict[str, _Dir] = {}
        roots = set(self._scope.real_roots)
        for path, wd in walk.dirs:
            if wd in self._dirs:
                continue  # the same directory reached twice (a bind mount inside the roots)
            if path in roots:
                node = _Dir(wd, os.path.basename(path), None, path)
                self._roots[path] = node
            else:
                parent = by_path.get(os.path.dirname(path))
                if parent is None:
                    continue
                node = _Dir(wd, os.path.basename(path), parent, None)
                parent.children[node.name] = node
            by_path[path] = node
            self._dirs[wd] = node
        for wd in previous - set(self._dirs) - set(self._anchors):
            _libc().inotify_rm_watch(self._fd, wd)
        if walk.limit_hit:
            self._report_limit()
            assert self._feed is not None
            self._feed.push([OVERFLOW])
        else:
            self._limit_reported = False

    def _watch(self, path: str, place: _Place, out: list[Change | None]) -> _Dir | None:
        """Watch the directory at `path`; the node, or None if it needs no scan (gone or known)."""
        wd = _add_watch(self._fd, path, DIR_MASK)
        if wd < 0:
            if wd == -errno.ENOSPC:
                self._report_limit()
                self._overflow(out)
            return None
        node = self._dirs.get(wd)
        if node is not None:
            # Already watched: a scan got there before this event, or the directory moved.
            self._place(node, place)
            return None
        parent, name = place
        node = _Dir(wd, os.path.basename(name) if parent is None else name, parent, None)
        self._dirs[wd] = node
        self._place(node, place)
        return node

    def _watch_tree(self, path: str, place: _Place, out: list[Change | None]) -> None:
        """Watch a new directory and everything below it, reporting what is already inside."""
        node = self._watch(path, place, out)
        stack = [(node, path)] if node is not None else []
        while stack:
            node, dir_path = stack.pop()
            try:
                with os.scandir(dir_path) as scan:
                    entries = [(e.name, e.path, e.is_dir(follow_symlinks=False)) for e in scan]
            except OSError:
                continue  # removed again already; its delete event follows
            for name, entry_path, is_dir in entries:
                self._emit(out, ChangeKind.CHANGED, entry_path, is_dir)
                if is_dir:
                    child = self._watch(entry_path, (node, name), out)
                    if child is not None:
                        stack.append((child, entry_path))

    def _place(self, node: _Dir, place: _Place) -> None:
        """Move `node` to `place` in the tree (detaching it from where it was)."""
        self._detach(node)
        parent, name = place
        if parent is None:
            node.parent, node.root, node.name = None, name, os.path.basename(name)
            self._roots[name] = node
        else:
            node.parent, node.root, node.name = parent, None, name
            parent.children[name] = node
        node.forget_paths()

    def _detach(self, node: _Dir) -> None:
        if node.parent is not None:
            if node.parent.children.get(node.name) is node:
                del node.parent.children[node.name]
        elif node.root is not None and self._roots.get(node.root) is node:
            del self._roots[node.root]

    def _drop_tree(self, node: _Dir) -> None:
        """Stop watching a directory that left the roots, and everything below it."""
        self._detach(node)
        stack = [node]
        while stack:
            gone = stack.pop()
            stack.extend(gone.children.values())
            if self._dirs.pop(gone.wd, None) is not None:
                # Its watch would keep reporting under the old path; EINVAL if already gone.
                _libc().inotify_rm_watch(self._fd, gone.wd)

    def _report_limit(self) -> None:
        if not self._limit_reported:
            log.error(
                "inotify watch limit reached (fs.inotify.max_user_watches): part of the selection "
                "is not watched; changes there are only found by mirrors until capture restarts"
            )
            self._limit_reported = True

    # --- reading -----------------------------------------------------------------------

    def _drain(self) -> list[Change]:
        out: list[Change | None] = []
        moves: dict[int, _MoveFrom] = {}
        self._overflowed = False
        for _ in range(READS_PER_WAKEUP):
            try:
                data = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                break
            self._parse(data, out, moves)
        # The kernel queues both halves of a rename back to back, so a half still alone here
        # crossed the roots' edge: moved out (or to a name we do not watch).
        for slot, old_path, node, is_dir in moves.values():
            out[slot] = self._change(ChangeKind.DELETED, old_path, is_dir)
            if node is not None:
                self._drop_tree(node)
        return [change for change in out if change is not None]

    def _parse(self, data: bytes, out: list[Change | None], moves: dict[int, _MoveFrom]) -> None:
        offset, end = 0, len(data)
        while offset < end:
            wd, mask, cookie, name_len = _EVENT.unpack_from(data, offset)
            name = os.fsdecode(data[offset + 16 : offset + 16 + name_len].rstrip(b"\0"))
            offset += 16 + name_len
            if mask & IN_Q_OVERFLOW:
                self._overflow(out)
                self._resync()
                continue
            node = self._dirs.get(wd)
            if node is not None:
                if name:
                    self._on_entry(mask, cookie, node.prefix() + name, (node, name), out, moves)
                elif mask & IN_IGNORED:
                    self._drop_tree(node)  # deleted or unmounted: the kernel dropped the watch
                elif node.root == "/" and mask & _CONTENT_OR_META:
                    # Other directories' own changes are reported by their parent's watch.
                    self._emit(out, ChangeKind.CHANGED, "/", True)
                continue
            anchor = self._anchors.get(wd)
            if anchor is None:
                continue  # a watch we dropped; its last events are still queued
            if not name:
                if mask & (IN_MOVE_SELF | IN_DELETE_SELF | IN_IGNORED):
                    del self._anchors[wd]
                    log.warning("change capture: %s moved or deleted; rescanning the roots", anchor.path)
                    self._overflow(out)
                    self._resync()
            elif name in anchor.names:
                root = os.path.join(anchor.path, name)
                self._on_entry(mask, cookie, root, (None, root), out, moves)

    def _on_entry(
        self,
        mask: int,
        cookie: int,
        path: str,
        place: _Place,
        out: list[Change | None],
        moves: dict[int, _MoveFrom],
    ) -> None:
        is_dir = bool(mask & IN_ISDIR)
        if mask & IN_MOVED_FROM:
            moved = self._node_at(place) if is_dir else None
            moves[cookie] = (len(out), path, moved, is_dir)
            out.append(None)  # keeps the rename's place in the order of events
        elif mask & IN_MOVED_TO:
            source = moves.pop(cookie, None)
            if source is None:
                self._arrived(path, place, is_dir, out)
                return
            slot, old_path, moved, _ = source
            out[slot] = self._change(ChangeKind.RENAMED, old_path, is_dir, path)
            if moved is not None:
                self._place(moved, place)
            elif is_dir:
                self._watch_tree(path, place, out)  # we never got to watch it: do it now
        elif mask & IN_CREATE:
            self._arrived(path, place, is_dir, out)
        elif mask & IN_DELETE:
            # The directory's own watch is dropped on its IN_IGNORED, which names the exact node.
            self._emit(out, ChangeKind.DELETED, path, is_dir)
        elif mask & _CONTENT_OR_META:
            self._emit(out, ChangeKind.CHANGED, path, is_dir)

    def _arrived(self, path: str, place: _Place, is_dir: bool, out: list[Change | None]) -> None:
        self._emit(out, ChangeKind.CHANGED, path, is_dir)
        if is_dir:
            self._watch_tree(path, place, out)

    def _node_at(self, place: _Place) -> _Dir | None:
        parent, name = place
        return self._roots.get(name) if parent is None else parent.children.get(name)

    def _emit(self, out: list[Change | None], kind: ChangeKind, path: str, is_dir: bool) -> None:
        change = self._change(kind, path, is_dir)
        # A write is IN_CREATE/IN_MODIFY.../IN_CLOSE_WRITE back to back: one report is enough.
        if change is not None and not (out and out[-1] == change):
            out.append(change)

    def _change(self, kind: ChangeKind, path: str, is_dir: bool, new_path: str = "") -> Change | None:
        reported = self._scope.report(path)
        if reported is None:
            return None
        if kind is ChangeKind.RENAMED:
            reported_new = self._scope.report(new_path)
            if reported_new is None:
                return Change(ChangeKind.DELETED, reported, is_dir=is_dir)
            return Change(kind, reported, reported_new, is_dir)
        return Change(kind, reported, is_dir=is_dir)

    def _overflow(self, out: list[Change | None]) -> None:
        if not self._overflowed:
            out.append(OVERFLOW)
            self._overflowed = True

    def _resync(self) -> None:
        """Re-walk the roots after lost events: directories made meanwhile have no watch yet."""
        if self._resync_task is None or self._resync_task.done():
            self._resync_task = asyncio.get_running_loop().create_task(self._rewalk())

    async def _rewalk(self) -> None:
        assert self._feed is not None
        # Events keep queueing in the kernel meanwhile; they are read against the new tree.
        self._feed.detach()
        try:
            walk = await asyncio.to_thread(self._walk)
        except Exception as exc:
            self._feed.fail(exc)
            return
        if self._fd < 0:
            return  # closed while walking
        self._install(walk)
        self._feed.attach()
