"""Scheduled snapshots of an image (the guide's "Enable scheduled snapshots").

A schedule is an interval and a first instant ("begin immediately" = when the job is
created, or "begin at" a chosen time). It runs on the repository's clock. A snapshot
that falls due while the image is not in a good state (mirror incomplete, link down)
is deferred with event 4403 and taken as soon as the image is good again; the next one
is then due one interval after the deferred one was due, so the cadence does not drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Due(Enum):
    NOTHING = "nothing"
    TAKE = "take"
    DEFER = "defer"  # due now, image not good: emit 4403 once, keep trying


@dataclass(slots=True)
class SnapshotSchedule:
    every_s: float
    start: float  # epoch seconds of the first snapshot
    next_due: float = 0.0
    deferred: bool = False

    def __post_init__(self) -> None:
        if self.every_s <= 0:
            raise ValueError("a snapshot interval must be positive")
        if not self.next_due:
            self.next_due = self.start

    def check(self, now: float, image_good: bool) -> Due:
        """What to do at ``now``; call ``taken`` after a snapshot was taken."""
        if now < self.next_due:
            return Due.NOTHING
        if image_good:
            return Due.TAKE
        if self.deferred:
            return Due.NOTHING  # already reported; wait for a good state
        self.deferred = True
        return Due.DEFER

    def taken(self, now: float) -> None:
        self.deferred = False
        # Skip intervals missed while the daemon was down or the image was bad: one
        # snapshot for them, then back on the original cadence.
        while self.next_due <= now:
            self.next_due += self.every_s


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``1h``, ``2d`` or plain seconds -> seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    text = text.strip().lower()
    if not text:
        raise ValueError("empty duration")
    if text[-1] in units:
        value, unit = float(text[:-1]), units[text[-1]]
    else:
        value, unit = float(text), 1.0
    if value <= 0:
        raise ValueError(f"duration must be positive: {text}")
    return value * unit
