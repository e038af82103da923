"""``twinvault points``, ``twinvault restore`` and ``twinvault repo check|prune|stats``:
the repository's history seen from the console."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from twinvault.cli.client import ApiClient
from twinvault.cli.output import emit_json, err_console, human_bytes, literal, say, table
from twinvault.durable import write_private
from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.protocol import messages as m


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

    snap = sub.add_parser("snapshot", help="snapshots of an image").add_subparsers(
        dest="snapshot_action", required=True
    )
    p = snap.add_parser("delete", help="delete a snapshot (its versions go at the next prune)")
    p.add_argument("snapshot", type=int, metavar="ID")
    p.add_argument("--repository", default="localhost")
    p.add_argument("--image", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=snapshot_delete)

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


RESTORE_STATE = ".twinvault-restore-state.json"  # in --to while a restore is unfinished


def restore(args: argparse.Namespace) -> int:
    """Restore onto this machine: the repository streams the point's ops, the applier
    writes them. An interrupted restore resumes where it stopped when run again."""
    # Imported here: the applier and the chunk store would slow every other command's start.
    from twinvault.pit.restore import RestoreTarget
    from twinvault.pit.stream import END, POINT
    from twinvault.repository.image_tree import remove_temporaries

    target = Path(os.path.abspath(args.to))
    for path in args.include:
        if not path.startswith("/"):
            raise TwinvaultError(errors.INVALID_ARGUMENT, f"--include takes image paths (absolute): {path}")
    request = {
        "repository": args.repository,
        "image": args.image,
        "live": args.live,
        "snapshot": args.snapshot,
        "at": args.at,
        "includes": args.include,
    }
    skip = _resume_point(target, request)
    if skip:
        remove_temporaries(target)
    elif target.is_dir() and any(target.iterdir()) and not args.json:
        err_console.print(
            f"[yellow]warning[/]: {literal(target)} is not empty: entries of the point replace "
            "entries of the same name (listed at the end); other entries stay"
        )
    client = ApiClient.for_host(args.repository)
    frames = _frames(client.stream(f"/api/images/{args.image}/stream", {**request, "skip_through": skip}))
    header = next(frames, None)
    if header is None or header[0] != POINT:
        raise TwinvaultError(errors.MALFORMED_FRAME, "the repository's stream did not start with a point")
    writer = RestoreTarget(target)
    trailer: dict[str, Any] | None = None
    saved, saved_at = skip, time.monotonic()
    try:
        with _progress(int(header[1]["bytes"]), args.json) as advance:
            for op in frames:
                if op[0] == END:
                    trailer = op[1]
                    break
                writer.apply(op)
                advance(_data_bytes(op), writer.last_seq)
                if writer.last_seq - saved >= 16 or time.monotonic() - saved_at > 1.0:
                    _save_resume_point(target, request, writer.last_seq)
                    saved, saved_at = writer.last_seq, time.monotonic()
    finally:
        writer.close()
        if trailer is None and writer.last_seq:
            _save_resume_point(target, request, writer.last_seq)
    if trailer is None:
        raise TwinvaultError(
            errors.DAEMON_NOT_REACHABLE, f"{args.repository}: the restore was cut; run it again to resume"
        )
    (target / RESTORE_STATE).unlink(missing_ok=True)
    failed = writer.failed + [{"path": os.fsdecode(p), "error": e} for p, e in trailer["damaged"]]
    reply = {**{k: trailer[k] for k in ("files", "directories", "links", "bytes")}, "failed": failed}
    reply.update(
        {"image": args.image, "point": header[1]["point"], "target": str(target), "resumed_after": skip}
    )
    reply.update({"replaced": writer.replaced, "replaced_paths": writer.replaced_paths})
    if args.json:
        emit_json(reply)
    else:
        say(
            f"restored {reply['files']} files ({human_bytes(reply['bytes'])}), {reply['directories']} "
            f"directories, {reply['links']} hard links of {args.image} at {reply['point']} into {target}"
            + (f" (resumed after op {skip})" if skip else "")
        )
        for path in writer.replaced_paths[:50]:
            say(f"  replaced: {path}")
        if writer.replaced > 50:
            say(f"  ... {writer.replaced - 50} more replaced")
        for failure in failed[:50]:
            say(f"  failed: {failure['path']}: {failure['error']}")
    return 1 if failed else 0


def _resume_point(target: Path, request: dict[str, Any]) -> int:
    try:
        saved = json.loads((target / RESTORE_STATE).read_text())
    except (OSError, ValueError):
        return 0
    return int(saved.get("last_seq", 0)) if saved.get("request") == request else 0


def _save_resume_point(target: Path, request: dict[str, Any], last_seq: int) -> None:
    """Record how far the restore got: only after the files written so far are on disk,
    so a resume never skips a file a power cut took away."""
    from twinvault.repository.receiver import syncfs

    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        syncfs(fd)
    finally:
        os.close(fd)
    write_private(target / RESTORE_STATE, json.dumps({"request": request, "last_seq": last_seq}).encode())


def _frames(pieces: Iterator[bytes]) -> Iterator[list[Any]]:
    from twinvault.protocol.frames import MAX_FRAME_BYTES, decode_body  # a restore's only

    buffer = bytearray()
    for piece in pieces:
        buffer += piece
        while len(buffer) >= 4:
            (length,) = struct.unpack_from(">I", buffer)
            if length > MAX_FRAME_BYTES:
                raise TwinvaultError(errors.FRAME_TOO_LARGE, f"{length} bytes")
            if len(buffer) < 4 + length:
                break
            yield decode_body(bytes(buffer[4 : 4 + length]))
            del buffer[: 4 + length]


def _data_bytes(op: list[Any]) -> int:
    segments = op[5] if op[0] == m.FILE else op[2] if op[0] == m.FDATA else []
    return sum(len(seg[2]) for seg in segments if seg[0] == m.SEG_DATA)


@contextlib.contextmanager
def _progress(total: int, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr (CONTRACT: anything that may take more than a second)."""
    if quiet:
        yield lambda done, seq: None
        return
    # Imported here: every other command starts faster without rich's progress machinery.
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn("restoring"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    )  # fmt: skip
    with bar:
        task = bar.add_task("restore", total=total or None)
        yield lambda done, seq: bar.advance(task, done)


