"""``twinvault recover``: create a Data Recovery job (repository -> recovery server).

The console validates first, as the guide's validation report does (errors block,
warnings do not): the point exists and is valid, the target path on the recovery server
is writable, has room for the data, and is not one of that host's own images. It then
applies the original-job choice on the source (stop / delete / leave; ignored when the
source cannot be reached), has the recovery server issue a credential for the job, and
asks the repository to start sending.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from twinvault.cli.client import ApiClient, CredentialCache, split_host
from twinvault.cli.notify_cmd import add_settings_options, apply_settings, settings_changes
from twinvault.cli.output import console, emit_json, human_bytes, literal, say
from twinvault.cli.transmission import add_transmission_options, transmission_options
from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("recover", help="create a Data Recovery job: an image's point in time onto a server")
    p.add_argument("--repository", required=True)
    p.add_argument("--image", required=True)
    point = p.add_mutually_exclusive_group(required=True)
    point.add_argument("--live", action="store_true")
    point.add_argument("--snapshot", type=int, metavar="ID")
    point.add_argument("--at", metavar="TIME")
    p.add_argument("--to-server", required=True, metavar="HOST")
    p.add_argument("--target-path", required=True, metavar="DIR")
    p.add_argument("--include", nargs="+", default=[], metavar="PATH")
    p.add_argument("--exclude", nargs="+", default=[], metavar="GLOB")
    p.add_argument("--original-job", choices=["delete", "stop", "leave"], default="leave")
    p.add_argument("--shutdown-source", action="store_true",
                   help="after the recovery mirror, the source runs its shutdown_command")  # fmt: skip
    p.add_argument("--full-server", action="store_true")
    # The guide's "E-mailing recovery server event messages": set on the recovery server.
    add_settings_options(p.add_argument_group("e-mail notification of the recovery server"), "email-")
    add_transmission_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=recover)


def recover(args: argparse.Namespace) -> int:
    if args.full_server:
        raise TwinvaultError(
            errors.FEATURE_NOT_SUPPORTED, "Server Recovery (--full-server) is not available yet"
        )
    for path in args.include:
        if not path.startswith("/"):
            raise TwinvaultError(errors.INVALID_ARGUMENT, f"--include takes image paths (absolute): {path}")
    email = settings_changes(args, "email-")
    options = transmission_options(args)  # checked here: a refused option creates nothing
    repository = ApiClient.for_host(args.repository)
    target = ApiClient.for_host(args.to_server)
    point = {"live": args.live, "snapshot": args.snapshot, "at": args.at, "includes": args.include}
    plan = repository.call("POST", "/api/recoveries/plan", {"image": args.image, **point})
    report = target.call(
        "POST", "/api/recovery/validate", {"target_path": args.target_path, "bytes": plan["bytes"]}
    )
    warnings: list[str] = list(report["warnings"])
    if report["errors"]:
        _print_report(plan, report["errors"], warnings, args.json)
        first = report["errors"][0]
        raise TwinvaultError(int(first["code"]), summary=str(first["message"]))
    if email:
        apply_settings(target, email)  # before anything changes: a refusal stops here
    repo_name = repository.call("GET", "/api/host")["name"]
    target_info = target.call("GET", "/api/host")
    target_name = target_info["name"]
    address, _ = split_host(args.to_server)
    if options.get("route") or options.get("bind_address"):
        # The sender (the repository) tries the route before anything changes anywhere.
        repository.call(
            "POST",
            "/api/routes/check",
            {
                "address": options.get("route") or address,
                "bind": options.get("bind_address") or "",
                "port": target_info["peer_port"],
                "name": target_name,
                "fingerprint": target.fingerprint,
            },
        )
    warnings += _original_jobs(repository, args.image, args.original_job, target_name)
    shutdown = args.shutdown_source
    if shutdown and _source_of(repository, args.image) == target_name:
        warnings.append("--shutdown-source ignored: the recovery server is the original source")
        shutdown = False
    job_id = uuid.uuid4().hex[:12]
    issued = target.call(
        "POST",
        "/api/recovery/targets",
        {"job_id": job_id, "source_name": repo_name, "target_path": args.target_path, "bytes": plan["bytes"]},
    )
    repository.call(
        "POST",
        "/api/recoveries",
        {
            **options,
            "job_id": job_id,
            "image": args.image,
            "point": plan["point"],
            "point_label": plan["point_label"],
            "includes": args.include,
            "excludes": args.exclude,
            "target_name": issued["name"],
            "target_address": address,
            "target_peer_port": issued["peer_port"],
            # The console vouches for the recovery server with the fingerprint it pinned.
            "target_fingerprint": target.fingerprint,
            "token": issued["token"],
            "target_path": args.target_path,
            "total_files": plan["files"],
            "total_bytes": plan["bytes"],
            "shutdown_source": shutdown,
        },
    )
    if args.json:
        summary = {"job": job_id, "point": plan["point_label"], "files": plan["files"]}
        emit_json({**summary, "bytes": plan["bytes"], "warnings": warnings})
    else:
        _print_report(plan, [], warnings, False)
        say(f"job {job_id}: Data Recovery of {args.image} at {plan['point_label']} -> "
                      f"{target_name}:{args.target_path}")  # fmt: skip
    return 0


def _print_report(
    plan: dict[str, Any], found: list[dict[str, Any]], warnings: list[str], quiet: bool
) -> None:
    if quiet:
        return
    say(f"validation: {plan['files']} files, {human_bytes(plan['bytes'])} at {plan['point_label']}")
    for error in found:
        console.print(f"  [red]error[/] {error['code']}: {literal(error['message'])}")
    for warning in warnings:
        console.print(f"  [yellow]warning[/]: {literal(warning)}")


def _source_of(repository: ApiClient, image: str) -> str | None:
    found = [i["source"] for i in repository.call("GET", "/api/images")["images"] if i["name"] == image]
    return found[0] if found else None


def _original_jobs(repository: ApiClient, image: str, choice: str, target_name: str) -> list[str]:
    """Stop or delete the protection jobs writing into the image, through the source's own
    API with the console's cached login; ignored (with a warning) when the source cannot
    be reached, and when the recovery server is the original source (the guide's rule)."""
    if choice == "leave":
        return []
    images = repository.call("GET", "/api/images")["images"]
    found = next((i for i in images if i["name"] == image), None)
    if found is None:
        return []
    if found["source"] == target_name:
        return [f"--original-job {choice} ignored: the recovery server is the original source"]
    notes: list[str] = []
    for key, cred in CredentialCache().load().items():
        if cred.name != found["source"]:
            continue
        source = ApiClient(key, cred.fingerprint, cred.token)
        for job in found["jobs"]:
            try:
                source.call("POST", f"/api/jobs/{job}/{choice}", {})
            except TwinvaultError as exc:
                notes.append(f"--original-job {choice} of {job} on {found['source']} ignored: {exc.message}")
        return notes
    return [f"--original-job {choice} ignored: not logged in to the source {found['source']}"]
