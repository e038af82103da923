"""Mounts of a point in time through the console: real daemons over TLS on loopback, real
FUSE mounts on the repository host, compared with frozen copies of the source."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.history import frozen_copy, now_iso, points, restore, settle
from tests.helpers.hosts import Console, TestHost, running_hosts, wait_for
from tests.helpers.protection import in_image, protect
from tests.helpers.tree import assert_trees_equal, make_rich_tree
from tests.integration.test_history import change_everything
from twinvault.daemon.mount_service import mounted_paths

Hosts = tuple[Console, TestHost, TestHost]


@pytest.fixture(autouse=True)
def no_mount_left_behind(tmp_path: Path) -> Iterator[None]:
    """Whatever a failed test leaves (a mount process, a mount under tmp_path) goes."""
    yield
    for record in tmp_path.glob("home-*/repository/mounts/*.json"):
        with contextlib.suppress(ProcessLookupError, ValueError, KeyError):
            os.killpg(int(json.loads(record.read_text())["pid"]), signal.SIGKILL)
    for point in mounted_paths():
        if point.startswith(str(tmp_path)):
            subprocess.run(["fusermount3", "-u", "-z", point], check=False)
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def mount(console: Console, repo: TestHost, image: str, at: Path, *point: str) -> dict[str, Any]:
    at.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = console.json("mount", "--repository", repo.api, "--image", image, *point, str(at))
    assert str(at) in mounted_paths()
    return out


def umount(console: Console, repo: TestHost, at: Path) -> None:
    console.json("umount", "--repository", repo.api, str(at))
    assert str(at) not in mounted_paths()
    assert os.listdir(at) == []


def mounts(console: Console, repo: TestHost) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = console.json("mounts", "--repository", repo.api)["mounts"]
    return found


def test_live_snapshot_and_instant_mounts_show_the_tree_as_it_was(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src" / "data"
    make_rich_tree(str(src), seed=21)
    (src / "big.bin").write_bytes(os.urandom(3 << 20))  # many chunks: read by offset
    job, image = protect(console, alpha, beta, src, extra=("--cdp-days", "1"))
    settle(console, alpha, job, src, image)
    state1 = frozen_copy(src, tmp_path / "state1")
    snap = console.json("job", "snapshot", job, "--server", beta.api)
    change_everything(src)
    t2 = settle(console, alpha, job, src, image)
    state2 = frozen_copy(src, tmp_path / "state2")
    (src / "docs" / "random-1.bin").unlink()
    (src / "new-dir" / "fresh.txt").write_text("fresher")
    settle(console, alpha, job, src, image)

    name = alpha.name
    m_snap = tmp_path / "m-snap"
    m_t2 = tmp_path / "m-t2"
    m_live = tmp_path / "m-live"
    mount(console, beta, name, m_snap, "--snapshot", str(snap["id"]))
    at_t2 = mount(console, beta, name, m_t2, "--at", t2)
    live = mount(console, beta, name, m_live, "--live")
    assert live["point"] == "live" and at_t2["point"] == t2
    assert {m["mountpoint"] for m in mounts(console, beta)} == {str(m_snap), str(m_t2), str(m_live)}

    # Three instants served at once, each exactly as it was.
    assert_trees_equal(str(state1), str(in_image(m_snap, src)))
    assert_trees_equal(str(state2), str(in_image(m_t2, src)))
    assert_trees_equal(str(src), str(in_image(m_live, src)))

    # Hard links: one inode, two names; the mount is read-only.
    one, two = (os.stat(in_image(m_live, src) / "links" / n) for n in ("hard-1", "hard-2"))
    assert one.st_ino == two.st_ino and one.st_nlink == two.st_nlink == 2
    with pytest.raises(OSError):
        (in_image(m_live, src) / "xattr.txt").write_text("no")
    # A read in the middle of a large file returns exactly those bytes.
    with open(in_image(m_t2, src) / "big.bin", "rb") as f:
        f.seek(1_234_567)
        assert f.read(100_000) == (src / "big.bin").read_bytes()[1_234_567:1_334_567]

    for at in (m_snap, m_t2, m_live):
        umount(console, beta, at)
    assert mounts(console, beta) == []


def test_bad_points_are_refused_with_the_catalogs_codes(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    before = now_iso()
    time.sleep(0.05)
    job, image = protect(console, alpha, beta, src)
    settle(console, alpha, job, src, image)
    at = tmp_path / "m"
    at.mkdir()

    def refused(*args: str) -> dict[str, Any]:
        proc = console.run("mount", "--repository", beta.api, *args, str(at), "--json", check=False)
        assert proc.returncode != 0
        assert str(at) not in mounted_paths()
        error: dict[str, Any] = json.loads(proc.stdout)["error"]
        assert f"error {error['code']}:" in proc.stderr
        return error

    outside = refused("--image", alpha.name, "--at", before)
    assert outside["code"] == -1027
    first_range = points(console, beta, alpha.name)["ranges"][0]["start"]
    assert first_range[:19] in outside["message"] and "nearest valid instants" in outside["message"]
    assert refused("--image", "nosuch", "--live")["code"] == -1029
    assert refused("--image", alpha.name, "--snapshot", "99")["code"] == -2403
    assert refused("--image", alpha.name, "--at", "yesterday")["code"] == -114
    assert mounts(console, beta) == []


def test_bad_mount_points_are_refused(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    job, image = protect(console, alpha, beta, src)
    settle(console, alpha, job, src, image)

    def refused(at: Path) -> int:
        return console.refused("mount", "--repository", beta.api, "--image", alpha.name, "--live", str(at))

    assert refused(tmp_path / "missing") == -1040
    (tmp_path / "a-file").write_text("x")
    assert refused(tmp_path / "a-file") == -1040
    full = tmp_path / "full"
    full.mkdir()
    (full / "something").write_text("x")
    assert refused(full) == -1041
    busy = tmp_path / "busy"
    busy.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(busy)], check=True)
    try:
        assert refused(busy) == -1042
        # Unmounting what twinvault did not mount is refused too, and leaves it mounted.
        assert console.refused("umount", "--repository", beta.api, str(busy)) == -1044
        assert str(busy) in mounted_paths()
    finally:
        subprocess.run(["umount", str(busy)], check=True)
    ours = tmp_path / "ours"
    mount(console, beta, alpha.name, ours, "--live")
    assert refused(ours) == -1042  # already a twinvault mount
    umount(console, beta, ours)
    assert console.refused("umount", "--repository", beta.api, str(ours)) == -1044
    assert console.refused("umount", "--repository", beta.api, str(tmp_path / "never")) == -1044


def test_without_fuse_a_mount_names_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A repository host whose PATH has no fusermount3 and whose pyfuse3 cannot load.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = tmp_path / "fake-modules"
    fake.mkdir()
    (fake / "pyfuse3.py").write_text("raise ImportError('libfuse3.so.3: cannot open shared object file')\n")
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("PYTHONPATH", f"{fake}:{os.environ.get('PYTHONPATH', '')}")
    with running_hosts(tmp_path, "gamma") as (console, (gamma,)):
        at = tmp_path / "m"
        at.mkdir()
        proc = console.run(
            "mount", "--repository", gamma.api, "--image", "any", "--live", str(at), "--json", check=False
        )
        error = json.loads(proc.stdout)["error"]
        assert error["code"] == -1043
        for words in ("fuse3", "pyfuse3", "fusermount3", "libfuse3.so.3"):
            assert words in error["message"], error["message"]


def test_a_killed_mount_process_and_a_killed_daemon_leave_nothing_mounted(
    tmp_path: Path,
) -> None:
    with running_hosts(tmp_path, "alpha", "beta") as (console, (alpha, beta)):
        src = tmp_path / "src"
        src.mkdir()
        (src / "a.txt").write_text("a")
        job, image = protect(console, alpha, beta, src)
        settle(console, alpha, job, src, image)

        # A mount process killed outright: the daemon sees it go and cleans the dead mount
        # ("Transport endpoint is not connected") so the mount point serves again.
        first = tmp_path / "first"
        pid = mount(console, beta, alpha.name, first, "--live")["pid"]
        os.killpg(pid, signal.SIGKILL)
        wait_for(lambda: str(first) not in mounted_paths(), 20, what="the dead mount to be cleaned")
        wait_for(lambda: mounts(console, beta) == [], 20, what="the mount to be forgotten")
        mount(console, beta, alpha.name, first, "--live")
        assert (in_image(first, src) / "a.txt").read_text() == "a"

        # The daemon killed: its mount process outlives it; the next start stops it.
        pid = mounts(console, beta)[0]["pid"]
        beta.kill9()
        assert (in_image(first, src) / "a.txt").read_text() == "a"
        beta.start(console)
        assert str(first) not in mounted_paths()
        assert not Path(f"/proc/{pid}").exists() or b"mount_service" not in _cmdline(pid)
        assert mounts(console, beta) == []

        # A clean stop of the daemon unmounts everything it serves.
        second = tmp_path / "second"
        mount(console, beta, alpha.name, second, "--live")
        beta.stop()
        assert str(second) not in mounted_paths()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_a_mount_reads_a_store_that_is_still_being_written(two_hosts: Hosts, tmp_path: Path) -> None:
    """Protection goes on while a mount is served: the mount keeps its instant."""
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}.bin").write_bytes(os.urandom(50_000 + i))
    job, image = protect(console, alpha, beta, src)
    settle(console, alpha, job, src, image)
    frozen = frozen_copy(src, tmp_path / "frozen")
    at = tmp_path / "m"
    mount(console, beta, alpha.name, at, "--live")
    for i in range(20):
        (src / f"f{i}.bin").write_bytes(os.urandom(60_000))
    (src / "late.txt").write_text("late")
    settle(console, alpha, job, src, image)
    assert_trees_equal(str(frozen), str(in_image(at, src)))
    umount(console, beta, at)


def test_a_mounted_instant_is_held_against_prune_until_its_mount_ends(
    two_hosts: Hosts, tmp_path: Path
) -> None:
    """`repo prune` with a zero window while an old instant is mounted: every file still
    reads exactly as it was; once the mounts end (umount, a killed mount process), the
    next prune removes what they held."""
    console, alpha, beta = two_hosts
    src = tmp_path / "src" / "data"
    make_rich_tree(str(src), seed=31)
    (src / "big.bin").write_bytes(os.urandom(3 << 20))
    job, image = protect(console, alpha, beta, src)  # --cdp-days 0: only live is kept
    t1 = settle(console, alpha, job, src, image)
    state1 = frozen_copy(src, tmp_path / "state1")
    by_umount, by_kill = tmp_path / "m-umount", tmp_path / "m-kill"
    mount(console, beta, alpha.name, by_umount, "--at", t1)
    killed = mount(console, beta, alpha.name, by_kill, "--at", t1)["pid"]
    change_everything(src)
    for _ in range(3):  # t1's big file dead for live data: the prune would collect its chunks
        (src / "big.bin").write_bytes(os.urandom(3 << 20))
        settle(console, alpha, job, src, image)

    held = console.json("repo", "prune", "--repository", beta.api)
    # Nothing was read through the mounts before the prune (no page of theirs is cached).
    assert_trees_equal(str(state1), str(in_image(by_umount, src)))
    assert_trees_equal(str(state1), str(in_image(by_kill, src)))
    assert console.json("repo", "check", "--repository", beta.api, "--read-data")["ok"]

    umount(console, beta, by_umount)
    still = console.json("repo", "prune", "--repository", beta.api)
    assert_trees_equal(str(state1), str(in_image(by_kill, src)))  # the other mount holds t1
    os.killpg(killed, signal.SIGKILL)
    wait_for(lambda: mounts(console, beta) == [], 20, what="the killed mount to be forgotten")
    released = console.json("repo", "prune", "--repository", beta.api)
    assert released["versions"] > held["versions"] + still["versions"]
    # Three dead versions of big.bin (random: stored as it is), t1's among them, go now.
    assert held["bytes"] < 3 << 20 and still["bytes"] < 3 << 20
    assert released["bytes"] >= 3 * (3 << 20)
    at = tmp_path / "m-after"
    at.mkdir()
    refused = console.refused("mount", "--repository", beta.api, "--image", alpha.name, "--at", t1, str(at))
    assert refused == -1027  # t1 is gone with what held it
    restore(console, beta, alpha.name, tmp_path / "r-live", "--live")
    assert_trees_equal(str(src), str(in_image(tmp_path / "r-live", src)))


def test_a_chunk_damaged_in_its_pack_fails_reads_of_its_file_with_eio(
    two_hosts: Hosts, tmp_path: Path
) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    files = {f"f{i}.bin": os.urandom(300_000 + i) for i in range(6)}  # several chunks each
    for name, data in files.items():
        (src / name).write_bytes(data)
    job, image = protect(console, alpha, beta, src)
    settle(console, alpha, job, src, image)
    beta.stop()  # every pack sealed and closed
    victim = files["f3.bin"]
    damaged = 0
    for pack in (p for p in (beta.home / "repository" / "store").rglob("*") if p.is_file()):
        raw = bytearray(pack.read_bytes())
        at = raw.find(victim[100_000:100_064])  # the middle of one of f3's chunks
        if at >= 0:
            raw[at] ^= 0x01
            pack.write_bytes(raw)
            damaged += 1
    assert damaged == 1
    beta.start(console)
    at = tmp_path / "m"
    mount(console, beta, alpha.name, at, "--live")
    with pytest.raises(OSError) as exc:
        (in_image(at, src) / "f3.bin").read_bytes()
    assert exc.value.errno == errno.EIO
    for name, data in files.items():
        if name != "f3.bin":
            assert (in_image(at, src) / name).read_bytes() == data
    logs = "".join(p.read_text() for p in (beta.home / "repository" / "mounts").glob("*.log"))
    assert "f3.bin" in logs and "hash mismatch" in logs
    umount(console, beta, at)
