"""Shared plumbing of the benchmarks: two real hosts, a job, its status, and fair timing.

`Testbed` starts two real twinvault hosts (``alpha`` the source, ``beta`` the repository)
with `tests.helpers.hosts`, under one temp dir that also holds the corpora and the
reference tool's destination, so both tools read and write the same filesystem. Jobs are
created and stopped with the real ``twinvault`` CLI; while a benchmark waits, it polls
``GET /api/jobs/JOB`` in-process with the CLI's own `ApiClient` (the call behind
``twinvault job show JOB --json``), because spawning a CLI process every 100 ms would
steal a core from the daemons on a 2-core machine.

Caches: `drop_caches` runs ``sync; echo 3 > /proc/sys/vm/drop_caches`` (root only) and
every benchmark says in its output whether it did.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# TV_BENCH_CODE: measure another copy of the code (src/ and tests/, e.g. `git archive` of one
# commit) while the work tree keeps changing; the daemons and the CLI inherit it by PYTHONPATH.
CODE = Path(os.environ.get("TV_BENCH_CODE") or REPO).resolve()
for _p in (str(CODE), str(CODE / "src")):  # tests.helpers (the host fixture), twinvault
    if _p in sys.path:
        sys.path.remove(_p)
    sys.path.insert(0, _p)
if CODE != REPO:
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(CODE / "src"), str(CODE), *filter(None, [os.environ.get("PYTHONPATH")])]
    )

from tests.helpers.hosts import Console, TestHost, running_hosts  # noqa: E402
from twinvault.cli.client import ApiClient, CredentialCache  # noqa: E402

POLL = 0.1  # seconds between status polls while timing: the timing resolution
# The first seconds of a wait poll finer: a no-change mirror takes one or two seconds,
# where 100 ms is a tenth of the figure; a long mirror would only pay for the polls
# (each is an API call the source daemon answers on its event loop).
POLL_FINE, FINE_FOR = 0.02, 3.0


def code_note() -> str:
    """Which code is measured: the work tree, or TV_BENCH_CODE (and its COMMIT file if any)."""
    commit = ""
    with contextlib.suppress(OSError):
        commit = (CODE / "COMMIT").read_text().strip()
    cpus = os.environ.get("TV_BENCH_REPOSITORY_CPUS")
    return (
        f"code {CODE}"
        + (f" (commit {commit})" if commit else "")
        + (f"; the repository host runs on CPUs {cpus} (TV_BENCH_REPOSITORY_CPUS)" if cpus else "")
    )


def drop_caches() -> bool:
    """Flush dirty pages and drop the page, dentry and inode caches; False if not allowed."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def caches_note(dropped: bool) -> str:
    return "caches dropped before each timed side" if dropped else "caches NOT dropped (not root?)"


def load_note() -> str:
    """The load average now: other processes share the cores, so a figure needs it beside."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB, from /proc/PID/status."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of `pid`, by thread id (tid == pid: main)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return out


class CpuMeter:
    """CPU used by a daemon between `start` and `stop`: its event-loop thread and the others."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._before: dict[int, float] = {}
        self.loop = self.others = 0.0

    def start(self) -> CpuMeter:
        self._before = thread_cpu(self.pid)
        return self

    def stop(self) -> CpuMeter:
        after = thread_cpu(self.pid)
        # Threads that ended in between are lost; the daemons keep theirs for a job's life.
        deltas = {t: v - self._before.get(t, 0.0) for t, v in after.items()}
        self.loop = deltas.pop(self.pid, 0.0)
        self.others = sum(deltas.values())
        return self

    def describe(self, wall: float) -> str:
        return (
            f"event loop {self.loop:.1f} s ({100 * self.loop / wall:.0f}%), other threads "
            f"{self.others:.1f} s ({100 * self.others / wall:.0f}%)"
        )


def tree_bytes(root: str) -> tuple[int, int]:
    """(regular files, their total bytes) under `root`."""
    files = total = 0
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            st = os.lstat(os.path.join(dirpath, n))
            files += 1
            total += st.st_size
    return files, total


def mb(n: float) -> float:
    return n / 1e6


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}" if theirs else "n/a"


def row(figure: str, ours: str, theirs: str, r: str, *, reference: str = "rsync") -> None:
    print(f"  {figure:<44} twinvault {ours:>14}   {reference} {theirs:>14}   ratio {r:>6}", flush=True)


