"""Bandwidth limits: the pacer's bucket never lets a 1-second window exceed the limit, the
schedule's periods parse, refuse bad input with the catalog's codes and switch at the
right minute by an injected clock (events 4064 and 4063), and a real TLS link paced by
them stays under its limit and follows a change at once."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.rates import max_window
from tests.unit.test_link import linked
from twinvault.clock import Clock
from twinvault.ops import errors
from twinvault.ops import events as ev
from twinvault.ops.errors import TwinvaultError
from twinvault.protocol import messages as m
from twinvault.protocol.bandwidth import (
    UNLIMITED_STATISTIC,
    BandwidthKeeper,
    BandwidthSchedule,
    parse_kbps,
    parse_period,
)
from twinvault.protocol.frames import encode_frame
from twinvault.protocol.pacing import KIB, Pacer

# -- the bucket --------------------------------------------------------------------------


@pytest.mark.parametrize("kbps", [256, 1024, 10240])
def test_pacer_never_lets_a_one_second_window_exceed_the_limit(kbps: int) -> None:
    now = [0.0]
    pacer = Pacer(kbps * KIB, clock=lambda: now[0])
    sent = 0
    samples = [(0.0, 0)]
    # A writer that always has a 4 MiB frame to send, and a peer that sometimes stalls.
    while now[0] < 10.0:
        n, wait = pacer.grant(4 << 20)
        if n:
            sent += n
            samples.append((now[0], sent))
        else:
            now[0] += wait
        if 4.0 < now[0] < 4.5:
            now[0] = 4.5  # a stall: nothing may be saved up for later
    assert max_window(samples) <= kbps * KIB
    assert sent / 10.0 >= 0.9 * kbps * KIB / 1.05  # and it is used


def test_pacer_waits_while_the_kernel_holds_unsent_bytes() -> None:
    pacer = Pacer(1024 * KIB, clock=lambda: 100.0)
    n, wait = pacer.grant(1 << 20, unsent=1 << 20)
    assert n == 0 and wait > 0.5


# -- periods and schedules ---------------------------------------------------------------------


def test_periods_parse_days_ranges_lists_and_words() -> None:
    p = parse_period("business=mon-fri,08:00-18:00,1024")
    assert (p.days, p.start, p.end, p.kbps) == ((0, 1, 2, 3, 4), 480, 1080, 1024)
    assert parse_period("w=sat+sun,00:00-24:00,unlimited").days == (5, 6)
    assert parse_period("n=fri-mon,22:00-06:00,64").days == (0, 4, 5, 6)
    assert parse_period("d=daily,12:00-13:00,10").days == tuple(range(7))
    assert parse_kbps("0") == parse_kbps("unlimited") == 0


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("x=mon,08:00-18:00,-5", errors.BANDWIDTH_LIMIT_INVALID),
        ("x=mon,08:00-18:00,12k", errors.BANDWIDTH_LIMIT_INVALID),
        ("x=mon,08:00-18:00,1.5", errors.BANDWIDTH_LIMIT_INVALID),
        ("x=moonday,08:00-18:00,5", errors.BANDWIDTH_DAY_INVALID),
        ("x=mon,8-18,5", errors.INVALID_TIME),
        ("x=mon,08:00-25:00,5", errors.INVALID_TIME),
        ("x=mon,08:61-09:00,5", errors.INVALID_TIME),
        ("x=mon,08:00-08:00,5", errors.INVALID_TIME),
        ("bad name=mon,08:00-09:00,5", errors.BANDWIDTH_LABEL_INVALID),
        ("default=mon,08:00-09:00,5", errors.BANDWIDTH_LABEL_INVALID),
        ("x=mon,08:00-09:00", errors.INVALID_PARAMETER),
    ],
)
def test_a_bad_period_is_refused_with_its_code(text: str, code: int) -> None:
    with pytest.raises(TwinvaultError) as refused:
        parse_period(text)
    assert refused.value.code == code


def test_overlapping_or_twice_named_periods_are_refused() -> None:
    a = parse_period("a=mon-fri,08:00-18:00,1024")
    with pytest.raises(TwinvaultError) as refused:
        BandwidthSchedule(0, (a, parse_period("b=fri,17:00-19:00,5")))
    assert refused.value.code == errors.BANDWIDTH_TIME_EXISTS
    with pytest.raises(TwinvaultError) as refused:  # past midnight into Tuesday morning
        BandwidthSchedule(0, (a, parse_period("b=mon,22:00-08:30,5")))
    assert refused.value.code == errors.BANDWIDTH_TIME_EXISTS
    with pytest.raises(TwinvaultError) as refused:
        BandwidthSchedule(0, (a, parse_period("a=sat,08:00-09:00,5")))
    assert refused.value.code == errors.BANDWIDTH_NAME_EXISTS
    with pytest.raises(TwinvaultError) as refused:
        BandwidthSchedule(0, (a,)).changed(remove=["nope"])
    assert refused.value.code == errors.BANDWIDTH_LIMIT_NOT_FOUND


MONDAY = datetime(2026, 11, 23).astimezone().replace(hour=0, minute=0, second=0, microsecond=0)


def test_the_limit_in_force_and_the_next_boundary() -> None:
    s = BandwidthSchedule(0, (parse_period("business=mon-fri,08:00-18:00,1024"),
                              parse_period("night=daily,23:00-05:00,64")))  # fmt: skip
    assert s.limit_at(MONDAY + timedelta(hours=7, minutes=59)) == ("default", 0)
    assert s.limit_at(MONDAY + timedelta(hours=8)) == ("business", 1024)
    assert s.limit_at(MONDAY + timedelta(hours=17, minutes=59)) == ("business", 1024)
    assert s.limit_at(MONDAY + timedelta(hours=18)) == ("default", 0)
    assert s.limit_at(MONDAY + timedelta(days=1, hours=2)) == ("night", 64)
    assert s.limit_at(MONDAY + timedelta(days=5, hours=9)) == ("default", 0)  # Saturday
    assert s.next_boundary(MONDAY + timedelta(hours=7, minutes=59, seconds=30)) == MONDAY + timedelta(hours=8)
    assert BandwidthSchedule(512).next_boundary(MONDAY) is None


async def test_the_keeper_switches_the_link_at_the_boundary_by_the_injected_clock(tmp_path: Path) -> None:
    events: list[tuple[int, dict[str, Any]]] = []
    schedule = BandwidthSchedule(0, (parse_period("business=mon-fri,08:00-18:00,1024"),))
    clock = Clock.starting_at(MONDAY + timedelta(hours=7, minutes=59, seconds=59, microseconds=500_000))
    keeper = BandwidthKeeper(schedule, clock, lambda i, **f: events.append((i, f)),
                             lambda: {"target": "beta", "address": "10.0.0.2"})  # fmt: skip
    async with linked(tmp_path) as (source, _):
        keeper.attach(source)
        keeper.start()
        try:
            assert source.rate is None and keeper.statistic == UNLIMITED_STATISTIC
            await asyncio.sleep(1.0)
            assert source.rate == 1024 * KIB and keeper.statistic == 1024
            assert [i for i, _ in events] == [ev.BANDWIDTH_PERIOD_CHANGED, ev.BANDWIDTH_LIMIT_CHANGED]
            assert events[0][1]["period"] == "business" and events[0][1]["time"].startswith(
                "2026-11-23T08:00:0"
            )
            assert events[1][1]["limit"] == "1024 KB/s"
            keeper.replace(schedule.changed(clear=True, kbps="256"))  # job set: at once
            assert source.rate == 256 * KIB
            assert [i for i, _ in events][2:] == [ev.BANDWIDTH_PERIOD_CHANGED, ev.BANDWIDTH_LIMIT_CHANGED]
        finally:
            await keeper.stop()


# -- a real link ---------------------------------------------------------------------------------


async def test_a_paced_link_stays_under_its_limit_and_follows_a_change(tmp_path: Path) -> None:
    big = encode_frame([m.FDATA, 0, [[m.SEG_DATA, b"h" * 32, os.urandom(3 << 20)]]])
    async with linked(tmp_path) as (source, repository):
        source.set_rate(1024 * KIB)
        samples: list[tuple[float, int]] = []
        loop = asyncio.get_running_loop()

        async def drain() -> None:
            while True:
                await repository.recv(30)

        receiving = asyncio.create_task(drain())
        for _ in range(2):
            await source.send_raw(big)
        start = loop.time()
        while loop.time() - start < 3.0:
            samples.append((loop.time(), source.counters.bytes_written))
            await asyncio.sleep(0.02)
        source.set_rate(4096 * KIB)
        changed = loop.time()
        later: list[tuple[float, int]] = []
        while loop.time() - changed < 1.2:
            later.append((loop.time(), source.counters.bytes_written))
            await asyncio.sleep(0.02)
        receiving.cancel()
    assert max_window(samples) <= 1024 * KIB * 1.05
    assert max_window(samples) >= 1024 * KIB * 0.8
    assert (later[-1][1] - later[0][1]) / (later[-1][0] - later[0][0]) > 2048 * KIB
