"""Optional sampling profiles of the daemons while a benchmark runs (py-spy, if installed).

    with profiled({"source": pid1, "repository": pid2}, "/tmp/prof", "initial-small"):
        ...  # the timed work

writes ``DIR/LABEL-ROLE.txt`` (py-spy's collapsed stacks, one ``stack count`` a line) and
prints the top functions by own time and by inclusive time for each role. py-spy runs
with ``--nonblocking`` so it does not pause the daemon; it still costs a little CPU, so
figures measured under a profile are marked as such.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def profiled(pids: dict[str, int], out_dir: str | None, label: str, top: int = 14) -> Iterator[None]:
    exe = py_spy() if out_dir else None
    if not out_dir or exe is None:
        if out_dir:
            print("  (py-spy not found: no profile)")
        yield
        return
    os.makedirs(out_dir, exist_ok=True)
    procs: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    for role, pid in pids.items():
        path = os.path.join(out_dir, f"{label}-{role}.txt")
        procs[role] = (
            subprocess.Popen(
                [
                    exe,
                    "record",
                    "--pid",
                    str(pid),
                    "--nonblocking",
                    *(["--idle", "--threads"] if os.environ.get("TV_PROFILE_IDLE") else []),
                    *(["--gil", "--threads"] if os.environ.get("TV_PROFILE_GIL") else []),
                    "--rate",
                    os.environ.get("TV_PROFILE_RATE", "50"),
                    "--format",
                    "raw",
                    "--output",
                    path,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            ),
            path,
        )
    try:
        yield
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for role, (proc, path) in procs.items():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            summarize(path, f"{label} {role}", top)


def summarize(path: str, title: str, top: int = 14) -> None:
    """Print the hottest functions of a collapsed-stack file (own and inclusive samples)."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    try:
        with open(path) as f:
            for line in f:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if not stack:
                    continue
                n = int(count)
                total += n
                frames = [_short(fr) for fr in stack.split(";")]
                own[frames[-1]] += n
                for fr in set(frames):
                    incl[fr] += n
    except (OSError, ValueError):
        print(f"  (no profile for {title})")
        return
    if not total:
        print(f"  (empty profile for {title})")
        return
    print(f"  profile {title}: {total} samples (non-idle), {path}")
    print("    own time:")
    for fr, n in own.most_common(top):
        print(f"      {100 * n / total:5.1f}%  {fr}")
    print("    inclusive (twinvault frames):")
    shown = 0
    for fr, n in incl.most_common():
        if "twinvault" in fr:
            print(f"      {100 * n / total:5.1f}%  {fr}")
            shown += 1
            if shown >= top:
                break


def _short(frame: str) -> str:
    # py-spy frames look like "function (path/to/module.py:123)"; keep the function and the
    # module path from its package on, drop the line number (so a function is one entry).
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    for marker in ("/site-packages/", "/src/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{name} ({file})"
