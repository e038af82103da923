"""The source's op queue keeps frames in order through memory and disk, and keeps what it must.

Every test drives a real `OpQueue` over a real folder (the disk segments are real files);
the limits are shrunk so that a handful of small frames crosses from memory to disk and back.
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from twinvault.protocol.frames import decode_body, encode_frame
from twinvault.source.opstream import OpStream
from twinvault.source.queue import OpQueue, QueuedFrame, QueueExhausted, QueueLimits

FRAME_BYTES = 100  # every frame `frame()` makes has exactly this many bytes


def frame(seq: int, *, replication: bool = True, payload: int = 0) -> QueuedFrame:
    """A queued frame of exactly FRAME_BYTES bytes carrying `seq`."""
    pad = FRAME_BYTES - len(encode_frame(["mark", seq, b""]))
    data = encode_frame(["mark", seq, b"." * pad])
    assert len(data) == FRAME_BYTES
    return QueuedFrame(seq, data, replication, payload)


def drain(queue: OpQueue) -> list[int]:
    """Take every frame the queue offers now; return their sequence numbers in order."""
    seqs = []
    while (item := queue.take()) is not None:
        assert decode_body(item.frame[4:])[1] == item.seq, "frame and record disagree on seq"
        seqs.append(item.seq)
    return seqs


def segment_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("segment-*.q"))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "queue"


def test_frames_leave_in_order_from_memory_then_disk_then_memory_again(folder: Path) -> None:
    queue = OpQueue(folder, QueueLimits(memory_max_bytes=3 * FRAME_BYTES, min_free_bytes=0))
    for seq in range(1, 4):
        queue.append(frame(seq))
    assert queue.memory_bytes == 3 * FRAME_BYTES and queue.disk_bytes == 0
    for seq in range(4, 7):
        queue.append(frame(seq))  # memory is full: these spill to a disk segment
    assert queue.disk_bytes > 0 and segment_files(folder)

    assert queue.take().seq == 1  # type: ignore[union-attr]
    # Memory has room again, but older frames wait on disk: a new one must queue behind them.
    queue.append(frame(7))
    assert queue.memory_bytes == 2 * FRAME_BYTES
    assert drain(queue) == [2, 3, 4, 5, 6, 7]
    assert queue.empty() and queue.disk_bytes == 0
    assert segment_files(folder) == [], "a drained segment must be removed"

    # Once every spilled frame has left the disk, new frames live in memory again.
    queue.append(frame(8))
    assert queue.memory_bytes == FRAME_BYTES and queue.disk_bytes == 0
    assert drain(queue) == [8]


def test_a_frame_larger_than_memory_goes_to_disk_and_keeps_its_place(folder: Path) -> None:
    queue = OpQueue(folder, QueueLimits(memory_max_bytes=FRAME_BYTES // 2, min_free_bytes=0))
    for seq in (1, 2, 3):
        queue.append(frame(seq))
    assert queue.memory_bytes == 0
    assert drain(queue) == [1, 2, 3]


def test_replication_frames_stay_inflight_until_acknowledged(folder: Path) -> None:
    queue = OpQueue(folder, QueueLimits(memory_max_bytes=10 * FRAME_BYTES, min_free_bytes=0))
    for seq in range(1, 6):
        queue.append(frame(seq))
    assert drain(queue) == [1, 2, 3, 4, 5]
    assert [f.seq for f in queue.inflight] == [1, 2, 3, 4, 5]
    assert queue.inflight_bytes == 5 * FRAME_BYTES

    queue.acknowledge(3)  # every op <= 3 is applied and durable
    assert [f.seq for f in queue.inflight] == [4, 5]
    assert queue.inflight_bytes == 2 * FRAME_BYTES
    queue.acknowledge(2)  # an older ack changes nothing
    assert [f.seq for f in queue.inflight] == [4, 5]


def test_rewind_puts_unacknowledged_frames_back_in_front_in_order(folder: Path) -> None:
    queue = OpQueue(folder, QueueLimits(memory_max_bytes=4 * FRAME_BYTES, min_free_bytes=0))
    for seq in range(1, 9):  # 1-4 in memory, 5-8 on disk
        queue.append(frame(seq))
    for expected in (1, 2, 3, 4, 5):
        assert queue.take().seq == expected  # type: ignore[union-attr]
    queue.acknowledge(2)

    queue.rewind()  # the link broke: 3, 4, 5 were sent but never acknowledged
    assert not queue.inflight and queue.inflight_bytes == 0
    assert drain(queue) == [3, 4, 5, 6, 7, 8]
    assert [f.seq for f in queue.inflight] == [3, 4, 5, 6, 7, 8]


def test_mirror_frames_are_not_kept_after_take(folder: Path) -> None:
    queue = OpQueue(folder, QueueLimits(memory_max_bytes=2 * FRAME_BYTES, min_free_bytes=0))
    queue.append(frame(1, replication=False))
    queue.append(frame(2, replication=True))
    queue.append(frame(3, replication=False))  # on disk: the flag must survive the segment
    queue.append(frame(4, replication=True))
    assert drain(queue) == [1, 2, 3, 4]
    assert [f.seq for f in queue.inflight] == [2, 4]

    queue.rewind()
    assert drain(queue) == [2, 4], "only replication frames are resent after a reconnect"


def test_a_full_disk_queue_is_exhausted_until_cleared(folder: Path) -> None:
    record = FRAME_BYTES + 21  # frame plus the segment record header
    limits = QueueLimits(memory_max_bytes=2 * FRAME_BYTES, disk_max_bytes=3 * record, min_free_bytes=0)
    queue = OpQueue(folder, limits)
    for seq in range(1, 6):  # 2 in memory, 3 on disk: exactly full
        queue.append(frame(seq))
    assert queue.disk_bytes == 3 * record

    with pytest.raises(QueueExhausted):
        queue.append(frame(6))
    assert queue.exhausted
    with pytest.raises(QueueExhausted):
        queue.append(frame(7, replication=False))  # exhausted stays exhausted until cleared

    queue.clear()  # the auto-disconnect: a difference mirror replaces everything queued
    assert not queue.exhausted and queue.empty()
    assert queue.memory_bytes == queue.disk_bytes == queue.inflight_bytes == 0
    assert segment_files(folder) == []
    for seq in range(8, 13):
        queue.append(frame(seq))
    assert drain(queue) == [8, 9, 10, 11, 12]


def test_the_disk_queue_refuses_to_eat_the_minimum_free_space(folder: Path) -> None:
    # No filesystem here has an exabyte free: the first frame that would go to disk fails.
    queue = OpQueue(folder, QueueLimits(memory_max_bytes=FRAME_BYTES, min_free_bytes=1 << 60))
    queue.append(frame(1))  # memory still takes it
    with pytest.raises(QueueExhausted):
        queue.append(frame(2))
    assert queue.disk_bytes == 0
    assert drain(queue) == [1], "what was queued before exhaustion can still be sent"


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_the_disk_queue_stops_at_min_free_on_a_small_filesystem(tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "fs", "1m") as mnt:
        min_free = 256 * 1024
        queue = OpQueue(mnt / "queue", QueueLimits(memory_max_bytes=0, min_free_bytes=min_free))
        big = 64 * 1024
        accepted = []
        with pytest.raises(QueueExhausted):
            for seq in range(1, 100):
                data = encode_frame(["mark", seq, os.urandom(big)])
                queue.append(QueuedFrame(seq, data, True, big))
                accepted.append(seq)
        st = os.statvfs(mnt)
        assert st.f_bavail * st.f_frsize >= min_free - 4096, "the queue ate into the minimum free space"
        # 1 MiB minus 256 KiB leaves room for about eleven 64 KiB frames, not for none.
        assert 8 <= len(accepted) <= 12
        assert drain(queue) == accepted
        queue.clear()


def test_payload_and_byte_counters_follow_frames_through_memory_disk_and_rewind(folder: Path) -> None:
    queue = OpQueue(folder, QueueLimits(memory_max_bytes=2 * FRAME_BYTES, min_free_bytes=0))
    queue.append(frame(1, replication=True, payload=1000))
    queue.append(frame(2, replication=False, payload=2000))
    queue.append(frame(3, replication=True, payload=3000))  # on disk
    queue.append(frame(4, replication=False, payload=4000))  # on disk
    assert queue.replication_bytes_queued == 2 * FRAME_BYTES
    assert queue.mirror_bytes_queued == 2 * FRAME_BYTES

    taken = [queue.take() for _ in range(4)]
    assert [(f.seq, f.replication, f.payload) for f in taken] == [  # type: ignore[union-attr]
        (1, True, 1000),
        (2, False, 2000),
        (3, True, 3000),
        (4, False, 4000),
    ]
    assert queue.replication_bytes_queued == queue.mirror_bytes_queued == 0

    queue.rewind()
    assert queue.replication_bytes_queued == 2 * FRAME_BYTES
    assert queue.mirror_bytes_queued == 0
    assert [(f.seq, f.payload) for f in (queue.take(), queue.take())] == [(1, 1000), (3, 3000)]  # type: ignore[union-attr]

    queue.append(frame(5, replication=False, payload=5))
    queue.clear()
    assert queue.replication_bytes_queued == queue.mirror_bytes_queued == 0


def test_the_op_stream_numbers_frames_and_counts_payload_by_kind(folder: Path) -> None:
    queue = OpQueue(folder, QueueLimits(memory_max_bytes=1 << 20, min_free_bytes=0))
    stream = OpStream(queue, epoch=7, next_seq=41)
    assert stream.emit("meta", [b"/a", []], replication=True, payload=10) == 41
    assert stream.emit("meta", [b"/b", []], replication=False, payload=20) == 42
    assert stream.emit_mark("mirror-done") == 43
    assert stream.last_seq == 43
    assert stream.counters.replication_bytes == 10
    assert stream.counters.mirror_bytes == 20
    assert stream.counters.ops == 3
    messages = []
    while (item := queue.take()) is not None:
        messages.append((item.seq, item.payload, decode_body(item.frame[4:])))
    assert messages == [
        (41, 10, ["meta", 41, b"/a", []]),
        (42, 20, ["meta", 42, b"/b", []]),
        (43, 0, ["mark", 43, "mirror-done"]),
    ]


def test_stale_segments_of_a_previous_run_are_removed(folder: Path) -> None:
    folder.mkdir()
    (folder / "segment-00000001.q").write_bytes(b"left by a crash")
    queue = OpQueue(folder, QueueLimits())
    assert segment_files(folder) == []
    assert queue.take() is None


def test_saved_frames_keep_their_wire_size_and_version_1_records_still_load(tmp_path: Path) -> None:
    """Queue segment v2 adds the compressed size of a frame's payload (flag 2); a saved
    queue of version 1 records (no such flag) loads, its wire size equal to its payload."""
    folder = tmp_path / "q"
    queue = OpQueue(folder, QueueLimits())
    queue.append(QueuedFrame(1, frame(1).frame, True, 5000, 1234))
    queue.append(QueuedFrame(2, frame(2).frame, True, 70))
    assert queue.save() is not None
    v1 = struct.pack("<QBQI", 3, 1, 900, FRAME_BYTES) + frame(3).frame  # as version 1 wrote it
    with open(folder / "saved.q", "ab") as f:
        f.write(v1)
    again = OpQueue(folder, QueueLimits())
    assert again.load_saved()
    got = [again.take() for _ in range(3)]
    assert [(i.seq, i.payload, i.payload_on_wire) for i in got if i] == [
        (1, 5000, 1234),
        (2, 70, 70),
        (3, 900, 900),
    ]
    assert again.take() is None and again.disk_bytes == 0
