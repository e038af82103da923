"""The pack appender: O_DIRECT writes from a buffer, exact file contents, faults."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.faults import small_filesystem
from tests.helpers.roundtrip import random_bytes
from twinvault.repository.chunkstore import appender
from twinvault.repository.chunkstore.appender import BLOCK, FLUSH_BYTES, PackAppender


@pytest.fixture
def fs() -> Iterator[Path]:
    with small_filesystem(64) as mnt:
        yield Path(mnt)


@contextlib.contextmanager
def appending(path: Path) -> Iterator[PackAppender]:
    """An appender on a new file at ``path``, released (buffer and descriptor) after."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    out = PackAppender(fd)
    try:
        yield out
    finally:
        out.close()
        os.close(fd)


def file_bytes(path: Path, out: PackAppender) -> bytes:
    """The appended bytes in the file; past them, an open pack holds only padding."""
    data = path.read_bytes()
    assert not data[out.size :].strip(b"\0")
    assert len(data) - out.size < BLOCK
    return data[: out.size]


def test_appends_reach_the_file_exactly_at_flush_and_in_whole_blocks_before(fs: Path) -> None:
    path = fs / "pack"
    with appending(path) as out:
        assert out.direct  # ext4 takes O_DIRECT
        expected = bytearray()
        # Odd sizes: the buffer's partial block moves to its front after each write.
        for i in range(300):
            part = random_bytes(1 + (i * 7919) % 20_000, i)
            out.append([part[:5], part[5:]])
            expected += part
            if i == 150:
                out.flush()  # a reader in the middle: the partial block is rewritten later
                assert file_bytes(path, out) == expected
        assert out.size == len(expected)
        # Unflushed: the file holds a prefix of what was appended, in whole blocks.
        on_disk = path.read_bytes()
        assert len(on_disk) % BLOCK == 0
        assert expected.startswith(on_disk[: out.readable])
        assert out.readable >= len(expected) - FLUSH_BYTES
        out.sync()
        assert out.readable == len(expected)
        assert file_bytes(path, out) == expected
        out.append([b"trailer"])
        out.finish()
        assert path.read_bytes() == expected + b"trailer"  # cut to its end, no padding


def test_an_append_larger_than_the_buffer_grows_it(fs: Path) -> None:
    path = fs / "pack"
    with appending(path) as out:
        head, big = b"header", random_bytes(3 * FLUSH_BYTES + 123, 1)
        out.append([head])
        out.append([big])
        out.flush()
        assert file_bytes(path, out) == head + big


def test_a_filesystem_without_o_direct_is_written_through_the_cache(
    fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulated: tmpfs takes O_DIRECT on this kernel, so the refusal is forced here.
    monkeypatch.setattr(appender, "_set_direct", lambda fd: False)
    path = fs / "pack"
    with appending(path) as out:
        assert not out.direct
        parts = [random_bytes(10_000 + i, i) for i in range(50)]
        for part in parts:
            out.append([part])
        assert out.readable == out.size  # every append is in the file at once
        out.sync()
        assert file_bytes(path, out) == b"".join(parts)


def test_disk_full_loses_nothing_appended_and_the_write_is_made_again(fs: Path) -> None:
    path = fs / "pack"
    filler = fs / "filler"
    with appending(path) as out:
        appended = bytearray()
        with open(filler, "wb") as f:  # leave the pack about 1 MiB
            free = os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize
            f.write(b"\0" * (free - FLUSH_BYTES))
        failed = None
        for i in range(200):
            part = random_bytes(50_000, i)
            try:
                out.append([part])
            except OSError as exc:
                failed = exc
                break
            appended += part
        assert failed is not None and failed.errno == errno.ENOSPC
        assert out.size == len(appended)  # the refused append is not counted
        with pytest.raises(OSError):
            out.sync()
        filler.unlink()
        out.sync()  # space again: the same blocks are written again, padding cut
        assert file_bytes(path, out) == appended
