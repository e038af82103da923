"""The one tree comparison of the test suite, and the rich tree that exercises it.

`compare_trees` says, in words a person can act on, how a restored or mirrored tree
differs from the tree it should equal: entries, kinds, bytes, permission bits, owners,
mtimes (directories too), xattrs and ACLs, symlink targets, device numbers, hard-link
structure and sparse holes.  It reads metadata through `twinvault.fsmeta.read_meta`, the
same code the source reader and the applier use, so "equal" means one thing everywhere.

`make_rich_tree` builds a small tree holding every kind of entry and every metadata
feature a backup must carry, for round-trip tests of mirror, replication and recovery.
"""

from __future__ import annotations

import fnmatch
import os
import random
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

import blake3

from twinvault.fsmeta import Meta, data_extents, read_meta, same_meta

# Fields that `ignore_fields` accepts.  atime and ctime are never compared: reading a
# tree changes atime, and ctime cannot be set at all.
FIELDS = frozenset(
    {"kind", "content", "mode", "uid", "gid", "mtime", "xattrs", "acl", "symlink_target", "rdev"}
    | {"hardlinks", "holes"}
)

_HASH_ABOVE = 1 << 20  # bigger files are hashed in 1 MiB reads instead of held in memory
_READ_SIZE = 1 << 20
_HOLE_GRAIN = 4096  # filesystems allocate (and report holes) in blocks; compare per 4 KiB

# Filesystems whose SEEK_HOLE reports real holes; elsewhere the kernel's generic llseek
# claims every file is all data, and comparing holes would only report the filesystem.
_HOLE_AWARE_FS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "zfs", "overlay", "bcachefs", "ocfs2", "gfs2"}
)

_ACL_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")


def _show(rel: str) -> str:
    """A relative path as a person can read it in a message (escapes newlines, bad bytes)."""
    return rel if rel.isprintable() else repr(os.fsencode(rel))


def _fs_type(path: str) -> str:
    """Return the type of the filesystem mounted at or above `path`, from mountinfo."""
    real = os.path.realpath(path)
    best, best_type = "", ""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mountpoint = left.split(" ")[4]
            # mountinfo escapes space, tab, newline and backslash as octal.
            for esc, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
                mountpoint = mountpoint.replace(esc, ch)
            inside = real == mountpoint or real.startswith(mountpoint.rstrip("/") + "/")
            # Later lines win on ties: they are mounts stacked over earlier ones.
            if inside and len(mountpoint) >= len(best):
                best, best_type = mountpoint, right.split(" ")[0]
    return best_type


