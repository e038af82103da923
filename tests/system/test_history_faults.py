"""Faults of the repository's history: a lost or damaged catalog, kill -9 during a prune
or a snapshot, a corrupted chunk, a truncated pack, a wrong encryption key.

Pass = nothing acknowledged is lost, damage is named (files and versions), unaffected
data still restores, and nothing needs a manual command to recover.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.history import frozen_copy, restore, settle
from tests.helpers.hosts import Console, TestHost, make_host, running_hosts, wait_for
from tests.helpers.protection import event_ids, in_image, protect
from tests.helpers.tree import assert_trees_equal, make_rich_tree

pytestmark = pytest.mark.system


def packs(repo: TestHost) -> list[Path]:
    """The repository's packs on its local backend (docs/chunkstore.md: packs/<id[:2]>/<id>),
    largest first."""
    found = [p for p in (repo.home / "repository" / "store" / "packs").rglob("*") if p.is_file()]
    assert found, "no pack on the backend"
    return sorted(found, key=lambda p: p.stat().st_size, reverse=True)


def test_a_lost_or_damaged_catalog_is_rebuilt_from_the_journal(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_rich_tree(str(src), seed=5)
    with running_hosts(tmp_path, "alpha", "beta") as (console, (alpha, beta)):
        job, image = protect(console, alpha, beta, src, extra=("--cdp-days", "1"))
        settle(console, alpha, job, src, image)
        snap = console.json("job", "snapshot", job, "--server", beta.api)
        state1 = frozen_copy(src, tmp_path / "state1")
        (src / "docs" / "random-2.bin").write_bytes(os.urandom(12345))
        settle(console, alpha, job, src, image)
        before = console.json("points", "--repository", beta.api, "--image", "alpha")
        catalog = beta.home / "repository" / "history" / "catalog.sqlite"
        for damage in ("missing", "damaged"):
            beta.stop()
            if damage == "missing":
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{catalog}{suffix}").unlink(missing_ok=True)
            else:
                with open(catalog, "r+b") as f:  # scribble over pages past the header
                    f.seek(4096)
                    f.write(os.urandom(8192))
            beta.start(console)
            rebuilds = 1 if damage == "missing" else 2
            wait_for(
                lambda n=rebuilds: event_ids(beta).count(9013) >= n, 30, what=f"catalog rebuilt ({damage})"
            )
            after = console.json("points", "--repository", beta.api, "--image", "alpha")
            assert after["snapshots"] == before["snapshots"]
            assert [r["start"] for r in after["ranges"]][: len(before["ranges"])] == [
                r["start"] for r in before["ranges"]
            ]
            out = restore(console, beta, "alpha", tmp_path / f"r-{damage}", "--snapshot", str(snap["id"]))
            assert out.get("failed") == [], out
            assert_trees_equal(str(state1), str(in_image(tmp_path / f"r-{damage}", src)))
        settle(console, alpha, job, src, image)
        live = restore(console, beta, "alpha", tmp_path / "r-live", "--live")
        assert live["failed"] == []
        assert_trees_equal(str(src), str(in_image(tmp_path / "r-live", src)))


@pytest.mark.parametrize("operation", ["prune", "snapshot"])
def test_repository_killed_during_prune_or_snapshot_recovers_by_itself(
    tmp_path: Path, operation: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"f{i}.bin").write_bytes(os.urandom(50_000))
    with running_hosts(tmp_path, "alpha", "beta") as (console, (alpha, beta)):
        job, image = protect(console, alpha, beta, src)
        settle(console, alpha, job, src, image)
        snap = console.json("job", "snapshot", job, "--server", beta.api)
        pinned = frozen_copy(src, tmp_path / "pinned")
        for _ in range(3):  # versions for prune to drop and chunks to collect
            for i in range(0, 40, 2):
                (src / f"f{i}.bin").write_bytes(os.urandom(50_000))
            settle(console, alpha, job, src, image)
        for delay in (0.0, 0.05, 0.2):
            args = (
                ["repo", "prune"] if operation == "prune" else ["job", "snapshot", job, "--server", beta.api]
            )
            if operation == "prune":
                args += ["--repository", beta.api]
            runner = threading.Thread(target=lambda a=args: console.run(*a, check=False))
            runner.start()
            time.sleep(delay)
            beta.kill9()
            runner.join()
            beta.start(console)
        settle(console, alpha, job, src, image)
        check = console.json("repo", "check", "--repository", beta.api, "--read-data", check=False)
        assert check["ok"], check
        out = restore(console, beta, "alpha", tmp_path / "r-snap", "--snapshot", str(snap["id"]))
        assert out["failed"] == []
        assert_trees_equal(str(pinned), str(in_image(tmp_path / "r-snap", src)))
        out = restore(console, beta, "alpha", tmp_path / "r-live", "--live")
        assert_trees_equal(str(src), str(in_image(tmp_path / "r-live", src)))


def _protect_files(console: Console, alpha: TestHost, beta: TestHost, src: Path, n: int) -> str:
    src.mkdir()
    for i in range(n):
        (src / f"file-{i:02d}.bin").write_bytes(os.urandom(40_000))  # one chunk each
    job, image = protect(console, alpha, beta, src)
    settle(console, alpha, job, src, image)
    return job


def test_a_corrupted_chunk_is_named_by_check_and_the_rest_still_restores(tmp_path: Path) -> None:
    src = tmp_path / "src"
    with running_hosts(tmp_path, "alpha", "beta") as (console, (alpha, beta)):
        _protect_files(console, alpha, beta, src, 12)
        beta.stop()  # seals the open pack
        pack = packs(beta)[0]
        with open(pack, "r+b") as f:
            f.seek(pack.stat().st_size // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
        beta.start(console)
        proc = console.run("repo", "check", "--repository", beta.api, "--read-data", "--json", check=False)
        report = json.loads(proc.stdout)
        assert proc.returncode == 3
        assert report["corrupt_chunks"] == 1 and report["damaged_versions"] >= 1
        damaged = {Path(d["path"]).name for d in report["damaged"]}
        assert damaged and all(name.startswith("file-") for name in damaged)
        assert 9016 in event_ids(beta)
        # Without --read-data the references are intact: only reading finds the damage.
        assert console.json("repo", "check", "--repository", beta.api)["ok"]
        out = restore(console, beta, "alpha", tmp_path / "r", "--live")
        assert {Path(f["path"]).name for f in out["failed"]} == damaged
        restored = in_image(tmp_path / "r", src)
        for i in range(12):
            name = f"file-{i:02d}.bin"
            if name not in damaged:
                assert (restored / name).read_bytes() == (src / name).read_bytes()


def test_a_truncated_pack_names_what_it_lost_and_keeps_what_is_before_the_cut(tmp_path: Path) -> None:
    src = tmp_path / "src"
    with running_hosts(tmp_path, "alpha", "beta") as (console, (alpha, beta)):
        _protect_files(console, alpha, beta, src, 12)
        beta.stop()
        pack = packs(beta)[0]
        os.truncate(pack, pack.stat().st_size // 2)
        beta.start(console)
        proc = console.run("repo", "check", "--repository", beta.api, "--read-data", "--json", check=False)
        report = json.loads(proc.stdout)
        assert proc.returncode == 3 and report["damaged_versions"] >= 1
        lost = {Path(d["path"]).name for d in report["damaged"]}
        out = restore(console, beta, "alpha", tmp_path / "r", "--live")
        restored = in_image(tmp_path / "r", src)
        kept = [f"file-{i:02d}.bin" for i in range(12) if f"file-{i:02d}.bin" not in lost]
        assert kept, "half a pack keeps some chunks"
        for name in kept:
            assert (restored / name).read_bytes() == (src / name).read_bytes()
        assert {Path(f["path"]).name for f in out["failed"]} == lost


def test_an_encrypted_store_refuses_to_open_with_a_wrong_key(tmp_path: Path) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text("correct horse battery staple\n")
    os.chmod(secret, 0o600)
    config = f'[config]\nstore_passphrase_file = "{secret}"\n'
    console = Console(tmp_path / "console")
    alpha = make_host(tmp_path, "alpha", console)
    beta = make_host(tmp_path, "beta", console, extra_config=config)
    src = tmp_path / "src"
    src.mkdir()
    (src / "secret.txt").write_bytes(b"plain text that must not appear in a pack " * 100)
    try:
        alpha.start(console)
        beta.start(console)
        job, image = protect(console, alpha, beta, src)
        settle(console, alpha, job, src, image)
        beta.stop()
        for pack in packs(beta):
            assert b"plain text that must not appear" not in pack.read_bytes()
        secret.write_text("wrong passphrase\n")
        with pytest.raises(AssertionError, match="-1020"):
            beta.start(console)
        secret.write_text("correct horse battery staple\n")
        beta.start(console)
        out = restore(console, beta, "alpha", tmp_path / "r", "--live")
        assert out["failed"] == []
        assert (in_image(tmp_path / "r", src) / "secret.txt").read_bytes() == (
            src / "secret.txt"
        ).read_bytes()
    finally:
        beta.stop()
        alpha.stop()
