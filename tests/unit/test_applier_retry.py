"""The repository retries a write that failed, says so with the seed's events, and gives up only at its limit.

The image lives on a real 16 MiB ext4 (`tests.helpers.faults.small_filesystem`) that the
tests fill up or remount read-only; the ops come from the real reader through the
in-process data path of `test_stream_roundtrip`, and the events go through a real
`EventLog`, so the messages checked are the ones a user reads.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.faults import fill_filesystem, small_filesystem
from tests.helpers.roundtrip import Protection, random_bytes, write
from tests.helpers.tree import assert_trees_equal
from twinvault.ops import events as ev
from twinvault.ops.errors import TARGET_DISK_FULL
from twinvault.ops.event_log import Event, EventLog
from twinvault.repository.applier import Stopped

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts need root"),
    pytest.mark.timeout(60),
]


@pytest.fixture
def image_fs() -> Iterator[str]:
    with small_filesystem(16) as mnt:
        yield mnt


@pytest.fixture
def events(tmp_path: Path) -> Iterator[tuple[EventLog, list[Event]]]:
    log = EventLog(tmp_path / "events")
    seen: list[Event] = []
    log.subscribe(seen.append)
    yield log, seen
    log.close()


@pytest.fixture
def src(tmp_path: Path) -> str:
    root = tmp_path / "source"
    root.mkdir()
    write(str(root / "kept.txt"), b"already in the image\n")
    return str(root)


def protection(
    tmp_path: Path,
    src: str,
    image_fs: str,
    log: EventLog,
    retry_limit: int,
    delays: tuple[float, ...] = (0.1,),
) -> Protection:
    return Protection(
        tmp_path / "job",
        [src],
        image_root=Path(image_fs) / "image",
        emit=log.emit,
        retry_limit=retry_limit,
        retry_delays=delays,
    )


def later(seconds: float, action: object, *args: object) -> threading.Timer:
    timer = threading.Timer(seconds, action, args)  # type: ignore[arg-type]
    timer.start()
    return timer


def test_a_write_to_a_full_disk_waits_for_space_and_then_completes(
    tmp_path: Path, src: str, image_fs: str, events: tuple[EventLog, list[Event]]
) -> None:
    log, seen = events
    job = protection(tmp_path, src, image_fs, log, retry_limit=-1)
    try:
        job.mirror()
        path = os.path.join(src, "new.bin")
        write(path, random_bytes(300_000, 1))
        filler = fill_filesystem(image_fs)
        timer = later(1.0, os.unlink, filler)
        started = time.monotonic()
        result = job.replicate(path, src)
        timer.join()

        assert time.monotonic() - started >= 0.9, "the write cannot have succeeded on a full disk"
        assert result.statuses() == {"ok"}
        assert [e.id for e in seen] == [ev.TARGET_DISK_FULL, ev.TARGET_WRITE_RETRIED_OK]
        assert seen[0].fields["path"] == path
        retries = seen[1].fields["retries"]
        assert isinstance(retries, int) and retries >= 2
        assert (
            seen[1].message == f"Target write to {path} was completed successfully after {retries} retries."
        )
        assert_trees_equal(src, job.image_path(src))
        assert job.temporaries() == []
    finally:
        job.close()


def test_a_write_to_a_read_only_image_waits_until_it_is_writable(
    tmp_path: Path, src: str, image_fs: str, events: tuple[EventLog, list[Event]]
) -> None:
    log, seen = events
    job = protection(tmp_path, src, image_fs, log, retry_limit=-1)
    try:
        job.mirror()
        os.mkdir(os.path.join(src, "made-while-read-only"))
        write(os.path.join(src, "made-while-read-only", "f.txt"), b"hello")
        subprocess.run(["mount", "-o", "remount,ro", image_fs], check=True)
        timer = later(1.0, subprocess.run, ["mount", "-o", "remount,rw", image_fs])
        result = job.replicate(
            os.path.join(src, "made-while-read-only"), os.path.join(src, "made-while-read-only", "f.txt"), src
        )
        timer.join()

        assert result.statuses() == {"ok"}
        assert [e.id for e in seen] == [ev.TARGET_ACCESS_DENIED, ev.TARGET_WRITE_RETRIED_OK]
        assert "completed successfully after" in seen[1].message
        assert_trees_equal(src, job.image_path(src))
    finally:
        job.close()


def test_at_the_retry_limit_the_write_is_discarded_and_the_old_version_stays(
    tmp_path: Path, src: str, image_fs: str, events: tuple[EventLog, list[Event]]
) -> None:
    log, seen = events
    job = protection(tmp_path, src, image_fs, log, retry_limit=1)
    try:
        big, small = os.path.join(src, "big.bin"), os.path.join(src, "small.txt")
        old_big, old_small = random_bytes(200_000, 2), b"old small version\n"
        write(big, old_big)
        write(small, old_small)
        job.mirror()

        filler = fill_filesystem(image_fs)
        write(big, random_bytes(200_000, 3))
        write(small, b"new small version\n" * 100)
        result = job.replicate(big, small)

        assert [(o.status, o.code) for o in result.outcomes] == [
            ("failed", TARGET_DISK_FULL),  # big.bin: its data frame, after the retry limit
            ("failed", -1),  # big.bin: its end frame, dropped with the rest of the file
            ("failed", TARGET_DISK_FULL),  # small.txt: one frame
        ]
        assert [o.path for o in result.outcomes] == [os.fsencode(big)] * 2 + [os.fsencode(small)]
        ids = [e.id for e in seen]
        assert ids == [ev.TARGET_DISK_FULL, ev.TARGET_WRITE_DISCARDED] * 2
        assert seen[1].message.startswith(f"Target write {big} failed after 1 retries and will be discarded.")
        with open(job.image_path(big), "rb") as f:
            assert f.read() == old_big, "a discarded write must leave the previous version whole"
        with open(job.image_path(small), "rb") as f:
            assert f.read() == old_small
        assert job.temporaries() == []

        os.unlink(filler)  # the user freed space: the next changes go through again
        seen.clear()
        write(big, random_bytes(200_000, 4))
        # (the directory too: a discarded temporary moved the image directory's mtime)
        again = job.replicate_answering_needs(big, small, src)
        assert again.statuses() == {"ok"}
        assert seen == []
        assert_trees_equal(src, job.image_path(src))
    finally:
        job.close()


def test_stop_ends_a_retry_wait_at_once(
    tmp_path: Path, src: str, image_fs: str, events: tuple[EventLog, list[Event]]
) -> None:
    log, seen = events
    job = protection(
        tmp_path, src, image_fs, log, retry_limit=-1, delays=(60.0,)
    )  # no test could sit through it
    try:
        job.mirror()
        filler = fill_filesystem(image_fs)
        path = os.path.join(src, "new.bin")
        write(path, random_bytes(100_000, 4))
        later(0.3, job.applier.stop)
        started = time.monotonic()
        # Stopping (link replaced, daemon shutting down) abandons the op without
        # discarding it: nothing was acknowledged, so the source sends it again.
        with pytest.raises(Stopped):
            job.replicate(path)
        assert time.monotonic() - started < 10
        assert [e.id for e in seen] == [ev.TARGET_DISK_FULL]
        os.unlink(filler)
    finally:
        job.close()


def test_a_metadata_change_after_a_discarded_write_does_not_hide_the_old_content(
    tmp_path: Path, src: str, image_fs: str, events: tuple[EventLog, list[Event]]
) -> None:
    log, _ = events
    job = protection(tmp_path, src, image_fs, log, retry_limit=0)
    try:
        path = os.path.join(src, "data.bin")
        write(path, random_bytes(200_000, 5))
        job.mirror()
        filler = fill_filesystem(image_fs)
        write(path, random_bytes(200_000, 6))  # same size, new bytes
        assert "failed" in job.replicate(path).statuses()
        os.unlink(filler)

        os.chmod(path, 0o600)
        job.replicate_answering_needs(path, src)
        assert_trees_equal(src, job.image_path(src))
    finally:
        job.close()
