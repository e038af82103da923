"""File metadata: the one place that reads it from and writes it to a filesystem.

The source reader calls `read_meta` for every entry it sends, the repository applier
calls `create_special` and `apply_meta` for every entry it writes (protection and
recovery alike), and the tests compare trees with the same `read_meta`, so what we
back up, what we restore and what we check are one definition of "the metadata".

Metadata here is what `lstat` and the extended attributes say: kind, permission bits,
owner, mtime/atime, size, device number, symlink target and every readable xattr of
every namespace.  POSIX ACLs travel as their `system.posix_acl_*` xattrs; no ACL library
is needed.  File contents are not metadata; `data_extents` only tells which regions of
a file hold data so that holes are kept holes.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, fields
from typing import Any

KINDS = ("file", "dir", "symlink", "fifo", "chr", "blk", "sock")

_KIND_BY_FMT = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chr",
    stat.S_IFBLK: "blk",
    stat.S_IFSOCK: "sock",
}
_FMT_BY_KIND = {kind: fmt for fmt, kind in _KIND_BY_FMT.items()}

# xattr errors meaning "this entry or filesystem has no (such) attribute" rather than a fault:
# ENODATA when an attribute vanished between list and get, ENOTSUP/EOPNOTSUPP where the
# filesystem (or namespace, e.g. user.* on a symlink) has no xattrs at all.
_NO_XATTR_ERRNOS = frozenset({errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP})

# Wire layout version: bump when the field list of `to_wire` changes.
WIRE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Meta:
    """Metadata of one directory entry, as `lstat` and its xattrs describe it."""

    kind: str  # one of KINDS
    mode: int  # permission bits incl. setuid/setgid/sticky (S_IMODE)
    uid: int
    gid: int
    mtime_ns: int
    atime_ns: int
    size: int  # 0 for dirs; target length for symlinks
    rdev: int  # devices only, else 0
    symlink_target: str  # "" unless symlink; str with surrogateescape like every os path
    xattrs: tuple[tuple[str, bytes], ...]  # sorted by name, all namespaces

    def to_wire(self) -> list[Any]:
        """Return a compact msgpack-able list; `from_wire` is the inverse.

        The symlink target and xattr names go as bytes: they are arbitrary bytes on Linux,
        and a surrogate-escaped str would not survive msgpack's UTF-8 encoding.
        """
        return [
            WIRE_VERSION,
            self.kind,
            self.mode,
            self.uid,
            self.gid,
            self.mtime_ns,
            self.atime_ns,
            self.size,
            self.rdev,
            os.fsencode(self.symlink_target),
            [[os.fsencode(name), value] for name, value in self.xattrs],
        ]

    @classmethod
    def from_wire(cls, wire: list[Any]) -> Meta:
        """Rebuild a Meta from `to_wire`'s list; ValueError on an unknown layout."""
        if not wire or wire[0] != WIRE_VERSION or len(wire) != 11:
            raise ValueError(f"unsupported metadata wire layout: {wire[:1]!r} with {len(wire)} fields")
        _, kind, mode, uid, gid, mtime_ns, atime_ns, size, rdev, target, xattrs = wire
        if kind not in _FMT_BY_KIND:
            raise ValueError(f"unknown entry kind on the wire: {kind!r}")
        return cls(
            kind=str(kind),
            mode=int(mode),
            uid=int(uid),
            gid=int(gid),
            mtime_ns=int(mtime_ns),
            atime_ns=int(atime_ns),
            size=int(size),
            rdev=int(rdev),
            symlink_target=os.fsdecode(bytes(target)),
            xattrs=tuple((os.fsdecode(bytes(name)), bytes(value)) for name, value in xattrs),
        )


def kind_of(st_mode: int) -> str:
    """Return the Meta kind for an `st_mode`."""
    try:
        return _KIND_BY_FMT[stat.S_IFMT(st_mode)]
    except KeyError:
        raise ValueError(f"unknown file type in mode {st_mode:o}") from None


def read_xattrs(path: str, *, fd: int | None = None) -> tuple[tuple[str, bytes], ...]:
    """Return every readable xattr of `path` (never following a symlink), sorted by name."""
    target: int | str = fd if fd is not None else path
    follow = fd is not None  # an fd has nothing to follow (and refuses False); a path must not follow
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in _NO_XATTR_ERRNOS:
            return ()
        raise
    out: list[tuple[str, bytes]] = []
    for name in sorted(names):
        try:
            value = os.getxattr(target, name, follow_symlinks=follow)
        except OSError as exc:
            # Removed after listxattr by a concurrent writer: the entry simply no longer has it.
            if exc.errno in _NO_XATTR_ERRNOS:
                continue
            raise
        out.append((name, value))
    return tuple(out)


