"""Protection jobs through the console, with real daemons over TLS on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.helpers.hosts import Console, TestHost, wait_for
from tests.helpers.protection import (
    event_ids,
    in_image,
    job_show,
    protect,
    wait_commits_quiet,
    wait_equal,
    wait_idle,
)
from tests.helpers.tree import make_rich_tree, rich_file_acl

Hosts = tuple[Console, TestHost, TestHost]


def test_initial_mirror_makes_an_exact_image(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src" / "data"
    make_rich_tree(src, seed=7)
    job, image = protect(console, alpha, beta, src)
    view = wait_idle(console, alpha, job)
    wait_equal(src, in_image(image, src))
    assert view["type"] == "Data Protection"
    assert view["status"] == "Protecting"
    assert view["mirror"]["percent_complete"] == 100.0
    assert view["total_sent_bytes"] > 0
    for key in (
        "type",
        "status",
        "source",
        "target",
        "image_location",
        "total_sent_bytes",
        "total_sent_compressed_bytes",
        "transmit_status",
        "target_status",
        "recovery_available",
        "time_remaining_s",
    ):
        assert key in view
    assert set(view["mirror"]) >= {"status", "percent_complete", "remaining_bytes", "skipped_bytes"}
    assert set(view["replication"]) >= {"status", "bytes_sent", "bytes_sent_compressed", "bytes_queued"}
    jobs = console.json("jobs", "--server", alpha.api)["jobs"]
    assert [j["id"] for j in jobs] == [job]
    assert jobs[0]["health"] == "ok"
    assert 4023 in event_ids(alpha)
    # The live status the README's main job shows (rich's Live over the console).
    live = console.run("jobs", "--server", alpha.api, "--watch", "--for", "1")
    # Not a terminal: rich draws 80 columns, where every cell of the table wraps.
    assert f"jobs on {alpha.api}" in live.stdout


def test_replication_follows_every_kind_of_change(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    outside = tmp_path / "outside"
    (src / "keep").mkdir(parents=True)
    outside.mkdir()
    (src / "keep" / "old.txt").write_text("old")
    job, image = protect(console, alpha, beta, src)
    wait_idle(console, alpha, job)
    dst = in_image(image, src)

    (src / "created.txt").write_text("created")
    with open(src / "written.bin", "wb") as f:
        f.write(os.urandom(300_000))
        f.flush()
        os.fsync(f.fileno())
    with open(src / "written.bin", "r+b") as f:
        f.seek(100_000)
        f.write(b"x" * 5000)
    (src / "truncated.bin").write_bytes(os.urandom(200_000))
    os.truncate(src / "truncated.bin", 1234)
    (src / "to-rename.txt").write_text("moving")
    os.rename(src / "to-rename.txt", src / "renamed.txt")
    (src / "dir-a" / "inner").mkdir(parents=True)
    (src / "dir-a" / "inner" / "f").write_text("in a dir")
    os.rename(src / "dir-a", src / "dir-b")
    (outside / "moved-in.txt").write_text("from outside")
    os.rename(outside / "moved-in.txt", src / "moved-in.txt")
    (src / "leaving.txt").write_text("bye")
    time.sleep(0.3)
    os.rename(src / "leaving.txt", outside / "leaving.txt")
    (src / "deleted.txt").write_text("gone soon")
    time.sleep(0.3)
    os.unlink(src / "deleted.txt")
    (src / "empty-dir").mkdir()
    (src / "removed-dir").mkdir()
    time.sleep(0.3)
    os.rmdir(src / "removed-dir")
    os.chmod(src / "keep" / "old.txt", 0o640)
    os.chown(src / "created.txt", 1234, 4321)
    os.utime(src / "keep", ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    os.setxattr(src / "created.txt", "user.colour", b"blue")
    os.setxattr(src / "keep" / "old.txt", "system.posix_acl_access", rich_file_acl(1234, 4))
    os.symlink("keep/old.txt", src / "link-rel")
    os.symlink("/nowhere/at/all", src / "link-dangling")
    os.link(src / "created.txt", src / "hard-link")
    with open(src / "sparse.img", "wb") as f:
        f.seek(8 << 20)
        f.write(b"tail")
        f.seek(1 << 20)
        f.write(os.urandom(70_000))
    wait_equal(src, dst, timeout=30)
    assert not (in_image(image, outside)).exists()
    view = job_show(console, alpha, job)
    assert view["replication"]["bytes_sent"] > 0
    assert view["replication"]["status"] == "Replicating"


def test_difference_mirror_skips_unchanged_files(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    for i in range(50):
        (src / f"f{i}").write_bytes(os.urandom(20_000))
    job, image = protect(console, alpha, beta, src)
    wait_idle(console, alpha, job)
    console.run("job", "stop", job, "--server", alpha.api)
    assert job_show(console, alpha, job)["status"] == "Stopped"
    (src / "f0").write_bytes(os.urandom(20_000))  # changed while stopped: capture is off
    (src / "new").write_bytes(b"n" * 1000)
    time.sleep(0.5)
    assert (in_image(image, src) / "f1").exists()  # stop keeps the image
    console.run("job", "resume", job, "--server", alpha.api)
    view = wait_idle(console, alpha, job)
    wait_equal(src, in_image(image, src))
    assert view["mirror"]["skipped_bytes"] == 49 * 20_000
    assert view["total_sent_bytes"] == 21_000


def test_checksum_verify_reports_and_remirror_fixes(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(100_000))
    (src / "b.bin").write_bytes(os.urandom(1000))
    job, image = protect(console, alpha, beta, src)
    wait_idle(console, alpha, job)
    wait_commits_quiet(beta, job)  # else the repository's next commit may vouch for the damage
    tampered = in_image(image, src) / "a.bin"
    st = tampered.stat()
    with open(tampered, "r+b") as f:
        f.seek(5000)
        f.write(b"corrupt!")
    os.utime(tampered, ns=(st.st_atime_ns, st.st_mtime_ns))
    # Its ctime says it changed after the last group commit: even a quick verify sees it.
    proc = console.run("job", "verify", job, "--server", alpha.api, "--json", check=False)
    assert proc.returncode == 3 and str(src / "a.bin") in json.loads(proc.stdout)["differences"]
    # Once a later commit covers that instant, only the content can tell (silent damage).
    (src / "c.txt").write_text("a later change, committed after the damage")
    wait_for(lambda: (in_image(image, src) / "c.txt").exists(), 20, what="the later change")
    # Size and time still agree.
    wait_for(lambda: console.json("job", "verify", job, "--server", alpha.api)["difference_count"] == 0, 20)
    proc = console.run("job", "verify", job, "--checksum", "--server", alpha.api, "--json", check=False)
    assert proc.returncode == 3
    report = json.loads(proc.stdout)
    assert report["differences"] == [str(src / "a.bin")]
    console.json("job", "verify", job, "--checksum", "--remirror", "--server", alpha.api)
    wait_equal(src, in_image(image, src))
    assert console.json("job", "verify", job, "--checksum", "--server", alpha.api)["difference_count"] == 0


def test_orphans_are_reported_and_deleted_only_when_asked(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    (src / "kept").write_text("kept")
    prefix = tmp_path / "repo"
    # An image that already holds files the source lacks (e.g. deleted while unprotected).
    stale = Path(str(prefix / "alpha") + str(src))
    (stale / "old-dir").mkdir(parents=True)
    (stale / "old-dir" / "x").write_text("x")
    (stale / "orphan.txt").write_text("orphan")
    job, _ = protect(console, alpha, beta, src, extra=("--path-prefix", str(prefix)))
    view = wait_idle(console, alpha, job)
    assert view["mirror"]["orphans"] == 2
    assert sorted(view["mirror"]["orphan_paths"]) == [str(src / "old-dir"), str(src / "orphan.txt")]
    assert (stale / "orphan.txt").exists()
    assert view["health"] == "warning"
    assert 9004 in event_ids(alpha)
    console.run("job", "delete", job, "--server", alpha.api)
    job2, _ = protect(console, alpha, beta, src, extra=("--path-prefix", str(prefix), "--delete-orphans"))
    wait_idle(console, alpha, job2)
    wait_equal(src, stale)


def test_two_sources_into_one_repository_and_two_jobs_from_one_source(tmp_path: Path) -> None:
    from tests.helpers.hosts import running_hosts

    with running_hosts(tmp_path, "alpha", "gamma", "beta") as (console, (alpha, gamma, beta)):
        a1, a2, g = tmp_path / "a1", tmp_path / "a2", tmp_path / "g"
        for d, seed in ((a1, 1), (a2, 2), (g, 3)):
            make_rich_tree(d, seed=seed)
        j1, img_a = protect(console, alpha, beta, a1)
        j2, img_a2 = protect(console, alpha, beta, a2)
        j3, img_g = protect(console, gamma, beta, g)
        assert img_a == img_a2 and img_a != img_g
        for host, job in ((alpha, j1), (alpha, j2), (gamma, j3)):
            wait_idle(console, host, job)
        wait_equal(a1, in_image(img_a, a1))
        wait_equal(a2, in_image(img_a, a2))
        wait_equal(g, in_image(img_g, g))
        (a2 / "late.txt").write_text("late")
        (g / "late.txt").write_text("late g")
        wait_equal(a2, in_image(img_a, a2))
        wait_equal(g, in_image(img_g, g))
        images = console.json("images", "--repository", beta.api)["images"]
        assert sorted(i["name"] for i in images) == ["alpha", "gamma"]
        assert len(console.json("jobs", "--server", beta.api)["jobs"]) == 3


def test_delete_job_stops_updating_and_keeps_the_image(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    job, image = protect(console, alpha, beta, src)
    wait_idle(console, alpha, job)
    console.run("job", "delete", job, "--server", alpha.api)
    (src / "b").write_text("b")
    time.sleep(1.5)
    assert (in_image(image, src) / "a").exists()
    assert not (in_image(image, src) / "b").exists()
    assert console.json("jobs", "--server", alpha.api)["jobs"] == []
    assert console.json("jobs", "--server", beta.api)["jobs"] == []
    err = console.json("job", "show", job, "--server", alpha.api, check=False)
    assert err["error"]["code"] == -107


def test_inotify_fallback_replicates(tmp_path: Path) -> None:
    from tests.helpers.hosts import running_hosts

    with running_hosts(tmp_path, "alpha", "beta", extra_config="[config]\ncapture = 'inotify'\n") as (
        console,
        (alpha, beta),
    ):
        src = tmp_path / "src"
        (src / "d").mkdir(parents=True)
        job, image = protect(console, alpha, beta, src)
        wait_idle(console, alpha, job)
        assert job_show(console, alpha, job)["capture"] == "inotify"
        (src / "d" / "new" / "deeper").mkdir(parents=True)
        (src / "d" / "new" / "deeper" / "file").write_bytes(os.urandom(5000))
        os.rename(src / "d", src / "e")
        wait_equal(src, in_image(image, src))


def test_image_is_plain_browsable_files(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    (src / "report.txt").write_text("quarterly numbers\n")
    job, image = protect(console, alpha, beta, src)
    wait_idle(console, alpha, job)
    out = subprocess.run(["cat", str(in_image(image, src) / "report.txt")], capture_output=True, text=True)
    assert out.stdout == "quarterly numbers\n"
    assert (
        shutil.which("diff") is None
        or subprocess.run(["diff", "-r", str(src), str(in_image(image, src))]).returncode == 0
    )
    wait_for(lambda: True)


def test_forget_stops_monitoring_and_import_brings_the_job_back(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    job, image = protect(console, alpha, beta, src)
    wait_idle(console, alpha, job)
    console.run("job", "forget", job)
    assert console.json("jobs", "--server", alpha.api)["jobs"] == []
    (src / "still-protected").write_text("the job runs on while not monitored")
    wait_equal(src, in_image(image, src))
    imported = console.json("job", "import", "--server", alpha.api)
    assert imported["imported"] == [job]
    assert [j["id"] for j in console.json("jobs", "--server", alpha.api)["jobs"]] == [job]
