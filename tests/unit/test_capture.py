"""Change capture reports what happened in a selection, with fanotify and with inotify.

Every test runs against the real kernel in a temporary directory, once per capture method:
`sel` is the protected root, `outside` and `sel2` (a sibling whose name starts like the
root's) are not protected.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from twinvault.source.capture import (
    CaptureUnavailable,
    Change,
    ChangeCapture,
    ChangeKind,
    FanotifyCapture,
    InotifyCapture,
    events,
    inotify,
    open_capture,
)

pytestmark = pytest.mark.timeout(60)

CHANGED, DELETED, RENAMED, OVERFLOW = (
    ChangeKind.CHANGED,
    ChangeKind.DELETED,
    ChangeKind.RENAMED,
    ChangeKind.OVERFLOW,
)


@dataclass
class Bed:
    method: str
    base: Path
    seen: list[Change] = field(default_factory=list)
    capture: ChangeCapture | None = None

    @property
    def sel(self) -> str:
        return str(self.base / "sel")

    @property
    def outside(self) -> str:
        return str(self.base / "outside")

    def at(self, *parts: str) -> str:
        return os.path.join(self.sel, *parts)

    async def start(self, roots: list[str] | None = None) -> None:
        self.capture = open_capture(roots or [self.sel], prefer=self.method)
        await self.capture.start()
        assert self.capture.method == self.method

    async def collect(self, done: Callable[[list[Change]], bool], timeout: float = 10.0) -> list[Change]:
        """Read batches into `seen` until `done(seen)` or the timeout; return `seen`."""
        assert self.capture is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done(self.seen) and (left := deadline - loop.time()) > 0:
            self.seen.extend(await self.capture.get_batch(min(left, 0.2)))
        return self.seen

    async def expect(self, *wanted: Change) -> list[Change]:
        seen = await self.collect(lambda seen: all(w in seen for w in wanted))
        missing = [w for w in wanted if w not in seen]
        assert not missing, f"{self.method}: missing {missing}; saw {seen}"
        return seen

    async def settle(self, quiet: float = 0.3) -> None:
        """Read until the capture has been quiet for `quiet` s (earlier events stop mattering)."""
        assert self.capture is not None
        while await self.capture.get_batch(quiet):
            pass
        self.seen.clear()

    def assert_only_inside(self) -> None:
        strays = [c for c in self.seen if c.kind is not OVERFLOW and not _inside(c, self.sel)]
        assert not strays, f"{self.method}: reported changes outside the selection: {strays}"


def _inside(change: Change, root: str) -> bool:
    paths = [change.path, change.new_path] if change.kind is RENAMED else [change.path]
    return all(p == root or p.startswith(root + "/") for p in paths)


def _fanotify_marks_unsupported(path: Path) -> str:
    """Why fanotify filesystem marks cannot be placed on ``path``'s filesystem, or "".

    overlayfs (a container's or chroot's root) has no usable file handles, so the kernel
    refuses the mark with EOPNOTSUPP/EXDEV; twinvault then falls back to inotify, which
    the inotify half of these tests covers."""
    probe = open_capture([str(path)], prefer="fanotify")
    try:
        asyncio.run(probe.start())
    except CaptureUnavailable as exc:
        return exc.reason
    finally:
        probe.close()
    return ""


async def _bed(method: str, tmp_path: Path) -> AsyncIterator[Bed]:
    for name in ("sel", "sel2", "outside"):
        (tmp_path / name).mkdir()
    if method == "fanotify":
        reason = await asyncio.to_thread(_fanotify_marks_unsupported, tmp_path / "sel")
        if reason:
            pytest.skip(f"this filesystem refuses fanotify filesystem marks: {reason}")
    bed = Bed(method, tmp_path)
    yield bed
    if bed.capture is not None:
        bed.capture.close()


@pytest.fixture(params=["fanotify", "inotify"])
async def bed(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Bed]:
    async for opened in _bed(request.param, tmp_path):
        yield opened


@pytest.fixture
async def fanotify_bed(tmp_path: Path) -> AsyncIterator[Bed]:
    """For what only fanotify has (ignore marks)."""
    async for opened in _bed("fanotify", tmp_path):
        yield opened


def _write(path: str, data: bytes = b"x") -> None:
    with open(path, "wb") as f:
        f.write(data)


def _acl(other_perm: int) -> bytes:
    # POSIX ACL xattr: u32 version 2, then (u16 tag, u16 perm, u32 id) per entry.
    undefined = 0xFFFFFFFF
    entries = [(0x01, 6, undefined), (0x02, 4, 4321), (0x04, 4, undefined), (0x10, 4, undefined)]
    entries.append((0x20, other_perm, undefined))
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


# (what the test does, the file it prepares before capture starts, the change it must cause)
METADATA_AND_CONTENT_CHANGES: dict[str, Callable[[str], None]] = {
    "write": lambda f: _write(f, b"new content"),
    "truncate": lambda f: os.truncate(f, 0),
    "chmod": lambda f: os.chmod(f, 0o600),
    "chown": lambda f: os.chown(f, 4321, 4321),
    "utime": lambda f: os.utime(f, (1_000_000, 1_000_000)),
    "setxattr": lambda f: os.setxattr(f, "user.twinvault", b"1"),
    "acl": lambda f: os.setxattr(f, "system.posix_acl_access", _acl(0)),
}


@pytest.mark.parametrize("action", sorted(METADATA_AND_CONTENT_CHANGES))
async def test_content_and_metadata_changes_report_the_file_changed(bed: Bed, action: str) -> None:
    _write(bed.at("f"), b"old content")
    await bed.start()
    METADATA_AND_CONTENT_CHANGES[action](bed.at("f"))
    seen = await bed.expect(Change(CHANGED, bed.at("f")))
    assert Change(DELETED, bed.at("f")) not in seen
    bed.assert_only_inside()


async def test_creating_a_file_reports_it_changed(bed: Bed) -> None:
    await bed.start()
    _write(bed.at("new"))
    await bed.expect(Change(CHANGED, bed.at("new")))


async def test_symlink_and_hard_link_report_the_new_name_changed(bed: Bed) -> None:
    _write(bed.at("f"))
    await bed.start()
    os.symlink("f", bed.at("link"))
    os.link(bed.at("f"), bed.at("hard"))
    await bed.expect(Change(CHANGED, bed.at("link")), Change(CHANGED, bed.at("hard")))


async def test_mkdir_then_rmdir_report_the_directory(bed: Bed) -> None:
    await bed.start()
    os.mkdir(bed.at("d"))
    await bed.expect(Change(CHANGED, bed.at("d"), is_dir=True))
    os.rmdir(bed.at("d"))
    await bed.expect(Change(DELETED, bed.at("d"), is_dir=True))


async def test_deleting_a_file_reports_it_deleted(bed: Bed) -> None:
    _write(bed.at("f"))
    await bed.start()
    os.unlink(bed.at("f"))
    seen = await bed.expect(Change(DELETED, bed.at("f")))
    assert Change(CHANGED, bed.at("f")) not in seen


async def test_renaming_a_file_inside_the_selection_reports_one_rename(bed: Bed) -> None:
    _write(bed.at("a"))
    os.mkdir(bed.at("sub"))
    await bed.start()
    os.rename(bed.at("a"), bed.at("sub", "b"))
    seen = await bed.expect(Change(RENAMED, bed.at("a"), bed.at("sub", "b")))
    assert Change(DELETED, bed.at("a")) not in seen


async def test_renamed_directory_reports_later_changes_under_its_new_name(bed: Bed) -> None:
    os.makedirs(bed.at("d", "inner"))
    await bed.start()
    # Make capture learn the directory's path before it moves (fanotify caches it).
    _write(bed.at("d", "inner", "before"))
    await bed.expect(Change(CHANGED, bed.at("d", "inner", "before")))
    os.rename(bed.at("d"), bed.at("e"))
    await bed.expect(Change(RENAMED, bed.at("d"), bed.at("e"), is_dir=True))
    _write(bed.at("e", "inner", "after"))
    seen = await bed.expect(Change(CHANGED, bed.at("e", "inner", "after")))
    assert Change(CHANGED, bed.at("d", "inner", "after")) not in seen


async def test_moving_into_the_selection_reports_changed_and_watches_what_came_in(bed: Bed) -> None:
    _write(os.path.join(bed.outside, "f"))
    os.makedirs(os.path.join(bed.outside, "tree", "deep"))
    await bed.start()
    os.rename(os.path.join(bed.outside, "f"), bed.at("f"))
    os.rename(os.path.join(bed.outside, "tree"), bed.at("tree"))
    await bed.expect(Change(CHANGED, bed.at("f")), Change(CHANGED, bed.at("tree"), is_dir=True))
    _write(bed.at("tree", "deep", "later"))
    seen = await bed.expect(Change(CHANGED, bed.at("tree", "deep", "later")))
    assert not [c for c in seen if c.kind is RENAMED], seen
    bed.assert_only_inside()


async def test_moving_out_of_the_selection_reports_deleted_and_stops_reporting_it(bed: Bed) -> None:
    _write(bed.at("f"))
    os.makedirs(bed.at("tree", "deep"))
    await bed.start()
    os.rename(bed.at("f"), os.path.join(bed.outside, "f"))
    os.rename(bed.at("tree"), os.path.join(bed.outside, "tree"))
    await bed.expect(Change(DELETED, bed.at("f")), Change(DELETED, bed.at("tree"), is_dir=True))
    # A watch left on the moved tree would report this under its old path in the selection.
    _write(os.path.join(bed.outside, "tree", "deep", "later"))
    _write(bed.at("sentinel"))
    await bed.expect(Change(CHANGED, bed.at("sentinel")))
    assert not [c for c in bed.seen if c.kind is RENAMED or "later" in c.path], bed.seen
    bed.assert_only_inside()


async def test_a_busy_directory_outside_moved_in_is_reported_from_then_on(bed: Bed) -> None:
    """fanotify drops events about files of directories outside every root unparsed
    (another process writing there, a repository on the same disk, costs the source next
    to nothing); a directory rename must end that, or a tree moved in would go unseen."""
    deep = os.path.join(bed.outside, "tree", "deep")
    os.makedirs(deep)
    await bed.start()
    for i in range(50):
        _write(os.path.join(deep, f"noise{i}"))
    _write(bed.at("sentinel"))
    await bed.expect(Change(CHANGED, bed.at("sentinel")))
    await bed.settle()
    if isinstance(bed.capture, FanotifyCapture):
        assert bed.capture._unrelated, "events outside the roots were not recognised as such"
    os.rename(os.path.join(bed.outside, "tree"), bed.at("tree"))
    await bed.expect(Change(CHANGED, bed.at("tree"), is_dir=True))
    _write(bed.at("tree", "deep", "noise1"), b"now inside")
    await bed.expect(Change(CHANGED, bed.at("tree", "deep", "noise1")))
    bed.assert_only_inside()


async def test_the_kernel_stops_queueing_the_events_of_a_busy_directory_outside(fanotify_bed: Bed) -> None:
    """fanotify: once an event shows a directory is outside every root, an ignore mark on it
    keeps the events about its files out of the kernel queue (a repository writing its
    image on the source's filesystem costs the source next to nothing). The selection is
    still seen, and moving the directory in ends the mark."""
    bed = fanotify_bed
    busy = os.path.join(bed.outside, "busy")
    os.makedirs(busy)
    await bed.start()
    capture = bed.capture
    assert isinstance(capture, FanotifyCapture) and capture._group is not None
    _write(os.path.join(busy, "first"))
    _write(bed.at("sentinel"))
    await bed.expect(Change(CHANGED, bed.at("sentinel")))
    await bed.settle()
    assert capture._ignored, "no ignore mark was placed on the directory outside"
    # No await from here on: nothing but this test reads the queue.
    for i in range(100):
        name = os.path.join(busy, f"noise{i}")
        _write(name, b"noise")
        os.chmod(name, 0o600)
        os.utime(name, ns=(i, i))
        os.truncate(name, 1)
    with pytest.raises(BlockingIOError):
        os.read(capture._group.fd, 65536)
    _write(bed.at("after"))
    await bed.expect(Change(CHANGED, bed.at("after")))
    os.rename(busy, bed.at("busy"))
    await bed.expect(Change(CHANGED, bed.at("busy"), is_dir=True))
    assert not capture._ignored, "a directory rename left ignore marks in place"
    _write(bed.at("busy", "noise1"), b"now inside")
    await bed.expect(Change(CHANGED, bed.at("busy", "noise1")))
    bed.assert_only_inside()


@pytest.mark.parametrize("limit", ["mark limit", "refused"])
async def test_ignore_marks_at_their_limit_or_refused_still_keep_the_selection_exact(
    fanotify_bed: Bed, monkeypatch: pytest.MonkeyPatch, limit: str
) -> None:
    """Past MAX_IGNORE_MARKS the marks are flushed and placed again; a kernel that refuses
    them (before Linux 6.0) leaves the filtering to the reading side. Either way nothing
    outside is reported and nothing inside is missed."""
    from twinvault.source.capture import fanotify

    if limit == "mark limit":
        monkeypatch.setattr(fanotify, "MAX_IGNORE_MARKS", 2)
    else:  # FAN_MARK_IGNORE with FAN_MARK_IGNORED_MASK is EINVAL on every kernel
        monkeypatch.setattr(fanotify, "IGNORE_FLAGS", fanotify.IGNORE_FLAGS | 0x20)
    bed = fanotify_bed
    busy = [os.path.join(bed.outside, f"busy{d}") for d in range(5)]
    for directory in busy:
        os.makedirs(directory)
    await bed.start()
    capture = bed.capture
    assert isinstance(capture, FanotifyCapture)
    for round_ in range(3):
        for directory in busy:
            _write(os.path.join(directory, f"noise{round_}"))
        _write(bed.at(f"sentinel{round_}"))
        await bed.expect(Change(CHANGED, bed.at(f"sentinel{round_}")))
        assert len(capture._ignored) <= fanotify.MAX_IGNORE_MARKS
    assert capture._ignore_marks is (limit == "mark limit")
    await bed.collect(lambda _: False, timeout=0.3)
    bed.assert_only_inside()


async def test_changes_outside_the_roots_are_not_reported(bed: Bed) -> None:
    sibling = str(bed.base / "sel2")  # shares the root's name as a prefix
    await bed.start()
    for directory in (bed.outside, sibling, str(bed.base)):
        _write(os.path.join(directory, "noise"))
        os.chmod(os.path.join(directory, "noise"), 0o600)
        os.rename(os.path.join(directory, "noise"), os.path.join(directory, "noise2"))
        os.unlink(os.path.join(directory, "noise2"))
    os.chmod(sibling, 0o700)
    _write(bed.at("sentinel"))
    await bed.expect(Change(CHANGED, bed.at("sentinel")))
    await bed.collect(lambda _: False, timeout=0.3)
    bed.assert_only_inside()


async def test_files_in_a_new_subdirectory_are_reported(bed: Bed) -> None:
    await bed.start()
    # No await between these: the directory's files exist before capture reads its creation,
    # which is the case where inotify has to scan the directory after watching it.
    os.makedirs(bed.at("new", "deeper"))
    names = [bed.at("new", f"f{i}") for i in range(5)] + [bed.at("new", "deeper", "g")]
    for name in names:
        _write(name)
    await bed.expect(*(Change(CHANGED, name) for name in names))
    _write(bed.at("new", "deeper", "later"))
    await bed.expect(Change(CHANGED, bed.at("new", "deeper", "later")))


async def test_removing_a_tree_reports_its_deletion_without_overflow(bed: Bed) -> None:
    for d in range(5):
        os.makedirs(bed.at("tree", f"d{d}", "sub"))
        for i in range(20):
            _write(bed.at("tree", f"d{d}", "sub", f"f{i}"))
    await bed.start()
    _write(bed.at("tree", "d0", "sub", "f0"), b"seen")  # capture now knows these directories
    await bed.expect(Change(CHANGED, bed.at("tree", "d0", "sub", "f0")))
    shutil.rmtree(bed.at("tree"))
    _write(bed.at("sentinel"))
    await bed.expect(Change(DELETED, bed.at("tree"), is_dir=True), Change(CHANGED, bed.at("sentinel")))
    await bed.collect(lambda _: False, timeout=0.3)
    assert not [c for c in bed.seen if c.kind is OVERFLOW], bed.seen


async def test_a_burst_of_creates_is_reported_in_full_or_as_overflow(bed: Bed) -> None:
    os.mkdir(bed.at("burst"))
    await bed.start()
    names = [bed.at("burst", f"f{i:05}") for i in range(20_000)]

    def create_all() -> None:
        for name in names:
            os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o644))

    found: set[str] = set()
    looked = 0

    def all_seen(seen: list[Change]) -> bool:
        # Incremental: called after every batch, it must not rescan all that came before.
        nonlocal looked
        fresh = seen[looked:]
        looked = len(seen)
        found.update(c.path for c in fresh)
        return any(c.kind is OVERFLOW for c in fresh) or wanted <= found

    wanted = set(names)
    # A writer thread, so capture reads while the creates run, as it would in the daemon.
    writer = asyncio.create_task(asyncio.to_thread(create_all))
    seen = await bed.collect(all_seen, timeout=20)
    await writer
    missing = wanted - {c.path for c in seen}
    overflowed = any(c.kind is OVERFLOW for c in seen)
    assert overflowed or not missing, f"{len(missing)} creates never reported, e.g. {sorted(missing)[:3]}"


async def test_queue_overflow_is_reported_and_capture_keeps_working(bed: Bed) -> None:
    queue_limit = int(Path(f"/proc/sys/fs/{bed.method}/max_queued_events").read_text())
    os.mkdir(bed.at("flood"))
    await bed.start()
    # Created without yielding to the loop, so nothing reads the queue until it overflows.
    for i in range(queue_limit + 1000):
        os.close(os.open(bed.at("flood", f"f{i}"), os.O_CREAT | os.O_WRONLY, 0o644))
    # Its creation is lost with the queue: inotify must find and watch it by rescanning.
    os.makedirs(bed.at("made_while_lost", "deep"))
    await bed.expect(Change(OVERFLOW, ""))
    await bed.settle()
    _write(bed.at("made_while_lost", "deep", "f"))
    await bed.expect(Change(CHANGED, bed.at("made_while_lost", "deep", "f")))


async def test_a_root_spelled_through_a_symlink_reports_that_spelling(bed: Bed) -> None:
    alias = str(bed.base / "alias")
    os.symlink(bed.sel, alias)
    await bed.start([alias])
    _write(bed.at("f"))
    await bed.expect(Change(CHANGED, os.path.join(alias, "f")))


async def test_a_file_root_reports_only_that_file(bed: Bed) -> None:
    root = bed.at("only")
    _write(root)
    _write(bed.at("other"))
    await bed.start([root])
    _write(bed.at("other"), b"changed")
    os.chmod(root, 0o600)
    seen = await bed.expect(Change(CHANGED, root))
    assert not [c for c in seen if c.path != root], seen


async def test_auto_prefers_fanotify_and_falls_back_to_inotify(tmp_path: Path) -> None:
    reason = await asyncio.to_thread(_fanotify_marks_unsupported, tmp_path)
    if reason:
        pytest.skip(f"this filesystem refuses fanotify filesystem marks: {reason}")
    assert isinstance(open_capture([str(tmp_path)]), FanotifyCapture)
    # /proc has no file handles, so fanotify cannot mark it; inotify can watch it.
    assert isinstance(open_capture(["/proc/self"]), InotifyCapture)
    with pytest.raises(ValueError):
        open_capture([str(tmp_path)], prefer="dnotify")


async def test_fanotify_refusal_is_capture_unavailable() -> None:
    capture = open_capture(["/proc/self"], prefer="fanotify")
    with pytest.raises(CaptureUnavailable) as refused:
        await capture.start()
    assert refused.value.errno is not None
    capture.close()


async def test_inotify_watch_limit_reports_overflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bed = Bed("inotify", tmp_path)
    (tmp_path / "sel").mkdir()
    await bed.start()
    real_add_watch = inotify._add_watch

    def add_watch_at_limit(fd: int, path: str, mask: int) -> int:
        # The kernel's answer once fs.inotify.max_user_watches is used up (a global sysctl,
        # so the test injects it instead of lowering it for the whole machine).
        return -errno.ENOSPC if path.endswith("unwatchable") else real_add_watch(fd, path, mask)

    monkeypatch.setattr(inotify, "_add_watch", add_watch_at_limit)
    try:
        os.mkdir(bed.at("unwatchable"))
        await bed.expect(Change(CHANGED, bed.at("unwatchable"), is_dir=True), Change(OVERFLOW, ""))
    finally:
        assert bed.capture is not None
        bed.capture.close()


async def test_feed_collapses_an_unread_backlog_into_one_overflow() -> None:
    read_end, write_end = os.pipe()
    try:
        feed = events.ChangeFeed(read_end, list)
        feed.attach()
        feed.push(Change(CHANGED, f"/sel/f{i}") for i in range(events.MAX_READY + 1))
        assert await feed.get_batch(0) == [Change(OVERFLOW, "")]
        feed.detach()
    finally:
        os.close(read_end)
        os.close(write_end)


async def test_feed_hands_a_reader_failure_to_the_consumer() -> None:
    read_end, write_end = os.pipe()

    def broken_drain() -> list[Change]:
        raise RuntimeError("unparseable event")

    try:
        feed = events.ChangeFeed(read_end, broken_drain)
        feed.attach()
        os.write(write_end, b"x")
        with pytest.raises(RuntimeError, match="unparseable"):
            await feed.get_batch(5)
    finally:
        os.close(read_end)
        os.close(write_end)
