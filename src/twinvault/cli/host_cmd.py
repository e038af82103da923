"""``twinvault setup``, ``serve``, ``login`` and ``logout``."""

from __future__ import annotations

import argparse
import contextlib
import sys
import tomllib
from pathlib import Path
from typing import Any

from twinvault.cli.client import ApiClient, Credential, CredentialCache, host_key
from twinvault.cli.output import console, emit_json, literal, say
from twinvault.daemon.accounts import Accounts
from twinvault.daemon.config import (
    Home,
    HostConfig,
    QueueConfig,
    StoreConfig,
    default_home,
    load_config,
    save_config,
    vars_of,
)
from twinvault.daemon.cpus import parse_cpus
from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.protocol.tls import create_identity, fingerprint_of_cert_file


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("setup", help="create or update a host's state directory")
    p.add_argument("--home", type=Path, default=None)
    p.add_argument("--name")
    p.add_argument("--peer-port", type=int)
    p.add_argument("--api-port", type=int)
    p.add_argument("--bind-address")
    p.add_argument("--admin")
    p.add_argument("--password-stdin", action="store_true")
    p.add_argument("--config", type=Path, help="silent-install file: [config] and [host.NAME] sections")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=setup)

    p = sub.add_parser("serve", help="run the daemon in the foreground")
    p.add_argument("--home", type=Path, default=None)
    p.set_defaults(func=serve)

    p = sub.add_parser("login", help="authenticate to a host and cache a token")
    p.add_argument("host")
    p.add_argument("--user", required=True)
    p.add_argument("--password-stdin", action="store_true")
    p.add_argument("--accept-fingerprint")
    p.add_argument("--trust-on-first-use", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=login)

    p = sub.add_parser("logout", help="forget cached credentials")
    p.add_argument("host", nargs="?")
    p.add_argument("--all", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=logout)


def _read_password(args: argparse.Namespace) -> str:
    if not args.password_stdin:
        raise TwinvaultError(
            errors.INVALID_ARGUMENT, "pass the password on standard input with --password-stdin"
        )
    password = sys.stdin.readline().rstrip("\n")
    if not password:
        raise TwinvaultError(errors.INVALID_ARGUMENT, "empty password")
    return password


# `[config]` keys `store_<field>` set the repository's history store (daemon/config.py).
_STORE_SETTABLE = set(StoreConfig.__dataclass_fields__)
_SETTABLE = {
    "peer_port",
    "api_port",
    "bind_address",
    "path_prefix",
    "retry_limit",
    "capture",
    "metrics_token",
    "shutdown_command",
    "cpus",
}


