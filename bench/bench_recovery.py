"""Getting data back: a Data Recovery job and a restore of a 2 GiB tree, next to rsync.

    .venv/bin/python bench/bench_recovery.py                 # 2 GiB tree of 1 MiB files
    .venv/bin/python bench/bench_recovery.py --tree-mb 256   # quick

Three real hosts on this machine: alpha (source) protects the tree into beta (the
repository); then beta recovers the live point onto gamma (`twinvault recover`), timed
from the command to the job's "Recovered" status; then the console restores the same
point onto this machine (`twinvault restore --live`). Reference, same run: `rsync -a`
over ssh of the same tree to a fresh directory (what a user would do to copy it back).
Caches are dropped before each timed side. Target (issue 4): recovery >= 1.0x rsync.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from harness import bench_dir, caches_note, code_note, drop_caches, mb, ratio, row, tree_bytes
from reference import RsyncOverSsh

from tests.helpers.hosts import running_hosts, wait_for
from twinvault.cli.client import ApiClient, CredentialCache


def make_tree(root: Path, total_mb: int) -> None:
    for i in range(total_mb):
        d = root / f"d{i // 128:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.bin").write_bytes(os.urandom(1 << 20))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree-mb", type=int, default=2048)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    python = sys.version.split()[0]
    print(f"bench_recovery: tree {args.tree_mb} MiB, cpus={os.cpu_count()} python={python}")
    print(code_note())
    with bench_dir(args.keep) as base, RsyncOverSsh() as reference:
        tree = base / "tree"
        make_tree(tree, args.tree_mb)
        size = tree_bytes(str(tree))[1]
        with running_hosts(base / "hosts", "alpha", "beta", "gamma") as (console, (alpha, beta, gamma)):
            job = console.json(
                "protect", "--source", alpha.api, "--repository", beta.api, "--data", str(tree)
            )["job"]
            client = ApiClient.for_host(beta.api, CredentialCache(console.config_dir))
            wait_for(lambda: client.call("GET", f"/api/jobs/{job}")["mirror"]["status"] == "Idle"
                     and client.call("GET", f"/api/jobs/{job}").get("recovery_available"), 3600, 0.5,
                     what="the initial mirror")  # fmt: skip
            time.sleep(1)

            dropped = drop_caches()
            started = time.perf_counter()
            out = console.json("recover", "--repository", beta.api, "--image", "alpha", "--live",
                               "--to-server", gamma.api,
                               "--target-path", str(base / "recovered"))  # fmt: skip
            wait_for(lambda: client.call("GET", f"/api/jobs/{out['job']}")["status"] == "Recovered",
                     3600, 0.1, what="the recovery")  # fmt: skip
            recovery_s = time.perf_counter() - started

            drop_caches()
            started = time.perf_counter()
            env = {**os.environ, "TWINVAULT_CONFIG": str(console.config_dir)}
            subprocess.run(
                [sys.executable, "-m", "twinvault.cli.main", "restore", "--repository", beta.api,
                 "--image", "alpha", "--live", "--to", str(base / "restored"), "--json"],
                check=True, capture_output=True, env=env,
            )  # fmt: skip
            restore_s = time.perf_counter() - started

        drop_caches()
        theirs = reference.rsync(str(tree), str(base / "rsynced")).seconds
        print(f"  {caches_note(dropped)}")
        ours_rec, ours_res, ref = mb(size / recovery_s), mb(size / restore_s), mb(size / theirs)
        row("data recovery to another host, MB/s", f"{ours_rec:.1f}", f"{ref:.1f}", ratio(ours_rec, ref))
        row("restore to the console's machine, MB/s", f"{ours_res:.1f}", f"{ref:.1f}", ratio(ours_res, ref))
        print(f"  target: recovery >= 1.0x rsync: {'met' if ours_rec >= ref else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
