"""Transmission options through the console on real hosts: a protection job created with a
limit and periods keeps them (job show, statistics, a restart), ``job set`` changes them
on the running job without a remirror, and bad input is refused with the catalog's code
and changes nothing."""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers.hosts import Console, TestHost
from tests.helpers.protection import event_ids, job_show, protect, wait_equal, wait_idle
from twinvault.cli.client import ApiClient, CredentialCache
from twinvault.ops import errors
from twinvault.ops import events as ev

Hosts = tuple[Console, TestHost, TestHost]


def _statistics(console: Console, host: TestHost) -> dict[str, dict[str, object]]:
    cred = CredentialCache(console.config_dir).get(host.api)
    reply = ApiClient(host.api, cred.fingerprint, cred.token).call("GET", "/api/statistics")
    return {c["id"]: c for c in reply["connections"]}


def test_options_persist_and_job_set_changes_them_without_remirror(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(300_000))
    job, image = protect(console, alpha, beta, src, extra=(
        "--bandwidth", "10240", "--bandwidth-period", "night=daily,23:00-05:00,unlimited",
        "--route", "127.0.0.1",
    ))  # fmt: skip
    wait_idle(console, alpha, job)
    view = job_show(console, alpha, job)["transmission"]
    assert view["default_kbps"] == 10240 and view["periods"] == [
        "night=mon+tue+wed+thu+fri+sat+sun,23:00-05:00,unlimited"
    ]
    assert view["peer_address"] == "127.0.0.1"
    mirrors = event_ids(alpha).count(ev.MIRROR_STARTED)

    out = console.json("job", "set", job, "--server", alpha.api, "--bandwidth", "512",
                       "--remove-bandwidth-period", "night")  # fmt: skip
    assert out["default_kbps"] == 512 and out["periods"] == []
    shown = job_show(console, alpha, job)
    assert shown["transmission"]["period"] == "default"  # no period left
    assert shown["transmission"]["limit_kbps"] == 512
    assert shown["statistics"]["conBandwidthLimit"] == 512
    assert _statistics(console, alpha)[job]["conBandwidthLimit"] == 512
    (src / "b.bin").write_bytes(os.urandom(200_000))  # replication at the new limit
    wait_equal(src, image / src.relative_to("/"), timeout=30)
    # no remirror (but for one a capture overflow asks for: other tests write to this filesystem too)
    assert (
        event_ids(alpha).count(ev.MIRROR_STARTED) - event_ids(alpha).count(ev.CAPTURE_LOST_EVENTS) <= mirrors
    )
    assert ev.BANDWIDTH_LIMIT_CHANGED in event_ids(alpha)

    # Kept with the job: a restarted source comes back with the changed options.
    alpha.stop()
    alpha.start(console)
    again = job_show(console, alpha, job)["transmission"]
    assert again["default_kbps"] == 512 and again["periods"] == [] and again["route"] == "127.0.0.1"


BAD_OPTIONS = [
    (("--bandwidth", "-5"), errors.BANDWIDTH_LIMIT_INVALID),
    (("--bandwidth", "12kb"), errors.BANDWIDTH_LIMIT_INVALID),
    (("--bandwidth-period", "x=funday,08:00-18:00,5"), errors.BANDWIDTH_DAY_INVALID),
    (("--bandwidth-period", "x=mon,08:00-18:70,5"), errors.INVALID_TIME),
    (("--bandwidth-period", "default=mon,08:00-18:00,5"), errors.BANDWIDTH_LABEL_INVALID),
    (("--route", "not-an-address"), errors.INVALID_PARAMETER),
    (("--remove-bandwidth-period", "nope"), errors.BANDWIDTH_LIMIT_NOT_FOUND),
    (("--bandwidth-period", "a=mon-fri,08:00-18:00,5", "--bandwidth-period", "b=fri,12:00-13:00,5"),
     errors.BANDWIDTH_TIME_EXISTS),
    (("--bind", "192.0.2.77"), errors.BIND_ADDRESS_NOT_LOCAL),
]  # fmt: skip


def test_bad_transmission_options_are_refused_and_change_nothing(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    job, _ = protect(console, alpha, beta, src, extra=("--bandwidth", "2048"))
    before = job_show(console, alpha, job)["transmission"]
    jobs = {j["id"] for j in console.json("jobs", "--server", beta.api)["jobs"]}
    for option, code in BAD_OPTIONS:
        assert console.refused("job", "set", job, "--server", alpha.api, *option) == code, option
    assert job_show(console, alpha, job)["transmission"] == before
    # protect refuses them too, before it creates anything on either host
    for option, code in (BAD_OPTIONS[0], BAD_OPTIONS[2], BAD_OPTIONS[-1]):
        assert console.refused("protect", "--source", alpha.api, "--repository", beta.api,
                               "--data", str(src), *option) == code, option  # fmt: skip
    assert {j["id"] for j in console.json("jobs", "--server", beta.api)["jobs"]} == jobs
    assert {j["id"] for j in console.json("jobs", "--server", alpha.api)["jobs"]} == jobs
