"""The journal keeps every committed record, in order, across restarts and torn tails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from twinvault.repository import journal as journal_mod
from twinvault.repository.journal import Journal, split_position


def _records(j: Journal, after: int = 0) -> list[list[object]]:
    return [e.record for e in j.entries_after(after)]


def test_committed_records_survive_a_reopen_in_order(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    for i in range(100):
        j.append(["put", i + 1, "img", b"/f%d" % i])
    end = j.commit()
    j.close()
    again = Journal(tmp_path)
    assert _records(again) == [["put", i + 1, "img", b"/f%d" % i] for i in range(100)]
    assert again.end() == end
    assert again.last_time == 100


def test_uncommitted_records_are_not_on_disk(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.append(["put", 1, "img", b"/a"])
    j.commit()
    j.append(["put", 2, "img", b"/b"])  # never committed: a crash now loses only this
    again = Journal(tmp_path)
    assert _records(again) == [["put", 1, "img", b"/a"]]


def test_a_torn_tail_is_cut_at_open_and_appends_continue_after_it(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.append(["put", 1, "img", b"/a"])
    j.append(["put", 2, "img", b"/b"])
    j.commit()
    segment = tmp_path / f"{j.segments()[-1]:016x}.tvj"
    whole = segment.stat().st_size
    os.truncate(segment, whole - 3)  # the second record lost its last bytes
    again = Journal(tmp_path)
    assert again.repaired_bytes > 0
    assert _records(again) == [["put", 1, "img", b"/a"]]
    again.append(["put", 3, "img", b"/c"])
    again.commit()
    assert _records(Journal(tmp_path)) == [["put", 1, "img", b"/a"], ["put", 3, "img", b"/c"]]


def test_a_corrupted_record_ends_the_readable_journal_at_that_record(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    for i in range(3):
        j.append(["put", i + 1, "img", b"/x"])
    j.commit()
    segment = tmp_path / f"{j.segments()[-1]:016x}.tvj"
    data = bytearray(segment.read_bytes())
    data[-2] ^= 0xFF  # flip a byte of the last record's body: its CRC fails
    segment.write_bytes(bytes(data))
    assert len(_records(Journal(tmp_path))) == 2


def test_entries_after_a_position_resume_exactly_there(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.append(["put", 1, "img", b"/a"])
    middle = j.commit()
    j.append(["put", 2, "img", b"/b"])
    j.commit()
    assert _records(j, middle) == [["put", 2, "img", b"/b"]]
    entries = list(j.entries_after(0))
    assert entries[0].position == middle


def test_segments_rotate_and_sealed_ones_are_copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_mod, "SEGMENT_MAX", 4096)
    saved: dict[str, bytes] = {}
    j = Journal(tmp_path / "j", save_sealed=saved.__setitem__)
    for i in range(200):
        j.append(["put", i + 1, "img", b"/file-%05d" % i, b"x" * 50])
        j.commit()
    assert len(j.segments()) > 3
    assert set(saved) == {f"journal/{s:016x}" for s in j.segments()[:-1]}
    assert [r[1] for r in _records(j)] == list(range(1, 201))
    segment, _ = split_position(j.end())
    assert segment == j.segments()[-1]
    j.close()
    reopened = Journal(tmp_path / "j")
    assert reopened.last_time == 200