def read_meta(path: str, st: os.stat_result | None = None) -> Meta:
    """Return the metadata of `path` itself (lstat-based; symlinks are never followed).

    `st` may be passed when the caller already has the lstat result (a scandir walk),
    saving one syscall per entry.
    """
    if st is None:
        st = os.lstat(path)
    kind = kind_of(st.st_mode)
    target = os.readlink(path) if kind == "symlink" else ""
    return Meta(
        kind=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        atime_ns=st.st_atime_ns,
        # Directory sizes are filesystem bookkeeping (ext4 blocks, tmpfs entry counts) and
        # differ between two trees with equal entries.
        size=0 if kind == "dir" else st.st_size,
        rdev=st.st_rdev if kind in ("chr", "blk") else 0,
        symlink_target=target,
        xattrs=read_xattrs(path),
    )


def _apply_xattrs(path: str, wanted: tuple[tuple[str, bytes], ...], fd: int | None) -> None:
    target: int | str = fd if fd is not None else path
    follow = fd is not None  # see read_xattrs
    present = {name: value for name, value in read_xattrs(path, fd=fd)}
    wanted_names = {name for name, _ in wanted}
    for name, value in wanted:
        if present.get(name) != value:
            os.setxattr(target, name, value, follow_symlinks=follow)
    for name in present:
        if name not in wanted_names:
            try:
                os.removexattr(target, name, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno not in _NO_XATTR_ERRNOS:
                    raise


def apply_meta(path: str, meta: Meta, *, fd: int | None = None) -> None:
    """Make `path`'s metadata equal `meta` (contents and kind are the caller's business).

    Order matters:
    1. lchown first: the kernel clears setuid/setgid bits *and* `security.capability`
       on every chown (even to the same owner, even by root), so owners must be set
       before both the mode and the xattrs.
    2. xattrs (set the wanted ones, remove extras): setting `system.posix_acl_access`
       rewrites the group bits of the mode, and xattr writes may touch times.
    3. chmod (not on symlinks, whose mode Linux ignores): after chown and the ACL so the
       exact bits, setuid included, are what stays; chmod only updates the ACL mask to the
       group bits, which on a faithfully read source are the mask already.
    4. utime with nanoseconds last, since everything above may touch the times.
    With `fd` (an fd open on `path`, not O_PATH) the fd-based calls are used, which is
    immune to the path being renamed under us.
    """
    is_link = meta.kind == "symlink"
    # A chown to the owner it has already is skipped: what it would clear (setuid bits,
    # security.capability) is set exactly by the steps after it anyway, and a stat costs
    # far less than an inode change (a fresh image file is the applier's own already).
    st = os.fstat(fd) if fd is not None else os.lstat(path)
    if (st.st_uid, st.st_gid) != (meta.uid, meta.gid):
        if fd is not None:
            os.fchown(fd, meta.uid, meta.gid)
        else:
            os.lchown(path, meta.uid, meta.gid)
    _apply_xattrs(path, meta.xattrs, fd)
    if not is_link:
        if fd is not None:
            os.fchmod(fd, meta.mode)
        else:
            os.chmod(path, meta.mode)
    times = (meta.atime_ns, meta.mtime_ns)
    if fd is not None:
        os.utime(fd, ns=times)
    else:
        os.utime(path, ns=times, follow_symlinks=False)


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """Return (offset, length) of the data regions of the first `size` bytes of `fd`.

    Uses SEEK_DATA/SEEK_HOLE; a filesystem without them (EINVAL/ENOTSUP) is reported as
    one region covering the whole file.  An all-hole (or empty) file gives [].
    Regions past `size` are cut off, so a file growing during the scan does not make
    the result disagree with the size the caller will copy.
    """
    if size <= 0:
        return []
    extents: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data at or after pos: the rest is a hole
                    break
                raise
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            extents.append((start, end - start))
            pos = end
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            return [(0, size)]
        raise
    return extents


def create_special(path: str, meta: Meta) -> None:
    """Create the fifo, device or socket node `meta` describes at `path`.

    Created owner-only (0o600); `apply_meta` sets the real mode and owner afterwards, so
    the umask never decides the final bits and the node is never briefly wider open.
    Sockets are created with mknod(S_IFSOCK): a socket file carries no listener, only a
    name and metadata, and that is all a backup can restore.
    """
    if meta.kind == "fifo":
        os.mkfifo(path, 0o600)
    elif meta.kind in ("chr", "blk", "sock"):
        os.mknod(path, 0o600 | _FMT_BY_KIND[meta.kind], meta.rdev)
    else:
        raise ValueError(f"create_special cannot create a {meta.kind!r}")


def same_meta(a: Meta, b: Meta, *, ignore_atime: bool = True) -> list[str]:
    """Return the names of the Meta fields that differ between `a` and `b` ([] if equal).

    The mode of a symlink is not compared: Linux ignores and never sets it.
    """
    diffs: list[str] = []
    for field in fields(Meta):
        name = field.name
        if name == "atime_ns" and ignore_atime:
            continue
        if name == "mode" and a.kind == b.kind == "symlink":
            continue
        if getattr(a, name) != getattr(b, name):
            diffs.append(name)
    return diffs
