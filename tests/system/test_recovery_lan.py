"""Three hosts in network namespaces on one LAN (source, repository, recovery server):
the recovered tree equals the source tree as it was at the chosen point, byte for byte
with metadata, for live data, a snapshot and an arbitrary instant."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.faults import NetnsLan
from tests.helpers.history import frozen_copy, settle
from tests.helpers.hosts import Console, make_host, wait_for
from tests.helpers.protection import in_image, protect
from tests.helpers.tree import assert_trees_equal, make_rich_tree

pytestmark = pytest.mark.system


def test_recovery_across_three_namespaced_hosts_equals_each_point(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_rich_tree(str(src), seed=41)
    with NetnsLan(3) as lan:
        console = Console(tmp_path / "console", netns=lan.namespaces[0])
        hosts = [
            make_host(tmp_path, name, console, netns=ns, address=addr)
            for name, ns, addr in zip(("alpha", "beta", "gamma"), lan.namespaces, lan.addresses, strict=True)
        ]
        alpha, beta, gamma = hosts
        try:
            for host in hosts:
                host.start(console)
            job, image = protect(console, alpha, beta, src, extra=("--cdp-days", "1"))
            settle(console, alpha, job, src, image)
            snap = console.json("job", "snapshot", job, "--server", beta.api)
            at_snapshot = frozen_copy(src, tmp_path / "at-snapshot")
            (src / "docs" / "random-3.bin").write_bytes(os.urandom(123_456))
            os.rename(src / "xattr.txt", src / "renamed-xattr.txt")
            instant = settle(console, alpha, job, src, image)
            at_instant = frozen_copy(src, tmp_path / "at-instant")
            (src / "links" / "hard-2").unlink()
            (src / "late.txt").write_text("after the instant")
            settle(console, alpha, job, src, image)
            for name, point, expected in (
                ("snap", ("--snapshot", str(snap["id"])), at_snapshot),
                ("instant", ("--at", instant), at_instant),
                ("live", ("--live",), src),
            ):
                target = tmp_path / f"recovered-{name}"
                out = console.json(
                    "recover", "--repository", beta.api, "--image", "alpha", *point,
                    "--to-server", gamma.api, "--target-path", str(target),
                )  # fmt: skip
                wait_for(
                    lambda j=out["job"]: (
                        console.json("job", "show", j, "--server", beta.api)["status"] == "Recovered"
                    ),
                    120,
                    0.2,
                    what=f"recovery of {name}",
                )
                assert_trees_equal(str(expected), str(in_image(target, src)))
        finally:
            for host in hosts:
                host.stop()
