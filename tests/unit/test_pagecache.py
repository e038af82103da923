"""Streams leave the page cache as they found it: write-behind/drop-behind for writers,
drop of what a read brought in (and only that) for readers, the reader's back-pressure
inside a large file, and the heap settings that keep freed buffers for reuse.

"Cached" is asked of the kernel itself (cachestat(2): no I/O, so asking changes nothing).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.roundtrip import Protection, random_bytes, write
from twinvault import memory, pagecache
from twinvault.repository.chunkstore.writer import OpenPack
from twinvault.source import chunker
from twinvault.source.reader import _read_small

MiB = 1 << 20


def cached(fd: int, offset: int) -> bool:
    pages = pagecache.cached_pages(fd, offset, 1)
    if pages is None:
        pytest.skip("no cachestat(2) in this kernel")
    return pages > 0


def make_cold(path: str, data: bytes) -> None:
    write(path, data)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if cached(fd, 0):
            pytest.skip("this filesystem keeps pages a DONTNEED asked to drop")
    finally:
        os.close(fd)


def test_a_file_written_with_drop_behind_leaves_the_cache_but_keeps_every_byte(tmp_path: Path) -> None:
    path = tmp_path / "stream"
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


def test_a_pack_drops_what_it_wrote_back(tmp_path: Path) -> None:
    from twinvault.repository.chunkstore.layout import StateDir

    state = StateDir(tmp_path / "state")
    state.make()
    pack = OpenPack(state, b"u" * 16)
    try:
        for i in range(12):
            pack.append(bytes([i]) * 32, bytes([i]) * 32, MiB, 0, random_bytes(MiB, i))
        assert not cached(pack.fd, 4096)
        assert cached(pack.fd, pack.size - 1)
    finally:
        os.close(pack.fd)


def test_a_read_of_a_cold_file_gives_its_pages_back(tmp_path: Path) -> None:
    path = str(tmp_path / "cold")
    make_cold(path, random_bytes(40_000, 1))
    got = _read_small(path)
    assert got is not None and got[1] == random_bytes(40_000, 1)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert not cached(fd, 0)
    finally:
        os.close(fd)


def test_a_read_of_a_file_already_cached_leaves_it_cached(tmp_path: Path) -> None:
    path = str(tmp_path / "hot")
    write(path, random_bytes(40_000, 2))  # just written: in the cache, someone's working set
    assert _read_small(path) is not None
    fd = os.open(path, os.O_RDONLY)
    try:
        assert cached(fd, 0)
        assert pagecache.first_page_cached(fd)
    finally:
        os.close(fd)


def test_a_large_cold_file_is_dropped_behind_as_it_is_chunked(tmp_path: Path) -> None:
    path = str(tmp_path / "big")
    data = random_bytes(20 * MiB, 3)
    make_cold(path, data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert not pagecache.first_page_cached(fd)
        pieces = chunker.iter_pieces(fd, len(data), drop_behind=True)
        joined = b"".join(bytes(p) for d, p in pieces if d is not None)
        assert joined == data
        assert not cached(fd, 0) and not cached(fd, 10 * MiB)
        digests, read = chunker.file_digests(path)  # cold again: dropped again
        assert read == len(data) and len(digests) % 32 == 0
        assert not cached(fd, 0)
    finally:
        os.close(fd)


def test_the_reader_waits_for_room_between_the_frames_of_a_large_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write(str(src / "big"), random_bytes(18 * MiB, 4))
    job = Protection(tmp_path / "job", [str(src)])
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


def protected_files(tmp_path: Path, count: int, size: int, *, hold: bool) -> tuple[Path, Protection]:
    """``count`` files of ``size`` random bytes, mirrored by an in-process job whose
    applier holds written files for a commit (as a receiver's session sets it) or not."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(count):
        write(str(src / f"f{i}"), random_bytes(size, i))
    job = Protection(tmp_path / "job", [str(src)])
    job.applier.hold_written = hold
    job.mirror()
    return src, job


def test_image_files_leave_the_cache_after_the_commit_that_made_them_durable(tmp_path: Path) -> None:
    src, job = protected_files(tmp_path, 40, 30_000, hold=True)
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


def test_an_applier_nobody_commits_closes_each_file_at_once(tmp_path: Path) -> None:
    _, job = protected_files(tmp_path, 10, 1000, hold=False)
    try:
        assert job.applier.take_written() == []
    finally:
        job.close()


def test_without_commits_written_files_are_closed_past_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from twinvault.repository import applier

    monkeypatch.setattr(applier, "WRITTEN_KEPT", 8)
    src, job = protected_files(tmp_path, 30, 1000, hold=True)
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


def test_freed_buffers_are_kept_for_reuse() -> None:
    assert memory.keep_freed_memory() is True
