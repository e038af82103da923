"""``twinvault mount``, ``twinvault umount`` and ``twinvault mounts``: a point in time as a
read-only filesystem on the repository host (the daemon serves it; ``docs/mount.md``)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from twinvault.cli.client import ApiClient
from twinvault.cli.output import emit_json, say, table


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("mount", help="serve an image at a point in time as a read-only filesystem")
    p.add_argument("--repository", default="localhost")
    p.add_argument("--image", required=True)
    point = p.add_mutually_exclusive_group(required=True)
    point.add_argument("--live", action="store_true")
    point.add_argument("--snapshot", type=int, metavar="ID")
    point.add_argument("--at", metavar="TIME")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an empty directory on the repository host")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=mount)

    p = sub.add_parser("umount", help="stop serving a mount made by twinvault mount")
    p.add_argument("--repository", default="localhost")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=umount)

    p = sub.add_parser("mounts", help="the mounts a repository is serving")
    p.add_argument("--repository", default="localhost")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=mounts)


def mount(args: argparse.Namespace) -> int:
    reply = ApiClient.for_host(args.repository).call_long(
        "POST",
        "/api/mounts",
        {
            "image": args.image,
            "live": args.live,
            "snapshot": args.snapshot,
            "at": args.at,
            "mountpoint": os.path.abspath(args.mountpoint),
        },
    )
    if args.json:
        emit_json(reply)
    else:
        say(
            f"mounted {reply['image']} ({reply['point']}, instant {reply['time']}) read-only at "
            f"{reply['mountpoint']}; twinvault umount {reply['mountpoint']} to stop"
        )
    return 0


def umount(args: argparse.Namespace) -> int:
    reply = ApiClient.for_host(args.repository).call(
        "DELETE", "/api/mounts", mountpoint=os.path.abspath(args.mountpoint)
    )
    if args.json:
        emit_json(reply)
    else:
        say(f"unmounted {reply['image']} from {reply['mountpoint']}")
    return 0


def mounts(args: argparse.Namespace) -> int:
    found = ApiClient.for_host(args.repository).call("GET", "/api/mounts")["mounts"]
    if args.json:
        emit_json({"mounts": found})
        return 0
    table(
        f"mounts served by {args.repository}",
        ["mount point", "image", "point", "instant", "pid"],
        [(m["mountpoint"], m["image"], m["point"], m["time"], m["pid"]) for m in found],
    )
    return 0
