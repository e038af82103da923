"""Streams leave the page cache as they found it: write-behind/drop-behind for writers,
drop of what a read brought in (and only that) for readers, the reader's back-pressure
inside a large file, and the heap settings that keep freed buffers for reuse.

"Cached" is asked of the kernel itself (cachestat(2): no I/O, so asking changes nothing),
on a loop-mounted ext4 of the test's own: the temp dir may be on an overlayfs, whose files
have no page cache cachestat can see.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.faults import small_filesystem
from tests.helpers.roundtrip import Protection, random_bytes, write
from twinvault import memory, pagecache
from twinvault.repository.chunkstore.writer import OpenPack
from twinvault.source import chunker
from twinvault.source.reader import _read_small

MiB = 1 << 20


@pytest.fixture
def fs() -> Iterator[Path]:
    with small_filesystem(256) as mnt:
        yield Path(mnt)


def cached(fd: int, offset: int) -> bool:
    pages = pagecache.cached_pages(fd, offset, 1)
    if pages is None:
        pytest.skip("no cachestat(2) in this kernel (Linux before 6.5): the cache cannot be asked")
    return pages > 0


def make_cold(path: str, data: bytes) -> None:
    write(path, data)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert not cached(fd, 0)  # ext4 drops clean pages when asked
    finally:
        os.close(fd)


def test_a_file_written_with_drop_behind_leaves_the_cache_but_keeps_every_byte(fs: Path) -> None:
    path = fs / "stream"
    data = random_bytes(24 * MiB, 7)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        behind = pagecache.DropBehind(fd, step=4 * MiB)
        for offset in range(0, len(data), MiB):
            os.pwrite(fd, data[offset : offset + MiB], offset)
            behind.advance(offset + MiB)
        assert not cached(fd, 0) and not cached(fd, 12 * MiB)
        assert cached(fd, len(data) - 1)  # the last steps are still being written back
        assert os.pread(fd, len(data), 0) == data
    finally:
        os.close(fd)


def test_a_pack_is_written_around_the_page_cache(fs: Path) -> None:
    from twinvault.repository.chunkstore.layout import StateDir

    state = StateDir(fs / "state")
    state.make()
    pack = OpenPack(state, b"u" * 16)
    try:
        blobs = [random_bytes(MiB + 7 * i, i) for i in range(12)]
        for i, blob in enumerate(blobs):
            pack.append(bytes([i]) * 32, bytes([i]) * 32, len(blob), 0, blob)
        pack.flush()
        assert not cached(pack.fd, 4096) and not cached(pack.fd, pack.size - 1)
        data = pack.path.read_bytes()  # (the pack's own descriptor reads in whole blocks only)
        for entry, blob in zip(pack.entries, blobs, strict=True):
            assert data[entry.end - len(blob) : entry.end] == blob
    finally:
        pack.close()


def test_a_read_of_a_cold_file_gives_its_pages_back(fs: Path) -> None:
    path = str(fs / "cold")
    make_cold(path, random_bytes(40_000, 1))
    got = _read_small(path)
    assert got is not None and got[1] == random_bytes(40_000, 1)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert not cached(fd, 0)
    finally:
        os.close(fd)


def test_a_read_of_a_file_already_cached_leaves_it_cached(fs: Path) -> None:
    path = str(fs / "hot")
    write(path, random_bytes(40_000, 2))  # just written: in the cache, someone's working set
    assert _read_small(path) is not None
    fd = os.open(path, os.O_RDONLY)
    try:
        assert cached(fd, 0)
        assert pagecache.first_page_cached(fd, os.fstat(fd).st_dev)
    finally:
        os.close(fd)


def test_a_large_cold_file_is_dropped_behind_as_it_is_chunked(fs: Path) -> None:
    path = str(fs / "big")
    data = random_bytes(20 * MiB, 3)
    make_cold(path, data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert not pagecache.first_page_cached(fd, os.fstat(fd).st_dev)
        pieces = chunker.iter_pieces(fd, len(data), drop_behind=True)
        joined = b"".join(bytes(p) for d, p in pieces if d is not None)
        assert joined == data
        assert not cached(fd, 0) and not cached(fd, 10 * MiB)
        digests, read = chunker.file_digests(path)  # cold again: dropped again
        assert read == len(data) and len(digests) % 32 == 0
        assert not cached(fd, 0)
    finally:
        os.close(fd)


def test_the_reader_waits_for_room_between_the_frames_of_a_large_file(fs: Path) -> None:
    src = fs / "src"
    src.mkdir()
    write(str(src / "big"), random_bytes(18 * MiB, 4))
    job = Protection(fs / "job", [str(src)])
    try:
        waits: list[int] = []
        job.reader.wait_for_room = lambda: waits.append(job.queue.memory_bytes)
        job.mirror()
        # FRAME_PAYLOAD is 4 MiB: at least four full frames, a wait after each.
        assert len(waits) >= 4
        assert job.image_path(str(src / "big"))
        with open(job.image_path(str(src / "big")), "rb") as f:
            assert f.read() == random_bytes(18 * MiB, 4)
    finally:
        job.close()


def protected_files(fs: Path, count: int, size: int, *, hold: bool) -> tuple[Path, Protection]:
    """``count`` files of ``size`` random bytes, mirrored by an in-process job whose
    applier holds written files for a commit (as a receiver's session sets it) or not."""
    src = fs / "src"
    src.mkdir()
    for i in range(count):
        write(str(src / f"f{i}"), random_bytes(size, i))
    job = Protection(fs / "job", [str(src)])
    job.applier.hold_written = hold
    job.mirror()
    return src, job


def test_image_files_leave_the_cache_after_the_commit_that_made_them_durable(fs: Path) -> None:
    src, job = protected_files(fs, 40, 30_000, hold=True)
    try:
        written = job.applier.take_written()
        assert len(written) == 40 and job.applier.take_written() == []
        os.sync()  # the group commit's syncfs
        pagecache.release_written(written)
        for i in range(40):
            fd = os.open(job.image_path(str(src / f"f{i}")), os.O_RDONLY)
            try:
                assert not cached(fd, 0)
                assert os.pread(fd, 30_000, 0) == random_bytes(30_000, i)
            finally:
                os.close(fd)
    finally:
        job.close()


def test_an_applier_nobody_commits_closes_each_file_at_once(fs: Path) -> None:
    _, job = protected_files(fs, 10, 1000, hold=False)
    try:
        assert job.applier.take_written() == []
    finally:
        job.close()


def test_without_commits_written_files_are_closed_past_the_bound(
    fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from twinvault.repository import applier

    monkeypatch.setattr(applier, "WRITTEN_KEPT", 8)
    src, job = protected_files(fs, 30, 1000, hold=True)
    try:
        image = os.fsdecode(job.image_path(str(src)))
        inodes = {os.stat(os.path.join(image, f"f{i}")).st_ino for i in range(30)}
        assert len([fd for fd in _open_fds() if _inode(fd) in inodes]) == 8
        held = job.applier.take_written()
        assert len(held) == 8
        pagecache.release_written(held)
    finally:
        job.close()


def _open_fds() -> list[int]:
    return [int(fd) for fd in os.listdir("/proc/self/fd")]


def _inode(fd: int) -> int:
    try:
        return os.fstat(fd).st_ino
    except OSError:
        return -1


def test_a_stacked_filesystem_answers_unknown_and_nothing_is_dropped(
    fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = fs / "f"
    write(str(path), b"x" * 10_000)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert cached(fd, 0)  # just written, and ext4 shows it
        dev = os.fstat(fd).st_dev
        monkeypatch.setitem(pagecache._stacked_devices, dev, True)  # as overlayfs answers
        assert pagecache.cached_pages(fd, 0, 1) is None
        monkeypatch.setattr(os, "preadv", _no_nowait)
        assert pagecache.first_page_cached(fd, dev)  # unknown counts as cached: kept
    finally:
        os.close(fd)


def _no_nowait(*args: object) -> int:
    raise OSError(95, "Operation not supported")


def test_freed_buffers_are_kept_for_reuse() -> None:
    assert memory.keep_freed_memory() is True