def setup(args: argparse.Namespace) -> int:
    home = Home(args.home or default_home())
    overrides: dict[str, Any] = {}
    queue_overrides: dict[str, Any] = {}
    store_overrides: dict[str, Any] = {}
    if args.config:
        raw = tomllib.loads(args.config.read_text())
        section = dict(raw.get("config", {}))
        name = args.name or section.get("name")
        if name and isinstance(raw.get("host"), dict) and name in raw["host"]:
            section.update(raw["host"][name])
        for key, value in section.items():
            key = key.lower()
            if key in _SETTABLE or key == "name":
                overrides[key] = value
            elif key in ("memory_max_mb", "disk_folder", "disk_max_mb", "min_free_mb"):
                queue_overrides[key] = None if str(value).upper() == "UNLIMITED" else value
            elif key.startswith("store_") and key[6:] in _STORE_SETTABLE:
                store_overrides[key[6:]] = value
            else:
                raise TwinvaultError(errors.INVALID_OPTION, f"unknown setting {key!r} in {args.config}")
    for key in ("name", "peer_port", "api_port", "bind_address"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    home.make_dirs()
    if home.config_file.exists():
        config = load_config(home)
    else:
        if "name" not in overrides:
            raise TwinvaultError(errors.INVALID_ARGUMENT, "--name is required for a new host")
        config = HostConfig(name=overrides["name"])
    for key, value in overrides.items():
        setattr(config, key, value)
    if queue_overrides:
        config.queue = QueueConfig(**{**vars_of_queue(config.queue), **queue_overrides})
    if store_overrides:
        config.store = StoreConfig(**{**vars_of(config.store), **store_overrides})
    config.cpus = str(config.cpus)  # `cpus = 1` in TOML is as good as "1"
    parse_cpus(config.cpus)  # refused now, not at the daemon's start
    for port in (config.peer_port, config.api_port):
        if not 1 <= int(port) <= 65535:
            raise TwinvaultError(errors.INVALID_ARGUMENT, f"port {port} out of range")
    save_config(home, config)
    if not home.cert.exists():
        create_identity(home.cert, home.key, config.name)
    if args.admin:
        Accounts(home.accounts, home.tokens).set_password(args.admin, _read_password(args))
    result = {
        "home": str(home.root),
        "name": config.name,
        "fingerprint": fingerprint_of_cert_file(home.cert),
        "peer_port": config.peer_port,
        "api_port": config.api_port,
    }
    if args.json:
        emit_json(result)
    else:
        console.print(
            f"host [bold]{literal(config.name)}[/] ready in {literal(home.root)}; "
            f"fingerprint {result['fingerprint']}"
        )
    return 0


def vars_of_queue(q: QueueConfig) -> dict[str, Any]:
    return {
        "memory_max_mb": q.memory_max_mb,
        "disk_folder": q.disk_folder,
        "disk_max_mb": q.disk_max_mb,
        "min_free_mb": q.min_free_mb,
    }


def serve(args: argparse.Namespace) -> int:
    from twinvault.daemon.serve import run

    home = Home(args.home or default_home())
    if not home.config_file.exists():
        raise TwinvaultError(
            errors.INVALID_ARGUMENT, f"{home.root} is not set up: run 'twinvault setup' first"
        )
    run(home)
    return 0


def login(args: argparse.Namespace) -> int:
    password = _read_password(args)
    cache = CredentialCache()
    creds = cache.load()
    key = host_key(args.host)
    probe = ApiClient(args.host, "")
    actual = probe.probe_fingerprint()
    pinned = creds[key].fingerprint if key in creds else ""
    expected = (args.accept_fingerprint or "").lower().replace(":", "")
    if expected and expected != actual:
        raise TwinvaultError(errors.FINGERPRINT_MISMATCH, f"{args.host} presents {actual}, not {expected}")
    if not expected:
        if pinned and pinned != actual:
            raise TwinvaultError(
                errors.FINGERPRINT_MISMATCH,
                f"{args.host} now presents {actual}; pinned {pinned}. If the host was reinstalled, "
                "check the new fingerprint and pass --accept-fingerprint",
            )
        if not pinned and not args.trust_on_first_use:
            raise TwinvaultError(
                errors.FINGERPRINT_NOT_PINNED,
                f"{args.host} presents {actual}; pass --accept-fingerprint {actual} or --trust-on-first-use",
            )
    client = ApiClient(args.host, actual)
    reply = client.call("POST", "/api/login", {"user": args.user, "password": password})
    creds[key] = Credential(actual, reply["token"], args.user, reply.get("name", ""))
    cache.save(creds)
    if args.json:
        emit_json({"host": key, "fingerprint": actual, "name": reply.get("name")})
    else:
        say(f"logged in to {reply.get('name')} ({key}), fingerprint {actual}")
    return 0


def logout(args: argparse.Namespace) -> int:
    cache = CredentialCache()
    creds = cache.load()
    if args.all:
        targets = list(creds)
    elif args.host:
        targets = [host_key(args.host)]
        if targets[0] not in creds:
            raise TwinvaultError(errors.UNKNOWN_HOST, args.host)
    else:
        raise TwinvaultError(errors.INVALID_ARGUMENT, "name a host or pass --all")
    for key in targets:
        cred = creds.pop(key)
        # The host may be gone or the token expired: forgetting it locally is what matters.
        with contextlib.suppress(TwinvaultError):
            ApiClient(key, cred.fingerprint, cred.token, timeout=5).call("POST", "/api/logout", {})
    cache.save(creds)
    if args.json:
        emit_json({"logged_out": targets})
    return 0
