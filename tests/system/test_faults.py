"""Faults: kill -9 either daemon, cut the network, fill the repository disk, overflow the queue.

Pass = after the scenario settles, the repository image equals the source tree byte
for byte with metadata, the right events were logged, and no daemon crashed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers.faults import NetnsPair, fill_filesystem, small_filesystem
from tests.helpers.history import restore
from tests.helpers.hosts import Console, TestHost, make_host, running_hosts, wait_for
from tests.helpers.protection import event_ids, in_image, job_show, protect, wait_equal, wait_idle
from tests.helpers.tree import assert_trees_equal

pytestmark = pytest.mark.system


@contextmanager
def writer(root: Path, *, pause: float = 0.01) -> Iterator[threading.Event]:
    """Keep changing files under ``root`` (create, rewrite, rename, delete) until stopped."""
    stop = threading.Event()

    def run() -> None:
        i = 0
        while not stop.is_set():
            d = root / f"w{i % 7}"
            d.mkdir(exist_ok=True)
            (d / f"f{i}").write_bytes(os.urandom(1000 + (i * 37) % 50_000))
            if i % 5 == 0 and i:
                os.replace(d / f"f{i}", d / f"moved{i}")
            if i % 11 == 0 and i > 20:
                old = root / f"w{(i - 3) % 7}" / f"f{i - 3}"
                if old.exists():
                    old.unlink()
            i += 1
            time.sleep(pause)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield stop
    finally:
        stop.set()
        t.join()


def _big_tree(root: Path, files: int, size: int) -> None:
    for i in range(files):
        d = root / f"d{i % 20}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(os.urandom(size))


def test_source_killed_mid_mirror_resumes_where_it_stopped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _big_tree(src, 400, 256 * 1024)  # 100 MiB
    with running_hosts(tmp_path, "alpha", "beta") as (console, (alpha, beta)):
        job, image = protect(console, alpha, beta, src)
        wait_for(
            lambda: job_show(console, alpha, job)["mirror"]["percent_complete"] >= 50,
            60,
            0.05,
            what="the mirror to pass half way",
        )
        alpha.kill9()
        alpha.start(console)
        view = wait_idle(console, alpha, job, timeout=120)
        wait_equal(src, in_image(image, src))
        # The second run skipped what the first had delivered: it resumed, not restarted.
        assert view["mirror"]["skipped_bytes"] >= 0.25 * 400 * 256 * 1024
        assert view["total_sent_bytes"] <= 0.75 * 400 * 256 * 1024


@pytest.mark.parametrize("victim", ["source", "repository"])
def test_daemon_killed_mid_replication_loses_nothing(tmp_path: Path, victim: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with running_hosts(tmp_path, "alpha", "beta") as (console, (alpha, beta)):
        # A file the writer renames or deletes while the source is dead is an orphan in the
        # image after the restart's difference mirror: the guide keeps orphans unless asked.
        job, image = protect(console, alpha, beta, src, extra=("--delete-orphans",))
        wait_idle(console, alpha, job)
        killed = alpha if victim == "source" else beta
        with writer(src):
            time.sleep(1.5)
            killed.kill9()
            # Changes while a daemon is dead: with the source down only a mirror finds
            # them; with the repository down the source queues them.
            time.sleep(1.0 if victim == "source" else 2.0)
            killed.start(console)
            time.sleep(1.5)
        wait_idle(console, alpha, job, timeout=60)
        wait_equal(src, in_image(image, src), timeout=60)
        if victim == "repository":
            ids = event_ids(alpha)
            assert 4017 in ids and 4010 in ids  # disconnected, then auto-reconnected
        # History survived too: the kill hit pack writes and journal appends mid-way.
        time.sleep(0.3)
        check = console.json("repo", "check", "--repository", beta.api, "--read-data")
        assert check["ok"], check
        out = restore(console, beta, "alpha", tmp_path / "restored", "--live")
        assert out["failed"] == []
        assert_trees_equal(str(src), str(in_image(tmp_path / "restored", src)))


def test_repository_disk_full_is_retried_until_space_is_freed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _big_tree(src, 12, 256 * 1024)  # 3 MiB
    with (
        small_filesystem(16) as mount_str,
        running_hosts(tmp_path, "alpha", "beta") as (console, (alpha, beta)),
    ):
        mount = Path(mount_str)
        # The image root exists; its content will not fit.
        (mount / "images" / "alpha").mkdir(parents=True)
        filler = Path(fill_filesystem(mount))
        job, image = protect(console, alpha, beta, src, extra=("--path-prefix", str(mount / "images")))
        wait_for(lambda: 4110 in event_ids(beta), 30, what="a disk-full event (4110)")
        assert job_show(console, beta, job)["target_status"] == "Retrying"
        filler.unlink()
        wait_idle(console, alpha, job, timeout=90)
        wait_equal(src, in_image(image, src))
        assert 4120 in event_ids(beta)  # completed after retries
        assert 4150 not in event_ids(beta)  # nothing discarded


def test_queue_exhaustion_auto_disconnects_and_recovers(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    config = "[config]\nmemory_max_mb = 1\ndisk_max_mb = 2\nmin_free_mb = 1\n"
    with running_hosts(tmp_path, "alpha", "beta", extra_config=config) as (console, (alpha, beta)):
        job, image = protect(console, alpha, beta, src)
        wait_idle(console, alpha, job)
        beta.kill9()
        for i in range(40):  # 5 MiB of changes: more than memory + disk queue hold
            (src / f"f{i}").write_bytes(os.urandom(128 * 1024))
        wait_for(
            lambda: 4007 in event_ids(alpha) and 4008 in event_ids(alpha),
            30,
            what="auto-disconnect events 4007/4008",
        )
        beta.start(console)
        wait_idle(console, alpha, job, timeout=60)
        wait_equal(src, in_image(image, src))
        assert 4010 in event_ids(alpha)


def test_network_cut_for_30_seconds_while_writes_continue(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with NetnsPair() as pair:
        console = Console(tmp_path / "console", netns=pair.ns_a)
        alpha = make_host(tmp_path, "alpha", console, netns=pair.ns_a, address=pair.addr_a)
        beta = make_host(tmp_path, "beta", console, netns=pair.ns_b, address=pair.addr_b)
        hosts: list[TestHost] = [alpha, beta]
        try:
            for h in hosts:
                h.start(console)
            job, image = protect(console, alpha, beta, src)
            wait_idle(console, alpha, job)
            with writer(src, pause=0.05):
                time.sleep(1)
                pair.cut()
                time.sleep(30)
                pair.restore()
                time.sleep(1)
            wait_idle(console, alpha, job, timeout=90)
            wait_equal(src, in_image(image, src), timeout=60)
            ids = event_ids(alpha)
            assert 4017 in ids and 4009 in ids and 4010 in ids
        finally:
            for h in hosts:
                h.stop()


def test_clean_shutdown_keeps_queued_changes_a_mirror_cannot_see(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "doc").write_bytes(b"unchanging content")
    with running_hosts(tmp_path, "alpha", "beta") as (console, (alpha, beta)):
        job, image = protect(console, alpha, beta, src)
        wait_idle(console, alpha, job)
        beta.kill9()
        # Size and time stay the same: only the queued op carries this change.
        os.setxattr(src / "doc", "user.label", b"important")
        time.sleep(1.0)
        alpha.stop()  # SIGTERM: the queue is written to disk
        assert (alpha.home / "queue" / job / "saved.q").exists()
        beta.start(console)
        alpha.start(console)
        wait_idle(console, alpha, job, timeout=60)
        wait_equal(src, in_image(image, src))
