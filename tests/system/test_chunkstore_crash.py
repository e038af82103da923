"""A chunk store killed with SIGKILL loses nothing it acknowledged, at any instant.

A child process writes chunks in a loop and prints how many it has committed; the test
kills it at a random moment and reopens the store: every chunk whose commit returned must
read back. Another child runs a garbage collection and is killed at each of its steps;
every referenced chunk must survive, and the next open and collection leave no leftovers.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.faults import kill9
from tests.helpers.procs import start_child, stop_child
from tests.helpers.s3 import seaweedfs
from tests.unit.test_chunkstore import assert_readable, digest, put_all, random_chunk, text_chunk
from twinvault.ops import events as ev
from twinvault.repository.chunkstore import ChunkStore, RetryPolicy
from twinvault.repository.chunkstore.local import LocalBackend

REPO = Path(__file__).resolve().parents[2]
RETRY = RetryPolicy(first_delay=0.05, max_delay=0.3, give_up_after=2.0)

# The children: a writer that reports each returned commit, a collector that reports (and
# pauses at) each step. argv[1] is a JSON description of the backend and the run.
_CHILD = r"""
import json, sys, time
from pathlib import Path
sys.path[:0] = [{src!r}, {repo!r}]
from tests.system.test_chunkstore_crash import make_backend, chunk
from twinvault.repository.chunkstore import ChunkStore, RetryPolicy
from tests.unit.test_chunkstore import digest

job = json.loads(sys.argv[1])
store = ChunkStore.open_or_create(Path(job["state"]), make_backend(job["backend"]),
                                  pack_size=job["pack_size"], retry=RetryPolicy(0.05, 0.3, 2.0))
if job["mode"] == "write":
    i = job["start"]
    while True:
        for n in range(i, i + 5):
            data = chunk(n)
            store.put(digest(data), data)
        store.commit()
        i += 5
        print("committed", i, flush=True)
else:
    def step(name):
        print("step", name, flush=True)
        if name.startswith(job["pause_at"]):
            time.sleep(60)  # killed here
    store.collect_garbage({{bytes.fromhex(d) for d in job["keep"]}}, on_progress=step)
    print("step finished", flush=True)
