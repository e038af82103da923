"""The one clock for schedules: wall time that a test (or an operator rehearsing a
schedule) can start at a chosen instant.

``Clock.now()`` is epoch seconds; ``Clock.local()`` the same instant as a local
``datetime``, what day-of-week and time-of-day schedules are written in. A daemon
started with ``TWINVAULT_CLOCK_START=2026-11-23T07:59:58`` (ISO 8601, local unless an
offset is given) runs its schedules from that instant on, at the real pace, so a test
sees a schedule boundary within seconds instead of waiting for Monday 08:00. Timers still
sleep in real seconds: the clock is offset, never sped up.
"""

from __future__ import annotations

import os
import time
from datetime import datetime

CLOCK_START_ENV = "TWINVAULT_CLOCK_START"


class Clock:
    def __init__(self, offset_s: float = 0.0) -> None:
        self.offset_s = offset_s

    def now(self) -> float:
        return time.time() + self.offset_s

    def local(self) -> datetime:
        return datetime.fromtimestamp(self.now()).astimezone()

    @staticmethod
    def starting_at(start: datetime) -> Clock:
        """A clock that reads ``start`` now and runs on from there."""
        return Clock(start.timestamp() - time.time())


def clock_from_environment() -> Clock:
    """The daemon's clock: the system's, or one started at ``$TWINVAULT_CLOCK_START``."""
    start = os.environ.get(CLOCK_START_ENV)
    if not start:
        return Clock()
    return Clock.starting_at(datetime.fromisoformat(start))
