"""``twinvault protect``: create a protection job between a source and a repository."""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from twinvault.cli.client import ApiClient, split_host
from twinvault.cli.notify_cmd import add_settings_options, apply_settings, settings_changes
from twinvault.cli.output import emit_json, say
from twinvault.cli.transmission import add_transmission_options, transmission_options
from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.repository.snapshots import parse_duration
from twinvault.timefmt import ns_from_iso


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("protect", help="create and start a protection job")
    p.add_argument("--source", required=True)
    p.add_argument("--repository", required=True)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", nargs="+", metavar="PATH")
    what.add_argument("--full-server", action="store_true")
    p.add_argument("--exclude", nargs="+", default=[], metavar="GLOB")
    p.add_argument("--path-prefix")
    p.add_argument("--delete-orphans", action="store_true")
    p.add_argument("--snapshot-every", metavar="DURATION", help="scheduled snapshots: 90s, 15m, 1h, 1d")
    p.add_argument("--snapshot-start", metavar="TIME", help="first scheduled snapshot (default: now)")
    p.add_argument("--cdp-days", type=float, default=0.0, metavar="N", help="keep every version N days")
    # The guide's "E-mailing repository server event messages": set on the repository.
    add_settings_options(p.add_argument_group("e-mail notification of the repository server"), "email-")
    add_transmission_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=protect)


def _history_options(args: argparse.Namespace) -> dict[str, float]:
    if args.cdp_days < 0:
        raise TwinvaultError(errors.INVALID_ARGUMENT, f"--cdp-days must be >= 0: {args.cdp_days}")
    every = 0.0
    if args.snapshot_every:
        try:
            every = parse_duration(args.snapshot_every)
        except ValueError as exc:
            raise TwinvaultError(errors.SCHEDULE_INVALID, f"--snapshot-every {args.snapshot_every}") from exc
    elif args.snapshot_start:
        raise TwinvaultError(errors.SCHEDULE_INVALID, "--snapshot-start needs --snapshot-every")
    start = ns_from_iso(args.snapshot_start) / 1e9 if args.snapshot_start else 0.0
    return {"cdp_days": args.cdp_days, "snapshot_every_s": every, "snapshot_start": start}


def protect(args: argparse.Namespace) -> int:
    if args.full_server:
        raise TwinvaultError(
            errors.FEATURE_NOT_SUPPORTED, "--full-server protection is not available yet; use --data"
        )
    history = _history_options(args)
    email = settings_changes(args, "email-")
    options = transmission_options(args)  # checked here: a refused option creates nothing
    source = ApiClient.for_host(args.source)
    repository = ApiClient.for_host(args.repository)
    if email:
        apply_settings(repository, email)
    source_info = source.call("GET", "/api/host")
    job_id = uuid.uuid4().hex[:12]
    image = repository.call(
        "POST",
        "/api/repository/jobs",
        {
            "job_id": job_id,
            "source_name": source_info["name"],
            "path_prefix": args.path_prefix,
            **history,
        },
    )
    repo_host, _ = split_host(args.repository)
    spec = {
        "job_id": job_id,
        "source_name": source_info["name"],
        "repository_name": image["name"],
        "repository_address": repo_host,
        "repository_peer_port": image["peer_port"],
        "repository_fingerprint": image["fingerprint"],
        "token": image["token"],
        "roots": args.data,
        "excludes": args.exclude,
        "image_location": image["image_location"],
        "delete_orphans": args.delete_orphans,
        **options,
    }
    try:
        source.call("POST", "/api/jobs", spec)
    except TwinvaultError:
        # The source refused (bad selection...): do not leave a job behind on the repository.
        repository.call("DELETE", f"/api/repository/jobs/{job_id}")
        raise
    if args.json:
        emit_json({"job": job_id, "image_location": image["image_location"]})
    else:
        say(f"job {job_id}: {source_info['name']} -> {image['name']}:{image['image_location']}")
    return 0
