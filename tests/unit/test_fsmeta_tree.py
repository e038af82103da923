"""fsmeta round-trips every entry kind, and the tree comparison catches every difference.

The copier below is a deliberately tiny reference: it uses only fsmeta (read_meta,
apply_meta, create_special, data_extents), so a clean copy proves fsmeta carries every
feature of the rich tree, and each mutation test proves compare_trees would fail a test
whose tree lost that feature.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

from tests.helpers.tree import (
    CAP_NET_BIND_SERVICE_XATTR,
    RICH_ACL_NAMED_PERM,
    RICH_ACL_NAMED_UID,
    RICH_NON_UTF8_NAME,
    assert_trees_equal,
    compare_trees,
    make_rich_tree,
    rich_file_acl,
)
from twinvault.fsmeta import Meta, apply_meta, create_special, data_extents, read_meta, same_meta

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="owners, devices and trusted.* need root")


def copy_tree(src: str, dst: str) -> None:
    """Copy `src` to the new path `dst` with everything fsmeta knows, keeping holes and links."""
    linked: dict[tuple[int, int], str] = {}

    def copy(s: str, d: str, st: os.stat_result) -> None:
        meta = read_meta(s, st)
        if meta.kind == "dir":
            os.mkdir(d, 0o700)
            for name in sorted(os.listdir(s)):
                cs = os.path.join(s, name)
                copy(cs, os.path.join(d, name), os.lstat(cs))
            apply_meta(d, meta)  # after the children: creating them moved its mtime
            return
        if meta.kind != "dir" and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in linked:
                os.link(linked[key], d)
                return
            linked[key] = d
        if meta.kind == "file":
            fi = os.open(s, os.O_RDONLY | os.O_NOFOLLOW)
            fo = os.open(d, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.ftruncate(fo, meta.size)  # holes stay holes: only data extents are written
                for off, length in data_extents(fi, meta.size):
                    os.pwrite(fo, os.pread(fi, length, off), off)
                apply_meta(d, meta, fd=fo)
            finally:
                os.close(fi)
                os.close(fo)
        elif meta.kind == "symlink":
            os.symlink(meta.symlink_target, d)
            apply_meta(d, meta)
        else:
            create_special(d, meta)
            apply_meta(d, meta)

    copy(src, dst, os.lstat(src))


@pytest.fixture
def trees(tmp_path: Path) -> tuple[str, str]:
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    make_rich_tree(a, seed=7)
    copy_tree(a, b)
    return a, b


def test_reference_copy_of_rich_tree_compares_equal(trees: tuple[str, str]) -> None:
    a, b = trees
    assert compare_trees(a, b) == []
    assert_trees_equal(a, b)


def test_rich_tree_has_every_kind_and_feature(trees: tuple[str, str]) -> None:
    a, _ = trees
    kinds = set()
    for dirpath, dirnames, filenames in os.walk(a):
        for name in dirnames + filenames:
            kinds.add(read_meta(os.path.join(dirpath, name)).kind)
    assert kinds == {"file", "dir", "symlink", "fifo", "chr", "blk", "sock"}
    acl = read_meta(os.path.join(a, "acl-dir"))
    assert {n for n, _ in acl.xattrs} == {"system.posix_acl_access", "system.posix_acl_default"}
    setuid = read_meta(os.path.join(a, "modes", "setuid-bin"))
    assert setuid.mode == 0o4755
    assert ("security.capability", CAP_NET_BIND_SERVICE_XATTR) in setuid.xattrs
    assert read_meta(os.path.join(a, "links", "dangling")).xattrs[0][0].startswith("trusted.")
    with open(os.path.join(a, "sparse.img"), "rb") as f:
        extents = data_extents(f.fileno(), 5 << 20)
    assert sum(length for _, length in extents) < 1 << 20  # mostly holes


def test_apply_meta_keeps_setuid_and_capability_across_chown(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x")
    os.chown(src, 1234, 1234)
    os.chmod(src, 0o4755)
    os.setxattr(src, "security.capability", CAP_NET_BIND_SERVICE_XATTR)
    dst = tmp_path / "dst"
    dst.write_bytes(b"x")
    apply_meta(str(dst), read_meta(str(src)))
    assert same_meta(read_meta(str(src)), read_meta(str(dst))) == []


def test_apply_meta_removes_xattrs_the_target_should_not_have(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"")
    dst.write_bytes(b"")
    os.setxattr(dst, "user.stale", b"1")
    os.setxattr(dst, "system.posix_acl_access", rich_file_acl(99, 7))
    apply_meta(str(dst), read_meta(str(src)))
    assert read_meta(str(dst)).xattrs == ()


def test_meta_wire_round_trip_through_msgpack(trees: tuple[str, str]) -> None:
    a, _ = trees
    metas = [read_meta(a)]
    for dirpath, dirnames, filenames in os.walk(a):
        metas += [read_meta(os.path.join(dirpath, n)) for n in dirnames + filenames]
    metas.append(read_meta(os.fsdecode(os.path.join(os.fsencode(a), RICH_NON_UTF8_NAME))))
    for meta in metas:
        wire = msgpack.unpackb(msgpack.packb(meta.to_wire()), use_list=True)
        assert Meta.from_wire(wire) == meta


def test_meta_wire_carries_non_utf8_symlink_target(tmp_path: Path) -> None:
    link = tmp_path / "l"
    os.symlink(b"target-\xff", os.fsencode(link))
    meta = read_meta(str(link))
    assert Meta.from_wire(msgpack.unpackb(msgpack.packb(meta.to_wire()))) == meta
    with pytest.raises(ValueError):
        Meta.from_wire([99, *meta.to_wire()[1:]])


def test_data_extents_of_all_hole_and_plain_files(tmp_path: Path) -> None:
    hole, plain = tmp_path / "hole", tmp_path / "plain"
    with open(hole, "wb") as f:
        f.truncate(1 << 20)
    plain.write_bytes(b"a" * 10_000)
    with open(hole, "rb") as f:
        assert data_extents(f.fileno(), 1 << 20) == []
    with open(plain, "rb") as f:
        assert data_extents(f.fileno(), 10_000) == [(0, 10_000)]
        assert data_extents(f.fileno(), 0) == []


def test_same_meta_names_fields_and_ignores_atime_by_default(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"")
    m = read_meta(str(f))
    other = dataclasses.replace(m, atime_ns=1, mode=0o600, uid=5)
    assert same_meta(m, other) == ["mode", "uid"]
    assert same_meta(m, other, ignore_atime=False) == ["mode", "uid", "atime_ns"]


def test_create_special_refuses_regular_kinds(tmp_path: Path) -> None:
    m = read_meta(str(tmp_path))
    with pytest.raises(ValueError):
        create_special(str(tmp_path / "x"), m)


# --- every difference is caught ----------------------------------------------------------


def _keep_times(*paths: str) -> Callable[[], None]:
    """Return a function restoring the current times of `paths`, so a mutation is pure."""
    saved = [(p, os.lstat(p)) for p in paths]

    def restore() -> None:
        for p, st in saved:
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    return restore


def _flip_byte(path: str, offset: int) -> None:
    restore = _keep_times(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
    restore()


def _content(b: str) -> None:
    _flip_byte(os.path.join(b, "docs", "random-0.bin"), 0)


def _content_large(b: str) -> None:
    _flip_byte(os.path.join(b, "sparse.img"), 10)  # in a data region: holes stay equal


def _size(b: str) -> None:
    p = os.path.join(b, "docs", "random-1.bin")
    restore = _keep_times(p)
    with open(p, "ab") as f:
        f.write(b"!")
    restore()


def _mode(b: str) -> None:
    os.chmod(os.path.join(b, "modes", "private.txt"), 0o644)


def _owner(b: str) -> None:
    os.chown(os.path.join(b, "owner", "theirs.txt"), 0, 0)


def _mtime(b: str) -> None:
    p = os.path.join(b, "docs", "empty.txt")
    st = os.lstat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1))


def _dir_mtime(b: str) -> None:
    p = os.path.join(b, "nested", "a")
    st = os.lstat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns - 1000))


def _xattr(b: str) -> None:
    os.setxattr(os.path.join(b, "xattr.txt"), "user.tv.color", b"red")


def _xattr_removed(b: str) -> None:
    os.removexattr(os.path.join(b, "xattr.txt"), "user.tv.empty")


def _acl(b: str) -> None:
    # Only the named user's permission changes; the mask, and so the mode, stay.
    acl = rich_file_acl(RICH_ACL_NAMED_UID, RICH_ACL_NAMED_PERM ^ 2)
    os.setxattr(os.path.join(b, "acl-file.txt"), "system.posix_acl_access", acl)


def _symlink_target(b: str) -> None:
    p = os.path.join(b, "links", "rel")
    meta = read_meta(p)
    restore = _keep_times(os.path.dirname(p))
    os.unlink(p)
    os.symlink("../docs/elsewhere", p)
    apply_meta(p, meta)
    restore()


def _hardlink_broken(b: str) -> None:
    p = os.path.join(b, "links", "hard-2")
    meta = read_meta(p)
    with open(p, "rb") as f:
        data = f.read()
    restore = _keep_times(os.path.dirname(p))
    os.unlink(p)
    with open(p, "wb") as f:
        f.write(data)
    apply_meta(p, meta)
    restore()


def _hole_filled(b: str) -> None:
    p = os.path.join(b, "sparse.img")
    restore = _keep_times(p)
    with open(p, "r+b") as f:
        os.pwrite(f.fileno(), bytes(4096), 1 << 20)  # zeros: same bytes, but now allocated
    restore()


def _missing(b: str) -> None:
    restore = _keep_times(os.path.join(b, "docs"))
    os.unlink(os.path.join(b, "docs", "empty.txt"))
    restore()


def _missing_non_utf8(b: str) -> None:
    restore = _keep_times(b)
    os.unlink(os.path.join(os.fsencode(b), RICH_NON_UTF8_NAME))
    restore()


def _extra(b: str) -> None:
    restore = _keep_times(os.path.join(b, "docs"))
    open(os.path.join(b, "docs", "new\nline.txt.extra"), "wb").close()
    restore()


def _kind(b: str) -> None:
    p = os.path.join(b, "special", "fifo")
    meta = read_meta(p)
    restore = _keep_times(os.path.dirname(p))
    os.unlink(p)
    open(p, "wb").close()
    apply_meta(p, meta)
    restore()


def _rdev(b: str) -> None:
    p = os.path.join(b, "special", "chr")
    meta = read_meta(p)
    restore = _keep_times(os.path.dirname(p))
    os.unlink(p)
    os.mknod(p, 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    apply_meta(p, dataclasses.replace(meta, rdev=os.makedev(1, 5)))
    restore()


def _dangling_symlink_xattr(b: str) -> None:
    os.removexattr(os.path.join(b, "links", "dangling"), "trusted.twinvault.test", follow_symlinks=False)


def _root_mode(b: str) -> None:
    os.chmod(b, 0o700)


# (mutation, expected differences as "path: field" prefixes — exactly these, nothing else)
MUTATIONS: dict[str, tuple[Callable[[str], None], list[str]]] = {
    "content": (_content, ["docs/random-0.bin: content: bytes differ"]),
    "content_large": (_content_large, ["sparse.img: content: bytes differ"]),
    "size": (_size, ["docs/random-1.bin: content: size"]),
    "mode": (_mode, ["modes/private.txt: mode: expected 0o600, actual 0o644"]),
    "owner": (_owner, ["owner/theirs.txt: uid: expected 1234, actual 0", "owner/theirs.txt: gid"]),
    "mtime": (_mtime, ["docs/empty.txt: mtime"]),
    "dir_mtime": (_dir_mtime, ["nested/a: mtime"]),
    "xattr": (_xattr, ["xattr.txt: xattr user.tv.color: expected b'blue', actual b'red'"]),
    "xattr_removed": (_xattr_removed, ["xattr.txt: xattr user.tv.empty: missing"]),
    "acl": (_acl, ["acl-file.txt: ACL system.posix_acl_access"]),
    "symlink_target": (_symlink_target, ["links/rel: symlink target: expected '../docs/empty.txt'"]),
    "hardlink_broken": (_hardlink_broken, ["links/hard-1: hard links"]),
    "hole_filled": (_hole_filled, ["sparse.img: holes"]),
    "missing": (_missing, ["docs/empty.txt: missing in actual tree"]),
    "missing_non_utf8": (_missing_non_utf8, ["b'bad-\\xff\\xfe-name.bin': missing in actual tree"]),
    "extra": (_extra, ["b'docs/new\\nline.txt.extra': extra in actual tree"]),
    "kind": (_kind, ["special/fifo: kind: expected fifo, actual file"]),
    "rdev": (_rdev, ["special/chr: rdev"]),
    "symlink_xattr": (_dangling_symlink_xattr, ["links/dangling: xattr trusted.twinvault.test: missing"]),
    "root_mode": (_root_mode, [".: mode"]),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_compare_trees_reports_exactly_the_difference(trees: tuple[str, str], case: str) -> None:
    a, b = trees
    mutate, expected = MUTATIONS[case]
    mutate(b)
    diffs = compare_trees(a, b)
    assert len(diffs) == len(expected), diffs
    for diff, prefix in zip(diffs, expected, strict=True):
        assert diff.startswith(prefix), diffs
    with pytest.raises(AssertionError, match="differences between"):
        assert_trees_equal(a, b)


def test_compare_trees_ignores_paths_and_fields(trees: tuple[str, str]) -> None:
    a, b = trees
    _mtime(b)
    _xattr(b)
    shutil.rmtree(os.path.join(b, "special"))  # also moves the root's mtime
    assert len(compare_trees(a, b)) == 4
    assert compare_trees(a, b, ignore=["special"], ignore_fields=["mtime"]) == [
        "xattr.txt: xattr user.tv.color: expected b'blue', actual b'red'"
    ]
    assert compare_trees(a, b, ignore=["spec*"], ignore_fields=["mtime", "xattrs"]) == []
    with pytest.raises(ValueError):
        compare_trees(a, b, ignore_fields=["colour"])


def test_assert_trees_equal_lists_at_most_50(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for i in range(60):
        (a / f"f{i:02}").write_bytes(b"")
    with pytest.raises(AssertionError) as info:
        assert_trees_equal(str(a), str(b), root_meta=False)
    text = str(info.value)
    assert text.count("missing in actual tree") == 50
    assert "... and 10 more" in text


def test_compare_trees_reports_links_the_expected_tree_does_not_have(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        root.mkdir()
        (root / "x").write_bytes(b"same")
    os.link(b / "x", b / "y")
    (a / "y").write_bytes(b"same")
    for root in (a, b):
        for name in ("x", "y", ""):
            os.utime(root / name, ns=(1, 1_000_000_123))
    assert compare_trees(str(a), str(b)) == [
        "x: hard links: expected separate inodes, actual one for ['x', 'y']"
    ]
