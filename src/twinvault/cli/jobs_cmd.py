"""``twinvault jobs`` and ``twinvault job show|stop|resume|delete|verify``."""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any

from twinvault.cli.client import ApiClient, CredentialCache, config_dir
from twinvault.cli.output import console, emit_json, human_bytes, say, table
from twinvault.cli.transmission import add_transmission_options, transmission_body
from twinvault.durable import write_private
from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("jobs", help="every job known to a server")
    p.add_argument("--server", default="localhost")
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", action="store_true", help="refresh every second (live status)")
    p.add_argument("--for", dest="duration", type=float, default=0, help="with --watch: stop after N seconds")
    p.set_defaults(func=jobs)

    job = sub.add_parser("job", help="one job").add_subparsers(dest="action", required=True)
    for action in ("show", "stop", "resume", "delete", "verify", "snapshot"):
        p = job.add_parser(action)
        p.add_argument("job")
        p.add_argument("--server", default="localhost")
        p.add_argument("--json", action="store_true")
        if action == "verify":
            p.add_argument("--checksum", action="store_true")
            p.add_argument("--remirror", action="store_true")
        p.set_defaults(func=job_action)

    p = job.add_parser("schedule", help="change, enable or disable a job's scheduled snapshots")
    p.add_argument("job")
    p.add_argument("--server", default="localhost")
    p.add_argument("--every", metavar="DURATION", help="90s, 15m, 1h, 1d")
    p.add_argument("--start", metavar="TIME", help="the first one (ISO 8601)")
    on_off = p.add_mutually_exclusive_group()
    on_off.add_argument("--enable", dest="enabled", action="store_const", const=True)
    on_off.add_argument("--disable", dest="enabled", action="store_const", const=False)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=job_schedule)

    p = job.add_parser("set", help="change a running job's transmission options (no remirror)")
    p.add_argument("job")
    p.add_argument(
        "--server", default="localhost", help="the job's sending host (source, or repository of a recovery)"
    )
    add_transmission_options(p, changing=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=job_set)

    p = job.add_parser("forget", help="stop monitoring a job (it keeps running)")
    p.add_argument("job")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=job_forget)
    p = job.add_parser("import", help="monitor every job of a server again")
    p.add_argument("--server", default="localhost")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=job_import)


def _forgotten_file() -> Path:
    return config_dir() / "forgotten-jobs.json"


def _forgotten() -> set[str]:
    try:
        return set(json.loads(_forgotten_file().read_text()))
    except FileNotFoundError:
        return set()


def _save_forgotten(ids: set[str]) -> None:
    _forgotten_file().parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(_forgotten_file(), json.dumps(sorted(ids)).encode())


def job_forget(args: argparse.Namespace) -> int:
    """The seed's "Stop monitoring job": the console hides it; the job runs on."""
    _save_forgotten(_forgotten() | {args.job})
    if args.json:
        emit_json({"forgotten": args.job})
    else:
        say(f"job {args.job} is no longer monitored (twinvault job import brings it back)")
    return 0


def job_import(args: argparse.Namespace) -> int:
    """The seed's "Import jobs": monitor every job the server knows again."""
    views = ApiClient.for_host(args.server).call("GET", "/api/jobs")["jobs"]
    ids = {v["id"] for v in views}
    _save_forgotten(_forgotten() - ids)
    if args.json:
        emit_json({"imported": sorted(ids)})
    else:
        say(f"monitoring {len(ids)} job(s) of {args.server}")
    return 0


