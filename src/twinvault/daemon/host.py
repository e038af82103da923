"""One running host: the daemon's roles wired together (``twinvault serve``).

The host owns its configuration, accounts, event log, the protection jobs it is the
source of and the image jobs it is the repository of, the peer listener (6320) and
the management API (6340). Its neighbours: ``api.server`` (HTTP routes over this
object), ``source.job`` and ``repository.receiver``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from twinvault.clock import clock_from_environment
from twinvault.compression_levels import checked_level
from twinvault.daemon.accounts import Accounts
from twinvault.daemon.config import Home, HostConfig, load_config
from twinvault.daemon.history_service import HistoryService
from twinvault.daemon.mount_service import MountService
from twinvault.daemon.recovery_service import RecoveryService
from twinvault.durable import write_private
from twinvault.ops import errors
from twinvault.ops import events as ev
from twinvault.ops.email_notifier import EmailNotifier
from twinvault.ops.errors import TwinvaultError
from twinvault.ops.event_log import EventLog
from twinvault.protocol.connection import LinkListener, listen_links
from twinvault.protocol.link import Link
from twinvault.protocol.tls import fingerprint_of_cert_file, server_context
from twinvault.protocol.transmission import check_transmission, rerouted, transmission_changes
from twinvault.repository.receiver import ImageJob, serve_peer
from twinvault.source.job import JobSpec, ProtectionJob
from twinvault.source.queue import QueueLimits
from twinvault.source.selection import Selection, is_within

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class Host:
    def __init__(self, home: Home) -> None:
        self.home = home
        self.config: HostConfig = load_config(home)
        self.accounts = Accounts(home.accounts, home.tokens)
        self.events = EventLog(home.events_dir)
        self.notifier = EmailNotifier(home.email_settings, self.config.name, self.emit)
        self.events.subscribe(self.notifier.on_event)
        self.fingerprint = fingerprint_of_cert_file(home.cert)
        self.source_jobs: dict[str, ProtectionJob] = {}
        self.image_jobs: dict[str, ImageJob] = {}
        self._peer_server: LinkListener | None = None
        self.started = time.time()
        self.clock = clock_from_environment()  # schedules' clock (bandwidth periods)
        self.history = HistoryService(home, self.config, self.emit, self.image_jobs)
        self.mounts = MountService(home, self.config, self.history)
        self.recoveries = RecoveryService(
            home, self.config, self.emit, self.history, self.image_jobs, clock=self.clock
        )

    def emit(self, event_id: int, **fields: Any) -> None:
        self.events.emit(event_id, **fields)

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        self.notifier.start()  # first: the start's own events are mailed too
        for path in sorted(self.home.repository_jobs.glob("*.json")):
            raw = json.loads(path.read_text())
            self.image_jobs[raw["job_id"]] = ImageJob(**raw)
        await self.mounts.start()  # first: a crashed run's mounts still read the store
        await self.history.start()
        await self.recoveries.start()
        self._peer_server = await listen_links(
            self._on_peer,
            self.config.bind_address,
            self.config.peer_port,
            server_context(self.home.cert, self.home.key),
        )
        self.emit(ev.TARGET_STARTED)
        for path in sorted(self.home.source_jobs.glob("*.json")):
            spec = JobSpec.from_json(json.loads(path.read_text()))
            job = self._make_job(spec)
            self.source_jobs[spec.job_id] = job
            if not spec.stopped:
                await job.start()
        self.emit(ev.SOURCE_STARTED)
        self.emit(ev.SERVICE_STARTED)

    async def stop(self) -> None:
        for job in self.source_jobs.values():
            await job.stop()
        if self._peer_server is not None:
            self._peer_server.close()
            await self._peer_server.wait_closed()
        for image_job in self.image_jobs.values():
            if image_job.session is not None:
                image_job.session.replace()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(image_job.session.finished.wait(), 30)
        await self.mounts.stop()
        await self.recoveries.stop()
        await self.history.stop()
        self.emit(ev.SOURCE_STOPPED)
        self.emit(ev.TARGET_STOPPED)
        self.emit(ev.SERVICE_STOPPED)
        await asyncio.to_thread(self.notifier.stop)  # last: it mails the stop's events

    async def _on_peer(self, link: Link) -> None:
        await serve_peer(
            link,
            find_job=self.image_jobs.get,
            index_path_for=lambda job: self.home.index_dir / f"{job.image_name}.sqlite",
            emit=self.emit,
            retry_limit=self.config.retry_limit,
            history=self.history.opened,
        )

    def _make_job(self, spec: JobSpec) -> ProtectionJob:
        q = self.config.queue
        limits = QueueLimits(
            memory_max_bytes=q.memory_max_mb << 20,
            disk_max_bytes=None if q.disk_max_mb is None else q.disk_max_mb << 20,
            min_free_bytes=q.min_free_mb << 20,
        )
        return ProtectionJob(
            spec,
            self.home.queue_dir(self.config),
            limits,
            self.emit,
            capture_method=self.config.capture,
            shutdown_command=self.config.shutdown_command,
            clock=self.clock,
        )

    # -- repository role --------------------------------------------------------------

    async def register_image_job(
        self,
        job_id: str,
        source_name: str,
        path_prefix: str | None,
        *,
        cdp_days: float = 0.0,
        snapshot_every_s: float = 0.0,
        snapshot_start: float = 0.0,
    ) -> dict[str, Any]:
        if cdp_days < 0 or snapshot_every_s < 0 or snapshot_start < 0:
            raise TwinvaultError(
                errors.INVALID_ARGUMENT, "cdp days, snapshot interval and start must be >= 0"
            )
        if not _NAME.match(source_name):
            raise TwinvaultError(errors.INVALID_ARGUMENT, f"source name {source_name!r}")
        if not _NAME.match(job_id):
            raise TwinvaultError(errors.INVALID_ARGUMENT, f"job id {job_id!r}")
        if job_id in self.image_jobs:
            raise TwinvaultError(errors.REPLICATION_SET_EXISTS, job_id)
        prefix = Path(path_prefix) if path_prefix else self.home.path_prefix(self.config)
        if not prefix.is_absolute():
            raise TwinvaultError(errors.INVALID_ARGUMENT, f"path prefix must be absolute: {prefix}")
        image_root = prefix / source_name
        try:
            image_root.mkdir(parents=True, exist_ok=True)
            probe = image_root / f".twinvault-tmp.probe-{secrets.token_hex(4)}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise TwinvaultError(
                errors.REPOSITORY_PATH_NOT_WRITABLE, f"{image_root}: {exc.strerror}"
            ) from exc
        job = ImageJob(
            job_id,
            source_name,
            source_name,
            str(image_root),
            secrets.token_urlsafe(32),
            time.time(),
            cdp_days=cdp_days,
            snapshot_every_s=snapshot_every_s,
            snapshot_start=snapshot_start,
        )
        write_private(self.home.repository_jobs / f"{job_id}.json", json.dumps(job.to_json()).encode())
        self.image_jobs[job_id] = job
        await self.history.image_added(job)
        return {
            "token": job.token,
            "peer_port": self.config.peer_port,
            "fingerprint": self.fingerprint,
            "image_location": str(image_root),
            "name": self.config.name,
        }

    def set_snapshot_schedule(
        self, job_id: str, *, enabled: bool | None, every_s: float | None, start: float | None
    ) -> dict[str, Any]:
        job = self.image_jobs.get(job_id)
        if job is None:
            raise TwinvaultError(errors.JOB_NOT_FOUND, f"{job_id} (ask the job's repository)")
        if (every_s is not None and every_s <= 0) or (start is not None and start < 0):
            raise TwinvaultError(
                errors.SCHEDULE_INVALID, "the interval must be > 0 and the start a valid time"
            )
        was_enabled = job.snapshot_schedule_enabled and job.snapshot_every_s > 0
        if every_s is not None:
            job.snapshot_every_s = every_s
        if start is not None:
            job.snapshot_start = start
        if enabled is not None:
            job.snapshot_schedule_enabled = enabled
        if job.snapshot_every_s <= 0 and job.snapshot_schedule_enabled and enabled:
            raise TwinvaultError(errors.SCHEDULE_INVALID, "the job has no snapshot interval: give --every")
        write_private(self.home.repository_jobs / f"{job_id}.json", json.dumps(job.to_json()).encode())
        self.history.schedule_changed(
            job, was_enabled=was_enabled, interval_changed=every_s is not None or start is not None
        )
        return self.history.schedule_view(job)

    def forget_image_job(self, job_id: str) -> None:
        job = self.image_jobs.pop(job_id, None)
        if job is None:
            raise TwinvaultError(errors.JOB_NOT_FOUND, job_id)
        self.history.image_removed(job)
        (self.home.repository_jobs / f"{job_id}.json").unlink(missing_ok=True)

    def images(self) -> list[dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        for job in self.image_jobs.values():
            if job.kind != "protection":
                continue  # a recovery target is not an image
            image = seen.setdefault(
                job.image_root,
                {
                    "name": job.image_name,
                    "location": job.image_root,
                    "source": job.source_name,
                    "jobs": [],
                    "state": "idle",
                },
            )
            image["jobs"].append(job.job_id)
            if job.connected:
                image["state"] = "receiving"
        return list(seen.values())

    # -- source role --------------------------------------------------------------------

    async def create_source_job(self, raw: dict[str, Any]) -> ProtectionJob:
        spec = JobSpec.from_json(raw)
        checked_level(spec.compression)
        if spec.job_id in self.source_jobs:
            raise TwinvaultError(errors.REPLICATION_SET_EXISTS, spec.job_id)
        selection = Selection.build(list(spec.roots), list(spec.excludes))
        selection.check_readable()
        for root in selection.roots:
            # A selection that holds an image would replicate the repository into itself.
            for image in self.image_jobs.values():
                if is_within(image.image_root, root) or is_within(root, image.image_root):
                    raise TwinvaultError(errors.SELECTION_OVERLAPS_IMAGE, f"{root} and {image.image_root}")
            if is_within(str(self.home.root), root):
                raise TwinvaultError(
                    errors.SELECTION_OVERLAPS_IMAGE, f"{root} holds this host's state {self.home.root}"
                )
        spec = JobSpec.from_json(
            {**spec.to_json(), "roots": selection.roots, "source_name": self.config.name}
        )
        await check_transmission(spec.to_json(), spec.receiver)
        self._save_spec(spec)
        job = self._make_job(spec)
        self.source_jobs[spec.job_id] = job
        await job.start()
        return job

    def _save_spec(self, spec: JobSpec) -> None:
        write_private(self.home.source_jobs / f"{spec.job_id}.json", json.dumps(spec.to_json()).encode())

    def source_job(self, job_id: str) -> ProtectionJob:
        job = self.source_jobs.get(job_id)
        if job is None:
            raise TwinvaultError(errors.JOB_NOT_FOUND, job_id)
        return job

    async def stop_job(self, job_id: str) -> None:
        job = self.source_job(job_id)
        if job.spec.stopped:
            raise TwinvaultError(errors.JOB_ALREADY_IN_STATE, f"{job_id} is already stopped")
        await job.stop()
        self._replace_spec(job, stopped=True)

    async def resume_job(self, job_id: str) -> None:
        job = self.source_job(job_id)
        if not job.spec.stopped and job.connected:
            raise TwinvaultError(errors.JOB_ALREADY_IN_STATE, f"{job_id} is running")
        if not job.spec.stopped:
            await job.stop()
        job = self._replace_spec(job, stopped=False)
        await job.start()

    async def set_job_options(self, job_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``job set``: change a job's transmission options while it runs (no remirror).
        Everything is checked before anything changes; a refused change changes nothing."""
        if job_id in self.recoveries.jobs:
            return await self.recoveries.set_options(job_id, body)
        if job_id in self.image_jobs and job_id not in self.source_jobs:
            raise TwinvaultError(
                errors.JOB_NOT_FOUND, f"{job_id} is received here: change it on its sending host"
            )
        job = self.source_job(job_id)
        changes = transmission_changes(body, job.spec.to_json())
        spec = JobSpec.from_json({**job.spec.to_json(), **changes})
        await check_transmission(spec.to_json(), spec.receiver, probe=rerouted(changes))
        self._save_spec(spec)
        job.change_options(spec)
        return {"job": job_id, **job.status()["transmission"]}

    def _replace_spec(self, job: ProtectionJob, *, stopped: bool) -> ProtectionJob:
        spec = JobSpec.from_json({**job.spec.to_json(), "stopped": stopped})
        self._save_spec(spec)
        fresh = self._make_job(spec)
        self.source_jobs[spec.job_id] = fresh
        return fresh

    async def delete_job(self, job_id: str) -> dict[str, Any]:
        deleted: dict[str, Any] = {"job": job_id, "source": False, "repository": False}
        job = self.source_jobs.pop(job_id, None)
        if job is not None:
            await job.stop()
            (self.home.source_jobs / f"{job_id}.json").unlink(missing_ok=True)
            shutil.rmtree(self.home.queue_dir(self.config) / job_id, ignore_errors=True)
            deleted["source"] = True
        if job_id in self.image_jobs:
            self.forget_image_job(job_id)
            deleted["repository"] = True
        if await self.recoveries.delete(job_id):
            deleted["recovery"] = True
        if not any(deleted[k] for k in ("source", "repository", "recovery") if k in deleted):
            raise TwinvaultError(errors.JOB_NOT_FOUND, job_id)
        return deleted

    # -- views ----------------------------------------------------------------------------

    def job_views(self) -> list[dict[str, Any]]:
        out = [job.status() for job in self.source_jobs.values()]
        mine = {v["id"] for v in out}
        for image_job in self.image_jobs.values():
            if image_job.job_id not in mine:
                out.append(self._image_job_view(image_job))
        out.extend(job.status() for job in self.recoveries.jobs.values())
        return out

    def job_view(self, job_id: str) -> dict[str, Any]:
        if job_id in self.source_jobs:
            view = self.source_jobs[job_id].status()
            return view
        if job_id in self.recoveries.jobs:
            return self.recoveries.jobs[job_id].status()
        if job_id in self.image_jobs:
            return self._image_job_view(self.image_jobs[job_id])
        raise TwinvaultError(errors.JOB_NOT_FOUND, job_id)

    def _image_job_view(self, job: ImageJob) -> dict[str, Any]:
        """The repository's view: the source's last reported status plus its own state."""
        base: dict[str, Any] = (
            dict(job.last_status)
            if job.last_status
            else {
                "id": job.job_id,
                "type": "Data Recovery" if job.kind == "recovery" else "Data Protection",
                "source": job.source_name,
                "status": "Unknown",
                "percent_complete": 0.0,
                "time_remaining_s": 0,
                "health": "warning",
            }
        )
        base.update(
            {
                "id": job.job_id,
                "target": self.config.name,
                "image_location": job.image_root,
                "target_status": "Retrying" if job.retrying else job.target_status,
                "connected": job.connected,
                "ops_applied": job.ops_applied,
            }
        )
        if not job.connected:
            base["status"] = "Communication Error" if job.last_status else base.get("status", "Unknown")
            base["recovery_available"] = False
        return base

    def statistics(self) -> dict[str, Any]:
        """The seed's connection statistics of the jobs this host sends for (DTStat's
        ``con*`` counters), by job."""
        views = [job.status() for job in self.source_jobs.values()]
        views += [job.status() for job in self.recoveries.jobs.values()]
        return {
            "connections": [
                {"id": v["id"], "type": v["type"], "target": v["target"], **v.get("statistics", {})}
                for v in views
            ]
        }

    def host_info(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "fingerprint": self.fingerprint,
            "peer_port": self.config.peer_port,
            "api_port": self.config.api_port,
            "pid": os.getpid(),
            "started": self.started,
            # The seed's Security statistics.
            "security": dataclasses.asdict(self.accounts.counters),
        }
