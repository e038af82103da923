"""A point in time as a read-only FUSE filesystem (pyfuse3 on libfuse3, trio inside).

One filesystem per process (pyfuse3 allows no more): the repository daemon runs each
mount as a child (``daemon.mount_service``), which builds the filesystem from an
`InstantTree` (names and metadata from the catalog) and a `ChunkCache` (file data from
the chunk store) and calls `serve`. The instant never changes under a mount, so the
kernel may cache names, attributes and pages for as long as it likes.

What a reader sees: exact mode, owner, times (ctime shows the mtime: it is not kept),
size and link count of files; every xattr, POSIX ACLs included (they are the
``system.posix_acl_*`` xattrs, and the kernel enforces them); symlinks, fifos, sockets
and device nodes; one inode for the names of a hard-link group. Catalog and store calls
block, so they run in worker threads; a read waits on its chunks' fetches without
holding a thread. A chunk that is missing or damaged fails that read with EIO (and says
which file in the mount's log); the rest of the file and the mount stay readable.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import stat
import sys
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Final, TypeVar

import pyfuse3
import trio

from twinvault.ops.errors import TwinvaultError
from twinvault.pit.chunk_cache import ChunkCache, OpenFile
from twinvault.pit.instant_tree import Entry, InstantTree
from twinvault.pit.mountinfo import mounts

log = logging.getLogger(__name__)

T = TypeVar("T")

# Names, attributes and pages of an instant never change: the kernel may keep them.
CACHE_TIMEOUT: Final = 24 * 3600.0
# st_blksize: what cp and cat size their reads by (one FUSE request carries up to 128 KiB
# to 1 MiB depending on the kernel; larger reads mean fewer trips through this process).
IO_SIZE: Final = 1 << 20
_TYPE_BITS: Final = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "fifo": stat.S_IFIFO,
    "chr": stat.S_IFCHR,
    "blk": stat.S_IFBLK,
    "sock": stat.S_IFSOCK,
}
# Times a read asks again for chunks evicted before it could assemble them.
_READ_RETRIES: Final = 3
SWITCH_INTERVAL: Final = 0.0005  # seconds (Python's default: 0.005)
KERNEL_READAHEAD: Final = 4 << 20


class PointInTimeFs(pyfuse3.Operations):
    # The kernel reads system.posix_acl_* through getxattr and enforces the ACLs.
    enable_acl = True

    def __init__(self, tree: InstantTree, cache: ChunkCache) -> None:
        super().__init__()
        self.tree = tree
        self.cache = cache
        self.mountpoint = ""  # set by `serve`
        self._files: dict[int, OpenFile] = {}
        self._next_fh = 1

    def init(self) -> None:
        """Called as the kernel's INIT is answered; that answer caps the mount's read-ahead
        at the kernel's default, so it is raised just after (`_raise_readahead`)."""
        if self.mountpoint:
            trio.lowlevel.current_trio_token().run_sync_soon(_raise_readahead, self.mountpoint)

    # -- names and attributes --------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        entry = await _in_thread(self.tree.lookup, parent_inode, name)
        if entry is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attributes(entry)

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attributes(self._entry(inode))

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        entry = self._entry(inode)
        if entry.kind != "symlink":
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(entry.meta.symlink_target)

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        wanted = os.fsdecode(name)
        for key, value in self._entry(inode).meta.xattrs:
            if key == wanted:
                return value
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return [os.fsencode(name) for name, _ in self._entry(inode).meta.xattrs]

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_namemax = 255
        return data

    # -- directories -------------------------------------------------------------------------

    async def opendir(self, inode: int, ctx: Any) -> int:
        if self._entry(inode).kind != "dir":
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        children = await _in_thread(self.tree.children, fh)
        for index in range(start_id, len(children)):
            name, entry = children[index]
            if not pyfuse3.readdir_reply(token, name, self._attributes(entry), index + 1):
                return

    async def releasedir(self, fh: int) -> None:
        return None

    # -- files -------------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        entry = self._entry(inode)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        if entry.kind != "file":
            raise pyfuse3.FUSEError(errno.EISDIR if entry.kind == "dir" else errno.EACCES)
        pieces = await _in_thread(self.tree.chunk_list, entry)
        fh = self._next_fh
        self._next_fh += 1
        self._files[fh] = OpenFile(entry.path, pieces, self.cache.ahead_max)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        file = self._files[fh]
        needed, ahead = file.plan(off, size)
        for _ in range(_READ_RETRIES):
            waits = self.cache.request(needed)
            self.cache.request(ahead, ahead=True)  # queued behind what this read needs
            ahead = []
            for future in waits:
                await _finished(future)
            try:
                data = file.assemble(off, size, self.cache)
            except TwinvaultError as exc:
                log.error("read of %s at %d failed: %s", os.fsdecode(file.path), off, exc)
                raise pyfuse3.FUSEError(errno.EIO) from None
            if data is not None:
                return data
        log.error("read of %s at %d: chunks evicted before use %d times", file.path, off, _READ_RETRIES)
        raise pyfuse3.FUSEError(errno.EIO)

    async def release(self, fh: int) -> None:
        self._files.pop(fh, None)

    # -- helpers -----------------------------------------------------------------------------

    def _entry(self, inode: int) -> Entry:
        entry = self.tree.entry(inode)
        if entry is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return entry

    def _attributes(self, entry: Entry) -> pyfuse3.EntryAttributes:
        meta = entry.meta
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = entry.inode
        attrs.generation = 0
        attrs.entry_timeout = attrs.attr_timeout = CACHE_TIMEOUT
        attrs.st_mode = _TYPE_BITS[meta.kind] | meta.mode
        attrs.st_nlink = entry.nlink
        attrs.st_uid = meta.uid
        attrs.st_gid = meta.gid
        attrs.st_rdev = meta.rdev
        attrs.st_size = len(os.fsencode(meta.symlink_target)) if meta.kind == "symlink" else meta.size
        attrs.st_blksize = IO_SIZE
        attrs.st_blocks = -(-attrs.st_size // 512)
        attrs.st_atime_ns = meta.atime_ns
        attrs.st_mtime_ns = meta.mtime_ns
        attrs.st_ctime_ns = meta.mtime_ns
        return attrs


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """A blocking call (catalog, store) off the event loop; its errors as EIO, logged."""
    try:
        return await trio.to_thread.run_sync(fn, *args)
    except (TwinvaultError, OSError) as exc:
        log.error("%s failed: %s", getattr(fn, "__name__", fn), exc)
        raise pyfuse3.FUSEError(errno.EIO) from None


async def _finished(future: Future[None]) -> None:
    """Wait for a fetch running in another thread without holding a thread ourselves."""
    if future.done():
        return
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    future.add_done_callback(lambda _: token.run_sync_soon(done.set))
    await done.wait()


def serve(fs: PointInTimeFs, mountpoint: str, fsname: str, on_ready: Callable[[], None]) -> None:
    """Mount `fs` at `mountpoint` and serve it until SIGTERM/SIGINT/SIGHUP or an unmount
    from outside; unmounts on the way out. `on_ready` runs once the mount is visible."""
    options = set(pyfuse3.default_options) | {"ro", "allow_other", f"fsname={fsname}", "subtype=twinvault"}
    fs.mountpoint = mountpoint
    pyfuse3.init(fs, mountpoint, options)
    # The event loop answers the kernel; when a fetch thread holds the GIL in Python code
    # the loop would wait up to the default 5 ms for it, per request.
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        on_ready()
        trio.run(_serve_until_stopped)
    finally:
        pyfuse3.close(unmount=True)


def _raise_readahead(mountpoint: str) -> None:
    """Let the kernel read ahead `KERNEL_READAHEAD` of a file sequentially read (the default,
    128 KiB, keeps too few requests in flight to hide a chunk fetch). The mount's backing
    device is found in mountinfo: a stat of the mount point from this process, before it
    serves requests, would wait for itself."""
    device = mounts().get(mountpoint, "")
    try:
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as f:
            f.write(str(KERNEL_READAHEAD >> 10))
    except OSError as exc:  # not root, or no such device: the default read-ahead
        log.info("read-ahead of %s left as it is: %s", mountpoint, exc)


async def _serve_until_stopped() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_terminate_on_signal)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _terminate_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for _ in signals:
            pyfuse3.terminate()
            return
