"""Repository history through the console: snapshots, points in time, ranges, retention,
check and stats, with real daemons over TLS on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.helpers.history import frozen_copy, now_iso, points, restore, settle
from tests.helpers.hosts import Console, TestHost, wait_for
from tests.helpers.protection import event_ids, in_image, protect, wait_session_closed
from tests.helpers.tree import assert_trees_equal, make_rich_tree

Hosts = tuple[Console, TestHost, TestHost]


def change_everything(src: Path) -> None:
    (src / "docs" / "random-0.bin").write_bytes(os.urandom(70_000))
    (src / "docs" / "name with spaces.txt").unlink()
    os.rename(src / "nested", src / "moved")
    os.chmod(src / "xattr.txt", 0o600)
    os.setxattr(src / "xattr.txt", "user.tv.color", b"red")
    (src / "new-dir").mkdir()
    (src / "new-dir" / "fresh.txt").write_text("fresh")
    with open(src / "links" / "hard-1", "r+b") as f:  # both names of the inode change
        f.write(b"CHANGED")


def test_snapshot_and_instants_reconstruct_the_tree_as_it_was(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src" / "data"
    make_rich_tree(str(src), seed=11)
    job, image = protect(console, alpha, beta, src, extra=("--cdp-days", "1"))
    t1 = settle(console, alpha, job, src, image)
    state1 = frozen_copy(src, tmp_path / "state1")

    snap = console.json("job", "snapshot", job, "--server", beta.api)
    assert snap["type"] == "User Request" and snap["status"] == "Ok"
    change_everything(src)
    t2 = settle(console, alpha, job, src, image)
    state2 = frozen_copy(src, tmp_path / "state2")
    (src / "docs" / "random-1.bin").unlink()
    (src / "new-dir" / "fresh.txt").write_text("fresher")
    settle(console, alpha, job, src, image)

    name = alpha.name
    restore(console, beta, name, tmp_path / "r-snap", "--snapshot", str(snap["id"]))
    assert_trees_equal(str(state1), str(in_image(tmp_path / "r-snap", src)))
    restore(console, beta, name, tmp_path / "r-t1", "--at", t1)
    assert_trees_equal(str(state1), str(in_image(tmp_path / "r-t1", src)))
    restore(console, beta, name, tmp_path / "r-t2", "--at", t2)
    assert_trees_equal(str(state2), str(in_image(tmp_path / "r-t2", src)))
    live = restore(console, beta, name, tmp_path / "r-live", "--live")
    assert_trees_equal(str(src), str(in_image(tmp_path / "r-live", src)))
    assert live["point"] == "live" and live["files"] > 10 and live["links"] == 1

    found = points(console, beta, name)
    assert [s["id"] for s in found["snapshots"]] == [snap["id"]]
    # A difference mirror (capture is a hint) may break the range; the last one is open.
    assert found["ranges"] and found["ranges"][-1]["end"] is None
    assert 9010 in event_ids(beta)


def test_restore_of_some_paths_only(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    make_rich_tree(str(src), seed=3)
    job, image = protect(console, alpha, beta, src)
    settle(console, alpha, job, src, image)
    out = tmp_path / "out"
    console.json(
        "restore", "--repository", beta.api, "--image", alpha.name, "--live",
        "--include", str(src / "docs"), str(src / "links"), "--to", str(out),
    )  # fmt: skip
    assert_trees_equal(str(src / "docs"), str(in_image(out, src / "docs")))
    assert_trees_equal(str(src / "links"), str(in_image(out, src / "links")))
    assert not in_image(out, src / "nested").exists()


def test_instant_outside_every_range_is_refused_naming_the_nearest(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    before = now_iso()
    time.sleep(0.05)
    job, image = protect(console, alpha, beta, src)
    settle(console, alpha, job, src, image)
    result = console.run(
        "restore", "--repository", beta.api, "--image", alpha.name, "--at", before,
        "--to", str(tmp_path / "out"), "--json", check=False,
    )  # fmt: skip
    assert result.returncode != 0
    error = json.loads(result.stdout)["error"]
    assert error["code"] == -1027
    first_range = points(console, beta, alpha.name)["ranges"][0]["start"]
    assert first_range[:19] in error["message"]
    assert not (tmp_path / "out" / "src").exists()
    assert console.refused("restore", "--repository", beta.api, "--image", "nosuch", "--live", "--to",
                           str(tmp_path / "o2")) == -1029  # fmt: skip
    assert console.refused("restore", "--repository", beta.api, "--image", alpha.name, "--snapshot", "99",
                           "--to", str(tmp_path / "o3")) == -2403  # fmt: skip
    assert console.refused("restore", "--repository", beta.api, "--image", alpha.name, "--at", "yesterday",
                           "--to", str(tmp_path / "o4")) == -114  # fmt: skip


def test_a_stopped_link_ends_the_range_and_a_completed_mirror_opens_the_next(
    two_hosts: Hosts, tmp_path: Path
) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("one")
    job, image = protect(console, alpha, beta, src)
    settle(console, alpha, job, src, image)
    console.run("job", "stop", job, "--server", alpha.api)
    wait_for(lambda: points(console, beta, alpha.name)["ranges"][-1]["end"], 20, what="the range to end")
    (src / "a.txt").write_text("two")  # while stopped: not valid for recovery until remirrored
    console.run("job", "resume", job, "--server", alpha.api)
    settle(console, alpha, job, src, image)
    ranges = wait_for(
        lambda: (r := points(console, beta, alpha.name)["ranges"]) and len(r) == 2 and r, 20, what="2 ranges"
    )
    assert ranges[0]["end"] is not None and ranges[1]["end"] is None
    assert ranges[0]["end"] <= ranges[1]["start"]
    gap = ranges[0]["end"]
    out = restore(console, beta, alpha.name, tmp_path / "r-first", "--at", ranges[0]["start"])
    assert out["files"] == 1
    assert (in_image(tmp_path / "r-first", src) / "a.txt").read_text() == "one"
    # Inside the gap between the ranges (stopped, then remirroring), an instant is refused.
    gap_t = datetime.fromisoformat(gap).timestamp() + 0.01
    assert gap_t < datetime.fromisoformat(ranges[1]["start"]).timestamp()
    inside_gap = datetime.fromtimestamp(gap_t).astimezone().isoformat(timespec="microseconds")
    assert console.refused("restore", "--repository", beta.api, "--image", alpha.name, "--at", inside_gap,
                           "--to", str(tmp_path / "gap")) == -1027  # fmt: skip


def test_scheduled_snapshots_are_taken_and_deferred_while_the_image_is_bad(
    two_hosts: Hosts, tmp_path: Path
) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    job, image = protect(console, alpha, beta, src, extra=("--snapshot-every", "2s"))
    settle(console, alpha, job, src, image)

    def scheduled() -> list[dict[str, Any]]:
        return [s for s in points(console, beta, alpha.name)["snapshots"] if s["type"] == "Scheduled"]

    wait_for(lambda: len(scheduled()) >= 1, 15, what="a scheduled snapshot")
    assert 4404 in event_ids(beta)
    console.run("job", "stop", job, "--server", alpha.api)
    wait_for(lambda: 4403 in event_ids(beta), 15, what="event 4403 (deferred)")
    taken = len(scheduled())
    time.sleep(2.5)
    assert len(scheduled()) == taken  # no snapshot of a bad image
    console.run("job", "resume", job, "--server", alpha.api)
    settle(console, alpha, job, src, image)
    wait_for(lambda: len(scheduled()) > taken, 15, what="the deferred snapshot")


def test_prune_keeps_snapshots_and_live_data_and_drops_the_rest(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    (src / "kept.bin").write_bytes(os.urandom(200_000))
    (src / "churn.bin").write_bytes(os.urandom(300_000))
    job, image = protect(console, alpha, beta, src)  # --cdp-days 0: live + snapshots only
    settle(console, alpha, job, src, image)
    snap = console.json("job", "snapshot", job, "--server", beta.api)
    pinned = frozen_copy(src, tmp_path / "pinned")
    for _ in range(8):  # dead versions outweigh the live ones: their pack is rewritten
        (src / "churn.bin").write_bytes(os.urandom(300_000))
        settle(console, alpha, job, src, image)
    before = console.json("repo", "stats", "--repository", beta.api)
    pruned = console.json("repo", "prune", "--repository", beta.api)
    after = console.json("repo", "stats", "--repository", beta.api)
    assert pruned["versions"] >= 6 and pruned["chunks"] >= 6  # 7 dead versions; one may still be arriving
    assert after["stored_bytes"] < before["stored_bytes"]
    assert 9015 in event_ids(beta)
    restore(console, beta, alpha.name, tmp_path / "r-snap", "--snapshot", str(snap["id"]))
    assert_trees_equal(str(pinned), str(in_image(tmp_path / "r-snap", src)))
    restore(console, beta, alpha.name, tmp_path / "r-live", "--live")
    assert_trees_equal(str(src), str(in_image(tmp_path / "r-live", src)))
    check = console.json("repo", "check", "--repository", beta.api, "--read-data")
    assert check["ok"] and check["checked_chunks"] >= 3


def test_stats_report_dedup_and_compression(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    text = b"".join(b"line %d of a very compressible text file\n" % i for i in range(40_000))
    (src / "text.txt").write_bytes(text)
    (src / "copy.txt").write_bytes(text)  # the same chunks twice: stored once
    job, image = protect(console, alpha, beta, src)
    settle(console, alpha, job, src, image)
    stats = console.json("repo", "stats", "--repository", beta.api)
    for key in ("logical_bytes", "stored_bytes", "unique_bytes", "dedup_ratio", "compression_ratio"):
        assert key in stats
    assert stats["logical_bytes"] >= 2 * len(text)
    assert stats["dedup_ratio"] >= 1.9
    assert stats["compression_ratio"] > 3
    assert stats["stored_bytes"] < len(text) / 3


def test_an_interrupted_restore_resumes_where_it_stopped(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    for i in range(80):
        (src / f"f{i:03d}.bin").write_bytes(os.urandom(1 << 20))
    job, image = protect(console, alpha, beta, src)
    settle(console, alpha, job, src, image)
    out = tmp_path / "out"
    env = {**os.environ, "TWINVAULT_CONFIG": str(console.config_dir)}
    argv = [sys.executable, "-m", "twinvault.cli.main", "restore", "--repository", beta.api,
            "--image", alpha.name, "--live", "--to", str(out), "--json"]  # fmt: skip
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        restored = in_image(out, src)
        wait_for(lambda: restored.exists() and len(list(restored.glob("f*.bin"))) >= 20, 60, 0.01,
                 what="a restore half done")  # fmt: skip
    finally:
        first.kill()
        first.wait()
    assert (out / ".twinvault-restore-state.json").exists()
    again = console.json(
        "restore", "--repository", beta.api, "--image", alpha.name, "--live", "--to", str(out)
    )
    assert again["resumed_after"] > 0 and again["failed"] == []  # did not start over
    assert not (out / ".twinvault-restore-state.json").exists()
    assert_trees_equal(str(src), str(restored))


def test_schedules_are_disabled_enabled_and_snapshots_deleted(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    job, image = protect(console, alpha, beta, src, extra=("--snapshot-every", "1s"))
    settle(console, alpha, job, src, image)

    def scheduled() -> list[dict[str, Any]]:
        return [s for s in points(console, beta, alpha.name)["snapshots"] if s["type"] == "Scheduled"]

    wait_for(lambda: len(scheduled()) >= 1, 15, what="a scheduled snapshot")
    off = console.json("job", "schedule", job, "--disable", "--server", alpha.api)  # asks the repository
    assert off["enabled"] is False and 4407 in event_ids(beta)
    count = len(scheduled())
    time.sleep(2.5)
    assert len(scheduled()) == count
    on = console.json("job", "schedule", job, "--enable", "--every", "2s", "--server", beta.api)
    assert on["enabled"] and on["every_s"] == 2 and on["next"]
    assert {4406, 4404} <= set(event_ids(beta))
    wait_for(lambda: len(scheduled()) > count, 15, what="snapshots again")

    first = scheduled()[0]["id"]
    console.json("snapshot", "delete", str(first), "--repository", beta.api, "--image", alpha.name)
    assert first not in [s["id"] for s in points(console, beta, alpha.name)["snapshots"]]
    assert console.refused("snapshot", "delete", str(first), "--repository", beta.api, "--image",
                           alpha.name) == -2403  # fmt: skip
    assert console.refused("job", "schedule", job, "--every", "soon", "--server", beta.api) == -139


def test_a_restore_says_what_it_replaced_and_leaves_other_files(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("from the image")
    (src / "b.txt").write_text("b")
    job, image = protect(console, alpha, beta, src)
    settle(console, alpha, job, src, image)
    out = tmp_path / "out"
    there = in_image(out, src)
    there.mkdir(parents=True)
    (there / "a.txt").write_text("local edit")
    (there / "mine.txt").write_text("not in the image")
    reply = restore(console, beta, alpha.name, out, "--live")
    assert reply["replaced"] == 1 and reply["replaced_paths"] == [str(src / "a.txt")]
    assert (there / "a.txt").read_text() == "from the image"
    assert (there / "mine.txt").read_text() == "not in the image"


def test_a_file_the_image_holds_but_its_index_never_committed_is_sent_again(
    two_hosts: Hosts, tmp_path: Path
) -> None:
    """A repository killed between linking a file into the image and the group commit
    of its op leaves the file there, whole, with nothing in the image index or the
    history: the next difference mirror must send it again, or no point in time would
    hold it. Here the applier's part is played by a copy made while the job is stopped."""
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    job, image = protect(console, alpha, beta, src)
    settle(console, alpha, job, src, image)
    console.run("job", "stop", job, "--server", alpha.api)
    wait_session_closed(console, beta, job)  # a close after the copy would vouch for it
    (src / "late.bin").write_bytes(os.urandom(30_000))
    shutil.copy2(src / "late.bin", in_image(image, src) / "late.bin")  # size, time, mode alike
    dir_times = os.stat(src)
    os.utime(in_image(image, src), ns=(dir_times.st_atime_ns, dir_times.st_mtime_ns))
    console.run("job", "resume", job, "--server", alpha.api)
    settle(console, alpha, job, src, image)
    view = console.json("job", "show", job, "--server", alpha.api)
    assert view["total_sent_bytes"] == 30_000  # late.bin again; a.txt skipped
    restore(console, beta, alpha.name, tmp_path / "out", "--live")
    assert_trees_equal(str(src), str(in_image(tmp_path / "out", src)))
