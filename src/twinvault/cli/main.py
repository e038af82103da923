"""The ``twinvault`` command: parse, dispatch to a command module, render errors."""

from __future__ import annotations

import argparse
import sys

from twinvault.cli import (
    history_cmd,
    host_cmd,
    jobs_cmd,
    monitor_cmd,
    mount_cmd,
    notify_cmd,
    protect_cmd,
    recover_cmd,
)
from twinvault.cli.output import fail
from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twinvault", description="disk-to-disk backup and recovery")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (
        host_cmd,
        protect_cmd,
        jobs_cmd,
        monitor_cmd,
        notify_cmd,
        history_cmd,
        mount_cmd,
        recover_cmd,
    ):
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
