"""The temporal catalog: put throughput, listing an image at an instant, memory.

    .venv/bin/python bench/bench_catalog.py               # ~2 min, ~1 GB of temp space
    .venv/bin/python bench/bench_catalog.py --quick       # a tenth of the sizes
    .venv/bin/python bench/bench_catalog.py --postgres    # also a private PostgreSQL

No daemons: the catalog is driven in-process, as the repository's history recorder does.

1. **put throughput** in transactions of 256 ops (the repository's batch size): an initial
   mirror's puts of new paths, then replication's rewrites of existing paths (each closes
   the live version). Reference, same run: plain ``sqlite3`` inserting the same rows
   (``executemany``, same columns, key, pragmas and batch size, no temporal logic).
   Target > 50,000 ops/s.
2. **listing** an image of ``--files`` files with ``--versions`` versions each at an instant
   inside the history (and its live listing): every `Version` built. Reference: plain
   ``sqlite3`` reading the same number of rows of the same shape. Target < 2 s at
   100,000 files.
3. **memory** of a catalog holding ``--memory-versions`` file versions, each with a chunk
   of its own: in a fresh process (so building the catalog does not count), VmRSS after
   open, then the peak (VmHWM, reset before each step through /proc/self/clear_refs) of
   `referenced_digests()` and of iterating `versions_at()` over each image. Target: a few
   hundred MB.

Caches are not dropped (the catalog is small enough to sit in the page cache, as it would
on a repository). ``TV_BENCH_DIR`` puts the temp dir elsewhere; ``--keep`` keeps it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (str(REPO), str(REPO / "src")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from twinvault.repository.catalog import Catalog, open_catalog  # noqa: E402
from twinvault.repository.chunklist import Piece, pack_chunks  # noqa: E402

BATCH = 256
TARGET_OPS = 50_000
TARGET_LIST_S = 2.0
META = bytes(range(64))  # a packed fsmeta.Meta is about this size
Row = tuple[bytes, int, str, bytes, bytes, int]  # path, t, kind, meta, content, size


def file_path(i: int) -> bytes:
    return b"/data/dir%04d/file-%07d.dat" % (i // 1000, i)


def rows(files: int, round_: int, t0: int) -> Iterator[list[Row]]:
    """Batches of puts of every file, one round: each file version gets a chunk of its own."""
    digests = os.urandom(32 * files)
    for start in range(0, files, BATCH):
        batch = []
        for i in range(start, min(start + BATCH, files)):
            content = pack_chunks([Piece(digests[32 * i : 32 * i + 32], 65536)])
            batch.append((file_path(i), t0 + round_ * files + i, "file", META, content, 65536))
        yield batch


def timed_puts(catalog: Catalog, image: str, files: int, round_: int, t0: int) -> float:
    """Seconds spent inside the catalog putting one round (row generation not counted)."""
    spent = 0.0
    for batch in rows(files, round_, t0):
        start = time.perf_counter()
        with catalog.transaction():
            for path, t, kind, meta, content, size in batch:
                catalog.put(image, path, t, kind, meta, content, size, None)
        spent += time.perf_counter() - start
    return spent


def reference_inserts(path: Path, files: int, rounds: int, t0: int) -> float:
    """Plain sqlite3: the same rows into a table of the same shape, same batches; seconds."""
    db = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-65536"):
        db.execute(f"PRAGMA {pragma}")
    db.execute(
        "CREATE TABLE versions (image_id INTEGER, path BLOB, valid_from INTEGER, valid_to INTEGER,"
        " kind TEXT, meta BLOB, content BLOB, size INTEGER, link BLOB,"
        " PRIMARY KEY (image_id, path, valid_from)) WITHOUT ROWID"
    )
    spent = 0.0
    for round_ in range(rounds):
        for batch in rows(files, round_, t0):
            params = [(1, p, t, 2**63 - 1, k, m, c, s, p + b"@%d" % t) for p, t, k, m, c, s in batch]
            start = time.perf_counter()
            db.execute("BEGIN")
            db.executemany("INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", params)
            db.execute("COMMIT")
            spent += time.perf_counter() - start
    db.close()
    return spent


def reference_scan(path: Path, files: int) -> float:
    """Plain sqlite3 reading `files` rows of a version's shape in path order; seconds."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(
        "CREATE TABLE listing (path BLOB PRIMARY KEY, valid_from INTEGER, valid_to INTEGER, kind TEXT,"
        " meta BLOB, content BLOB, size INTEGER, link BLOB) WITHOUT ROWID"
    )
    db.execute("BEGIN")
    for batch in rows(files, 0, 0):
        db.executemany(
            "INSERT INTO listing VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(p, t, None, k, m, c, s, p) for p, t, k, m, c, s in batch],
        )
    db.execute("COMMIT")
    start = time.perf_counter()
    count = sum(1 for _ in db.execute("SELECT * FROM listing ORDER BY path"))
    spent = time.perf_counter() - start
    assert count == files
    db.close()
    return spent


