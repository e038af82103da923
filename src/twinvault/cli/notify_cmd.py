"""``twinvault notify set|show|test``: a host's e-mail notification settings.

The daemon checks and keeps the settings (``ops.email_settings``); the console only
collects the options that were given (``notify set`` changes those and keeps the rest).
`add_settings_options` and `settings_changes` also give ``protect`` and ``recover`` their
``--email-*`` options, which set the repository's or the recovery server's notification.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twinvault.cli.client import ApiClient
from twinvault.cli.output import emit_json, say, table
from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("notify", help="e-mail notification of a server's events")
    actions = p.add_subparsers(dest="notify_action", required=True)

    s = actions.add_parser("set", help="change the e-mail settings (options not given keep their value)")
    s.add_argument("--server", default="localhost")
    add_settings_options(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=notify_set)

    v = actions.add_parser("show", help="the e-mail settings (never the password) and how sending goes")
    v.add_argument("--server", default="localhost")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=notify_show)

    t = actions.add_parser("test", help="send a test e-mail with the server's settings")
    t.add_argument("--server", default="localhost")
    t.add_argument("--to", nargs="+", metavar="ADDRESS", help="instead of the configured recipients")
    t.add_argument("--message", help="the test message text (at most 1024 characters)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=notify_test)


def add_settings_options(p: argparse._ActionsContainer, prefix: str = "") -> None:
    """The settings' options, named ``--PREFIXsmtp`` ... (``prefix`` "email-" for jobs)."""
    d = prefix.replace("-", "_")
    what = "the e-mail notification's " if prefix else ""
    p.add_argument(
        f"--{prefix}smtp",
        dest=f"{d}smtp",
        metavar="HOST:PORT",
        help=f"{what}SMTP server (port 25, or 465 with --{prefix}tls)",
    )
    tls = p.add_mutually_exclusive_group()
    tls.add_argument(f"--{prefix}starttls", dest=f"{d}security", action="store_const", const="starttls")
    tls.add_argument(
        f"--{prefix}tls", dest=f"{d}security", action="store_const", const="tls", help="implicit TLS (SMTPS)"
    )
    tls.add_argument(f"--{prefix}no-tls", dest=f"{d}security", action="store_const", const="none")
    p.add_argument(
        f"--{prefix}smtp-ca-file",
        dest=f"{d}ca_file",
        metavar="PEM",
        help="CA certificates (a file on the server) that verify the SMTP server",
    )
    login = p.add_mutually_exclusive_group()
    login.add_argument(
        f"--{prefix}login",
        dest=f"{d}login",
        metavar="USER",
        help="log on to the SMTP server (LOGIN); needs TLS and the password",
    )
    login.add_argument(f"--{prefix}no-login", dest=f"{d}login", action="store_const", const="")
    p.add_argument(
        f"--{prefix}password-stdin",
        dest=f"{d}password_stdin",
        action="store_true",
        help="read the SMTP password from the first line of standard input",
    )
    p.add_argument(f"--{prefix}from", dest=f"{d}from_address", metavar="ADDRESS")
    p.add_argument(
        f"--{prefix}to",
        dest=f"{d}to",
        nargs="+",
        metavar="ADDRESS",
        help="recipients (up to 256), replacing the current list",
    )
    p.add_argument(
        f"--{prefix}severity",
        dest=f"{d}severity",
        metavar="LIST",
        help="which events to mail: error,warning,info",
    )
    p.add_argument(
        f"--{prefix}exclude-ids",
        dest=f"{d}exclude_ids",
        metavar="IDS",
        help='event IDs not to mail, e.g. "4000-4010;5500" ("" for none)',
    )
    p.add_argument(f"--{prefix}subject-prefix", dest=f"{d}subject_prefix", metavar="TEXT")
    p.add_argument(
        f"--{prefix}add-description",
        dest=f"{d}add_description",
        action=argparse.BooleanOptionalAction,
        help="end the subject with the event's message",
    )
    state = p.add_mutually_exclusive_group()
    state.add_argument(f"--{prefix}enable", dest=f"{d}enabled", action="store_const", const=True)
    state.add_argument(
        f"--{prefix}disable",
        dest=f"{d}enabled",
        action="store_const",
        const=False,
        help="stop mailing; the settings are kept",
    )
    p.add_argument(
        f"--{prefix}retry-interval",
        dest=f"{d}retry_interval_s",
        type=float,
        metavar="SECONDS",
        help="first retry of a failed e-mail after this long, doubling (default 30)",
    )
    p.add_argument(
        f"--{prefix}retry-limit",
        dest=f"{d}retry_limit",
        type=int,
        metavar="N",
        help="retries before a failed e-mail is given up (default 8)",
    )


def settings_changes(args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """The API's change document from the options that were given ({} when none were)."""
    d = prefix.replace("-", "_")
    changes: dict[str, Any] = {}
    for option, key in (
        ("smtp", "smtp"),
        ("security", "security"),
        ("ca_file", "ca_file"),
        ("login", "login"),
        ("from_address", "from"),
        ("to", "to"),
        ("severity", "severity"),
        ("exclude_ids", "exclude_ids"),
        ("subject_prefix", "subject_prefix"),
        ("add_description", "add_description"),
        ("enabled", "enabled"),
        ("retry_interval_s", "retry_interval_s"),
        ("retry_limit", "retry_limit"),
    ):
        value = getattr(args, d + option)
        if value is not None:
            changes[key] = value
    if getattr(args, d + "password_stdin"):
        if not changes.get("login"):
            raise TwinvaultError(
                errors.EMAIL_SETTING_INVALID, f"--{prefix}password-stdin needs --{prefix}login"
            )
        changes["password"] = sys.stdin.readline().rstrip("\r\n")
    elif changes.get("login"):
        raise TwinvaultError(errors.EMAIL_SETTING_INVALID, f"--{prefix}login needs --{prefix}password-stdin")
    return changes


def apply_settings(server: ApiClient, changes: dict[str, Any]) -> dict[str, Any]:
    """Send the changes to a server; returns its `notify show` document."""
    result: dict[str, Any] = server.call("PUT", "/api/notify", changes)
    return result


def notify_set(args: argparse.Namespace) -> int:
    changes = settings_changes(args)
    if not changes:
        raise TwinvaultError(errors.INVALID_ARGUMENT, "nothing to change: give at least one setting")
    shown = apply_settings(ApiClient.for_host(args.server), changes)
    if args.json:
        emit_json(shown)
    else:
        _print(args.server, shown)
    return 0


def notify_show(args: argparse.Namespace) -> int:
    shown = ApiClient.for_host(args.server).call("GET", "/api/notify")
    if args.json:
        emit_json(shown)
    else:
        _print(args.server, shown)
    return 0


def notify_test(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"to": args.to, "message": args.message}
    sent = ApiClient.for_host(args.server).call("POST", "/api/notify/test", body)
    if args.json:
        emit_json(sent)
    else:
        say(f"test e-mail sent to {', '.join(sent['to'])}")
    return 0


def _print(server: str, shown: dict[str, Any]) -> None:
    settings = shown.get("settings")
    if settings is None:
        say(f"no e-mail settings on {server} (twinvault notify set)")
        return
    rows = [(k, ", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in settings.items()]
    rows += [(f"status.{k}", v) for k, v in shown["status"].items()]
    table(f"e-mail notification on {server}", ["setting", "value"], rows)
