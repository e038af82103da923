"""Bandwidth limits and routes on the wire: two hosts in network namespaces, each with two
interfaces (path 1, the default, shaped with tbf like a slow WAN link; path 2 chosen with
``--route`` and ``--bind``). Bytes are counted on the veth devices every 50 ms and every
one-second window is checked against the limit (within 5 %), at 256, 1024 and 10240 KB/s:
a scheduled period switches the limit at the right minute of the source's injected clock
(events 4064/4063), ``job set`` changes it on the running job without a remirror, and a
Data Recovery job holds its own limit and route the other way. Images and the recovered
tree equal the source."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.faults import NetnsPair
from tests.helpers.hosts import Console, TestHost, make_host, wait_for
from tests.helpers.protection import event_ids, in_image, job_show, protect, wait_equal, wait_idle
from tests.helpers.rates import CounterSampler, Samples, between, max_window
from tests.helpers.tree import assert_trees_equal, make_rich_tree
from twinvault.clock import CLOCK_START_ENV
from twinvault.ops import errors
from twinvault.ops import events as ev

pytestmark = pytest.mark.system

KIB = 1024
TOLERANCE = 1.05  # the limit holds within 5 % in every one-second window
# The source's clock starts this long before Monday 08:00, when the "business" period
# begins: time for the hosts to start and the mirror to run a while at the default limit.
LEAD_S = 35


def _monday_0800() -> datetime:
    return datetime(2026, 11, 23, 8, 0).astimezone()  # a Monday, local time


def _event(host: TestHost, event_id: int) -> dict[str, Any] | None:
    found = [e for e in host.events() if int(e["id"]) == event_id]
    return found[-1] if found else None


def _monotonic_of(event: dict[str, Any]) -> float:
    return time.monotonic() - (time.time() - float(event["time"]))


def _flowing(samples: Samples, after: int = 64 * KIB) -> float:
    """When the counter first passed its first value plus ``after`` bytes."""
    first = samples[0][1]
    return next(t for t, b in samples if b - first > after)


def _check_window(samples: Samples, kbps: int, floor: float, what: str) -> float:
    """The busiest second is under the limit (within 5 %) and the link is really used."""
    span = samples[-1][0] - samples[0][0]
    assert span >= 2.0, f"{what}: only {span:.1f} s of samples"
    busiest = max_window(samples)
    print(f"{what}: busiest second {busiest / KIB:.0f} KB/s, load {os.getloadavg()[0]:.1f}")
    assert busiest <= kbps * KIB * TOLERANCE, f"{what}: {busiest / KIB:.0f} KB/s in one second > {kbps} KB/s"
    assert busiest >= kbps * KIB * floor, f"{what}: only {busiest / KIB:.0f} KB/s of {kbps} KB/s used"
    return busiest


def _sample_for(sampler: CounterSampler, device: str, seconds: float) -> Samples:
    start = time.monotonic()
    time.sleep(seconds)
    return between(sampler.samples[device], start, time.monotonic())


def test_limits_schedule_and_route_hold_on_the_wire_for_protection_and_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    make_rich_tree(str(src), seed=7)
    for i in range(3):
        (src / f"big-{i}.bin").write_bytes(os.urandom(24 << 20))
    with NetnsPair(second_path=True) as net:
        net.shape(16_000)  # path 1: a 16 Mbit/s default path the jobs must not take
        console = Console(tmp_path / "console", netns=net.ns_a)
        alpha = make_host(tmp_path, "alpha", console, netns=net.ns_a, address=net.addr_a)
        beta = make_host(tmp_path, "beta", console, netns=net.ns_b, address=net.addr_b)
        try:
            beta.start(console)
            monkeypatch.setenv(CLOCK_START_ENV, (_monday_0800() - timedelta(seconds=LEAD_S)).isoformat())
            alpha.start(console)
            monkeypatch.delenv(CLOCK_START_ENV)
            assert alpha.process is not None
            with CounterSampler(alpha.process.pid, [net.dev_a, net.dev_a2]) as sampler:
                job, image = protect(console, alpha, beta, src, extra=(
                    "--bandwidth", "256", "--bandwidth-period", "business=mon-fri,08:00-18:00,1024",
                    "--route", net.addr_b2, "--bind", net.addr_a2,
                ))  # fmt: skip
                assert job_show(console, alpha, job)["statistics"]["conBandwidthLimit"] == 256

                # 1. The default limit until 08:00 by the source's clock.
                period = wait_for(lambda: _event(alpha, ev.BANDWIDTH_PERIOD_CHANGED), LEAD_S + 30, 0.1,
                                  what="the business period")  # fmt: skip
                switch = _monotonic_of(period)
                path2 = sampler.samples[net.dev_a2]
                before = between(path2, _flowing(path2), switch - 0.05)
                _check_window(before, 256, 0.8, "256 KB/s before 08:00")
                assert period["fields"]["period"] == "business"
                assert period["fields"]["time"].startswith("2026-11-23T08:00:0")  # the right minute
                changed = _event(alpha, ev.BANDWIDTH_LIMIT_CHANGED)
                assert changed is not None and changed["fields"]["limit"] == "1024 KB/s"

                # 2. The business period's 1024 KB/s from 08:00 on.
                time.sleep(0.3)
                business = _sample_for(sampler, net.dev_a2, 3.0)
                _check_window(business, 1024, 0.8, "1024 KB/s in the business period")
                assert job_show(console, alpha, job)["statistics"]["conBandwidthLimit"] == 1024

                # 3. job set on the running job: 10240 KB/s at once, no remirror.
                console.json("job", "set", job, "--server", alpha.api,
                             "--bandwidth-period", "business=mon-fri,08:00-18:00,10240")  # fmt: skip
                time.sleep(0.3)
                fast = _sample_for(sampler, net.dev_a2, 3.0)
                _check_window(fast, 10240, 0.5, "10240 KB/s after job set")
                assert job_show(console, alpha, job)["status"] == "Mirroring"

                # Refused routes change nothing (and the running job goes on).
                shown = job_show(console, alpha, job)["transmission"]
                for option, code in (
                    (("--route", net.addr_a), errors.ROUTE_NOT_ON_TARGET),  # this host, not beta
                    (("--route", net.addr_b2.rsplit(".", 1)[0] + ".99"), errors.ROUTE_UNREACHABLE),
                    (("--bind", net.addr_b2), errors.BIND_ADDRESS_NOT_LOCAL),
                ):
                    assert console.refused("job", "set", job, "--server", alpha.api, *option) == code, option
                    assert job_show(console, alpha, job)["transmission"] == shown

                console.json("job", "set", job, "--server", alpha.api, "--clear-bandwidth-periods",
                             "--bandwidth", "unlimited")  # fmt: skip
                wait_idle(console, alpha, job, timeout=120)
                wait_equal(src, in_image(image, src), timeout=60)
                path1 = sampler.samples[net.dev_a]
                # The route: the mirror went over path 2; path 1 carried only the console's calls.
                sent2 = path2[-1][1] - path2[0][1]
                sent1 = path1[-1][1] - path1[0][1]
                assert sent2 > 72 << 20, sent2
                assert sent1 < 2 << 20, sent1

                # job set moves the running job back to path 1: it carries on, no mirror.
                console.json(
                    "job", "set", job, "--server", alpha.api, "--route", net.addr_b, "--bind", "default"
                )
                moved = path1[-1][1]
                (src / "after-the-move.bin").write_bytes(os.urandom(3 << 20))
                wait_equal(src, in_image(image, src), timeout=60)
                assert path1[-1][1] - moved > 3 << 20
                assert job_show(console, alpha, job)["transmission"]["peer_address"] == net.addr_b
                assert _mirrors_not_from_capture(alpha) <= 1  # job set never remirrored
                wait_for(
                    lambda: job_show(console, alpha, job)["status"] == "Protecting",
                    30,
                    0.3,
                    what="protecting",
                )
                wait_for(
                    lambda: _range_open(console, beta), 30, 0.5, what="the range valid for recovery to reopen"
                )

            # 4. A Data Recovery job: beta sends back to alpha, over path 2, at its own limit.
            assert beta.process is not None
            target = tmp_path / "recovered"
            with CounterSampler(beta.process.pid, [net.dev_b, net.dev_b2]) as sampler:
                recovery = console.json(
                    "recover", "--repository", beta.api, "--image", "alpha", "--live",
                    "--to-server", alpha.api, "--target-path", str(target),
                    "--bandwidth", "1024", "--route", net.addr_a2, "--bind", net.addr_b2,
                )["job"]  # fmt: skip
                wait_for(lambda: _flowing_now(sampler.samples[net.dev_b2]), 30, 0.1, what="the recovery")
                sending = _sample_for(sampler, net.dev_b2, 3.0)
                _check_window(sending, 1024, 0.8, "recovery at 1024 KB/s")
                view = job_show(console, beta, recovery)
                assert view["type"] == "Data Recovery" and view["statistics"]["conBandwidthLimit"] == 1024
                # job set moves it to path 1, unlimited: it resumes there, it does not start over.
                net.unshape()
                console.json("job", "set", recovery, "--server", beta.api, "--bandwidth", "0",
                             "--route", net.addr_a, "--bind", "default")  # fmt: skip
                wait_for(lambda: job_show(console, beta, recovery)["status"] == "Recovered", 120, 0.3,
                         what="the recovery to finish")  # fmt: skip
                back1, back2 = sampler.samples[net.dev_b], sampler.samples[net.dev_b2]
            over1, over2 = back1[-1][1] - back1[0][1], back2[-1][1] - back2[0][1]
            assert over1 > 16 << 20, (over1, over2)  # the rest went over path 1
            assert over1 + over2 < 1.3 * (75 << 20), (over1, over2)  # resumed, not sent twice
            assert_trees_equal(str(src), str(in_image(target, src)))
        finally:
            alpha.stop()
            beta.stop()


def _flowing_now(samples: Samples) -> bool:
    """Bytes went out in the last half second (the recovery is sending)."""
    recent = [b for t, b in samples if t > time.monotonic() - 0.5]
    return len(recent) > 1 and recent[-1] - recent[0] > 32 * KIB


def _range_open(console: Console, repository: TestHost) -> bool:
    ranges = console.json("points", "--repository", repository.api, "--image", "alpha")["ranges"]
    return bool(ranges) and ranges[-1]["end"] is None


def _mirrors_not_from_capture(host: TestHost) -> int:
    """Mirrors started, less one for each capture overflow (event 9003, which asks for a
    mirror; several may share one): fanotify marks the whole filesystem, and other tests on
    this machine write to it too. With no overflow it is exactly the mirrors started."""
    ids = event_ids(host)
    return ids.count(ev.MIRROR_STARTED) - ids.count(ev.CAPTURE_LOST_EVENTS)
