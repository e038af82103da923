"""The repository role's history service: opens history, runs its timers, answers the API.

Timers on the repository's clock: scheduled snapshots (deferred with event 4403 while
an image is not in a good state) and retention (``repo prune`` every
``prune_every_s``). Blocking work (opening, prune, check, restore) runs in threads so
the event loop keeps serving links and the console.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from twinvault.daemon.config import Home, HostConfig
from twinvault.daemon.history_setup import open_history
from twinvault.ops import errors
from twinvault.ops import events as ev
from twinvault.ops.errors import TwinvaultError
from twinvault.pit.restore import resolve_point
from twinvault.pit.stream import frame_batches
from twinvault.repository import integrity, retention
from twinvault.repository.catalog import open_catalog
from twinvault.repository.history import SCHEDULED, USER_REQUEST, History
from twinvault.repository.receiver import ImageJob
from twinvault.repository.snapshots import Due, SnapshotSchedule
from twinvault.threads import iterate_in_thread
from twinvault.timefmt import iso_from_ns

log = logging.getLogger(__name__)

Emit = Callable[..., Any]
TICK_S = 1.0


class HistoryService:
    def __init__(self, home: Home, config: HostConfig, emit: Emit, image_jobs: dict[str, ImageJob]) -> None:
        self._home = home
        self._config = config
        self._emit = emit
        self._jobs = image_jobs
        self._history: History | None = None
        self._open_lock = threading.Lock()
        self._schedules: dict[str, SnapshotSchedule] = {}
        self._timer: asyncio.Task[None] | None = None
        self._last_prune = time.time()

    # -- lifecycle -----------------------------------------------------------------------

    def history(self) -> History:
        """History, opened on first use (a host that never holds an image never makes a store)."""
        with self._open_lock:
            if self._history is None:
                history = open_history(self._home, self._config, self._emit)
                history.set_jobs_of(self._jobs_of)
                self._history = history
            return self._history

    @property
    def opened(self) -> History | None:
        return self._history

    def _jobs_of(self, image: str) -> set[str]:
        return {j.job_id for j in self._jobs.values() if j.image_name == image}

    async def start(self) -> None:
        if self._jobs:
            await asyncio.to_thread(self.history)
        for job in self._jobs.values():
            self._load_schedule(job)
        self._timer = asyncio.create_task(self._tick_forever())

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        if self._history is not None:
            await asyncio.to_thread(self._history.close)
            self._history = None

    # -- images and schedules --------------------------------------------------------------

    async def image_added(self, job: ImageJob) -> None:
        history = await asyncio.to_thread(self.history)
        await asyncio.to_thread(history.ensure_image, job.image_name, job.cdp_days)
        if self._load_schedule(job):
            schedule = self._schedules[job.job_id]
            self._emit(
                ev.SNAPSHOT_SCHEDULE_SET,
                **self._fields(job),
                minutes=f"{schedule.every_s / 60:g}",
                next=iso_from_ns(int(schedule.next_due * 1e9)),
            )

    def image_removed(self, job: ImageJob) -> None:
        if self._schedules.pop(job.job_id, None) is not None:
            self._emit(ev.SNAPSHOT_SCHEDULE_REMOVED, **self._fields(job))

    def _load_schedule(self, job: ImageJob) -> bool:
        self._schedules.pop(job.job_id, None)
        if job.snapshot_every_s <= 0 or not job.snapshot_schedule_enabled:
            return False
        start = job.snapshot_start or job.created
        self._schedules[job.job_id] = SnapshotSchedule(job.snapshot_every_s, start)
        return True

    def schedule_changed(self, job: ImageJob, *, was_enabled: bool, interval_changed: bool) -> None:
        """The job's schedule was edited (``job schedule``): events 4404/4406/4407."""
        running = self._load_schedule(job)
        if was_enabled and not job.snapshot_schedule_enabled:
            self._emit(ev.SNAPSHOT_SCHEDULE_DISABLED, **self._fields(job))
        elif not was_enabled and job.snapshot_schedule_enabled:
            self._emit(ev.SNAPSHOT_SCHEDULE_ENABLED, **self._fields(job))
        if running and interval_changed:
            schedule = self._schedules[job.job_id]
            self._emit(
                ev.SNAPSHOT_SCHEDULE_SET,
                **self._fields(job),
                minutes=f"{schedule.every_s / 60:g}",
                next=iso_from_ns(int(schedule.next_due * 1e9)),
            )

    def schedule_view(self, job: ImageJob) -> dict[str, Any]:
        schedule = self._schedules.get(job.job_id)
        return {
            "job": job.job_id,
            "every_s": job.snapshot_every_s,
            "enabled": job.snapshot_schedule_enabled,
            "next": None if schedule is None else iso_from_ns(int(schedule.next_due * 1e9)),
        }

    def _fields(self, job: ImageJob) -> dict[str, Any]:
        return {"source": job.source_name, "address": job.peer or job.source_name, "job": job.job_id}

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self._tick(time.time())
            except Exception:  # a timer must survive one bad tick; the next retries
                log.exception("history timer")

    async def _tick(self, now: float) -> None:
        history = self._history
        if history is None:
            return
        for job_id, schedule in list(self._schedules.items()):
            job = self._jobs.get(job_id)
            if job is None:
                continue
            due = schedule.check(now, history.image_good(job.image_name))
            if due is Due.DEFER:
                self._emit(ev.SCHEDULED_SNAPSHOT_DEFERRED, **self._fields(job))
            elif due is Due.TAKE:
                await self._take(job, SCHEDULED)
                schedule.taken(now)
        if now - self._last_prune >= self._config.store.prune_every_s:
            self._last_prune = now
            await asyncio.to_thread(retention.prune, history)

    # -- console operations -----------------------------------------------------------------

    async def snapshot(self, job_id: str) -> dict[str, Any]:
        job = self._jobs.get(job_id)
        if job is None:
            raise TwinvaultError(errors.JOB_NOT_FOUND, job_id)
        return await self._take(job, USER_REQUEST)

    async def _take(self, job: ImageJob, kind: str) -> dict[str, Any]:
        history = await asyncio.to_thread(self.history)
        try:
            snap = await asyncio.to_thread(history.take_snapshot, job.image_name, kind)
        except (OSError, TwinvaultError) as exc:
            self._emit(ev.SNAPSHOT_FAILED, **self._fields(job), error=str(exc))
            raise
        view = _snapshot_view(snap.id, snap.time, snap.type, snap.status)
        self._emit(ev.SNAPSHOT_TAKEN, snapshot=snap.id, type=kind, image=job.image_name, time=view["time"])
        return {"image": job.image_name, **view}

    async def delete_snapshot(self, image: str, snapshot_id: int) -> dict[str, Any]:
        history = await asyncio.to_thread(self.history)
        try:
            await asyncio.to_thread(history.delete_snapshot, image, snapshot_id)
        except OSError as exc:
            self._emit(ev.SNAPSHOT_DELETE_FAILED, source=image, address=image, job=image, error=str(exc))
            raise
        return {"image": image, "deleted": snapshot_id}

    async def points(self, image: str) -> dict[str, Any]:
        history = await asyncio.to_thread(self.history)

        def read() -> dict[str, Any]:
            with history.lock:
                if image not in {i.name for i in history.catalog.images()}:
                    raise TwinvaultError(errors.IMAGE_NOT_FOUND, image)
                snaps = history.catalog.snapshots(image)
                ranges = history.catalog.ranges(image)
            return {
                "image": image,
                "snapshots": [_snapshot_view(s.id, s.time, s.type, s.status) for s in snaps],
                "ranges": [
                    {
                        "start": iso_from_ns(r.start, round_up=True),
                        # The end instant itself is no longer valid: the last valid microsecond.
                        "end": None if r.end is None else iso_from_ns(r.end - 1),
                    }
                    for r in ranges
                ],
            }

        return await asyncio.to_thread(read)

    async def prune(self) -> dict[str, Any]:
        history = await asyncio.to_thread(self.history)
        report = await asyncio.to_thread(retention.prune, history)
        return report.to_json()

    async def check(self, image: str | None, read_data: bool) -> dict[str, Any]:
        history = await asyncio.to_thread(self.history)
        result = await asyncio.to_thread(integrity.check, history, image=image, read_data=read_data)
        return result.to_json()

    async def stats(self) -> dict[str, Any]:
        history = await asyncio.to_thread(self.history)

        def read() -> dict[str, Any]:
            with history.lock:
                return integrity.stats(history)

        return await asyncio.to_thread(read)

    async def point_stream(
        self,
        image: str,
        *,
        live: bool,
        snapshot: int | None,
        at: str | None,
        includes: list[bytes],
        skip_through: int,
    ) -> AsyncIterator[bytes]:
        """The ops of a point in time as frame batches, for a restore on the console's
        machine. The point is resolved first, so a bad one fails before any byte is sent."""
        history = await asyncio.to_thread(self.history)
        url = self._home.catalog_url(self._config)
        catalog = await asyncio.to_thread(open_catalog, url)
        try:
            t = await asyncio.to_thread(resolve_point, catalog, image, live=live, snapshot=snapshot, at=at)
        except BaseException:
            catalog.close()
            raise
        batches = frame_batches(catalog, history.store, image, t, includes, skip_through)
        return iterate_in_thread(batches, on_close=catalog.close)


def _snapshot_view(snap_id: int, t: int, kind: str, status: str) -> dict[str, Any]:
    return {"id": snap_id, "time": iso_from_ns(t), "type": kind, "status": status}
