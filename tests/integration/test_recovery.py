"""Data Recovery jobs through the console: the repository sends a point in time to a
recovery server over the peer protocol, into the same receiver and applier."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.faults import small_filesystem
from tests.helpers.history import frozen_copy, settle
from tests.helpers.hosts import Console, TestHost, make_host, running_hosts, wait_for
from tests.helpers.protection import event_ids, in_image, protect
from tests.helpers.tree import assert_trees_equal, make_rich_tree

Three = tuple[Console, TestHost, TestHost, TestHost]


@pytest.fixture
def three_hosts(tmp_path: Path) -> Iterator[Three]:
    with running_hosts(tmp_path, "alpha", "beta", "gamma") as (console, (alpha, beta, gamma)):
        yield console, alpha, beta, gamma


def recover(console: Console, beta: TestHost, gamma: TestHost, target: Path, *extra: str) -> dict[str, Any]:
    out: dict[str, Any] = console.json(
        "recover", "--repository", beta.api, "--image", "alpha", "--to-server", gamma.api,
        "--target-path", str(target), *extra,
    )  # fmt: skip
    return out


def wait_recovered(console: Console, beta: TestHost, job: str, timeout: float = 90) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        view: dict[str, Any] = console.json("job", "show", job, "--server", beta.api)
        return view if view["status"] == "Recovered" else None

    result: dict[str, Any] = wait_for(done, timeout, 0.2, what=f"recovery {job}")
    return result


def test_a_snapshot_and_live_data_are_recovered_elsewhere(three_hosts: Three, tmp_path: Path) -> None:
    console, alpha, beta, gamma = three_hosts
    src = tmp_path / "src"
    make_rich_tree(str(src), seed=31)
    job, image = protect(console, alpha, beta, src, extra=("--cdp-days", "1"))
    settle(console, alpha, job, src, image)
    snap = console.json("job", "snapshot", job, "--server", beta.api)
    state1 = frozen_copy(src, tmp_path / "state1")
    (src / "docs" / "random-1.bin").write_bytes(os.urandom(77_777))
    (src / "nested" / "a" / "b" / "c" / "deep.txt").unlink()
    settle(console, alpha, job, src, image)

    out = recover(console, beta, gamma, tmp_path / "r-snap", "--snapshot", str(snap["id"]))
    view = wait_recovered(console, beta, out["job"])
    assert (
        view["type"] == "Data Recovery" and view["percent_complete"] == 100.0 and view["recovery_available"]
    )
    assert_trees_equal(str(state1), str(in_image(tmp_path / "r-snap", src)))
    on_gamma = {j["id"]: j for j in console.json("jobs", "--server", gamma.api)["jobs"]}
    assert on_gamma[out["job"]]["type"] == "Data Recovery"

    live = recover(console, beta, gamma, tmp_path / "r-live", "--live", "--exclude", "*.bin")
    wait_recovered(console, beta, live["job"])
    assert_trees_equal(str(src), str(in_image(tmp_path / "r-live", src)), ignore=["*.bin"])
    assert not list(in_image(tmp_path / "r-live", src).rglob("*.bin"))


def test_bad_recoveries_are_refused_before_anything_is_sent(three_hosts: Three, tmp_path: Path) -> None:
    console, alpha, beta, gamma = three_hosts
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(20 << 20))
    before = time.time()
    job, image = protect(console, alpha, beta, src)
    settle(console, alpha, job, src, image)

    def refused(target: str, *point: str, server: TestHost = gamma) -> int:
        return console.refused(
            "recover", "--repository", beta.api, "--image", "alpha", *(point or ("--live",)),
            "--to-server", server.api, "--target-path", target,
        )  # fmt: skip

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert refused(str(blocker / "under")) == -1006  # not writable
    assert refused(str(Path(image) / "restored"), server=beta) == -1013  # onto the repository's own image
    before_iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(before - 60))
    assert refused(str(tmp_path / "t1"), "--at", before_iso) == -1027
    assert console.refused("recover", "--repository", beta.api, "--image", "nosuch", "--live", "--to-server",
                           gamma.api, "--target-path", str(tmp_path / "t2")) == -1029  # fmt: skip
    with small_filesystem(16) as small:
        assert refused(str(Path(small) / "r")) == -173  # 20 MiB do not fit in 16
    assert [
        j for j in console.json("jobs", "--server", beta.api)["jobs"] if j["type"] == "Data Recovery"
    ] == []


def test_a_recovery_server_killed_mid_recovery_resumes(three_hosts: Three, tmp_path: Path) -> None:
    console, alpha, beta, gamma = three_hosts
    src = tmp_path / "src"
    src.mkdir()
    for i in range(120):
        (src / f"f{i:03d}.bin").write_bytes(os.urandom(1 << 20))
    job, image = protect(console, alpha, beta, src)
    settle(console, alpha, job, src, image)
    out = recover(console, beta, gamma, tmp_path / "r", "--live")
    restored = in_image(tmp_path / "r", src)
    wait_for(lambda: restored.exists() and len(list(restored.glob("f*.bin"))) >= 30, 60, 0.02,
             what="a recovery partly done")  # fmt: skip
    gamma.kill9()
    time.sleep(1)
    gamma.start(console)
    view = wait_recovered(console, beta, out["job"], timeout=120)
    assert_trees_equal(str(src), str(restored))
    # Resumed, not restarted: well under twice the data went over the link.
    assert view["total_sent_bytes"] < 1.6 * (120 << 20)


def test_shutdown_source_runs_the_sources_own_command_after_the_recovery(tmp_path: Path) -> None:
    marker = tmp_path / "shutdown-ran"
    console = Console(tmp_path / "console")
    alpha = make_host(
        tmp_path, "alpha", console, extra_config=f'[config]\nshutdown_command = "touch {marker}"\n'
    )
    beta = make_host(tmp_path, "beta", console)
    gamma = make_host(tmp_path, "gamma", console)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    try:
        for host in (alpha, beta, gamma):
            host.start(console)
        job, image = protect(console, alpha, beta, src)
        settle(console, alpha, job, src, image)
        out = recover(console, beta, gamma, tmp_path / "r", "--live", "--shutdown-source")
        wait_recovered(console, beta, out["job"])
        wait_for(marker.exists, 30, what="the source's shutdown command")
        assert 9020 in event_ids(alpha) and 9020 in event_ids(beta)
        assert (in_image(tmp_path / "r", src) / "a.txt").read_text() == "a"
    finally:
        for host in (alpha, beta, gamma):
            host.stop()