def timed_listing(catalog: Catalog, image: str, t: int | None, expect: int) -> float:
    start = time.perf_counter()
    count = 0
    for v in catalog.versions_at(image, t):
        count += v.size > 0
    spent = time.perf_counter() - start
    assert count == expect, (count, expect)
    return spent


def bench_backend(
    name: str,
    open_fresh: Callable[[], Catalog],
    files: int,
    versions: int,
    reference: Callable[..., float] | None,
) -> None:
    t0 = 1_700_000_000 * 10**9
    with open_fresh() as catalog:
        mirror_s = timed_puts(catalog, "bench", files, 0, t0)
        rewrite_s = sum(timed_puts(catalog, "bench", files, r, t0) for r in range(1, versions))
        print(
            f"[{name}] put, new paths (mirror): {files / mirror_s:,.0f} ops/s ({files:,} in {mirror_s:.2f} s)"
        )
        rewrites = files * (versions - 1)
        print(
            f"[{name}] put, rewrites (each closes a version): {rewrites / rewrite_s:,.0f} ops/s"
            f" ({rewrites:,} in {rewrite_s:.2f} s)"
        )
        total_ops = files * versions
        ops_s = total_ops / (mirror_s + rewrite_s)
        if reference is not None:
            ref_s = reference(files, versions, t0)
            ref_ops = total_ops / ref_s
            print(
                f"[{name}] put, all {total_ops:,} ops: {ops_s:,.0f} ops/s; reference plain inserts"
                f" {ref_ops:,.0f} rows/s; ratio {ops_s / ref_ops:.2f}; target > {TARGET_OPS:,}:"
                f" {'met' if ops_s > TARGET_OPS else 'NOT met'}"
            )
        else:
            print(f"[{name}] put, all {total_ops:,} ops: {ops_s:,.0f} ops/s")
        info = catalog.images()[0]
        # An arbitrary instant inside the history: in the middle of the third round.
        instant = t0 + 2 * files + files // 2
        at_s = timed_listing(catalog, "bench", instant, files)
        live_s = timed_listing(catalog, "bench", None, files)
        print(
            f"[{name}] listing {files:,} files ({info.versions:,} versions) at an instant: {at_s:.2f} s;"
            f" live: {live_s:.2f} s; target < {TARGET_LIST_S} s at 100,000 files:"
            f" {'met' if at_s < TARGET_LIST_S * files / 100_000 else 'NOT met'}"
        )


