"""Repository history: storage of ten versions, throughput with CDP, snapshot and listing
time, and the repository daemon's memory with a large catalog.

    .venv/bin/python bench/bench_history.py                          # full size (~1 GiB tree)
    .venv/bin/python bench/bench_history.py --tree-mb 128 --versions-m 0.1   # quick

Figures (each with a reference from the same run, STYLE rule 10):

1. **Ten versions of a tree of random data**, each changing 1 % of its files in place
   (4 KiB overwritten in the middle of each): twinvault's stored bytes (`repo stats`
   stored_bytes: packs, after dedup and compression) over the tree's size, next to
   restic's and borg's repository size after ten backups of the same ten states.
   Target: at most 1.15x the tree.
2. **Replication throughput with continuous data protection on** (`--cdp-days 7`) and
   off (`--cdp-days 0`), initial mirror of the same small-file corpus: ratio, target >= 0.8.
3. **Snapshot time** on an image of 200,000 files: `job snapshot` through the API
   (in-process client, no CLI start-up), target < 100 ms.
4. **Listing an image of 100,000 files at an arbitrary instant** (several versions per
   path): `versions_at` over the daemon's own catalog, target < 2 s.
5. **Repository daemon memory with a catalog of 1,000,000 file versions**: VmHWM of the
   daemon after it opened that history and answered `repo stats`, `points`, `repo check`
   and `repo prune`; target < 500 MB.

Figures 3-5 build the catalog through the daemon's own History code (journal records ->
catalog), not through a source, so the 1,000,000 versions take a minute, not an hour.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import blake3
from harness import bench_dir, code_note, figure, mb, ratio, row, rss_kib, testbed, tree_bytes

from twinvault import fsmeta
from twinvault.cli.client import ApiClient, CredentialCache
from twinvault.daemon.config import Home, load_config
from twinvault.daemon.history_setup import open_history
from twinvault.repository.chunklist import Piece, pack_chunks
from twinvault.repository.history import PUT, History, pack_meta


def make_tree(root: Path, total_mb: int, file_kb: int = 1024) -> int:
    root.mkdir(parents=True)
    count = total_mb * 1024 // file_kb
    for i in range(count):
        d = root / f"d{i // 100:03d}"
        d.mkdir(exist_ok=True)
        (d / f"f{i:05d}.bin").write_bytes(os.urandom(file_kb * 1024))
    return count


def change_one_percent(root: Path, rng: random.Random) -> None:
    files = sorted(root.rglob("*.bin"))
    for path in rng.sample(files, max(1, len(files) // 100)):
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.seek(size // 2)
            f.write(os.urandom(4096))


def dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def storage_figure(base: Path, tree_mb: int) -> None:
    tree = base / "tree"
    make_tree(tree, tree_mb)
    size = tree_bytes(str(tree))[1]
    rng = random.Random(1)
    states = []
    with testbed(base / "hosts") as bed:
        job, _ = bed.protect(str(tree))
        bed.wait_protected(job, time.perf_counter())
        client = bed.client(bed.repository)
        for version in range(10):
            if version:
                change_one_percent(tree, rng)
                time.sleep(0.5)
                bed.wait_replicated(job)
            client.call("POST", f"/api/jobs/{job}/snapshot")
            state = base / f"state{version}"
            subprocess.run(["cp", "-a", "--reflink=auto", str(tree), str(state)], check=True)
            states.append(state)
        stats = client.call("GET", "/api/repository/stats")
    ours = stats["stored_bytes"]
    restic = _restic_size(base, states)
    borg = _borg_size(base, states)
    print(f"  tree {size} B; twinvault stats: {stats}")
    for name, theirs in (("restic", restic), ("borg", borg)):
        row("10 versions: stored / tree size", f"{ours / size:.3f}", f"{theirs / size:.3f}",
            ratio(ours, theirs), reference=name)  # fmt: skip
    met = "met" if ours <= 1.15 * size else "NOT met"
    figure("10 versions: twinvault stored / tree size", f"{ours / size:.3f}", f"<= 1.15: {met}")
    for state in states:
        shutil.rmtree(state)


def _restic_size(base: Path, states: list[Path]) -> int:
    repo = base / "restic"
    env = {**os.environ, "RESTIC_PASSWORD": "bench", "RESTIC_REPOSITORY": str(repo)}
    subprocess.run(["restic", "init", "-q"], check=True, env=env, capture_output=True)
    for state in states:
        # Run from inside each state: the same relative paths every time, like a real
        # backup of one changing tree.
        subprocess.run(["restic", "backup", "-q", "."], check=True, env=env, capture_output=True, cwd=state)
    return dir_bytes(repo)


def _borg_size(base: Path, states: list[Path]) -> int:
    repo = base / "borg"
    env = {**os.environ, "BORG_PASSPHRASE": "bench", "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes"}
    subprocess.run(["borg", "init", "-e", "repokey", str(repo)], check=True, env=env, capture_output=True)
    for i, state in enumerate(states):
        subprocess.run(
            ["borg", "create", "--compression", "zstd,3", f"{repo}::v{i}", "."],
            check=True, env=env, capture_output=True, cwd=state,
        )  # fmt: skip
    return dir_bytes(repo)


def cdp_figure(base: Path, files: int) -> None:
    from corpus import make_small_files

    corpus = base / "corpus"
    make_small_files(str(corpus), files)
    size = tree_bytes(str(corpus))[1]
    # Alternating runs, best of each: the two settings do the same ingest work (CDP only
    # changes what retention keeps), so what differs between single runs is the machine.
    seconds: dict[str, float] = {}
    for attempt, cdp in enumerate(("0", "7", "0", "7")):
        with testbed(base / f"hosts-{attempt}") as bed:
            out = bed.console.json(
                "protect", "--source", bed.source.api, "--repository", bed.repository.api,
                "--data", str(corpus), "--cdp-days", cdp,
            )  # fmt: skip
            started = time.perf_counter()
            took = bed.wait_protected(out["job"], started).seconds
            seconds[cdp] = min(seconds.get(cdp, took), took)
    on, off = mb(size / seconds["7"]), mb(size / seconds["0"])
    row("initial mirror MB/s, CDP on (--cdp-days 7)", f"{on:.1f}", f"{off:.1f}", ratio(on, off),
        reference="CDP off")  # fmt: skip
    figure("CDP on / CDP off", f"{on / off:.2f}", f">= 0.8: {'met' if on >= 0.8 * off else 'NOT met'}")


def synthetic_catalog(history: History, image: str, files: int, versions_per_file: int) -> None:
    """Records as a source's ops would make them: put every file, then rewrite all of
    them `versions_per_file - 1` more times, with real chunk lists."""
    meta = fsmeta.Meta("file", 0o100644, 0, 0, 0, 0, 4096, 0, "", {})
    history.ensure_image(image, 7)
    for round_ in range(versions_per_file):
        for i in range(files):
            digest = blake3.blake3(b"%d-%d" % (round_, i)).digest()
            history.record(PUT, image, b"/data/d%04d/f%06d" % (i // 1000, i), "file", pack_meta(meta),
                           pack_chunks([Piece(digest, 4096)]), 4096)  # fmt: skip
            if i % 5000 == 4999:
                history.commit()
        history.commit()


def catalog_figures(base: Path, snapshot_files: int, listing_files: int, total_versions: int) -> None:
    empty = base / "empty"
    empty.mkdir(parents=True)
    with testbed(base / "hosts") as bed:
        job, _ = bed.protect(str(empty))  # a real job whose image ("alpha") gets the big catalog
        bed.wait_protected(job, time.perf_counter())
        home = Home(bed.repository.home)
        bed.repository.stop()
        config = load_config(home)
        history = open_history(home, config, lambda *a, **k: None)
        t0 = time.perf_counter()
        synthetic_catalog(history, "alpha", snapshot_files, 1)
        listing_versions = max(1, (total_versions - snapshot_files) // listing_files)
        synthetic_catalog(history, "listing", listing_files, listing_versions)
        built = time.perf_counter() - t0
        infos = history.catalog.images()
        total = sum(i.versions for i in infos)
        print(
            f"  catalog built in {built:.1f} s: "
            + ", ".join(f"{i.name}: {i.versions} versions" for i in infos)
        )
        firsts = [v.valid_from for v in history.catalog.history("listing", b"/data/d0000/f000000")]
        instant = firsts[len(firsts) // 2] + 1
        t = time.perf_counter()
        listed = sum(1 for _ in history.catalog.versions_at("listing", instant))
        listing = time.perf_counter() - t
        history.close()
        met = "met" if listing < 2 and listed == listing_files else "NOT met"
        figure(
            f"list {listing_files} files at an instant ({listed} listed), s",
            f"{listing:.2f}",
            f"< 2 s: {met}",
        )

        bed.repository.start(bed.console)
        client = ApiClient.for_host(bed.repository.api, CredentialCache(bed.console.config_dir))
        times = []
        for _ in range(5):  # the real route: HTTPS + the daemon's History, no CLI start-up
            t = time.perf_counter()
            client.call("POST", f"/api/jobs/{job}/snapshot")
            times.append(time.perf_counter() - t)
        met = "met" if max(times) < 0.1 else "NOT met"
        figure(f"snapshot of a {snapshot_files}-file image, ms (best / worst of 5)",
               f"{min(times) * 1000:.1f} / {max(times) * 1000:.1f}", f"< 100 ms: {met}")  # fmt: skip
        pid = client.call("GET", "/api/host")["pid"]
        client.call("GET", "/api/repository/stats")
        client.call("GET", "/api/images/listing/points")
        client.call_long("POST", "/api/repository/check", {"read_data": False})
        client.call_long("POST", "/api/repository/prune", {})
        rss, hwm = rss_kib(pid)
        met = "met" if hwm < 500 * 1024 else "NOT met"
        figure(f"repository daemon with {total} versions, MB peak / now",
               f"{hwm / 1024:.1f} / {rss / 1024:.1f}", f"< 500 MB: {met}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree-mb", type=int, default=1024)
    parser.add_argument("--cdp-files", type=int, default=20_000)
    parser.add_argument("--snapshot-files", type=int, default=200_000)
    parser.add_argument("--listing-files", type=int, default=100_000)
    parser.add_argument("--versions-m", type=float, default=1.0, help="catalog size in millions of versions")
    parser.add_argument("--only", choices=["storage", "cdp", "catalog"])
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    print(f"bench_history: cpus={os.cpu_count()} python={sys.version.split()[0]}")
    print(code_note())
    with bench_dir(args.keep) as base:
        if args.only in (None, "storage"):
            print(f"(1) ten versions of a {args.tree_mb} MiB tree, 1 % of files changed in place each time")
            storage_figure(base / "storage", args.tree_mb)
        if args.only in (None, "cdp"):
            print(f"(2) initial mirror of {args.cdp_files} small files with CDP on and off")
            cdp_figure(base / "cdp", args.cdp_files)
        if args.only in (None, "catalog"):
            print("(3-5) snapshot, listing and daemon memory over a large catalog")
            catalog_figures(base / "catalog", args.snapshot_files, args.listing_files,
                            int(args.versions_m * 1_000_000))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
