"""A protection job and its change capture.

- The mirror walk waits for capture. inotify places its watches on a walk of its own. A
  mirror walk that passed a file before the file's directory was watched would not see it
  change: the image kept the old version until the next mirror. The job's walk (the one
  begun while connecting included) starts only once capture is on.
- Capture that cannot start is reported (event 4097, replication status "Watchdog"),
  tried again, and once it runs a difference mirror finds what changed unseen (9007).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from twinvault.ops import events as ev
from twinvault.source import job as job_module
from twinvault.source.capture import CaptureUnavailable
from twinvault.source.capture.inotify import InotifyCapture
from twinvault.source.job import JobSpec, ProtectionJob
from twinvault.source.job_status import job_status
from twinvault.source.queue import QueueLimits


class SilentRepository:
    """A port that accepts connections and never answers: a job stays connecting."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port: int = self._server.getsockname()[1]
        self._accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                self._accepted.append(self._server.accept()[0])
            except TimeoutError:
                continue

    def hang_up(self) -> None:
        """Close everything, so a connect in progress fails now, not at its timeout."""
        self._stop.set()
        self._thread.join()
        for conn in self._accepted:
            conn.close()
        self._server.close()


@pytest.fixture
def silent_repository() -> Iterator[SilentRepository]:
    repository = SilentRepository()
    yield repository
    repository.hang_up()


async def test_the_walk_begun_while_connecting_waits_for_the_watches(
    tmp_path: Path, silent_repository: SilentRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"x")
    watches_may_go = threading.Event()
    captured_at: list[float] = []
    walked_at: list[float] = []
    inotify_walk = InotifyCapture._walk
    walk_selection = job_module.walk_selection

    def held_inotify_walk(self: InotifyCapture) -> Any:
        assert watches_may_go.wait(10)
        walk = inotify_walk(self)
        captured_at.append(time.monotonic())
        return walk

    def recorded_walk(selection: Any) -> Any:
        walked_at.append(time.monotonic())
        return walk_selection(selection)

    monkeypatch.setattr(InotifyCapture, "_walk", held_inotify_walk)
    monkeypatch.setattr(job_module, "walk_selection", recorded_walk)
    job = _inotify_job(tmp_path, src, silent_repository.port, lambda *args, **fields: None)
    await job.start()
    try:
        await asyncio.sleep(0.5)
        assert walked_at == [], "the selection was walked before capture watched it"
        assert job.capture_kind == ""
        watches_may_go.set()
        await _until(lambda: walked_at)
        # Still connecting (the repository never answers): this is the walk made while
        # connecting, and it came after the watches.
        assert not job.connected
        assert job.capture_kind == "inotify"
        assert len(walked_at) == 1 and captured_at[0] <= walked_at[0]
    finally:
        watches_may_go.set()
        silent_repository.hang_up()
        await job.stop()


async def test_capture_that_cannot_start_is_reported_retried_and_followed_by_a_mirror(
    tmp_path: Path, silent_repository: SilentRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    refusals = [CaptureUnavailable("inotify_init1 failed (fs.inotify.max_user_instances?)", 24)] * 2
    inotify_start = InotifyCapture.start

    async def refused_start(self: InotifyCapture) -> None:
        if refusals:
            raise refusals.pop()
        await inotify_start(self)

    monkeypatch.setattr(InotifyCapture, "start", refused_start)
    monkeypatch.setattr(job_module, "CAPTURE_RETRY_S", 0.3)
    emitted: list[tuple[int, dict[str, Any]]] = []
    job = _inotify_job(tmp_path, src, silent_repository.port, lambda id_, **f: emitted.append((id_, f)))
    await job.start()
    try:
        await _until(lambda: any(i == ev.CHANGE_CAPTURE_FAILED for i, _ in emitted))
        failed = [f for i, f in emitted if i == ev.CHANGE_CAPTURE_FAILED]
        assert "max_user_instances" in failed[0]["reason"]
        status = job_status(job)
        assert status["replication"]["status"] == "Watchdog"
        assert status["health"] == "error"
        assert "max_user_instances" in status["capture_error"]
        # Not waiting on capture forever: the mirror's walk goes ahead without it.
        assert job._capture_settled.is_set()
        await _until(lambda: job.capture_kind == "inotify")
        # Two refusals, one report; then running again, with a difference mirror asked for.
        assert [i for i, _ in emitted].count(ev.CHANGE_CAPTURE_FAILED) == 1
        assert any(i == ev.CAPTURE_RESTORED for i, _ in emitted)
        assert job._remirror.is_set()
        status = job_status(job)
        assert status["replication"]["status"] != "Watchdog" and status["capture_error"] is None
    finally:
        silent_repository.hang_up()
        await job.stop()


def _inotify_job(tmp_path: Path, src: Path, port: int, emit: Any) -> ProtectionJob:
    spec = JobSpec(
        job_id="capture",
        source_name="alpha",
        repository_name="beta",
        repository_address="127.0.0.1",
        repository_peer_port=port,
        repository_fingerprint="00" * 32,
        token="t",
        roots=(str(src),),
    )
    return ProtectionJob(spec, tmp_path / "queue", QueueLimits(), emit, capture_method="inotify")


async def _until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