def figure(name: str, value: str, target: str) -> None:
    """A figure with no reference tool: printed against its target."""
    print(f"  {name:<60} {value:>16}   target {target}", flush=True)


@contextlib.contextmanager
def bench_dir(keep: bool = False) -> Iterator[Path]:
    """One temp dir for corpora, hosts and the reference's destination (same filesystem);
    on a filesystem of its own when TV_BENCH_FRESH_FS is set (see `fresh_filesystem`).

    With TV_BENCH_TWO_DISKS too, the repository host's home (``home-beta``: its image and
    history) and the reference's destination (``rsync``) are on a second fresh filesystem,
    as on two hosts: the source's filesystem then sees only the source's own I/O (on one
    filesystem, every file the repository writes is an event for the source's fanotify
    mark, which it reads and discards)."""
    with contextlib.ExitStack() as stack:
        outside = os.environ.get("TV_BENCH_DIR")
        size = os.environ.get("TV_BENCH_FRESH_FS")
        parent = str(stack.enter_context(fresh_filesystem(int(size), outside))) if size else outside
        base = Path(tempfile.mkdtemp(prefix="tv-bench-", dir=parent))
        if size and os.environ.get("TV_BENCH_TWO_DISKS"):
            second = stack.enter_context(fresh_filesystem(int(size), outside))
            for name in ("home-beta", "rsync"):
                (second / name).mkdir()
                (base / name).symlink_to(second / name)
        elif os.environ.get("TV_BENCH_TWO_DISKS"):
            raise SystemExit("TV_BENCH_TWO_DISKS needs TV_BENCH_FRESH_FS (the size of each filesystem)")
        try:
            yield base
        finally:
            if keep and not size:
                print(f"(kept {base})")
            else:
                if keep:
                    print("(not kept: the fresh filesystem goes with the run)")
                shutil.rmtree(base, ignore_errors=True)


def layout_note() -> str:
    """Which filesystems the run's parts are on (see `bench_dir`)."""
    if os.environ.get("TV_BENCH_TWO_DISKS"):
        return (
            "corpora and the source host on one fresh filesystem; "
            "the repository host and rsync's destination on another"
        )
    return "corpora, host homes and rsync's destination on one filesystem"