def build_memory_catalog(url: str, total_versions: int, versions: int) -> int:
    """Two images of files x versions; returns an instant inside their history."""
    files = total_versions // versions // 2
    t0 = 1_700_000_000 * 10**9
    with open_catalog(url) as catalog:
        for image in ("mem-a", "mem-b"):
            for round_ in range(versions):
                timed_puts(catalog, image, files, round_, t0)
        assert sum(i.versions for i in catalog.images()) == 2 * files * versions
    return t0 + (versions // 2) * files + files // 2


def memory_probe(url: str, instant: int) -> dict[str, Any]:
    """Run in a fresh process: RSS after open and the peak of each step, in MiB."""

    def status() -> tuple[float, float]:
        rss = hwm = 0.0
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) / 1024
        return rss, hwm

    def reset_peak() -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS

    out: dict[str, Any] = {"before_open": status()[0]}
    catalog = open_catalog(url)
    out["after_open"] = status()[0]
    reset_peak()
    start = time.perf_counter()
    digests = catalog.referenced_digests()
    out["digests"] = len(digests)
    out["digests_s"] = time.perf_counter() - start
    out["digests_peak"] = status()[1]
    del digests
    for image in ("mem-a", "mem-b"):
        for label, t in (("live", None), ("instant", instant)):
            reset_peak()
            start = time.perf_counter()
            count = sum(1 for _ in catalog.versions_at(image, t))
            out[f"{image}_{label}"] = {"count": count, "s": time.perf_counter() - start, "peak": status()[1]}
    catalog.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=100_000)
    p.add_argument("--versions", type=int, default=5, help="versions per file in the listing image")
    p.add_argument("--memory-versions", type=int, default=1_000_000)
    p.add_argument("--postgres", action="store_true", help="also measure a private PostgreSQL")
    p.add_argument("--pg-files", type=int, default=20_000, help="files of the PostgreSQL run")
    p.add_argument("--quick", action="store_true", help="a tenth of every size")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--memory-probe", nargs=2, metavar=("URL", "INSTANT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe[0], int(args.memory_probe[1]))))
        return 0
    if args.quick:
        args.files //= 10
        args.memory_versions //= 10
        args.pg_files //= 10

    root = Path(tempfile.mkdtemp(prefix="tv-bench-catalog-", dir=os.environ.get("TV_BENCH_DIR")))
    print(
        f"bench_catalog: files={args.files:,} x {args.versions} versions, memory catalog"
        f" {args.memory_versions:,} versions, batch {BATCH}, cpus={os.cpu_count()}, sqlite"
        f" {sqlite3.sqlite_version}; temp {root}; caches not dropped"
    )
    try:
        counter = iter(range(10**6))

        def sqlite_fresh() -> Catalog:
            return open_catalog(f"sqlite://{root}/catalog-{next(counter)}.db")

        def sqlite_reference(files: int, versions: int, t0: int) -> float:
            return reference_inserts(root / f"reference-{next(counter)}.db", files, versions, t0)

        bench_backend("sqlite", sqlite_fresh, args.files, args.versions, sqlite_reference)
        ref_scan_s = reference_scan(root / "reference-scan.db", args.files)
        print(
            f"[sqlite] reference: plain sqlite3 reads {args.files:,} rows of that shape in {ref_scan_s:.2f} s"
        )

        url = f"sqlite://{root}/memory.db"
        start = time.perf_counter()
        instant = build_memory_catalog(url, args.memory_versions, args.versions)
        size = sum(f.stat().st_size for f in root.glob("memory.db*"))
        print(
            f"[sqlite] memory catalog: {args.memory_versions:,} file versions built in"
            f" {time.perf_counter() - start:.1f} s, {size / 2**20:.0f} MiB on disk"
        )
        probe = subprocess.run(
            [sys.executable, __file__, "--memory-probe", url, str(instant)],
            check=True,
            capture_output=True,
            text=True,
        )
        m = json.loads(probe.stdout)
        print(
            f"[sqlite] memory: RSS {m['before_open']:.0f} MiB before open, {m['after_open']:.0f} MiB after;"
            f" referenced_digests() of {m['digests']:,} digests: peak {m['digests_peak']:.0f} MiB"
            f" ({m['digests_s']:.1f} s)"
        )
        for key in ("mem-a_live", "mem-a_instant", "mem-b_live", "mem-b_instant"):
            image, label = key.split("_")
            print(
                f"[sqlite] memory: versions_at({image}, {label}) over {m[key]['count']:,} versions:"
                f" peak {m[key]['peak']:.0f} MiB ({m[key]['s']:.2f} s)"
            )

        if args.postgres:
            from tests.helpers.postgres import running_postgres

            with running_postgres() as pg:
                server = pg
                bench_backend(
                    "postgresql",
                    lambda: open_catalog(server.create_database()),
                    args.pg_files,
                    args.versions,
                    None,
                )
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
