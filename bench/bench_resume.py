"""Resume after a crash: what the source sends again when killed half way through a mirror.

    .venv/bin/python bench/bench_resume.py                     # 50,000 small files
    .venv/bin/python bench/bench_resume.py --small-count 5000   # quick

The initial mirror of the small-file corpus runs until ``mirror.percent_complete`` passes
``--kill-at`` (50 %); then the SOURCE daemon gets SIGKILL and is started again with the
same home. The restarted job runs a difference mirror against what the repository
applied; its ``total_sent_bytes`` (the new daemon counts from 0) over the corpus size is
the figure, against the target <= 0.6. rsync's own restart figure from the same run is
printed beside it: an ``rsync -a`` killed (SIGKILL) at the same fraction of bytes in its
destination, then re-run (rsync keeps every completed file, so its re-run sends what
was missing, plus protocol).

Also checks that the image equals the source afterwards (names, sizes and bytes of a
sample of files), since a resume that sends little but loses files would be no win.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import signal
import subprocess
import sys
import time

from corpus import make_small_files
from harness import bench_dir, code_note, image_path, ratio, testbed, tree_bytes
from reference import RsyncOverSsh, parse_bytes_sent

TARGET = 0.6


def _rsync_killed_then_rerun(
    ref: RsyncOverSsh, src: str, dst: str, total: int, kill_at: float
) -> tuple[int, float]:
    """Kill an initial rsync at `kill_at` of the bytes and re-run it.

    Returns (bytes sent by the re-run, fraction of the bytes in place at the kill).
    """
    argv = [
        "rsync",
        "-a",
        "--stats",
        "-e",
        shlex.join(ref.ssh_command()),
        src.rstrip("/") + "/",
        f"root@127.0.0.1:{dst.rstrip('/')}/",
    ]
    os.makedirs(dst, exist_ok=True)
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    done = 0
    try:
        while proc.poll() is None:
            done = du_bytes(dst)
            if done >= kill_at * total:
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(1)  # the remote receiver notices the closed pipe and exits
    res = subprocess.run(argv, capture_output=True, text=True, check=True)
    return parse_bytes_sent(res.stdout), done / total


def du_bytes(root: str) -> int:
    out = subprocess.run(["du", "-sb", root], capture_output=True, text=True, check=False).stdout
    return int(out.split()[0]) if out else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small-count", type=int, default=50_000)
    p.add_argument("--kill-at", type=float, default=50.0, help="mirror percent_complete at which to SIGKILL")
    p.add_argument("--no-rsync", action="store_true")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    print(
        f"bench_resume: small_count={args.small_count} kill_at={args.kill_at}% cpus={os.cpu_count()}; "
        "caches not dropped (bytes, not speed)"
    )
    print(code_note())
    with bench_dir(args.keep) as base:
        src = str(base / "data" / "small")
        total = make_small_files(src, count=args.small_count)
        print(f"corpus: {args.small_count} files, {total} bytes")

        r_sent = 0
        if not args.no_rsync:
            with RsyncOverSsh() as ref:
                r_sent, r_frac = _rsync_killed_then_rerun(
                    ref, src, str(base / "rsync"), total, args.kill_at / 100
                )
            print(
                f"rsync: killed with {100 * r_frac:.1f}% of the bytes in its destination; "
                f"re-run sent {r_sent} B ({r_sent / total:.3f} of the corpus)"
            )

        with testbed(base) as tb:
            started = time.perf_counter()
            job, image = tb.protect(src)
            percent = 0.0
            view: dict[str, object] = {}
            while percent < args.kill_at:
                view = tb.job(job)
                percent = float(view["mirror"]["percent_complete"])  # type: ignore[index]
                if view["mirror"]["status"] == "Idle" and view.get("recovery_available"):  # type: ignore[index]
                    print("!! the mirror finished before the kill point; use a bigger corpus")
                    return 1
                time.sleep(0.05)
            sent_before = int(view["total_sent_bytes"])  # type: ignore[call-overload]
            tb.source.kill9()
            killed_at = time.perf_counter() - started
            img_files, img_bytes = tree_bytes(image_path(image, src))
            print(
                f"SIGKILL of the source at {killed_at:.1f} s: percent_complete {percent}, "
                f"total_sent_bytes {sent_before} ({sent_before / total:.3f} of the corpus); "
                f"image then held {img_files} files, {img_bytes} B ({img_bytes / total:.3f})"
            )

            restarted = time.perf_counter()
            restarted_wall = time.time()
            tb.source.start(tb.console)
            done = tb.wait_protected(job, restarted)
            # One connection and one mirror are expected; more means the restarted mirror was cut.
            counts = {eid: 0 for eid in (4016, 4017, 4019, 4023)}
            for e in tb.source.events():
                if e.get("time", 0) >= restarted_wall and e.get("id") in counts:
                    counts[e["id"]] += 1
            print(
                f"source events since the restart: {counts[4016]} connected, {counts[4017]} disconnected, "
                f"{counts[4019]} mirrors started, {counts[4023]} completed"
            )
            resent = int(done.view["total_sent_bytes"])
            wire = int(done.view["wire_bytes"])
            print(
                f"restarted mirror Idle after {done.seconds:.1f} s: sent {resent} B, wire {wire} B, "
                f"skipped {done.view['mirror']['skipped_bytes']} B"
            )

            # The image must now equal the source.
            src_files, src_bytes = tree_bytes(src)
            img_files, img_bytes = tree_bytes(image_path(image, src))
            sample = random.Random(3).sample(range(args.small_count), min(500, args.small_count))
            bad = 0
            for i in sample:
                rel = os.path.join(f"d{i // 500:04d}", f"f{i:06d}")
                with (
                    open(os.path.join(src, rel), "rb") as a,
                    open(image_path(image, os.path.join(src, rel)), "rb") as b,
                ):
                    bad += a.read() != b.read()
            print(
                f"image after resume: {img_files}/{src_files} files, {img_bytes}/{src_bytes} B; "
                f"{bad} of {len(sample)} sampled files differ"
            )

            fig = resent / total
            print(
                f"  figure: resent/corpus twinvault {fig:.3f}"
                + (f"   rsync {r_sent / total:.3f}   ratio {ratio(resent, r_sent)}" if r_sent else "")
            )
            print(
                f"  ideal for a kill at {percent}% sent: "
                f"about {1 - min(sent_before, img_bytes) / total:.3f}; "
                f"target <= {TARGET}: {'met' if fig <= TARGET else 'NOT met'}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