@contextlib.contextmanager
def fresh_filesystem(gib: int, parent: str | None = None) -> Iterator[Path]:
    """A new ext4 without a journal, like this machine's root, in a sparse file on a loop
    device with direct I/O (no second page cache), mounted for the benchmark, gone after.

    Why: on a journal-less ext4 every inode allocation skips the inodes deleted in the
    last minute or more (``recently_deleted``, one buffer-cache lookup each), so after a
    run that deleted tens of thousands of files, creating files costs 100-300 us each
    instead of ~10, and which tool pays depends on the block groups its directories
    landed in. Both tools get the same untouched filesystem here."""
    work = Path(tempfile.mkdtemp(prefix="tv-fs-", dir=parent))
    image, mount = work / "fs.img", work / "mnt"
    mount.mkdir()
    device = ""
    try:
        with open(image, "wb") as f:
            f.truncate(gib << 30)
        subprocess.run(["mkfs.ext4", "-q", "-O", "^has_journal", str(image)], check=True)
        device = subprocess.run(
            ["losetup", "--direct-io=on", "-f", "--show", str(image)],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        subprocess.run(["mount", device, str(mount)], check=True)
        print(f"fresh filesystem: {gib} GiB ext4 without a journal on {device} at {mount}", flush=True)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        if device:
            subprocess.run(["losetup", "-d", device], check=False)
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class Timed:
    seconds: float
    view: dict[str, Any]


class Testbed:
    """Two running hosts: `source` (alpha) and `repository` (beta)."""

    def __init__(self, console: Console, source: TestHost, repository: TestHost) -> None:
        self.console = console
        self.source = source
        self.repository = repository

    # -- API --------------------------------------------------------------------------

    def client(self, host: TestHost) -> ApiClient:
        return ApiClient.for_host(host.api, CredentialCache(self.console.config_dir))

    def job(self, job: str) -> dict[str, Any]:
        """What ``twinvault job show JOB --server SOURCE --json`` prints."""
        view: dict[str, Any] = self.client(self.source).call("GET", f"/api/jobs/{job}")
        return view

    def source_pid(self) -> int:
        pid: int = self.client(self.source).call("GET", "/api/host")["pid"]
        return pid

    def repository_pid(self) -> int:
        pid: int = self.client(self.repository).call("GET", "/api/host")["pid"]
        return pid

    # -- CLI ----------------------------------------------------------------------------

    def protect(self, *dirs: str) -> tuple[str, str]:
        """Create a job over `dirs`; return (job id, image location)."""
        out = self.console.json(
            "protect", "--source", self.source.api, "--repository", self.repository.api, "--data", *dirs
        )
        return out["job"], out["image_location"]

    def stop_job(self, job: str) -> None:
        self.console.run("job", "stop", job, "--server", self.source.api)

    def resume_job(self, job: str) -> None:
        self.console.run("job", "resume", job, "--server", self.source.api)

    def delete_job(self, job: str) -> None:
        self.console.run("job", "delete", job, "--server", self.source.api)

    def restart_source(self, *, kill: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL with `kill`) and start the source host with the same home."""
        if kill:
            self.source.kill9()
        else:
            self.source.stop()
        self.source.start(self.console)

    # -- waiting ------------------------------------------------------------------------

    def wait_protected(
        self,
        job: str,
        started: float,
        timeout: float = 3600,
        on_poll: Callable[[dict[str, Any]], None] | None = None,
    ) -> Timed:
        """Poll until mirror Idle and recovery available; seconds since `started` (perf_counter).

        Connection refusals while a host restarts count as "not yet".
        """
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                last = self.job(job)
            except Exception as exc:  # the daemon is restarting or busy: try again
                last = {"error": str(exc)}
            else:
                if on_poll is not None:
                    on_poll(last)
                if last.get("mirror", {}).get("status") == "Idle" and last.get("recovery_available"):
                    return Timed(time.perf_counter() - started, last)
            time.sleep(POLL_FINE if time.perf_counter() - started < FINE_FOR else POLL)
        raise TimeoutError(
            f"job {job} not protected after {timeout}s; last status {_brief(last)}\n"
            f"source log tail:\n{self.log_tail(self.source)}"
        )

    def wait_replicated(self, job: str, timeout: float = 600) -> dict[str, Any]:
        """Poll until nothing waits to be replicated: no pending paths, nothing queued."""
        deadline = time.monotonic() + timeout
        quiet_since = 0.0
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.job(job)
            rep = last["replication"]
            if rep["pending_paths"] == 0 and rep["bytes_queued"] == 0 and last["mirror"]["status"] == "Idle":
                if not quiet_since:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > 1.0:  # stays quiet for a second
                    return last
            else:
                quiet_since = 0.0
            time.sleep(POLL)
        raise TimeoutError(f"job {job} still replicating after {timeout}s; last status {_brief(last)}")

    @staticmethod
    def log_tail(host: TestHost, chars: int = 3000) -> str:
        try:
            return (host.home / "serve.log").read_text(errors="replace")[-chars:]
        except OSError:
            return "(no serve.log)"


def _brief(view: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "status",
        "health",
        "percent_complete",
        "total_sent_bytes",
        "wire_bytes",
        "transmit_status",
        "recovery_available",
        "last_error",
        "error",
    )
    out = {k: view[k] for k in keys if k in view}
    if "mirror" in view:
        out["mirror"] = {k: view["mirror"][k] for k in ("status", "percent_complete", "remaining_bytes")}
    return out


@contextlib.contextmanager
def testbed(base: Path) -> Iterator[Testbed]:
    """Start alpha (source) and beta (repository) under `base`; stop them afterwards.
    TV_BENCH_REPOSITORY_CPUS: the repository host's ``cpus`` setting (daemon/cpus.py)."""
    cpus = os.environ.get("TV_BENCH_REPOSITORY_CPUS")
    configs = {"beta": f'[config]\ncpus = "{cpus}"\n'} if cpus else None
    with running_hosts(base, "alpha", "beta", configs=configs) as (console, hosts):
        yield Testbed(console, hosts[0], hosts[1])


def image_path(image_location: str, source_path: str) -> str:
    """Where the repository keeps `source_path`: the image root, then the absolute path."""
    return image_location.rstrip("/") + os.path.abspath(source_path)


def run_quiet(argv: list[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout
