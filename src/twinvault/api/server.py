"""The management API (HTTPS, JSON) over a running ``Host``; the console's only door.

Every route but ``/api/login`` and ``/metrics`` needs ``Authorization: Bearer TOKEN``.
Errors are the catalog's: ``{"error": {"code", "message"}}`` with an HTTP status that
says whose fault it was. Routes are listed in ``docs/api.md``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable

from aiohttp import web

from twinvault.daemon.host import Host
from twinvault.ops import errors
from twinvault.ops import events as ev
from twinvault.ops.errors import TwinvaultError
from twinvault.protocol.connection import probe_route

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_STATUS = {
    errors.JOB_NOT_FOUND: 404,
    errors.IMAGE_NOT_FOUND: 404,
    errors.SNAPSHOT_NOT_FOUND: 404,
    errors.AUTHENTICATION_FAILED: 401,
    errors.TOKEN_INVALID: 401,
}


def _error(exc: TwinvaultError) -> web.Response:
    status = _STATUS.get(exc.code, 400 if exc.code != errors.INTERNAL_ERROR else 500)
    return web.json_response(exc.to_json(), status=status)


def build_app(host: Host) -> web.Application:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.path not in ("/api/login", "/metrics"):
                auth = request.headers.get("Authorization", "")
                token = auth.removeprefix("Bearer ").strip()
                user = host.accounts.user_for(token) if token else None
                if user is None:
                    raise TwinvaultError(errors.TOKEN_INVALID, "log in again (twinvault login)")
                request["user"] = user
            return await handler(request)
        except TwinvaultError as exc:
            return _error(exc)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return _error(TwinvaultError(errors.INVALID_ARGUMENT, f"bad request: {exc}"))

    app = web.Application(middlewares=[guard], client_max_size=4 * 1024 * 1024)
    r = app.router

    async def login(request: web.Request) -> web.Response:
        body = await request.json()
        user, password = str(body["user"]), str(body["password"])
        peer = request.remote or "?"
        token = host.accounts.login(user, password)
        if token is None:
            host.emit(ev.LOGIN_FAILED, user=user, peer=peer)
            raise TwinvaultError(errors.AUTHENTICATION_FAILED, f"user {user}")
        return web.json_response({"token": token, **host.host_info()})

    async def logout(request: web.Request) -> web.Response:
        host.accounts.revoke(request.headers["Authorization"].removeprefix("Bearer ").strip())
        return web.json_response({"ok": True})

    async def info(request: web.Request) -> web.Response:
        return web.json_response(host.host_info())

    async def register_image_job(request: web.Request) -> web.Response:
        body = await request.json()
        reply = await host.register_image_job(
            str(body["job_id"]),
            str(body["source_name"]),
            body.get("path_prefix"),
            cdp_days=float(body.get("cdp_days") or 0),
            snapshot_every_s=float(body.get("snapshot_every_s") or 0),
            snapshot_start=float(body.get("snapshot_start") or 0),
        )
        return web.json_response(reply)

    async def forget_image_job(request: web.Request) -> web.Response:
        host.forget_image_job(request.match_info["job"])
        return web.json_response({"ok": True})

    async def create_job(request: web.Request) -> web.Response:
        job = await host.create_source_job(await request.json())
        return web.json_response({"job": job.spec.job_id})

    async def jobs(request: web.Request) -> web.Response:
        return web.json_response({"jobs": host.job_views()})

    async def job(request: web.Request) -> web.Response:
        return web.json_response(host.job_view(request.match_info["job"]))

    async def job_action(request: web.Request) -> web.Response:
        job_id, action = request.match_info["job"], request.match_info["action"]
        body = await request.json() if request.can_read_body else {}
        if action == "stop":
            await host.stop_job(job_id)
            return web.json_response({"job": job_id, "status": "Stopped"})
        if action == "resume":
            await host.resume_job(job_id)
            return web.json_response({"job": job_id, "status": "Resumed"})
        if action == "delete":
            return web.json_response(await host.delete_job(job_id))
        if action == "snapshot":
            return web.json_response(await host.history.snapshot(job_id))
        if action == "schedule":
            return web.json_response(
                host.set_snapshot_schedule(
                    job_id,
                    enabled=body.get("enabled"),
                    every_s=None if body.get("every_s") is None else float(body["every_s"]),
                    start=None if body.get("start") is None else float(body["start"]),
                )
            )
        if action == "set":
            return web.json_response(await host.set_job_options(job_id, body))
        if action == "verify":
            plan = await host.source_job(job_id).verify(
                checksum=bool(body.get("checksum")), remirror=bool(body.get("remirror"))
            )
            return web.json_response(
                {
                    "job": job_id,
                    "checksum": bool(body.get("checksum")),
                    "remirror": bool(body.get("remirror")),
                    "differences": plan.differences[:1000],
                    "difference_count": len(plan.differences),
                    "orphans": plan.orphans[:1000],
                    "orphan_count": len(plan.orphans),
                    "bytes_different": plan.bytes_to_send,
                    "bytes_same": plan.skipped_bytes,
                    "files": plan.files_total,
                }
            )
        raise TwinvaultError(errors.INVALID_COMMAND, action)

    async def events(request: web.Request) -> web.Response:
        since = request.query.get("since")
        severity = request.query.get("severity")
        limit = request.query.get("limit")
        found = host.events.read(
            since=float(since) if since else None,
            severity=severity or None,
            limit=int(limit) if limit else None,
        )
        return web.json_response({"events": [e.to_json() for e in found]})

    async def images(request: web.Request) -> web.Response:
        return web.json_response({"images": host.images()})

    async def points(request: web.Request) -> web.Response:
        return web.json_response(await host.history.points(request.match_info["image"]))

    async def point_stream(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        snapshot = body.get("snapshot")
        batches = await host.history.point_stream(
            request.match_info["image"],
            live=bool(body.get("live")),
            snapshot=None if snapshot is None else int(snapshot),
            at=body.get("at"),
            includes=[os.fsencode(str(p)) for p in body.get("includes") or []],
            skip_through=int(body.get("skip_through") or 0),
        )
        response = web.StreamResponse(headers={"Content-Type": "application/x-twinvault-frames"})
        await response.prepare(request)
        async for batch in batches:
            await response.write(batch)
        await response.write_eof()
        return response

    async def mount(request: web.Request) -> web.Response:
        body = await request.json()
        snapshot = body.get("snapshot")
        return web.json_response(
            await host.mounts.mount(
                str(body["image"]),
                live=bool(body.get("live")),
                snapshot=None if snapshot is None else int(snapshot),
                at=body.get("at"),
                mountpoint=str(body["mountpoint"]),
            )
        )

    async def mounts(request: web.Request) -> web.Response:
        return web.json_response({"mounts": host.mounts.mounts()})

    async def umount(request: web.Request) -> web.Response:
        return web.json_response(await host.mounts.umount(request.query["mountpoint"]))

    async def recovery_plan(request: web.Request) -> web.Response:
        body = await request.json()
        snapshot = body.get("snapshot")
        return web.json_response(
            await host.recoveries.plan(
                str(body["image"]),
                live=bool(body.get("live")),
                snapshot=None if snapshot is None else int(snapshot),
                at=body.get("at"),
                includes=[os.fsencode(str(p)) for p in body.get("includes") or []],
            )
        )

    async def create_recovery(request: web.Request) -> web.Response:
        job = await host.recoveries.create(await request.json())
        return web.json_response({"job": job.spec.job_id})

    async def recovery_validate(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            host.recoveries.validate(str(body["target_path"]), int(body.get("bytes") or 0))
        )

    async def recovery_target(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            host.recoveries.register_target(
                str(body["job_id"]),
                str(body["source_name"]),
                str(body["target_path"]),
                int(body.get("bytes") or 0),
            )
        )

    async def delete_snapshot(request: web.Request) -> web.Response:
        image, snapshot = request.match_info["image"], int(request.match_info["snapshot"])
        return web.json_response(await host.history.delete_snapshot(image, snapshot))

    async def prune(request: web.Request) -> web.Response:
        return web.json_response(await host.history.prune())

    async def check(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        return web.json_response(await host.history.check(body.get("image"), bool(body.get("read_data"))))

    async def route_check(request: web.Request) -> web.Response:
        body = await request.json()
        await probe_route(
            str(body["address"]),
            int(body["port"]),
            server_hostname=body.get("name") or None,
            fingerprint=str(body["fingerprint"]),
            bind=str(body.get("bind") or ""),
        )
        return web.json_response({"ok": True})

    async def statistics(request: web.Request) -> web.Response:
        return web.json_response(host.statistics())

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(await host.history.stats())

    async def notify_show(request: web.Request) -> web.Response:
        return web.json_response(host.notifier.settings_view())

    async def notify_set(request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body, dict):
            raise TwinvaultError(errors.INVALID_ARGUMENT, "e-mail settings must be a JSON object")
        # Off the loop: the settings file is fsynced.
        return web.json_response(await asyncio.to_thread(host.notifier.update, body, str(request["user"])))

    async def notify_test(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        to = body.get("to") or None
        if to is not None and not (isinstance(to, list) and all(isinstance(a, str) for a in to)):
            raise TwinvaultError(errors.INVALID_ARGUMENT, "to must be a list of addresses")
        sent = await asyncio.to_thread(host.notifier.send_test, to, str(body.get("message") or ""))
        return web.json_response(sent)

    r.add_post("/api/login", login)
    r.add_post("/api/logout", logout)
    r.add_get("/api/host", info)
    r.add_post("/api/repository/jobs", register_image_job)
    r.add_delete("/api/repository/jobs/{job}", forget_image_job)
    r.add_post("/api/jobs", create_job)
    r.add_get("/api/jobs", jobs)
    r.add_get("/api/jobs/{job}", job)
    r.add_post("/api/jobs/{job}/{action}", job_action)
    r.add_get("/api/statistics", statistics)
    r.add_post("/api/routes/check", route_check)
    r.add_get("/api/events", events)
    r.add_get("/api/images", images)
    r.add_get("/api/images/{image}/points", points)
    r.add_post("/api/images/{image}/stream", point_stream)
    r.add_delete("/api/images/{image}/snapshots/{snapshot}", delete_snapshot)
    r.add_post("/api/recoveries/plan", recovery_plan)
    r.add_post("/api/recoveries", create_recovery)
    r.add_post("/api/recovery/validate", recovery_validate)
    r.add_post("/api/recovery/targets", recovery_target)
    r.add_post("/api/mounts", mount)
    r.add_get("/api/mounts", mounts)
    r.add_delete("/api/mounts", umount)
    r.add_post("/api/repository/prune", prune)
    r.add_post("/api/repository/check", check)
    r.add_get("/api/repository/stats", stats)
    r.add_get("/api/notify", notify_show)
    r.add_put("/api/notify", notify_set)
    r.add_post("/api/notify/test", notify_test)
    return app