def _monitored(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    hidden = _forgotten()
    return [v for v in views if v["id"] not in hidden]


def _row(j: dict[str, Any]) -> list[Any]:
    return [
        j["id"],
        j.get("type"),
        j.get("status"),
        j.get("source"),
        j.get("target"),
        f"{j.get('percent_complete', 0)}%",
        j.get("time_remaining_s"),
        j.get("health"),
    ]


_COLUMNS = ["id", "type", "status", "source", "target", "% complete", "time left (s)", "health"]


def jobs(args: argparse.Namespace) -> int:
    client = ApiClient.for_host(args.server)
    if args.watch:
        from rich.live import Live  # the watch only: other commands start faster without
        from rich.table import Table

        deadline = time.monotonic() + args.duration if args.duration else None
        with Live(console=console.get(), refresh_per_second=2) as live:
            while deadline is None or time.monotonic() < deadline:
                views = _monitored(client.call("GET", "/api/jobs")["jobs"])
                t = Table(title=f"jobs on {args.server}  {time.strftime('%H:%M:%S')}")
                for c in [*_COLUMNS, "mirror", "replication", "sent", "queued"]:
                    t.add_column(c)
                for j in views:
                    t.add_row(
                        *[str(v) for v in _row(j)],
                        j.get("mirror", {}).get("status", ""),
                        j.get("replication", {}).get("status", ""),
                        human_bytes(j.get("total_sent_bytes", 0)),
                        human_bytes(j.get("replication", {}).get("bytes_queued", 0)),
                    )
                live.update(t)
                time.sleep(1)
        return 0
    views = _monitored(client.call("GET", "/api/jobs")["jobs"])
    if args.json:
        emit_json(
            {
                "jobs": [
                    {
                        k: j.get(k)
                        for k in (
                            "id",
                            "type",
                            "status",
                            "source",
                            "target",
                            "percent_complete",
                            "time_remaining_s",
                            "health",
                        )
                    }
                    for j in views
                ]
            }
        )
    else:
        table(f"jobs on {args.server}", _COLUMNS, [_row(j) for j in views])
    return 0


def job_action(args: argparse.Namespace) -> int:
    client = ApiClient.for_host(args.server)
    if args.action == "show":
        view = client.call("GET", f"/api/jobs/{args.job}")
        if args.json:
            emit_json(view)
        else:
            _print_details(view)
        return 0
    body: dict[str, Any] = {}
    if args.action == "verify":
        body = {"checksum": args.checksum, "remirror": args.remirror}
    if args.action == "delete":
        view = client.call("GET", f"/api/jobs/{args.job}")
    if args.action == "snapshot":
        client = _repository_of(client, args.job)
    reply = client.call("POST", f"/api/jobs/{args.job}/{args.action}", body)
    if args.action == "delete" and reply.get("source") and not reply.get("repository"):
        _forget_on_repository(view, args.job)
    if args.json:
        emit_json(reply)
    elif args.action == "verify":
        say(
            f"{reply['difference_count']} differing paths, {reply['orphan_count']} orphans"
            + (" (remirror started)" if args.remirror and reply["difference_count"] else "")
        )
        for path in reply["differences"][:50]:
            say(f"  differs: {path}")
        for path in reply["orphans"][:50]:
            say(f"  orphan:  {path}")
    elif args.action == "snapshot":
        say(f"snapshot {reply['id']} of image {reply['image']} at {reply['time']} ({reply['status']})")
    else:
        say(f"job {args.job}: {args.action} done")
    if args.action == "verify" and not args.remirror and (reply["difference_count"] or reply["orphan_count"]):
        return 3  # like diff(1): the comparison found differences
    return 0


def job_schedule(args: argparse.Namespace) -> int:
    # Imported here: the other job commands do without them (dataclasses, datetime).
    from twinvault.repository.snapshots import parse_duration
    from twinvault.timefmt import ns_from_iso

    body: dict[str, Any] = {"enabled": args.enabled}
    if args.every:
        try:
            body["every_s"] = parse_duration(args.every)
        except ValueError as exc:
            raise TwinvaultError(errors.SCHEDULE_INVALID, f"--every {args.every}") from exc
    if args.start:
        body["start"] = ns_from_iso(args.start) / 1e9
    client = _repository_of(ApiClient.for_host(args.server), args.job)
    reply = client.call("POST", f"/api/jobs/{args.job}/schedule", body)
    if args.json:
        emit_json(reply)
    elif reply["enabled"] and reply["next"]:
        say(f"job {args.job}: a snapshot every {reply['every_s']:g} s, next at {reply['next']}")
    else:
        say(f"job {args.job}: scheduled snapshots {'on' if reply['enabled'] else 'off'}")
    return 0


def job_set(args: argparse.Namespace) -> int:
    """``job set``: the body holds only what was given; the sending host checks it all
    before it changes anything. Options other modules add join ``transmission_body``."""
    body = {k: v for k, v in transmission_body(args).items() if v not in (None, [], False)}
    reply = ApiClient.for_host(args.server).call("POST", f"/api/jobs/{args.job}/set", body)
    if args.json:
        emit_json(reply)
    else:
        periods = ", ".join(reply.get("periods") or []) or "none"
        say(
            f"job {args.job}: limit now {_kbps(reply['limit_kbps'])} ({reply['period']} period; "
            f"outside periods {_kbps(reply['default_kbps'])}; periods: {periods}); "
            f"sending to {reply['peer_address']}"
            + (f" from {reply['bind_address']}" if reply["bind_address"] else "")
            + f"; compression {reply.get('compression', 'none')}"
        )
    return 0


def _kbps(kbps: int) -> str:
    return "unlimited" if not kbps else f"{kbps} KB/s"


def _repository_of(client: ApiClient, job_id: str) -> ApiClient:
    """Snapshots are taken where the image is: the job's repository, through the cached
    login for it when the console asked the source."""
    view = client.call("GET", f"/api/jobs/{job_id}")
    here = client.call("GET", "/api/host")["name"]
    if view.get("target") in (None, here):
        return client
    for key, cred in CredentialCache().load().items():
        if cred.name and cred.name == view.get("target"):
            return ApiClient(key, cred.fingerprint, cred.token)
    raise TwinvaultError(
        errors.UNKNOWN_HOST, f"log in to the job's repository {view.get('target')} to take a snapshot"
    )


def _forget_on_repository(view: dict[str, Any], job_id: str) -> None:
    """The job's other half lives on the repository: remove it too when we are logged in there."""
    cache = CredentialCache()
    for key, cred in cache.load().items():
        if cred.name and cred.name == view.get("target"):
            with contextlib.suppress(TwinvaultError):  # already gone
                ApiClient(key, cred.fingerprint, cred.token).call("DELETE", f"/api/repository/jobs/{job_id}")
            return


def _print_details(v: dict[str, Any]) -> None:
    mirror, rep = v.get("mirror", {}), v.get("replication", {})
    rows = [
        ("Job type", v.get("type")),
        ("Job status", v.get("status")),
        ("Health", v.get("health")),
        ("Time remaining", f"{v.get('time_remaining_s', 0)} s"),
        ("Source server", v.get("source")),
        ("Target server", v.get("target")),
        ("Image location", v.get("image_location")),
        ("Total sent data", human_bytes(v.get("total_sent_bytes", 0))),
        ("Total sent compressed", human_bytes(v.get("total_sent_compressed_bytes", 0))),
        ("Transmit status", v.get("transmit_status")),
        ("Target status", v.get("target_status")),
        ("Recovery available", "Yes" if v.get("recovery_available") else "No"),
        ("Mirror status", mirror.get("status")),
        ("Mirror percent complete", f"{mirror.get('percent_complete', 0)}%"),
        ("Mirror remaining", human_bytes(mirror.get("remaining_bytes", 0))),
        ("Mirror skipped", human_bytes(mirror.get("skipped_bytes", 0))),
        ("Orphans", mirror.get("orphans", 0)),
        ("Replication status", rep.get("status")),
        ("Bytes sent", human_bytes(rep.get("bytes_sent", 0))),
        ("Bytes sent compressed", human_bytes(rep.get("bytes_sent_compressed", 0))),
        ("Bytes queued", human_bytes(rep.get("bytes_queued", 0))),
    ]
    tx = v.get("transmission")
    if tx:
        rows += [
            ("Bandwidth limit", f"{_kbps(tx['limit_kbps'])} ({tx['period']} period)"),
            ("Bandwidth periods", ", ".join(tx["periods"]) or "none"),
            ("Route", tx["peer_address"] + (f" from {tx['bind_address']}" if tx["bind_address"] else "")),
            ("Compression", tx.get("compression", "none")),
        ]
    if v.get("last_error"):
        rows.append(("Last error", f"{v['last_error'].get('code')}: {v['last_error'].get('message')}"))
    table(f"job {v.get('id')}", ["", ""], rows)