"""


def chunk(n: int) -> bytes:
    """Chunk number n: a mix of sizes, half compressible."""
    size = (1 << 10) + (n * 7919) % (60 << 10)
    return text_chunk(n, size) if n % 2 else random_chunk(n, size)


def make_backend(spec: dict[str, str]) -> Any:
    if spec["kind"] == "local":
        return LocalBackend(Path(spec["root"]))
    from tests.helpers.s3 import ACCESS_KEY, SECRET_KEY
    from twinvault.repository.chunkstore.s3 import S3Backend

    return S3Backend(spec["endpoint"], spec["bucket"], "crash", ACCESS_KEY, SECRET_KEY, connect_timeout=1.0)


def run_child(job: dict[str, Any]) -> subprocess.Popen[str]:
    code = _CHILD.format(src=str(REPO / "src"), repo=str(REPO))
    return start_child(
        [sys.executable, "-c", code, json.dumps(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(child: subprocess.Popen[str], predicate: Any, timeout: float = 30) -> list[str]:
    """Lines the child printed, up to the first one `predicate` accepts."""
    assert child.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            err = child.stderr.read() if child.stderr else ""
            raise AssertionError(f"child ended ({child.wait()}): {err}")
        lines.append(line.strip())
        if predicate(line.strip()):
            return lines
    raise AssertionError(f"child did not get there in {timeout} s: {lines[-5:]}")


def events_into(events: list[tuple[int, dict[str, object]]]) -> Any:
    return lambda event_id, fields: events.append((event_id, fields))


@pytest.fixture(params=["local", "s3"])
def backend_spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    if request.param == "local":
        yield {"kind": "local", "root": str(tmp_path / "backend")}
        return
    with seaweedfs(tmp_path / "seaweedfs") as server:
        yield {"kind": "s3", "endpoint": server.endpoint, "bucket": "crash-tests"}


def test_writer_killed_at_random_loses_no_committed_chunk(
    backend_spec: dict[str, str], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    rng = random.Random(20261125)
    committed = 0
    events: list[tuple[int, dict[str, object]]] = []
    for _cycle in range(4):
        job = {"mode": "write", "state": str(state), "backend": backend_spec, "pack_size": 96 << 10}
        child = run_child({**job, "start": committed})
        target = committed + rng.randrange(20, 80)
        try:
            lines = read_until(child, lambda line, t=target: int(line.split()[1]) >= t)
            time.sleep(rng.random() * 0.03)  # land anywhere: mid-put, mid-commit, mid-seal, mid-upload
            kill9(child.pid)
        finally:
            stop_child(child)
        assert child.returncode == -9
        committed = int(lines[-1].split()[1])
        with ChunkStore.open(
            state, make_backend(backend_spec), retry=RETRY, on_event=events_into(events)
        ) as store:
            assert_readable(store, [chunk(n) for n in range(committed)])
            assert store.flush_uploads(20)
            report = store.check(read_data=True, digests=[digest(chunk(n)) for n in range(committed)])
            assert report.ok, report.problems
    repairs = [i for i, _ in events if i == ev.STORE_RECOVERED_AFTER_CRASH]
    # A kill can land just after a seal, with nothing open to repair: most, not all, of
    # the four kills leave a torn pack (on a slow machine, fewer).
    assert len(repairs) >= 1, "a kill -9 mid-write should leave an open pack to repair"


@pytest.mark.parametrize("pause_at", ["planned", "written", "indexed", "removed"])
def test_gc_killed_at_each_step_loses_no_referenced_chunk(tmp_path: Path, pause_at: str) -> None:
    spec = {"kind": "local", "root": str(tmp_path / "backend")}
    state = tmp_path / "state"
    chunks = [random_chunk(i, 16 << 10) for i in range(72)]
    with ChunkStore.create(state, make_backend(spec), pack_size=64 << 10) as store:
        digests = put_all(store, chunks)
        store.seal()
        assert store.flush_uploads(10)
    # Packs hold 4 chunks: the first 16 chunks die (4 packs removed), then 1 in 3 live
    # (packs rewritten), and the last 8 stay whole (packs kept).
    keep = {d for n, d in enumerate(digests) if (n >= 16 and n % 3 == 0) or n >= 64}
    child = run_child(
        {"mode": "gc", "state": str(state), "backend": spec, "pack_size": 64 << 10, "pause_at": pause_at,
         "keep": [d.hex() for d in keep]}
    )  # fmt: skip
    try:
        steps = read_until(child, lambda line: line.startswith(f"step {pause_at}") or line == "step finished")
        assert steps[-1] != "step finished", f"collection never reached {pause_at}: {steps}"
        kill9(child.pid)
    finally:
        stop_child(child)
    events: list[tuple[int, dict[str, object]]] = []
    with ChunkStore.open(state, make_backend(spec), on_event=events_into(events)) as store:
        kept = [c for d, c in zip(digests, chunks, strict=True) if d in keep]
        assert_readable(store, kept)
        assert store.flush_uploads(10)
        assert store.check(digests=keep).ok
        report = store.collect_garbage(keep)
        assert_readable(store, kept)
        final = store.check(read_data=True, digests=keep)
        assert final.ok, final.problems
        assert report.chunks_removed + store.stats().chunks >= len(keep)
        # No leftover of the killed run: every pack on the backend is in the index, and
        # nothing unreferenced survives in a pack that was due for removal.
        on_backend = sorted(p.name for p in (tmp_path / "backend" / "packs").glob("*/*"))
        assert on_backend == sorted(r.name for r in store.index.packs())
        assert store.stats().chunks <= len(keep) + 8
    # Killed after planning, nothing had changed yet; later, leftovers were cleaned up.
    expected = [] if pause_at == "planned" else [ev.STORE_RECOVERED_AFTER_CRASH]
    assert [i for i, _ in events] == expected
