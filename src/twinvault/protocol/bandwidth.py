"""Bandwidth limits of a job: the limit in KB/s, named periods by day of week and time
of day, and the keeper that applies the one in force to the job's link.

A ``BandwidthSchedule`` is a default limit (in force outside every period) plus named
periods, e.g. ``business=mon-fri,08:00-18:00,1024`` and the default ``unlimited``. A
limit is whole KB/s (1 KB = 1024 bytes) on the wire; 0 means unlimited. Periods never
overlap; one whose end is not after its start runs past midnight into the next day.

``BandwidthKeeper`` runs beside a job on the event loop: it evaluates the schedule by
the job's clock (``twinvault.clock``), wakes at the next boundary, sets the link's rate
(``Link.set_rate``; the link's thread does the pacing, ``protocol.pacing``) and records
the guide's events 4064 (a new period) and 4063 (a new limit). The sending side owns it:
the source of a protection job, the repository of a recovery job.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from twinvault.clock import Clock
from twinvault.ops import errors
from twinvault.ops import events as ev
from twinvault.ops.errors import TwinvaultError
from twinvault.protocol.link import Link
from twinvault.protocol.pacing import KIB

UNLIMITED = 0
MAX_KBPS = 100_000_000  # 100 GB/s: anything above is a typing mistake
UNLIMITED_STATISTIC = 4294967295  # conBandwidthLimit of an unlimited connection (the seed's)
DEFAULT_PERIOD = "default"  # the name of the time outside every period
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_WORDS = {"daily": tuple(range(7)), "weekdays": tuple(range(5)), "weekends": (5, 6)}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")
_MINUTES_PER_DAY = 24 * 60
Emit = Callable[..., Any]


def parse_kbps(text: str | int) -> int:
    """A limit as the console writes it: whole KB/s, or 0 / ``unlimited`` for none."""
    word = str(text).strip().lower()
    if word in ("unlimited", "none"):
        return UNLIMITED
    if not word.isdigit() or int(word) > MAX_KBPS:
        raise TwinvaultError(
            errors.BANDWIDTH_LIMIT_INVALID,
            f"{text!r}: give whole KB/s from 1 to {MAX_KBPS}, or 0 / unlimited for no limit",
        )
    return int(word)


def describe_kbps(kbps: int) -> str:
    return "unlimited" if kbps == UNLIMITED else f"{kbps} KB/s"


@dataclass(frozen=True, slots=True)
class BandwidthPeriod:
    name: str
    days: tuple[int, ...]  # 0 = Monday
    start: int  # minutes after midnight
    end: int  # minutes after midnight; <= start: runs past midnight into the next day
    kbps: int

    def covers(self, day: int, minute: int) -> bool:
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        return (day in self.days and minute >= self.start) or (
            (day - 1) % 7 in self.days and minute < self.end
        )

    def text(self) -> str:
        days = "+".join(DAYS[d] for d in self.days)
        return f"{self.name}={days},{_hhmm(self.start)}-{_hhmm(self.end)},{self.kbps or 'unlimited'}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "days": list(self.days),
            "start": self.start,
            "end": self.end,
            "kbps": self.kbps,
            "text": self.text(),
        }

    @staticmethod
    def from_json(raw: dict[str, Any]) -> BandwidthPeriod:
        return BandwidthPeriod(
            str(raw["name"]),
            tuple(int(d) for d in raw["days"]),
            int(raw["start"]),
            int(raw["end"]),
            int(raw["kbps"]),
        )


def parse_period(text: str) -> BandwidthPeriod:
    """``NAME=DAYS,HH:MM-HH:MM,KBPS``: DAYS is a day (``mon``), a range (``mon-fri``), a list
    (``sat+sun``) or ``daily`` / ``weekdays`` / ``weekends``."""
    name, eq, rest = text.partition("=")
    name = name.strip()
    if not eq or not _NAME.match(name) or name == DEFAULT_PERIOD:
        raise TwinvaultError(
            errors.BANDWIDTH_LABEL_INVALID,
            f"{text!r}: a period is NAME=DAYS,HH:MM-HH:MM,KBPS; NAME is 1-32 letters, digits, '.', '_', '-'"
            f" and not {DEFAULT_PERIOD!r}",
        )
    parts = [p.strip() for p in rest.split(",")]
    if len(parts) != 3:
        raise TwinvaultError(errors.INVALID_PARAMETER, f"{text!r}: a period is NAME=DAYS,HH:MM-HH:MM,KBPS")
    days = _parse_days(parts[0], text)
    start_text, dash, end_text = parts[1].partition("-")
    if not dash:
        raise TwinvaultError(errors.INVALID_TIME, f"{text!r}: the time is HH:MM-HH:MM")
    start, end = _parse_minute(start_text, text), _parse_minute(end_text, text)
    if start == end:
        raise TwinvaultError(errors.INVALID_TIME, f"{text!r}: the period starts where it ends")
    if start == _MINUTES_PER_DAY:
        raise TwinvaultError(errors.INVALID_TIME, f"{text!r}: a period cannot start at 24:00")
    return BandwidthPeriod(
        name, days, start, end % _MINUTES_PER_DAY if end < start else end, parse_kbps(parts[2])
    )


def _parse_days(text: str, whole: str) -> tuple[int, ...]:
    word = text.lower()
    if word in _DAY_WORDS:
        return _DAY_WORDS[word]
    found: set[int] = set()
    for part in word.split("+"):
        first, dash, last = part.partition("-")
        if first not in DAYS or (dash and last not in DAYS):
            raise TwinvaultError(
                errors.BANDWIDTH_DAY_INVALID,
                f"{whole!r}: days are mon..sun, mon-fri, sat+sun, daily, weekdays or weekends",
            )
        a, b = DAYS.index(first), DAYS.index(last if dash else first)
        found.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return tuple(sorted(found))


def _parse_minute(text: str, whole: str) -> int:
    match = _TIME.match(text.strip())
    if not match or int(match[2]) > 59 or int(match[1]) * 60 + int(match[2]) > _MINUTES_PER_DAY:
        raise TwinvaultError(errors.INVALID_TIME, f"{whole!r}: times are HH:MM, 00:00 to 24:00")
    return int(match[1]) * 60 + int(match[2])


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


@dataclass(frozen=True, slots=True)
class BandwidthSchedule:
    kbps: int = UNLIMITED  # outside every period
    periods: tuple[BandwidthPeriod, ...] = field(default=())

    def __post_init__(self) -> None:
        names: set[str] = set()
        for period in self.periods:
            if period.name in names:
                raise TwinvaultError(errors.BANDWIDTH_NAME_EXISTS, period.name)
            names.add(period.name)
        # Minute by minute over a week: 10,080 checks per period, run only when a
        # schedule is built, and it handles periods past midnight without special cases.
        for i, a in enumerate(self.periods):
            for b in self.periods[i + 1 :]:
                for day in a.days:
                    clash = next(
                        (
                            m
                            for m in range(_MINUTES_PER_DAY * 2)
                            if a.covers((day + m // 1440) % 7, m % 1440)
                            and b.covers((day + m // 1440) % 7, m % 1440)
                        ),
                        None,
                    )
                    if clash is not None:
                        raise TwinvaultError(
                            errors.BANDWIDTH_TIME_EXISTS, f"periods {a.name!r} and {b.name!r} overlap"
                        )

    def limit_at(self, when: datetime) -> tuple[str, int]:
        """The period in force at ``when`` (``default`` outside every period) and its KB/s."""
        day, minute = when.weekday(), when.hour * 60 + when.minute
        for period in self.periods:
            if period.covers(day, minute):
                return period.name, period.kbps
        return DEFAULT_PERIOD, self.kbps

    def next_boundary(self, when: datetime) -> datetime | None:
        """The next minute at which the period in force changes (None: it never does)."""
        if not self.periods:
            return None
        now = self.limit_at(when)
        minute = when.replace(second=0, microsecond=0)
        for _ in range(8 * _MINUTES_PER_DAY):
            minute += timedelta(minutes=1)
            if self.limit_at(minute) != now:
                return minute
        return None

    def to_json(self) -> dict[str, Any]:
        return {"kbps": self.kbps, "periods": [p.to_json() for p in self.periods]}

    @staticmethod
    def from_json(raw: dict[str, Any] | None) -> BandwidthSchedule:
        if not raw:
            return BandwidthSchedule()
        return BandwidthSchedule(
            int(raw.get("kbps") or 0), tuple(BandwidthPeriod.from_json(p) for p in raw.get("periods") or ())
        )

    def changed(
        self,
        *,
        kbps: str | int | None = None,
        add: list[str] | None = None,
        remove: list[str] | None = None,
        clear: bool = False,
    ) -> BandwidthSchedule:
        """This schedule with the console's changes (``job set``); raises, changing nothing,
        when one is refused."""
        periods = [] if clear else list(self.periods)
        for name in remove or []:
            if not any(p.name == name for p in periods):
                raise TwinvaultError(errors.BANDWIDTH_LIMIT_NOT_FOUND, f"no period named {name!r}")
            periods = [p for p in periods if p.name != name]
        for text in add or []:
            period = parse_period(text)
            # Adding a period of an existing name replaces it (change its time or limit).
            periods = [p for p in periods if p.name != period.name] + [period]
        return BandwidthSchedule(self.kbps if kbps is None else parse_kbps(kbps), tuple(periods))


def schedule_from_options(
    body: dict[str, Any], current: BandwidthSchedule | None = None
) -> BandwidthSchedule:
    """The API's bandwidth keys (``bandwidth``, ``bandwidth_periods``, ``remove_periods``,
    ``clear_periods``) applied to ``current``."""
    return (current or BandwidthSchedule()).changed(
        kbps=body.get("bandwidth"),
        add=[str(p) for p in body.get("bandwidth_periods") or []],
        remove=[str(p) for p in body.get("remove_periods") or []],
        clear=bool(body.get("clear_periods")),
    )


class BandwidthKeeper:
    """Keeps a job's link at the limit its schedule puts in force now."""

    def __init__(
        self, schedule: BandwidthSchedule, clock: Clock, emit: Emit, fields: Callable[[], dict[str, Any]]
    ) -> None:
        self.schedule = schedule
        self._clock = clock
        self._emit = emit
        self._fields = fields
        self.period, self.kbps = schedule.limit_at(clock.local())
        self._link: Link | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    @property
    def statistic(self) -> int:
        """conBandwidthLimit: KB/s, 4294967295 when unlimited."""
        return UNLIMITED_STATISTIC if self.kbps == UNLIMITED else self.kbps

    def view(self) -> dict[str, Any]:
        return {
            "limit_kbps": self.kbps,
            "period": self.period,
            "default_kbps": self.schedule.kbps,
            "periods": [p.text() for p in self.schedule.periods],
        }

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="bandwidth")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def attach(self, link: Link | None) -> None:
        """The job's link now (None: not connected); it gets the limit in force."""
        self._link = link
        if link is not None:
            link.set_rate(self.kbps * KIB or None)

    def replace(self, schedule: BandwidthSchedule) -> None:
        """A changed schedule (``job set``), in force at once."""
        self.schedule = schedule
        self._apply()
        self._changed.set()

    async def _run(self) -> None:
        while True:
            self._apply()
            boundary = self.schedule.next_boundary(self._clock.local())
            # Wake at the boundary, or within a minute to notice a stepped system clock.
            delay = 60.0 if boundary is None else min(60.0, boundary.timestamp() - self._clock.now())
            self._changed.clear()
            # asyncio.wait, not wait_for: 3.11's wait_for can swallow a cancel (stop) that
            # arrives as the event is set (replace), and the keeper would outlive its job.
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait({changed}, timeout=max(0.0, delay) + 0.005)
            finally:
                changed.cancel()

    def _apply(self) -> None:
        now = self._clock.local()
        period, kbps = self.schedule.limit_at(now)
        if period != self.period:
            self.period = period
            self._emit(
                ev.BANDWIDTH_PERIOD_CHANGED,
                **self._fields(),
                period=period,
                time=now.isoformat(timespec="seconds"),
            )
        if kbps != self.kbps:
            self.kbps = kbps
            self._emit(ev.BANDWIDTH_LIMIT_CHANGED, **self._fields(), limit=describe_kbps(kbps))
        if self._link is not None:
            self._link.set_rate(self.kbps * KIB or None)
