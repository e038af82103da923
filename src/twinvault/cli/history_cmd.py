"""``twinvault points``, ``twinvault restore`` and ``twinvault repo check|prune|stats``:
the repository's history seen from the console."""

from __future__ import annotations

import argparse
import os
from typing import Any

from twinvault.cli.client import ApiClient
from twinvault.cli.output import console, emit_json, human_bytes, table
from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("points", help="snapshots and ranges valid for point-in-time recovery")
    p.add_argument("--repository", default="localhost")
    p.add_argument("--image", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=points)

    p = sub.add_parser("restore", help="copy an image's paths at a point in time into a directory")
    p.add_argument("--repository", default="localhost")
    p.add_argument("--image", required=True)
    point = p.add_mutually_exclusive_group(required=True)
    point.add_argument("--live", action="store_true")
    point.add_argument("--snapshot", type=int, metavar="ID")
    point.add_argument("--at", metavar="TIME")
    p.add_argument("--include", nargs="+", default=[], metavar="PATH")
    p.add_argument("--to", required=True, metavar="DIR")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=restore)

    repo = sub.add_parser("repo", help="repository history").add_subparsers(dest="repo_action", required=True)
    p = repo.add_parser("check", help="verify every reference (and with --read-data every chunk)")
    p.add_argument("--repository", default="localhost")
    p.add_argument("--image")
    p.add_argument("--read-data", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=repo_check)
    p = repo.add_parser("prune", help="drop versions older than each image's window, then unused chunks")
    p.add_argument("--repository", default="localhost")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=repo_prune)
    p = repo.add_parser("stats", help="logical and stored sizes, dedup and compression ratios")
    p.add_argument("--repository", default="localhost")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=repo_stats)


def points(args: argparse.Namespace) -> int:
    found = ApiClient.for_host(args.repository).call("GET", f"/api/images/{args.image}/points")
    if args.json:
        emit_json({"snapshots": found["snapshots"], "ranges": found["ranges"]})
        return 0
    table(
        f"snapshots of {args.image}",
        ["id", "time", "type", "status"],
        [(s["id"], s["time"], s["type"], s["status"]) for s in found["snapshots"]],
    )
    table(
        f"data of {args.image} is valid for recovery during these times",
        ["start", "end"],
        [(r["start"], r["end"] or "now") for r in found["ranges"]],
    )
    return 0


def restore(args: argparse.Namespace) -> int:
    target = os.path.abspath(args.to)
    for path in args.include:
        if not path.startswith("/"):
            raise TwinvaultError(errors.INVALID_ARGUMENT, f"--include takes image paths (absolute): {path}")
    reply = ApiClient.for_host(args.repository).call_long(
        "POST",
        f"/api/images/{args.image}/restore",
        {"live": args.live, "snapshot": args.snapshot, "at": args.at, "includes": args.include, "to": target},
    )
    if args.json:
        emit_json(reply)
    else:
        console.print(
            f"restored {reply['files']} files ({human_bytes(reply['bytes'])}), {reply['directories']} "
            f"directories, {reply['links']} hard links of {args.image} at {reply['point']} into {target}"
        )
        for failure in reply["failed"][:50]:
            console.print(f"  failed: {failure['path']}: {failure['error']}")
    return 1 if reply["failed"] else 0


def repo_check(args: argparse.Namespace) -> int:
    reply = ApiClient.for_host(args.repository).call_long(
        "POST", "/api/repository/check", {"image": args.image, "read_data": args.read_data}
    )
    if args.json:
        emit_json(reply)
    else:
        what = "every chunk read and hashed" if reply["read_data"] else "every reference"
        console.print(
            f"checked {reply['checked_chunks']} chunks ({what}): {reply['missing_chunks']} missing, "
            f"{reply['corrupt_chunks']} corrupt, {reply['damaged_versions']} file versions damaged"
        )
        for d in reply["damaged"]:
            until = d["valid_to"] or "now (live)"
            console.print(f"  damaged: {d['image']}:{d['path']} valid {d['valid_from']} .. {until}")
        for problem in reply["problems"]:
            console.print(f"  problem: {problem}")
    return 0 if reply["ok"] else 3


def repo_prune(args: argparse.Namespace) -> int:
    reply = ApiClient.for_host(args.repository).call_long("POST", "/api/repository/prune", {})
    if args.json:
        emit_json(reply)
    else:
        console.print(
            f"pruned {reply['versions']} versions and {reply['chunks']} chunks "
            f"({human_bytes(reply['bytes'])}) in {reply['images']} images"
        )
    return 0


def repo_stats(args: argparse.Namespace) -> int:
    reply = ApiClient.for_host(args.repository).call("GET", "/api/repository/stats")
    if args.json:
        emit_json(reply)
        return 0
    table(
        f"repository {args.repository}",
        ["figure", "value"],
        [
            ("images", reply["images"]),
            ("file versions", reply["versions"]),
            ("logical", human_bytes(reply["logical_bytes"])),
            ("unique (after dedup)", human_bytes(reply["unique_bytes"])),
            ("stored (packs)", human_bytes(reply["stored_bytes"])),
            ("dedup ratio", reply["dedup_ratio"]),
            ("compression ratio", reply["compression_ratio"]),
        ],
    )
    return 0
