"""Compressing data for transmission (protection and Data Recovery jobs), through real
daemons: each level changes the bytes on the wire as `job show` reports them, the image
and the recovered tree equal the source byte for byte, a level changed on a running job
applies without a remirror, and a level nobody knows is refused with -153."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.history import settle
from tests.helpers.hosts import Console, TestHost, running_hosts, wait_for
from tests.helpers.protection import event_ids, in_image, job_show, protect, wait_equal, wait_idle
from tests.helpers.tree import assert_trees_equal
from twinvault.ops import events as ev

Hosts = tuple[Console, TestHost, TestHost]
TEXT_ROOT = Path(os.__file__).parent  # the running Python's standard library: real text


def text_files(buckets: int, per_bucket: int) -> list[list[Path]]:
    """Real text (the Python standard library's sources), dealt round robin into
    ``buckets`` of about ``per_bucket`` bytes each: alike in how well they compress,
    and no chunk in two buckets (deduplication would hide what compression did)."""
    files = sorted(p for p in TEXT_ROOT.rglob("*.py") if p.is_file() and 4096 <= p.stat().st_size <= 200_000)
    out: list[list[Path]] = [[] for _ in range(buckets)]
    sizes = [0] * buckets
    contents: set[bytes] = set()
    for i, path in enumerate(files):
        data = path.read_bytes()
        if data in contents:
            continue
        contents.add(data)
        b = i % buckets
        if sizes[b] < per_bucket:
            out[b].append(path)
            sizes[b] += len(data)
        if min(sizes) >= per_bucket:
            break
    assert min(sizes) >= per_bucket, f"not enough text under {TEXT_ROOT}: {sizes}"
    return out


def copy_into(files: list[Path], dst: Path) -> int:
    dst.mkdir(parents=True)
    total = 0
    for i, path in enumerate(files):
        shutil.copyfile(path, dst / f"{i:04d}-{path.name}")
        total += path.stat().st_size
    return total


def sent(view: dict[str, Any]) -> tuple[int, int]:
    return int(view["total_sent_bytes"]), int(view["total_sent_compressed_bytes"])


def set_level(console: Console, host: TestHost, job: str, level: str) -> None:
    console.json("job", "set", job, "--compression", level, "--server", host.api)


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[Hosts]:
    with running_hosts(tmp_path, "alpha", "beta") as (console, (alpha, beta)):
        yield console, alpha, beta


def test_each_level_changes_the_bytes_on_the_wire_without_a_remirror(
    two_hosts: Hosts, tmp_path: Path
) -> None:
    console, alpha, beta = two_hosts
    buckets = text_files(4, 2 << 20)
    src = tmp_path / "src"
    src.mkdir()
    copy_into(buckets[0], src / "none")
    (src / "random-none.bin").write_bytes(os.urandom(4 << 20))
    job, image = protect(console, alpha, beta, src, extra=("--compression", "none"))
    view = wait_idle(console, alpha, job, timeout=120)
    wait_equal(src, in_image(image, src))
    assert view["compression"] == "none"
    total, compressed = sent(view)
    assert total >= 6 << 20 and compressed == total, "with compression off both statistics are equal"
    assert view["replication"]["bytes_sent_compressed"] == view["replication"]["bytes_sent"]

    ratios: dict[str, float] = {}
    for level, files in zip(("minimum", "medium", "maximum"), buckets[1:], strict=True):
        set_level(console, alpha, job, level)
        before = sent(job_show(console, alpha, job))
        size = copy_into(files, src / level)  # replicated, under the new level
        wait_equal(src, in_image(image, src), timeout=120)
        after = wait_for(
            lambda b=before, s=size: _grown(console, alpha, job, b, s), 60, 0.2, what="statistics"
        )
        d_total, d_compressed = after[0] - before[0], after[1] - before[1]
        ratios[level] = d_compressed / d_total
    print("wire/file bytes per level:", ratios)
    assert ratios["minimum"] < 0.45, "text at minimum must travel in well under half its size"
    assert ratios["medium"] <= ratios["minimum"] * 1.01
    assert ratios["maximum"] <= ratios["medium"] * 1.01

    # Random data at the highest level: sent raw after the probe, not one byte more.
    before = sent(job_show(console, alpha, job))
    (src / "random-maximum.bin").write_bytes(os.urandom(4 << 20))
    wait_equal(src, in_image(image, src), timeout=120)
    after = wait_for(lambda: _grown(console, alpha, job, before, 4 << 20), 60, 0.2, what="statistics")
    assert after[1] - before[1] == after[0] - before[0] >= 4 << 20

    view = job_show(console, alpha, job)
    assert view["compression"] == "maximum" and view["mirror"]["status"] == "Idle"
    # Every mirror comes from a connection (a reconnect on a loaded machine mirrors, as
    # it must); a level change adds none.
    ids = event_ids(alpha)
    assert ids.count(ev.MIRROR_STARTED) == ids.count(ev.CONNECTED), "a level change must not remirror"
    assert 0 < view["replication"]["bytes_sent_compressed"] < view["replication"]["bytes_sent"]
    # The repository sees the same figures (the source reports them), and the level is
    # the job's configuration: kept across a restart of the source.
    spec = json.loads((alpha.home / "source" / "jobs" / f"{job}.json").read_text())
    assert spec["compression"] == "maximum"
    assert_trees_equal(str(src), str(in_image(image, src)))


def _grown(
    console: Console, host: TestHost, job: str, before: tuple[int, int], size: int
) -> tuple[int, int] | None:
    now = sent(job_show(console, host, job))
    return now if now[0] - before[0] >= size else None


def test_an_unknown_level_is_refused_and_changes_nothing(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a" * 10_000)
    code = console.refused("protect", "--source", alpha.api, "--repository", beta.api, "--data", str(src),
                           "--compression", "fastest")  # fmt: skip
    assert code == -153
    assert console.json("jobs", "--server", alpha.api)["jobs"] == []
    assert console.json("jobs", "--server", beta.api)["jobs"] == []

    job, image = protect(console, alpha, beta, src, extra=("--compression", "medium"))
    wait_idle(console, alpha, job)
    assert console.refused("job", "set", job, "--compression", "9", "--server", alpha.api) == -153
    assert console.refused("job", "set", job, "--compression", "", "--server", alpha.api) == -153
    assert job_show(console, alpha, job)["compression"] == "medium"
    spec = json.loads((alpha.home / "source" / "jobs" / f"{job}.json").read_text())
    assert spec["compression"] == "medium"
    (src / "b.txt").write_text("b" * 10_000)
    wait_equal(src, in_image(image, src))
    target = str(tmp_path / "r")
    args = ["--image", "alpha", "--live", "--to-server", alpha.api, "--target-path", target]
    assert console.refused("recover", "--repository", beta.api, *args, "--compression", "max") == -153
    jobs = console.json("jobs", "--server", beta.api)["jobs"]
    assert [j for j in jobs if j["type"] == "Data Recovery"] == []


def test_a_recovery_with_compression_equals_the_source(tmp_path: Path) -> None:
    with running_hosts(tmp_path, "alpha", "beta", "gamma") as (console, (alpha, beta, gamma)):
        src = tmp_path / "src"
        src.mkdir()
        copy_into(text_files(1, 4 << 20)[0], src / "text")
        (src / "random.bin").write_bytes(os.urandom(2 << 20))
        # The source compresses at minimum: the repository keeps those frames as they came,
        # and the recovery sends them on as they are stored.
        job, image = protect(console, alpha, beta, src, extra=("--compression", "minimum"))
        settle(console, alpha, job, src, image)

        def recover(target: Path, level: str) -> dict[str, Any]:
            out = console.json("recover", "--repository", beta.api, "--image", "alpha", "--live",
                               "--to-server", gamma.api, "--target-path", str(target),
                               "--compression", level)  # fmt: skip
            view: dict[str, Any] = wait_for(
                lambda: (v := job_show(console, beta, out["job"]))["status"] == "Recovered" and v,
                120, 0.2, what="the recovery",
            )  # fmt: skip
            return view

        packed = recover(tmp_path / "r-min", "maximum")
        assert_trees_equal(str(src), str(in_image(tmp_path / "r-min", src)))
        plain = recover(tmp_path / "r-none", "none")
        assert_trees_equal(str(src), str(in_image(tmp_path / "r-none", src)))
        assert packed["compression"] == "maximum" and plain["compression"] == "none"
        assert sent(plain)[0] == sent(packed)[0] >= 6 << 20
        assert sent(plain)[1] == sent(plain)[0]
        # Text ~4 MiB travels in well under half; the random 2 MiB as it is.
        assert sent(packed)[1] < (2 << 20) + 0.45 * (4 << 20)
        assert packed["wire_bytes"] < 0.6 * plain["wire_bytes"]


def test_a_level_change_on_a_running_recovery_applies_without_starting_over(tmp_path: Path) -> None:
    with running_hosts(tmp_path, "alpha", "beta", "gamma") as (console, (alpha, beta, gamma)):
        src = tmp_path / "src"
        (src / "a-random").mkdir(parents=True)
        for i in range(8):  # sent first (paths in order), plain at any level
            (src / "a-random" / f"{i}.bin").write_bytes(os.urandom(1 << 20))
        copy_into(text_files(1, 4 << 20)[0], src / "text")
        job, image = protect(console, alpha, beta, src)
        settle(console, alpha, job, src, image)
        # Held to 512 KB/s, the random 8 MiB take ~16 s: time to change the level before
        # the text's frames are made (the link buffers a few MiB ahead of the wire).
        args = ["--image", "alpha", "--live", "--to-server", gamma.api, "--target-path", str(tmp_path / "r")]
        rjob = console.json("recover", "--repository", beta.api, *args, "--bandwidth", "512")["job"]
        wait_for(
            lambda: sent(job_show(console, beta, rjob))[0] >= 1 << 20, 60, 0.1, what="a recovery under way"
        )
        console.json("job", "set", rjob, "--compression", "minimum", "--bandwidth", "0", "--server", beta.api)
        view: dict[str, Any] = wait_for(
            lambda: (v := job_show(console, beta, rjob))["status"] == "Recovered" and v, 120, 0.2,
            what="the recovery",
        )  # fmt: skip
        assert_trees_equal(str(src), str(in_image(tmp_path / "r", src)))
        total, compressed = sent(view)
        assert view["compression"] == "minimum" and total >= 12 << 20
        assert compressed < total - (2 << 20), "the text, read after the change, went compressed"
        connects = [e for e in beta.events() if e["id"] == ev.CONNECTED and e["fields"].get("job") == rjob]
        assert len(connects) == 1, "the link was not reopened, nothing started over"
