"""Safe access to the files of one live image on the repository.

Every name an op carries comes from a peer, so every lookup walks the path one
component at a time with ``O_NOFOLLOW``: a symlink inside the image (which a source
may legitimately replicate) can never redirect a write outside the image root, and a
``..`` or empty component is refused before any system call. Parent directories
are held open as ``O_PATH`` descriptors in a small cache so that most ops cost no
extra ``open``.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from twinvault.ops.errors import INVALID_PARAMETER, TwinvaultError

TEMP_PREFIX = ".twinvault-tmp."
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def split_image_path(path: bytes) -> list[bytes]:
    """The components of an absolute source path; refuses anything that could escape."""
    if not path.startswith(b"/") or b"\0" in path:
        raise TwinvaultError(INVALID_PARAMETER, f"not an absolute path: {path!r}")
    parts = [p for p in path.split(b"/") if p]
    for part in parts:
        if part in (b".", b".."):
            raise TwinvaultError(INVALID_PARAMETER, f"path with a {part!r} component: {path!r}")
    return parts


class ImageTree:
    def __init__(self, root: Path, cache_size: int = 512) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._root_fd = os.open(root, _DIR_FLAGS)
        self._cache: OrderedDict[bytes, int] = OrderedDict()
        self._cache_size = cache_size
        # Called with a cached descriptor just before it is closed (the applier restores
        # the times it holds for that directory while the number still names it).
        self.before_close: Callable[[int], None] = lambda fd: None

    def close(self) -> None:
        for fd in self._cache.values():
            self._close(fd)
        self._cache.clear()
        self.before_close(self._root_fd)
        os.close(self._root_fd)

    def _close(self, fd: int) -> None:
        self.before_close(fd)
        os.close(fd)

    @property
    def root_fd(self) -> int:
        return self._root_fd

    def parent(self, path: bytes, *, create: bool) -> tuple[int, bytes]:
        """Return (parent dir fd, final name). The fd belongs to the cache: do not close it.

        With ``create`` missing parents are made (mode 0700 until their own metadata
        arrives); a non-directory standing where a parent must be is replaced, because
        the source's tree is the truth.
        """
        parts = split_image_path(path)
        if not parts:
            raise TwinvaultError(INVALID_PARAMETER, "the image root itself has no parent")
        return self._dir_fd(parts[:-1], create=create), parts[-1]

    def _dir_fd(self, parts: list[bytes], *, create: bool) -> int:
        if not parts:
            return self._root_fd
        key = b"/" + b"/".join(parts)
        fd = self._cache.get(key)
        if fd is not None:
            self._cache.move_to_end(key)
            return fd
        parent_fd = self._dir_fd(parts[:-1], create=create)
        name = parts[-1]
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            if not create or exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise
            # Keep the parent's times: its own op sets them (see applier._ParentTimes).
            st = os.fstat(parent_fd)
            if exc.errno != errno.ENOENT:
                os.unlink(name, dir_fd=parent_fd)  # a file or symlink where a directory belongs
            os.mkdir(name, 0o700, dir_fd=parent_fd)
            os.utime(f"/proc/self/fd/{parent_fd}", ns=(st.st_atime_ns, st.st_mtime_ns))
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        self._cache[key] = fd
        if len(self._cache) > self._cache_size:
            _, old = self._cache.popitem(last=False)
            self._close(old)
        return fd

    def invalidate(self, path: bytes) -> None:
        """Drop cached descriptors at or under ``path`` (after a delete or a rename)."""
        prefix = path.rstrip(b"/") + b"/"
        for key in [k for k in self._cache if k == path or k.startswith(prefix)]:
            self._close(self._cache.pop(key))

    @staticmethod
    def proc_path(dir_fd: int, name: bytes) -> bytes:
        """A path for calls without ``dir_fd`` (xattrs): the final name is not followed."""
        return b"/proc/self/fd/%d/%s" % (dir_fd, name)

    def real_path(self, path: bytes) -> bytes:
        """The image path as a plain filesystem path (for reading, listing, reports)."""
        return os.fsencode(self.root) + path


def remove_temporaries(target: Path) -> int:
    """Temporary files an interrupted writer left under ``target`` (a file being written
    when a restore or a recovery was killed); removed before a resume. Symlinks are never
    followed."""
    removed = 0
    for directory, dirs, files in os.walk(target):
        for name in files + dirs:
            if name.startswith(TEMP_PREFIX):
                path = os.path.join(directory, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
                removed += 1
        dirs[:] = [d for d in dirs if not d.startswith(TEMP_PREFIX)]
    return removed
