"""The ``twinvault`` command: parse, dispatch to a command module, render errors."""

from __future__ import annotations

import argparse
import importlib
import sys

from twinvault.cli.output import fail
from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError

# The module that defines each command. Running a command imports that module only: a
# command's start is mostly imports (all of them cost a cold start 0.4 s), and --help or
# anything unknown builds the whole parser.
MODULE_OF = {
    "setup": "host_cmd", "serve": "host_cmd", "login": "host_cmd", "logout": "host_cmd",
    "protect": "protect_cmd",
    "jobs": "jobs_cmd", "job": "jobs_cmd",
    "events": "monitor_cmd", "images": "monitor_cmd",
    "notify": "notify_cmd",
    "points": "history_cmd", "restore": "history_cmd", "snapshot": "history_cmd", "repo": "history_cmd",
    "mount": "mount_cmd", "umount": "mount_cmd", "mounts": "mount_cmd",
    "recover": "recover_cmd",
}  # fmt: skip
MODULES = (
    "host_cmd", "protect_cmd", "jobs_cmd", "monitor_cmd",
    "notify_cmd", "history_cmd", "mount_cmd", "recover_cmd",
)  # fmt: skip


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``command`` alone when it is known, else of every command."""
    parser = argparse.ArgumentParser(prog="twinvault", description="disk-to-disk backup and recovery")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in (MODULE_OF[command],) if command in MODULE_OF else MODULES:
        importlib.import_module(f"twinvault.cli.{name}").add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    as_json = bool(getattr(args, "json", False))
    try:
        return int(args.func(args))
    except TwinvaultError as exc:
        return fail(exc, as_json)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        return fail(TwinvaultError(errors.UNKNOWN_ERROR, str(exc)), as_json)


if __name__ == "__main__":
    sys.exit(main())