def _blocks(extents: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Extents as merged [first, end) 4 KiB block ranges."""
    out: list[tuple[int, int]] = []
    for off, length in extents:
        first, end = off // _HOLE_GRAIN, -(-(off + length) // _HOLE_GRAIN)
        if out and first <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((first, end))
    return out


def _digest(fd: int) -> bytes:
    h = blake3.blake3()
    buf = bytearray(_READ_SIZE)
    view = memoryview(buf)
    while n := os.readv(fd, [buf]):
        h.update(view[:n])
    return h.digest()


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, max(size, 1)):
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class _Walk:
    expected_root: str
    actual_root: str
    ignore: tuple[str, ...]
    ignore_fields: frozenset[str]
    holes: bool
    diffs: list[str] = field(default_factory=list)
    # (st_dev, st_ino) -> relative paths, for entries with more than one link.
    links_expected: dict[tuple[int, int], list[str]] = field(default_factory=dict)
    links_actual: dict[tuple[int, int], list[str]] = field(default_factory=dict)
    inode_expected: dict[str, tuple[int, int]] = field(default_factory=dict)
    inode_actual: dict[str, tuple[int, int]] = field(default_factory=dict)

    def ignored(self, rel: str) -> bool:
        return any(fnmatch.fnmatchcase(rel, pat) for pat in self.ignore)

    def add(self, rel: str, what: str) -> None:
        self.diffs.append(f"{_show(rel)}: {what}")

    def note_links(self, rel: str, st_e: os.stat_result, st_a: os.stat_result) -> None:
        for st, links, inodes in (
            (st_e, self.links_expected, self.inode_expected),
            (st_a, self.links_actual, self.inode_actual),
        ):
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                links.setdefault(key, []).append(rel)
                inodes[rel] = key

    def compare_entry(self, rel: str, *, with_meta: bool = True) -> None:
        pe = os.path.join(self.expected_root, rel) if rel != "." else self.expected_root
        pa = os.path.join(self.actual_root, rel) if rel != "." else self.actual_root
        st_e, st_a = os.lstat(pe), os.lstat(pa)
        me, ma = read_meta(pe, st_e), read_meta(pa, st_a)
        if me.kind != ma.kind:
            if "kind" not in self.ignore_fields:
                self.add(rel, f"kind: expected {me.kind}, actual {ma.kind}")
            return
        if with_meta:
            self.compare_meta(rel, me, ma)
        self.note_links(rel, st_e, st_a)
        if me.kind == "file" and "content" not in self.ignore_fields:
            self.compare_content(rel, pe, pa, me, ma)
        elif me.kind == "dir":
            self.compare_dir(rel, pe, pa)

    def compare_meta(self, rel: str, me: Meta, ma: Meta) -> None:
        for name in same_meta(me, ma):
            if name == "mode" and "mode" not in self.ignore_fields:
                self.add(rel, f"mode: expected {me.mode:#o}, actual {ma.mode:#o}")
            elif name in ("uid", "gid", "rdev") and name not in self.ignore_fields:
                self.add(rel, f"{name}: expected {getattr(me, name)}, actual {getattr(ma, name)}")
            elif name == "mtime_ns" and "mtime" not in self.ignore_fields:
                self.add(rel, f"mtime: expected {me.mtime_ns}, actual {ma.mtime_ns}")
            elif name == "symlink_target" and "symlink_target" not in self.ignore_fields:
                self.add(rel, f"symlink target: expected {me.symlink_target!r}, actual {ma.symlink_target!r}")
            elif name == "xattrs":
                self.compare_xattrs(rel, dict(me.xattrs), dict(ma.xattrs))
            # size is reported with the content, where it is one of the content's facts.

    def compare_xattrs(self, rel: str, xe: dict[str, bytes], xa: dict[str, bytes]) -> None:
        for name in sorted(xe.keys() | xa.keys()):
            if xe.get(name) == xa.get(name):
                continue
            label = "acl" if name in _ACL_XATTRS else "xattrs"
            if label in self.ignore_fields:
                continue
            what = "ACL" if label == "acl" else "xattr"
            if name not in xa:
                self.add(rel, f"{what} {name}: missing")
            elif name not in xe:
                self.add(rel, f"{what} {name}: extra")
            else:
                self.add(rel, f"{what} {name}: expected {xe[name][:64]!r}, actual {xa[name][:64]!r}")

    def compare_content(self, rel: str, pe: str, pa: str, me: Meta, ma: Meta) -> None:
        if me.size != ma.size:
            self.add(rel, f"content: size expected {me.size}, actual {ma.size}")
            return
        fe = os.open(pe, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            fa = os.open(pa, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                if self.holes and "holes" not in self.ignore_fields:
                    be, ba = _blocks(data_extents(fe, me.size)), _blocks(data_extents(fa, ma.size))
                    if be != ba:
                        self.add(rel, f"holes: expected data blocks {be[:8]}, actual {ba[:8]}")
                os.lseek(fe, 0, os.SEEK_SET)
                os.lseek(fa, 0, os.SEEK_SET)
                if me.size > _HASH_ABOVE:
                    same = _digest(fe) == _digest(fa)
                else:
                    same = _read_all(fe, me.size) == _read_all(fa, ma.size)
                if not same:
                    self.add(rel, "content: bytes differ")
            finally:
                os.close(fa)
        finally:
            os.close(fe)

    def compare_dir(self, rel: str, pe: str, pa: str) -> None:
        names_e, names_a = set(os.listdir(pe)), set(os.listdir(pa))
        for name in sorted(names_e | names_a):
            child = name if rel == "." else os.path.join(rel, name)
            if self.ignored(child):
                continue
            if name not in names_a:
                self.add(child, "missing in actual tree")
            elif name not in names_e:
                self.add(child, "extra in actual tree")
            else:
                self.compare_entry(child)

    def compare_hardlinks(self) -> None:
        """One message per link group that differs, whichever side has the links."""
        if "hardlinks" in self.ignore_fields:
            return
        split: dict[frozenset[str], set[frozenset[str]]] = {}  # expected group -> actual groups
        joined: set[frozenset[str]] = set()  # actual groups of paths separate in expected
        for rel in self.inode_expected.keys() | self.inode_actual.keys():
            ke, ka = self.inode_expected.get(rel), self.inode_actual.get(rel)
            group_e = frozenset(self.links_expected[ke]) if ke else frozenset({rel})
            group_a = frozenset(self.links_actual[ka]) if ka else frozenset({rel})
            if group_e == group_a:
                continue
            if len(group_e) > 1:
                split.setdefault(group_e, set()).add(group_a)
            else:
                joined.add(group_a)
        for group_e, groups_a in sorted(split.items(), key=lambda item: sorted(item[0])):
            shown_a = sorted(sorted(_show(p) for p in g) for g in groups_a)
            self.add(
                min(group_e),
                f"hard links: expected one inode for {sorted(_show(p) for p in group_e)}, actual {shown_a}",
            )
        explained = {g for groups_a in split.values() for g in groups_a}
        for group_a in sorted(joined - explained, key=sorted):
            self.add(min(group_a), f"hard links: expected separate inodes, actual one for {sorted(group_a)}")


def compare_trees(
    expected_root: str,
    actual_root: str,
    *,
    ignore: Iterable[str] = (),
    ignore_fields: Iterable[str] = (),
    root_meta: bool = True,
) -> list[str]:
    """Return the differences of `actual_root` from `expected_root`, [] when equal.

    ignore: fnmatch patterns of relative paths ("a/b", "*.tmp", ".twinvault") skipped
      with everything below them.
    ignore_fields: names from FIELDS not to compare (e.g. {"mtime"} for a tool that does
      not keep times).
    root_meta: compare the roots' own metadata too (off when the actual root is a
      directory the test made, not one the code under test restored).
    Holes are compared only when both trees sit on filesystems that report holes.
    """
    unknown = set(ignore_fields) - FIELDS
    if unknown:
        raise ValueError(f"unknown fields to ignore: {sorted(unknown)}; known: {sorted(FIELDS)}")
    holes = _fs_type(expected_root) in _HOLE_AWARE_FS and _fs_type(actual_root) in _HOLE_AWARE_FS
    walk = _Walk(expected_root, actual_root, tuple(ignore), frozenset(ignore_fields), holes)
    walk.compare_entry(".", with_meta=root_meta)
    walk.compare_hardlinks()
    return walk.diffs


def assert_trees_equal(
    expected_root: str,
    actual_root: str,
    ignore: Iterable[str] = (),
    *,
    ignore_fields: Iterable[str] = (),
    root_meta: bool = True,
) -> None:
    """Raise AssertionError listing up to 50 differences when the trees differ."""
    diffs = compare_trees(
        expected_root, actual_root, ignore=ignore, ignore_fields=ignore_fields, root_meta=root_meta
    )
    if diffs:
        shown = "\n  ".join(diffs[:50])
        more = f"\n  ... and {len(diffs) - 50} more" if len(diffs) > 50 else ""
        raise AssertionError(
            f"{len(diffs)} differences between {expected_root} (expected) and {actual_root}:\n  {shown}{more}"
        )


# --- the rich tree ---------------------------------------------------------------------

# ACL entry tags, from <linux/posix_acl.h>.
_ACL_USER_OBJ = 0x01
_ACL_USER = 0x02
_ACL_GROUP_OBJ = 0x04
_ACL_GROUP = 0x08
_ACL_MASK = 0x10
_ACL_OTHER = 0x20
_ACL_UNDEFINED_ID = 0xFFFFFFFF


def acl_xattr(entries: Iterable[tuple[int, int, int]]) -> bytes:
    """Encode (tag, perm, id) entries as a `system.posix_acl_*` xattr value.

    Layout: little-endian u32 version 2, then u16 tag, u16 perm, u32 id per entry; the
    kernel wants entries sorted by tag, then id.
    """
    body = b"".join(struct.pack("<HHI", tag, perm, uid) for tag, perm, uid in sorted(entries))
    return struct.pack("<I", 2) + body


def rich_file_acl(named_uid: int, named_perm: int) -> bytes:
    return acl_xattr(
        [
            (_ACL_USER_OBJ, 6, _ACL_UNDEFINED_ID),
            (_ACL_USER, named_perm, named_uid),
            (_ACL_GROUP_OBJ, 4, _ACL_UNDEFINED_ID),
            (_ACL_GROUP, 6, 4321),
            (_ACL_MASK, 6, _ACL_UNDEFINED_ID),
            (_ACL_OTHER, 0, _ACL_UNDEFINED_ID),
        ]
    )


# An ACL entry that `make_rich_tree` puts on "acl-file.txt"; tests change its perm to
# make an ACL-only difference.
RICH_ACL_NAMED_UID = 1234
RICH_ACL_NAMED_PERM = 4

# security.capability v2 granting cap_net_bind_service (bit 10), effective: a file
# capability is the xattr the kernel drops on any chown, so it tests apply order.
CAP_NET_BIND_SERVICE_XATTR = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)

RICH_NON_UTF8_NAME = b"bad-\xff\xfe-name.bin"


def make_rich_tree(root: str, seed: int) -> None:
    """Build under `root` a small tree with every entry kind and metadata feature.

    Contents and times derive from `seed`; the layout is fixed (tests name entries):
      docs/            empty.txt, random-0..3.bin (1 B..300 KiB), names with spaces,
                       unicode and a newline
      nested/a/b/c/    deep.txt
      sparse.img       5 MiB, three data regions (one unaligned), trailing hole
      links/           abs (absolute), rel (relative), dangling (with a trusted.* xattr),
                       hard-1 + hard-2 (one inode)
      special/         fifo, chr (1,3), blk (7,200), sock
      xattr.txt        user.* xattrs incl. an empty and a binary value
      acl-file.txt     access ACL; acl-dir/ access + default ACL
      modes/           setgid-dir 2775, sticky-dir 1777, private.txt 0600,
                       setuid-bin 4755 with security.capability
      owner/           dir and file owned by 1234:1234
      RICH_NON_UTF8_NAME  a file whose name is not UTF-8
    Needs root (owners, devices, trusted.* and security.* xattrs).
    """
    rng = random.Random(seed)
    os.makedirs(root, exist_ok=True)

    def p(*parts: str) -> str:
        return os.path.join(root, *parts)

    def write(path: str, data: bytes, mode: int = 0o644) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    for d in ("docs", "nested/a/b/c", "links", "special", "acl-dir", "modes", "owner"):
        os.makedirs(p(d), exist_ok=True)

    write(p("docs", "empty.txt"), b"")
    for i in range(4):
        write(p("docs", f"random-{i}.bin"), rng.randbytes(rng.randrange(1, 300 * 1024 + 1)))
    write(p("docs", "name with spaces.txt"), b"spaces\n")
    write(p("docs", "unicod\u00e9-\u65e5\u672c\u8a9e.txt"), "unicode \u2713\n".encode())
    write(p("docs", "new\nline.txt"), b"newline in the name\n")
    write(p("nested", "a", "b", "c", "deep.txt"), rng.randbytes(1000))

    fd = os.open(p("sparse.img"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, 5 << 20)
        os.pwrite(fd, rng.randbytes(64 << 10), 0)
        os.pwrite(fd, rng.randbytes(100_000), (2 << 20) + 123)
        os.pwrite(fd, rng.randbytes(4096), 4 << 20)
    finally:
        os.close(fd)

    os.symlink("/etc/passwd", p("links", "abs"))
    os.symlink("../docs/empty.txt", p("links", "rel"))
    os.symlink("no/such/target", p("links", "dangling"))
    os.setxattr(p("links", "dangling"), "trusted.twinvault.test", b"on a symlink", follow_symlinks=False)
    write(p("links", "hard-1"), rng.randbytes(5000))
    os.link(p("links", "hard-1"), p("links", "hard-2"))

    os.mkfifo(p("special", "fifo"), 0o640)
    os.mknod(p("special", "chr"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(p("special", "blk"), 0o660 | stat.S_IFBLK, os.makedev(7, 200))
    os.mknod(p("special", "sock"), 0o755 | stat.S_IFSOCK)

    write(p("xattr.txt"), b"has user xattrs\n")
    os.setxattr(p("xattr.txt"), "user.tv.color", b"blue")
    os.setxattr(p("xattr.txt"), "user.tv.empty", b"")
    os.setxattr(p("xattr.txt"), "user.tv.binary", bytes(range(256)))

    write(p("acl-file.txt"), b"has an access ACL\n")
    file_acl = rich_file_acl(RICH_ACL_NAMED_UID, RICH_ACL_NAMED_PERM)
    os.setxattr(p("acl-file.txt"), "system.posix_acl_access", file_acl)
    dir_acl = acl_xattr(
        [
            (_ACL_USER_OBJ, 7, _ACL_UNDEFINED_ID),
            (_ACL_USER, 5, 1234),
            (_ACL_GROUP_OBJ, 5, _ACL_UNDEFINED_ID),
            (_ACL_MASK, 7, _ACL_UNDEFINED_ID),
            (_ACL_OTHER, 0, _ACL_UNDEFINED_ID),
        ]
    )
    os.setxattr(p("acl-dir"), "system.posix_acl_access", dir_acl)
    os.setxattr(p("acl-dir"), "system.posix_acl_default", dir_acl)
    write(p("acl-dir", "inherits.txt"), b"created under a default ACL\n")

    os.makedirs(p("modes", "setgid-dir"))
    os.chmod(p("modes", "setgid-dir"), 0o2775)
    os.makedirs(p("modes", "sticky-dir"))
    os.chmod(p("modes", "sticky-dir"), 0o1777)
    write(p("modes", "private.txt"), b"secret\n")
    os.chmod(p("modes", "private.txt"), 0o600)
    write(p("modes", "setuid-bin"), b"#!/bin/sh\n")
    os.chmod(p("modes", "setuid-bin"), 0o4755)
    os.setxattr(p("modes", "setuid-bin"), "security.capability", CAP_NET_BIND_SERVICE_XATTR)

    write(p("owner", "theirs.txt"), b"owned by someone else\n", 0o640)
    os.chmod(p("owner", "theirs.txt"), 0o640)
    os.chown(p("owner", "theirs.txt"), 1234, 1234)
    os.chown(p("owner"), 1234, 1234)

    write(os.fsdecode(os.path.join(os.fsencode(root), RICH_NON_UTF8_NAME)), b"non-UTF-8 name\n")

    # Times last and bottom-up: creating or changing an entry moves its directory's mtime.
    # Nanoseconds are odd on purpose so a copier that rounds to microseconds shows up.
    base = 1_600_000_000 * 10**9
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in sorted(filenames + dirnames):
            t = base + rng.randrange(10**17)
            os.utime(os.path.join(dirpath, name), ns=(t + 7, t), follow_symlinks=False)
        t = base + rng.randrange(10**17)
        os.utime(dirpath, ns=(t + 7, t), follow_symlinks=False)