def snapshot_delete(args: argparse.Namespace) -> int:
    reply = ApiClient.for_host(args.repository).call(
        "DELETE", f"/api/images/{args.image}/snapshots/{args.snapshot}"
    )
    if args.json:
        emit_json(reply)
    else:
        say(f"snapshot {args.snapshot} of {args.image} deleted")
    return 0


def repo_check(args: argparse.Namespace) -> int:
    reply = ApiClient.for_host(args.repository).call_long(
        "POST", "/api/repository/check", {"image": args.image, "read_data": args.read_data}
    )
    if args.json:
        emit_json(reply)
    else:
        what = "every chunk read and hashed" if reply["read_data"] else "every reference"
        say(
            f"checked {reply['checked_chunks']} chunks ({what}): {reply['missing_chunks']} missing, "
            f"{reply['corrupt_chunks']} corrupt, {reply['damaged_versions']} file versions damaged"
        )
        for d in reply["damaged"]:
            until = d["valid_to"] or "now (live)"
            say(f"  damaged: {d['image']}:{d['path']} valid {d['valid_from']} .. {until}")
        for problem in reply["problems"]:
            say(f"  problem: {problem}")
    return 0 if reply["ok"] else 3


def repo_prune(args: argparse.Namespace) -> int:
    reply = ApiClient.for_host(args.repository).call_long("POST", "/api/repository/prune", {})
    if args.json:
        emit_json(reply)
    else:
        say(
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
