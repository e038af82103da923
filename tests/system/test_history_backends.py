"""History on the other backends, through real daemons: chunks on S3 (a real SeaweedFS)
riding out an outage, and the catalog in a real PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.history import frozen_copy, points, restore, settle
from tests.helpers.hosts import Console, make_host, wait_for
from tests.helpers.postgres import postgres_bin, running_postgres
from tests.helpers.protection import event_ids, in_image, protect
from tests.helpers.s3 import ACCESS_KEY, SECRET_KEY, seaweedfs
from tests.helpers.tree import assert_trees_equal, make_rich_tree

pytestmark = pytest.mark.system


def test_s3_store_keeps_replicating_through_an_outage_and_loses_nothing(tmp_path: Path) -> None:
    secret = tmp_path / "s3-secret"
    secret.write_text(SECRET_KEY)
    os.chmod(secret, 0o600)
    src = tmp_path / "src"
    make_rich_tree(str(src), seed=21)
    with seaweedfs(tmp_path / "weed") as weed:
        config = (
            "[config]\n"
            'store_backend = "s3"\n'
            f'store_s3_endpoint = "{weed.endpoint}"\n'
            'store_s3_bucket = "twinvault"\n'
            'store_s3_prefix = "repo1"\n'
            f'store_s3_access_key = "{ACCESS_KEY}"\n'
            f'store_s3_secret_key_file = "{secret}"\n'
        )
        console = Console(tmp_path / "console")
        alpha = make_host(tmp_path, "alpha", console)
        beta = make_host(tmp_path, "beta", console, extra_config=config)
        try:
            alpha.start(console)
            beta.start(console)
            job, image = protect(console, alpha, beta, src, extra=("--cdp-days", "1"))
            settle(console, alpha, job, src, image)
            weed.stop(kill=True)
            # More than a pack (16 MiB) while S3 is down: packs wait on local disk.
            (src / "outage").mkdir()
            for i in range(24):
                (src / "outage" / f"f{i}.bin").write_bytes(os.urandom(1 << 20))
            settle(console, alpha, job, src, image)  # acknowledged without S3
            wait_for(lambda: 9011 in event_ids(beta), 60, what="event 9011 (backend failing)")
            stats = console.json("repo", "stats", "--repository", beta.api)
            assert stats["pending_uploads"] >= 1
            weed.start()
            wait_for(lambda: 9012 in event_ids(beta), 90, what="event 9012 (backend recovered)")
            wait_for(
                lambda: console.json("repo", "stats", "--repository", beta.api)["pending_uploads"] == 0,
                90,
                what="every pack uploaded",
            )
            listed = weed.client().list_objects_v2(Bucket="twinvault", Prefix="repo1/")
            assert any(obj["Size"] > 16 << 20 for obj in listed.get("Contents", [])), listed  # a sealed pack
            out = restore(console, beta, "alpha", tmp_path / "r", "--live")
            assert out["failed"] == []
            assert_trees_equal(str(src), str(in_image(tmp_path / "r", src)))
            check = console.json("repo", "check", "--repository", beta.api, "--read-data")
            assert check["ok"], check
        finally:
            beta.stop()
            alpha.stop()


@pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL binaries (Debian package postgresql) absent")
def test_postgresql_catalog_serves_points_and_restores(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_rich_tree(str(src), seed=22)
    with running_postgres() as pg:
        url = pg.create_database("twinvault")
        console = Console(tmp_path / "console")
        alpha = make_host(tmp_path, "alpha", console)
        beta = make_host(tmp_path, "beta", console, extra_config=f'[config]\nstore_catalog = "{url}"\n')
        try:
            alpha.start(console)
            beta.start(console)
            job, image = protect(console, alpha, beta, src, extra=("--cdp-days", "1"))
            settle(console, alpha, job, src, image)
            snap = console.json("job", "snapshot", job, "--server", beta.api)
            state1 = frozen_copy(src, tmp_path / "state1")
            (src / "docs" / "random-0.bin").write_bytes(os.urandom(33_333))
            os.rename(src / "nested", src / "renamed")
            settle(console, alpha, job, src, image)
            beta.stop()
            assert not (beta.home / "repository" / "history" / "catalog.sqlite").exists()
            beta.start(console)
            found = points(console, beta, "alpha")
            assert [s["id"] for s in found["snapshots"]] == [snap["id"]]
            restore(console, beta, "alpha", tmp_path / "r-snap", "--snapshot", str(snap["id"]))
            assert_trees_equal(str(state1), str(in_image(tmp_path / "r-snap", src)))
            settle(console, alpha, job, src, image)
            restore(console, beta, "alpha", tmp_path / "r-live", "--live")
            assert_trees_equal(str(src), str(in_image(tmp_path / "r-live", src)))
        finally:
            beta.stop()
            alpha.stop()
