"""Data Recovery jobs on both of their hosts.

On the repository: the jobs that send a point in time (``recovery.job``), persisted in
``repository/recoveries/ID.json`` and resumed after a restart until they finish. On the
recovery server: the checks before a job (``recovery.validation``) and the receiving end,
an image job of kind "recovery" whose root is the target path and which keeps no history.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twinvault.clock import Clock
from twinvault.compression_levels import NONE, checked_level
from twinvault.daemon.config import Home, HostConfig
from twinvault.daemon.history_service import HistoryService
from twinvault.durable import write_private
from twinvault.ops import errors
from twinvault.ops import events as ev
from twinvault.ops.errors import TwinvaultError
from twinvault.pit.restore import resolve_point
from twinvault.pit.stream import summarize
from twinvault.protocol import messages as m
from twinvault.protocol.link import Link
from twinvault.protocol.transmission import check_transmission, rerouted, transmission_changes
from twinvault.recovery.job import RecoveryJob, RecoverySpec
from twinvault.recovery.validation import validate_target
from twinvault.repository.catalog import open_catalog
from twinvault.repository.receiver import ImageJob
from twinvault.timefmt import iso_from_ns

Emit = Callable[..., Any]


class RecoveryService:
    def __init__(
        self,
        home: Home,
        config: HostConfig,
        emit: Emit,
        history: HistoryService,
        image_jobs: dict[str, ImageJob],
        clock: Clock | None = None,
    ) -> None:
        self._clock = clock or Clock()
        self._home = home
        self._config = config
        self._emit = emit
        self._history = history
        self._image_jobs = image_jobs
        self.jobs: dict[str, RecoveryJob] = {}
        self._dir = home.root / "repository" / "recoveries"

    # -- repository side ---------------------------------------------------------------

    async def start(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(self._dir.glob("*.json")):
            raw = json.loads(path.read_text())
            spec = RecoverySpec.from_json(raw["spec"])
            job = await self._make(spec)
            if raw.get("finished"):
                job.progress.status = "Idle"
                job.progress.finished = float(raw["finished"])
            else:
                job.start()

    async def stop(self) -> None:
        for job in self.jobs.values():
            await job.stop()

    async def plan(self, image: str, *, live: bool, snapshot: int | None, at: str | None,
                   includes: list[bytes]) -> dict[str, Any]:  # fmt: skip
        """Resolve the point and say what it holds: the first half of the validation report."""
        await asyncio.to_thread(self._history.history)
        url = self._home.catalog_url(self._config)

        def run() -> dict[str, Any]:
            catalog = open_catalog(url)
            try:
                t = resolve_point(catalog, image, live=live, snapshot=snapshot, at=at)
                totals = summarize(catalog, image, t, includes)
            finally:
                catalog.close()
            return {"point": t, "point_label": "live" if t is None else iso_from_ns(t), **totals}

        return await asyncio.to_thread(run)

    async def create(self, raw: dict[str, Any]) -> RecoveryJob:
        job_id = str(raw["job_id"])
        if job_id in self.jobs:
            raise TwinvaultError(errors.REPLICATION_SET_EXISTS, job_id)
        spec = RecoverySpec(
            job_id=job_id,
            image=str(raw["image"]),
            point=None if raw.get("point") is None else int(raw["point"]),
            point_label=str(raw.get("point_label") or "live"),
            includes=tuple(str(p) for p in raw.get("includes") or ()),
            excludes=tuple(str(g) for g in raw.get("excludes") or ()),
            target_name=str(raw["target_name"]),
            target_address=str(raw["target_address"]),
            target_peer_port=int(raw["target_peer_port"]),
            target_fingerprint=str(raw["target_fingerprint"]),
            token=str(raw["token"]),
            target_path=str(raw["target_path"]),
            epoch=secrets.randbits(62),
            total_files=int(raw.get("total_files") or 0),
            total_bytes=int(raw.get("total_bytes") or 0),
            created=time.time(),
            shutdown_source=bool(raw.get("shutdown_source")),
            compression=checked_level(raw.get("compression") or NONE),
            bandwidth=dict(raw.get("bandwidth") or {}),
            route=str(raw.get("route") or ""),
            bind_address=str(raw.get("bind_address") or ""),
        )
        await check_transmission(spec.to_json(), spec.receiver)
        job = await self._make(spec)
        self._save(job)
        job.start()
        return job

    async def _make(self, spec: RecoverySpec) -> RecoveryJob:
        history = await asyncio.to_thread(self._history.history)
        job = RecoveryJob(
            spec,
            history.store,
            self._home.catalog_url(self._config),
            self._emit,
            self._config.name,
            on_finished=self._finished,
            clock=self._clock,
        )
        self.jobs[spec.job_id] = job
        return job

    def _finished(self, job: RecoveryJob) -> None:
        self._save(job)
        if job.spec.shutdown_source:
            self._shut_down_source(job)

    def _shut_down_source(self, job: RecoveryJob) -> None:
        """The guide's "shut down the source server" after the recovery mirror: asked over
        the source's own protection link; ignored when the source is not connected."""
        links = [
            j.session.link
            for j in self._image_jobs.values()
            if j.kind == "protection" and j.image_name == job.spec.image and j.session is not None
        ]
        if not links:
            self._emit(ev.SOURCE_SHUTDOWN_REQUESTED, source=job.spec.image, job=job.spec.job_id,
                       action="ignored: the source is not connected")  # fmt: skip
            return
        for link in links:
            asyncio.get_running_loop().create_task(self._ask_shutdown(link, job.spec.job_id))
        self._emit(ev.SOURCE_SHUTDOWN_REQUESTED, source=job.spec.image, job=job.spec.job_id,
                   action=f"asked over {len(links)} link(s)")  # fmt: skip

    @staticmethod
    async def _ask_shutdown(link: Link, job_id: str) -> None:
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            await link.send([m.SHUTDOWN_SOURCE, {"job": job_id, "reason": "recovery completed"}])
            await link.flush()

    async def set_options(self, job_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``job set`` on a recovery job: checked first, then saved and applied live."""
        job = self.jobs[job_id]
        changes = transmission_changes(body, job.spec.to_json())
        spec = RecoverySpec.from_json({**job.spec.to_json(), **changes})
        await check_transmission(spec.to_json(), spec.receiver, probe=rerouted(changes))
        job.change_options(spec)
        self._save(job)
        return {"job": job_id, **job.status()["transmission"]}

    def _save(self, job: RecoveryJob) -> None:
        document = {"spec": job.spec.to_json(), "finished": job.progress.finished}
        write_private(self._dir / f"{job.spec.job_id}.json", json.dumps(document).encode())

    async def delete(self, job_id: str) -> bool:
        job = self.jobs.pop(job_id, None)
        if job is None:
            return False
        await job.stop()
        (self._dir / f"{job_id}.json").unlink(missing_ok=True)
        return True

    # -- recovery-server side -----------------------------------------------------------------

    def validate(self, target_path: str, bytes_needed: int) -> dict[str, Any]:
        roots = [j.image_root for j in self._image_jobs.values() if j.kind == "protection"]
        roots.append(str(self._home.path_prefix(self._config)))
        return validate_target(target_path, bytes_needed, roots).to_json()

    def register_target(
        self, job_id: str, source_name: str, target_path: str, bytes_needed: int
    ) -> dict[str, Any]:
        """The receiving end of a recovery: an image job writing into ``target_path``."""
        if job_id in self._image_jobs:
            raise TwinvaultError(errors.REPLICATION_SET_EXISTS, job_id)
        report = self.validate(target_path, bytes_needed)
        if report["errors"]:
            first = report["errors"][0]
            raise TwinvaultError(int(first["code"]), summary=str(first["message"]))
        job = ImageJob(
            job_id,
            source_name,
            f"recovery-{job_id}",
            str(Path(target_path)),
            secrets.token_urlsafe(32),
            time.time(),
            kind="recovery",
        )
        write_private(self._home.repository_jobs / f"{job_id}.json", json.dumps(job.to_json()).encode())
        self._image_jobs[job_id] = job
        return {
            "token": job.token,
            "peer_port": self._config.peer_port,
            "name": self._config.name,
            "warnings": report["warnings"],
        }
