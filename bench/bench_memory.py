"""Source daemon memory while protecting many small files: peak and steady RSS.

    .venv/bin/python bench/bench_memory.py                  # 200,000 files of 1 KiB
    .venv/bin/python bench/bench_memory.py --files 20000    # quick

Samples the source daemon's VmRSS (``/proc/PID/status``; the pid comes from
``GET /api/host``) every 0.2 s from job creation until the initial mirror is Idle,
then reads VmHWM (the kernel's peak) and, after ``--settle`` seconds with nothing to
do, the steady VmRSS. The repository daemon's figures (same machine) are printed too.

No reference tool keeps a resident daemon; rsync's largest process (sender or receiver,
max RSS from the reaped children's rusage) over the same corpus is shown for scale, and
the target is < 300 MB. Caches are not dropped (memory, not speed).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time

from corpus import make_small_files
from harness import bench_dir, code_note, rss_kib, testbed
from reference import RsyncOverSsh

TARGET_MB = 300.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=200_000)
    p.add_argument("--kib", type=int, default=1, help="size of each file")
    p.add_argument("--settle", type=float, default=10.0, help="seconds Idle before the steady reading")
    p.add_argument("--no-rsync", action="store_true", help="skip the rsync scale figure")
    p.add_argument("--timeout", type=float, default=1800, help="give up on the mirror after this many s")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    print(f"bench_memory: files={args.files} x {args.kib} KiB, cpus={os.cpu_count()}; caches not dropped")
    print(code_note())
    with bench_dir(args.keep) as base:
        src = str(base / "data" / "many")
        t = time.perf_counter()
        total = make_small_files(src, count=args.files, min_kib=args.kib, max_kib=args.kib)
        print(f"corpus: {args.files} files, {total} bytes, made in {time.perf_counter() - t:.1f} s")

        rsync_kib = 0
        if not args.no_rsync:
            with RsyncOverSsh() as ref:
                r = ref.rsync(src, str(base / "rsync"))
            # Nothing else has been reaped yet (keygen, sshd, ssh, both rsyncs: all small), so
            # RUSAGE_CHILDREN's max RSS is the largest rsync-side process: the sender, or the
            # receiver (reaped by sshd, which we reaped when the with block stopped it).
            rsync_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            print(
                f"rsync -a over ssh: {r.seconds:.1f} s; largest rsync-side process max RSS "
                f"{rsync_kib / 1024:.1f} MiB"
            )

        with testbed(base) as tb:
            pid, repo_pid = tb.source_pid(), tb.repository_pid()
            idle_rss, _ = rss_kib(pid)
            samples: list[tuple[float, int, int]] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    try:
                        samples.append((time.perf_counter(), rss_kib(pid)[0], rss_kib(repo_pid)[0]))
                    except OSError:
                        return
                    stop.wait(0.2)

            sampler = threading.Thread(target=sample, daemon=True)
            started = time.perf_counter()
            sampler.start()
            try:
                job, _image = tb.protect(src)
                done = tb.wait_protected(job, started, timeout=args.timeout)
            finally:
                stop.set()
                sampler.join()
            peak_rss = max(s[1] for s in samples)
            _, hwm = rss_kib(pid)
            repo_peak = max(s[2] for s in samples)
            _, repo_hwm = rss_kib(repo_pid)
            time.sleep(args.settle)
            steady, _ = rss_kib(pid)
            repo_steady, _ = rss_kib(repo_pid)
            view = tb.job(job)
            print(
                f"initial mirror Idle after {done.seconds:.1f} s ({args.files / done.seconds:.0f} files/s); "
                f"job status {view['status']}, health {view['health']}"
            )
            print(f"source daemon pid {pid}: idle before the job {idle_rss / 1024:.1f} MiB")
            print(
                f"  peak VmRSS sampled {peak_rss / 1024:.1f} MiB, VmHWM {hwm / 1024:.1f} MiB, "
                f"steady VmRSS after {args.settle:.0f} s Idle {steady / 1024:.1f} MiB"
            )
            print(
                f"repository daemon pid {repo_pid}: peak sampled {repo_peak / 1024:.1f} MiB, "
                f"VmHWM {repo_hwm / 1024:.1f} MiB, steady {repo_steady / 1024:.1f} MiB"
            )
            # RSS over time, in tenths of the mirror, to show whether it grows with files sent.
            n = len(samples)
            if n:
                marks = [samples[min(n - 1, int(i * n / 10))] for i in range(10)] + [samples[-1]]
                print(
                    "  source VmRSS over the mirror (MiB): " + " ".join(f"{s[1] / 1024:.0f}" for s in marks)
                )
            peak_mb = hwm * 1024 / 1e6
            steady_mb = steady * 1024 / 1e6
            rs = f"{rsync_kib * 1024 / 1e6:.1f} MB" if rsync_kib else "n/a"
            print(
                f"  figure: source peak {peak_mb:.1f} MB, steady {steady_mb:.1f} MB; "
                f"rsync largest process max RSS {rs}"
                + (f"; ratio peak/rsync {peak_mb / (rsync_kib * 1024 / 1e6):.2f}" if rsync_kib else "")
            )
            print(
                f"  target < {TARGET_MB:.0f} MB: peak/target {peak_mb / TARGET_MB:.2f}, steady/target "
                f"{steady_mb / TARGET_MB:.2f} "
                f"({'met' if peak_mb < TARGET_MB and steady_mb < TARGET_MB else 'NOT met'})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
