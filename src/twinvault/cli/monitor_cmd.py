"""``twinvault events`` and ``twinvault images``."""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from twinvault.cli.client import ApiClient
from twinvault.cli.output import emit_json, table
from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("events", help="the event log of a server")
    p.add_argument("--server", default="localhost")
    p.add_argument("--since")
    p.add_argument("--severity", choices=["error", "warning", "info"])
    p.add_argument("--limit", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=events)

    p = sub.add_parser("images", help="images held by a repository")
    p.add_argument("--repository", default="localhost")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=images)


def parse_time(text: str) -> float:
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError as exc:
        raise TwinvaultError(errors.INVALID_ARGUMENT, f"not an ISO 8601 time: {text!r}") from exc


def events(args: argparse.Namespace) -> int:
    since = parse_time(args.since) if args.since else None
    found = ApiClient.for_host(args.server).call(
        "GET", "/api/events", since=since, severity=args.severity, limit=args.limit
    )["events"]
    if args.json:
        emit_json({"events": found})
    else:
        rows = [
            (
                datetime.datetime.fromtimestamp(e["time"]).isoformat(timespec="seconds"),
                e["id"],
                e["severity"],
                e["message"],
            )
            for e in found
        ]
        table(f"events on {args.server}", ["time", "id", "severity", "message"], rows)
    return 0


def images(args: argparse.Namespace) -> int:
    found = ApiClient.for_host(args.repository).call("GET", "/api/images")["images"]
    if args.json:
        emit_json({"images": found})
    else:
        table(
            f"images on {args.repository}",
            ["name", "location", "state", "jobs"],
            [(i["name"], i["location"], i["state"], ",".join(i["jobs"])) for i in found],
        )
    return 0
