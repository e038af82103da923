"""Mirror benchmark: twinvault's initial and difference mirrors against rsync over ssh.

    .venv/bin/python bench/bench_mirror.py                      # 50,000 small files + 2 GiB
    .venv/bin/python bench/bench_mirror.py --small-count 2000 --big-size 200000000   # quick

Figures, each next to rsync's from the same run (`reference.RsyncOverSsh`, ``rsync -a``
to a private sshd on 127.0.0.1) and their ratio:

1. initial mirror of (a) N small files of 1-64 KiB and (b) one big file: MB/s, from
   ``twinvault protect`` to mirror Idle with recovery available, vs the whole rsync run;
2. difference mirror of (a) with nothing changed: twinvault ``job stop`` + ``job resume``
   (time from resume to Idle), and a restart of the source daemon, vs rsync's re-run;
3. 1 MiB changed in the middle of the big file: bytes twinvault sends (``total_sent_bytes``
   and ``wire_bytes`` deltas), once replicated live by the running job and once by a
   difference mirror after stop/resume, vs rsync's "Total bytes sent" for the same change.

rsync always runs with no twinvault job active, so the source daemon's filesystem-wide
change capture does not compete with it. Caches are dropped before every timed side.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corpus import change_middle, make_big_file, make_small_files
from daemon_profile import profiled
from harness import (
    CpuMeter,
    Testbed,
    bench_dir,
    caches_note,
    code_note,
    drop_caches,
    image_path,
    layout_note,
    load_note,
    mb,
    ratio,
    row,
    testbed,
)
from reference import RsyncOverSsh


def _stage_clock(started: float) -> tuple[dict[str, float], Callable[[dict[str, Any]], None]]:
    """Record when the mirror first reports Mirroring (end of the Calculating stage)."""
    marks: dict[str, float] = {}

    def on_poll(view: dict[str, Any]) -> None:
        status = view.get("mirror", {}).get("status")
        if status == "Mirroring" and "mirroring" not in marks:
            marks["mirroring"] = time.perf_counter() - started

    return marks, on_poll


def _same_region(a: str, b: str, offset: int, length: int) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        fa.seek(offset)
        fb.seek(offset)
        return fa.read(length) == fb.read(length) and os.path.getsize(a) == os.path.getsize(b)


def bench_small(tb: Testbed, ref: RsyncOverSsh, base: Path, count: int, prof: str | None) -> None:
    src = str(base / "data" / "small")
    t = time.perf_counter()
    total = make_small_files(src, count=count)
    print(
        f"(a) corpus: {count} files, {total} bytes ({mb(total):.1f} MB), "
        f"made in {time.perf_counter() - t:.1f} s"
    )
    dst = str(base / "rsync" / "small")
    os.makedirs(dst, exist_ok=True)

    dropped = drop_caches()
    r_init = ref.rsync(src, dst)

    dropped &= drop_caches()
    started = time.perf_counter()
    marks, on_poll = _stage_clock(started)
    cpu_src, cpu_repo = CpuMeter(tb.source_pid()).start(), CpuMeter(tb.repository_pid()).start()
    with profiled({"source": tb.source_pid(), "repository": tb.repository_pid()}, prof, "initial-small"):
        job, image = tb.protect(src)
        init = tb.wait_protected(job, started, on_poll=on_poll)
    cpu_src.stop()
    cpu_repo.stop()
    print(
        f"  twinvault stages: Calculating until {marks.get('mirroring', float('nan')):.2f} s, "
        f"Idle at {init.seconds:.2f} s; sent {init.view['total_sent_bytes']} B, "
        f"wire {init.view['wire_bytes']} B"
    )
    print(
        f"  twinvault CPU: source {cpu_src.describe(init.seconds)}; "
        f"repository {cpu_repo.describe(init.seconds)}"
    )
    row(
        "initial mirror (a) MB/s",
        f"{mb(total) / init.seconds:.1f}",
        f"{mb(total) / r_init.seconds:.1f}",
        ratio(r_init.seconds, init.seconds),
    )
    row(
        "initial mirror (a) seconds",
        f"{init.seconds:.2f}",
        f"{r_init.seconds:.2f}",
        ratio(init.seconds, r_init.seconds),
    )
    print(f"  ({load_note()})")

    # -- nothing changed -------------------------------------------------------------
    dropped &= drop_caches()
    r_again = ref.rsync(src, dst)

    tb.stop_job(job)
    dropped &= drop_caches()
    started = time.perf_counter()
    marks, on_poll = _stage_clock(started)
    with profiled({"source": tb.source_pid(), "repository": tb.repository_pid()}, prof, "nochange-small"):
        tb.resume_job(job)
        again = tb.wait_protected(job, started, on_poll=on_poll)
    print(
        f"  twinvault stop+resume: Calculating until {marks.get('mirroring', float('nan')):.2f} s, "
        f"Idle at {again.seconds:.2f} s; sent {again.view['total_sent_bytes']} B, "
        f"wire {again.view['wire_bytes']} B, skipped {again.view['mirror']['skipped_bytes']} B"
    )
    row(
        "no-change difference mirror (a) s, resume",
        f"{again.seconds:.2f}",
        f"{r_again.seconds:.2f}",
        ratio(again.seconds, r_again.seconds),
    )
    print(f"  ({load_note()})")

    dropped &= drop_caches()
    started = time.perf_counter()
    tb.restart_source()
    restarted = tb.wait_protected(job, started)
    print(
        f"  twinvault source restart: Idle at {restarted.seconds:.2f} s (daemon start included); "
        f"sent {restarted.view['total_sent_bytes']} B, wire {restarted.view['wire_bytes']} B"
    )
    row(
        "no-change difference mirror (a) s, restart",
        f"{restarted.seconds:.2f}",
        f"{r_again.seconds:.2f}",
        ratio(restarted.seconds, r_again.seconds),
    )
    _, img_total = _tree(image_path(image, src))
    if img_total != total:
        print(f"  !! image holds {img_total} bytes, source {total}")
    tb.delete_job(job)  # its capture must not compete with the next measurements
    print(f"  ({caches_note(dropped)}; {load_note()})")


def _tree(root: str) -> tuple[int, int]:
    from harness import tree_bytes

    return tree_bytes(root)


def bench_big(tb: Testbed, ref: RsyncOverSsh, base: Path, size: int, prof: str | None) -> None:
    src_dir = base / "data" / "big"
    src_dir.mkdir(parents=True)
    big = str(src_dir / "big.bin")
    t = time.perf_counter()
    make_big_file(big, size)
    print(
        f"(b) corpus: one file of {size} bytes ({mb(size):.1f} MB), made in {time.perf_counter() - t:.1f} s"
    )
    dst = str(base / "rsync" / "big")
    os.makedirs(dst, exist_ok=True)

    dropped = drop_caches()
    r_init = ref.rsync(str(src_dir), dst)

    dropped &= drop_caches()
    started = time.perf_counter()
    marks, on_poll = _stage_clock(started)
    cpu_src, cpu_repo = CpuMeter(tb.source_pid()).start(), CpuMeter(tb.repository_pid()).start()
    with profiled({"source": tb.source_pid(), "repository": tb.repository_pid()}, prof, "initial-big"):
        job, image = tb.protect(str(src_dir))
        init = tb.wait_protected(job, started, on_poll=on_poll)
    cpu_src.stop()
    cpu_repo.stop()
    print(
        f"  twinvault stages: Calculating until {marks.get('mirroring', float('nan')):.2f} s, "
        f"Idle at {init.seconds:.2f} s; sent {init.view['total_sent_bytes']} B, "
        f"wire {init.view['wire_bytes']} B"
    )
    print(
        f"  twinvault CPU: source {cpu_src.describe(init.seconds)}; "
        f"repository {cpu_repo.describe(init.seconds)}"
    )
    row(
        "initial mirror (b) MB/s",
        f"{mb(size) / init.seconds:.1f}",
        f"{mb(size) / r_init.seconds:.1f}",
        ratio(r_init.seconds, init.seconds),
    )
    row(
        "initial mirror (b) seconds",
        f"{init.seconds:.2f}",
        f"{r_init.seconds:.2f}",
        ratio(init.seconds, r_init.seconds),
    )
    print(f"  ({load_note()})")
    img_big = image_path(image, big)

    # -- 1 MiB changed, replicated live --------------------------------------------------
    before = tb.job(job)
    t = time.perf_counter()
    offset = change_middle(big)
    with profiled({"source": tb.source_pid(), "repository": tb.repository_pid()}, prof, "change-live"):
        # Wait for the change to be picked up, then for the job to go quiet.
        deadline = time.monotonic() + 60
        while tb.job(job)["total_sent_bytes"] == before["total_sent_bytes"] and time.monotonic() < deadline:
            time.sleep(0.05)
        after = tb.wait_replicated(job)
    live_s = time.perf_counter() - t
    sent = after["total_sent_bytes"] - before["total_sent_bytes"]
    wire = after["wire_bytes"] - before["wire_bytes"]
    ok = _same_region(big, img_big, offset - 4096, (1 << 20) + 8192)
    print(
        f"  live replication of the change: {live_s:.2f} s until quiet; image region matches: {ok}; "
        f"chunks: read {after['chunks']['bytes_read'] - before['chunks']['bytes_read']} B, "
        f"new {after['chunks']['bytes_new'] - before['chunks']['bytes_new']} B"
    )
    tb.stop_job(job)  # rsync writes a 2 GiB temp file: keep capture out of its way
    r_live = ref.rsync(str(src_dir), dst)
    row(
        "1 MiB changed, live: total_sent_bytes",
        f"{sent}",
        f"{r_live.bytes_sent}",
        ratio(sent, r_live.bytes_sent),
    )
    row("1 MiB changed, live: wire_bytes", f"{wire}", f"{r_live.bytes_sent}", ratio(wire, r_live.bytes_sent))

    # -- 1 MiB changed while stopped: the difference mirror finds it ----------------------
    offset = change_middle(big)
    dropped &= drop_caches()
    started = time.perf_counter()
    with profiled({"source": tb.source_pid(), "repository": tb.repository_pid()}, prof, "change-mirror"):
        tb.resume_job(job)
        diff = tb.wait_protected(job, started)
    ok = _same_region(big, img_big, offset - 4096, (1 << 20) + 8192)
    sent, wire = diff.view["total_sent_bytes"], diff.view["wire_bytes"]  # a resumed job counts from 0
    print(f"  difference mirror of the change: Idle at {diff.seconds:.2f} s; image region matches: {ok}")
    tb.stop_job(job)
    dropped &= drop_caches()
    r_diff = ref.rsync(str(src_dir), dst)
    row(
        "1 MiB changed, mirror: total_sent_bytes",
        f"{sent}",
        f"{r_diff.bytes_sent}",
        ratio(sent, r_diff.bytes_sent),
    )
    row(
        "1 MiB changed, mirror: wire_bytes", f"{wire}", f"{r_diff.bytes_sent}", ratio(wire, r_diff.bytes_sent)
    )
    row(
        "1 MiB changed, mirror: seconds",
        f"{diff.seconds:.2f}",
        f"{r_diff.seconds:.2f}",
        ratio(diff.seconds, r_diff.seconds),
    )
    tb.delete_job(job)
    print(f"  ({caches_note(dropped)}; {load_note()})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small-count", type=int, default=50_000, help="files in corpus (a); 0 skips it")
    p.add_argument(
        "--big-size", type=int, default=2 << 30, help="bytes of the file in corpus (b); 0 skips it"
    )
    p.add_argument("--profile", metavar="DIR", help="record py-spy profiles of both daemons into DIR")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (corpora, homes, logs)")
    args = p.parse_args(argv)
    print(
        f"bench_mirror: small_count={args.small_count} big_size={args.big_size} "
        f"cpus={os.cpu_count()} python={sys.version.split()[0]}" + (" PROFILED" if args.profile else "")
    )
    print(code_note())
    with bench_dir(args.keep) as base, RsyncOverSsh() as ref, testbed(base) as tb:
        print(f"temp dir {base} ({layout_note()})")
        if args.small_count:
            bench_small(tb, ref, base, args.small_count, args.profile)
        if args.big_size:
            bench_big(tb, ref, base, args.big_size, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
