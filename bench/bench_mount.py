"""Mounts of a point in time: sequential read throughput and time to the first byte.

    .venv/bin/python bench/bench_mount.py                               # full size (~3 min)
    .venv/bin/python bench/bench_mount.py --big-mib 256 --files 10000   # quick

Figures (each with a reference from the same run, STYLE rule 10):

1. **Sequential read of a 2 GiB file through a mount** (``twinvault mount --live``, then
   ``cat FILE > /dev/null``) against ``cat`` of the same file in the repository's live
   image (a plain file on the same disk). Caches are dropped (``sync; echo 3 >
   /proc/sys/vm/drop_caches``) before every timed read of either side, so the mount reads
   its packs from disk as ``cat`` reads the image file (and the mount's pages, dentries
   and inodes are dropped with them; the mount process's own chunk cache holds at most
   the last 96 MiB read, never the start of the file). The sides alternate (mount, cat,
   mount, cat, ...) so a change of the machine's load between samples hits both; every
   sample is printed with the load average, and the figure is best against best.
   Target: ratio >= 0.5.
2. **First byte of a file at an arbitrary instant in a 100,000-file image**: the image's
   history is written through the daemon's own History code (journal records -> catalog,
   with real chunks in the chunk store: three versions of every file), then for several
   instants inside its range: ``twinvault mount --at T`` and, with caches dropped before
   each sample, the time from ``open()`` of a file never looked up to its first byte.
   Reference: ``twinvault restore --at T --include FILE`` of the same file (the way to get
   one file of an instant without a mount), CLI start-up included on both sides of the
   mount's total. Target: first byte < 1 s.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import blake3
from daemon_profile import profiled
from harness import bench_dir, code_note, drop_caches, figure, image_path, mb, ratio, row, testbed

from twinvault import fsmeta
from twinvault.daemon.config import Home, load_config
from twinvault.daemon.history_setup import open_history
from twinvault.repository.chunklist import Piece, pack_chunks
from twinvault.repository.history import PUT, RANGE, History, pack_meta
from twinvault.timefmt import iso_from_ns

FILE_BYTES = 16 << 10  # every synthetic file: one chunk
DISTINCT_CHUNKS = 3000  # files share these (what dedup would do with repeated content)


def timed_cat(path: Path, server_pid: int | None = None) -> tuple[float, float]:
    """Seconds of ``cat path > /dev/null`` after dropping caches, and the CPU seconds the
    process serving `path` (if any) spent meanwhile."""
    drop_caches()
    before = cpu_seconds(server_pid) if server_pid else 0.0
    t = time.perf_counter()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - t
    return wall, (cpu_seconds(server_pid) - before if server_pid else 0.0)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def throughput_figure(base: Path, big_mib: int, rounds: int, profile: str | None = None) -> None:
    src = base / "src"
    src.mkdir(parents=True)
    big = src / "big.bin"
    with open(big, "wb") as f:
        for _ in range(big_mib):
            f.write(os.urandom(1 << 20))
    size = big.stat().st_size
    with testbed(base / "hosts") as bed:
        job, location = bed.protect(str(src))
        bed.wait_protected(job, time.perf_counter())
        live_file = Path(image_path(location, str(big)))
        assert live_file.stat().st_size == size
        mnt = base / "mnt"
        mnt.mkdir()
        pid = bed.console.json(
            "mount", "--repository", bed.repository.api, "--image", "alpha", "--live", str(mnt)
        )["pid"]
        try:
            mounted = Path(image_path(str(mnt), str(big)))
            samples, references = [], []
            for k in range(rounds):  # alternating: both sides see the same load drift
                with profiled({"mount": pid}, profile if k == 0 else None, "sequential-read"):
                    samples.append(timed_cat(mounted, pid))
                references.append(timed_cat(live_file)[0])
                print(
                    f"  round {k + 1}: mount {mb(size) / samples[-1][0]:.0f} MB/s"
                    f" ({samples[-1][1] / (size / (1 << 30)):.2f} s CPU/GiB),"
                    f" cat {mb(size) / references[-1]:.0f} MB/s, load {os.getloadavg()[0]:.1f}"
                )
            ours, cpu = min(samples)
            theirs = min(references)
        finally:
            bed.console.json("umount", "--repository", bed.repository.api, str(mnt))
    row(
        f"sequential read of {big_mib} MiB, MB/s",
        f"{mb(size) / ours:.0f}",
        f"{mb(size) / theirs:.0f}",
        ratio(theirs, ours),
        reference="cat of the live image",
    )
    met = "met" if theirs / ours >= 0.5 else "NOT met"
    figure("read through the mount / cat of the live image file", ratio(theirs, ours), f">= 0.5: {met}")
    print(
        f"  the mount process used {cpu / (size / (1 << 30)):.2f} s of CPU per GiB read"
        f" ({cpu / ours:.0%} of one core over the read)"
    )


def synthetic_image(history: History, image: str, files: int, versions: int) -> tuple[int, int]:
    """`versions` rounds of puts of every file (one real chunk each, in the store), inside
    one range valid for recovery; returns the instants between which every file exists
    (the end of the first round, the last record)."""
    rng = random.Random(7)
    complete = 0
    chunks = []
    for _ in range(DISTINCT_CHUNKS):
        data = rng.randbytes(FILE_BYTES)
        digest = blake3.blake3(data).digest()
        history.store.put(digest, data)
        chunks.append(digest)
    history.ensure_image(image, 7)
    directory = pack_meta(fsmeta.Meta("dir", 0o755, 0, 0, 0, 0, 0, 0, "", ()))
    history.record(RANGE, image, "open")
    history.record(PUT, image, b"/data", "dir", directory, b"", 0)
    for d in range(-(-files // 1000)):
        history.record(PUT, image, b"/data/d%04d" % d, "dir", directory, b"", 0)
    for round_ in range(versions):
        for i in range(files):
            t = history.now()
            meta = pack_meta(fsmeta.Meta("file", 0o644, 0, 0, t, t, FILE_BYTES, 0, "", ()))
            content = pack_chunks([Piece(chunks[(i * 7 + round_) % DISTINCT_CHUNKS], FILE_BYTES)])
            history.record(
                PUT, image, b"/data/d%04d/f%06d" % (i // 1000, i), "file", meta, content, FILE_BYTES
            )
            if i % 5000 == 4999:
                history.commit()
        history.commit()
        if round_ == 0:
            complete = history.now()
    return complete, history.now()


def first_byte_figure(base: Path, files: int, instants: int, samples: int) -> None:
    empty = base / "empty"
    empty.mkdir(parents=True)
    with testbed(base / "hosts") as bed:
        job, _ = bed.protect(str(empty))  # a real repository daemon and home
        bed.wait_protected(job, time.perf_counter())
        home = Home(bed.repository.home)
        bed.repository.stop()
        history = open_history(home, load_config(home), lambda *a, **k: None)
        t0 = time.perf_counter()
        first, last = synthetic_image(history, "big", files, versions=3)
        built = time.perf_counter() - t0
        versions = next(i.versions for i in history.catalog.images() if i.name == "big")
        history.close()
        print(f"  image 'big': {files} files, {versions} versions, history written in {built:.1f} s")
        bed.repository.start(bed.console)
        console, repo = bed.console, bed.repository.api
        rng = random.Random(11)
        mount_s, first_bytes, restores = [], [], []
        for k in range(instants):
            instant = iso_from_ns(first + (last - first) * (k + 1) // (instants + 1))
            mnt = base / f"mnt{k}"
            mnt.mkdir()
            drop_caches()
            t = time.perf_counter()
            console.json("mount", "--repository", repo, "--image", "big", "--at", instant, str(mnt))
            mount_s.append(time.perf_counter() - t)
            for _ in range(samples):
                i = rng.randrange(files)
                path = mnt / "data" / f"d{i // 1000:04d}" / f"f{i:06d}"
                drop_caches()
                t = time.perf_counter()
                with open(path, "rb") as f:
                    assert len(f.read(1)) == 1
                first_bytes.append(time.perf_counter() - t)
            console.json("umount", "--repository", repo, str(mnt))
            i = rng.randrange(files)
            out = base / f"restore{k}"
            drop_caches()
            t = time.perf_counter()
            console.json("restore", "--repository", repo, "--image", "big", "--at", instant,
                         "--include", f"/data/d{i // 1000:04d}/f{i:06d}", "--to", str(out))  # fmt: skip
            restores.append(time.perf_counter() - t)
    worst = max(first_bytes)
    row(
        "first byte at an instant (mount, then open+read), s",
        f"{statistics.median(mount_s) + worst:.2f}",
        f"{statistics.median(restores):.2f}",
        ratio(statistics.median(mount_s) + worst, statistics.median(restores)),
        reference="restore --include",
    )
    figure(
        f"twinvault mount --at of a {files}-file image, s (median / worst of {instants})",
        f"{statistics.median(mount_s):.2f} / {max(mount_s):.2f}",
        "(once per instant)",
    )
    met = "met" if worst < 1 else "NOT met"
    figure(
        f"first byte of a file never looked up, ms (median / worst of {len(first_bytes)})",
        f"{statistics.median(first_bytes) * 1000:.1f} / {worst * 1000:.1f}",
        f"< 1 s: {met}",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-mib", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3, help="timed reads of each side, alternating")
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--instants", type=int, default=3)
    parser.add_argument("--samples", type=int, default=10, help="first-byte samples per instant")
    parser.add_argument("--only", choices=["throughput", "first-byte"])
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--profile", metavar="DIR", help="record the mount process's first read with py-spy")
    args = parser.parse_args()
    print(f"bench_mount: cpus={os.cpu_count()} python={sys.version.split()[0]}; caches dropped before timing")
    print(code_note())
    print(f"load average before: {os.getloadavg()[0]:.2f} (other processes share the 2 cores)")
    with bench_dir(args.keep) as base:
        if args.only in (None, "throughput"):
            print(f"(1) sequential read of a {args.big_mib} MiB file through a mount")
            throughput_figure(base / "throughput", args.big_mib, args.rounds, args.profile)
        if args.only in (None, "first-byte"):
            print(f"(2) first byte at an instant of a {args.files}-file image")
            first_byte_figure(base / "first-byte", args.files, args.instants, args.samples)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
