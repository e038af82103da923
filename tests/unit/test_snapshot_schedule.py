"""Scheduled snapshots: due on the cadence, deferred (once) while the image is bad."""

from __future__ import annotations

import pytest

from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.repository.snapshots import Due, SnapshotSchedule, parse_duration
from twinvault.timefmt import iso_from_ns, ns_from_iso


def test_a_schedule_is_due_at_its_start_then_every_interval() -> None:
    s = SnapshotSchedule(every_s=60, start=1000)
    assert s.check(999, image_good=True) is Due.NOTHING
    assert s.check(1000, image_good=True) is Due.TAKE
    s.taken(1000)
    assert s.check(1059, image_good=True) is Due.NOTHING
    assert s.check(1060, image_good=True) is Due.TAKE


def test_a_due_snapshot_while_the_image_is_bad_is_deferred_once_then_taken_when_good() -> None:
    s = SnapshotSchedule(every_s=60, start=1000)
    assert s.check(1000, image_good=False) is Due.DEFER
    assert s.check(1010, image_good=False) is Due.NOTHING  # reported once, not every tick
    assert s.check(1030, image_good=True) is Due.TAKE
    s.taken(1030)
    # The cadence stays on the original grid: next one at 1060, not 1090.
    assert s.check(1059, image_good=True) is Due.NOTHING
    assert s.check(1060, image_good=True) is Due.TAKE


def test_intervals_missed_while_down_give_one_snapshot_not_a_burst() -> None:
    s = SnapshotSchedule(every_s=60, start=1000)
    assert s.check(1000 + 60 * 10 + 5, image_good=True) is Due.TAKE
    s.taken(1000 + 60 * 10 + 5)
    assert s.check(1000 + 60 * 10 + 6, image_good=True) is Due.NOTHING
    assert s.next_due == 1000 + 60 * 11


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("1h", 3600), ("2d", 172800), ("30", 30)]
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0m", "-5s", "soon", "1w"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_instants_round_trip_through_iso_8601_to_the_microsecond() -> None:
    t = 1_764_000_000_123_456_000
    assert ns_from_iso(iso_from_ns(t)) == t
    assert ns_from_iso("2026-11-24T13:05:00+00:00") == 1_795_525_500 * 1_000_000_000


def test_a_malformed_instant_is_refused_with_the_date_code() -> None:
    with pytest.raises(TwinvaultError) as caught:
        ns_from_iso("yesterday")
    assert caught.value.code == errors.INVALID_DATE
