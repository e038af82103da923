"""The transmission options ``protect``, ``recover`` and ``job set`` share: ``--bandwidth``,
``--bandwidth-period``, ``--route``, ``--bind`` and ``--compression`` (``protocol.transmission`` checks and
applies them on the sending host)."""

from __future__ import annotations

import argparse
from typing import Any

from twinvault.compression_levels import LEVELS


def add_transmission_options(p: argparse.ArgumentParser, *, changing: bool = False) -> None:
    p.add_argument(
        "--bandwidth",
        metavar="KBPS",
        help="limit in KB/s (1 KB = 1024 bytes) outside every period; 0 or unlimited: none",
    )
    p.add_argument(
        "--bandwidth-period",
        dest="bandwidth_periods",
        action="append",
        default=[],
        metavar="NAME=DAYS,HH:MM-HH:MM,KBPS",
        help="a named period with its own limit, e.g. business=mon-fri,08:00-18:00,1024 "
        "(repeat for more; days: mon..sun, mon-fri, sat+sun, daily, weekdays, weekends)",
    )
    p.add_argument("--route", metavar="ADDRESS", help="the receiving host's address to send to")
    p.add_argument("--bind", metavar="ADDRESS", help="this sending host's address to send from")
    p.add_argument(
        "--compression",
        metavar="|".join(LEVELS),
        help="compress data for transmission (a new job's default: none); the sending host checks it",
    )
    if changing:
        p.add_argument(
            "--remove-bandwidth-period", dest="remove_periods", action="append", default=[], metavar="NAME"
        )
        p.add_argument("--clear-bandwidth-periods", dest="clear_periods", action="store_true")


def transmission_body(args: argparse.Namespace) -> dict[str, Any]:
    """The options as the API's ``job set`` takes them (None: not given)."""
    return {
        "bandwidth": args.bandwidth,
        "bandwidth_periods": args.bandwidth_periods,
        "remove_periods": getattr(args, "remove_periods", []),
        "clear_periods": getattr(args, "clear_periods", False),
        "route": args.route,
        "bind": args.bind,
        "compression": args.compression,
    }


def transmission_options(args: argparse.Namespace) -> dict[str, Any]:
    """A new job's spec keys for the options given, checked before anything is created."""
    body = transmission_body(args)
    if all(v in (None, [], False) for v in body.values()):
        return {}
    # Imported only when options are given: it brings the bandwidth keeper and asyncio,
    # a fifth of the start of every other command.
    from twinvault.protocol.transmission import transmission_changes

    return transmission_changes(body, {})
