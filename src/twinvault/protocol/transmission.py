"""A job's transmission options as ``protect``, ``recover`` and ``job set`` give them:
the bandwidth schedule (``protocol.bandwidth``), the route (the receiving host's address
to send to), the bind address (the sending host's address to send from) and the
compression level (``twinvault.compression``).

Both kinds of job keep them under the same keys in their persisted spec (``bandwidth``,
``route``, ``bind_address``, ``compression``), so one function turns the API's options into changed spec
keys and one checks them, for protection (source -> repository) and recovery
(repository -> recovery server) alike. Another option joins by adding its key here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from twinvault.compression_levels import checked_level
from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.protocol.bandwidth import BandwidthKeeper, BandwidthSchedule, schedule_from_options
from twinvault.protocol.connection import probe_route

# The API's keys (``job set``'s body; protect and recover send the same).
BANDWIDTH_KEYS = ("bandwidth", "bandwidth_periods", "remove_periods", "clear_periods")
ROUTE_KEYS = ("route", "bind")
COMPRESSION_KEY = "compression"


def transmission_changes(body: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The spec keys ``body`` changes, checked (raises, changing nothing, when refused)."""
    changes: dict[str, Any] = {}
    if any(body.get(k) not in (None, [], False) for k in BANDWIDTH_KEYS):
        current = BandwidthSchedule.from_json(spec.get("bandwidth"))
        changes["bandwidth"] = schedule_from_options(body, current).to_json()
    if body.get("route") is not None:
        changes["route"] = _address(str(body["route"]), "--route")
    if body.get("bind") is not None:
        changes["bind_address"] = _address(str(body["bind"]), "--bind")
    if body.get(COMPRESSION_KEY) is not None:
        changes["compression"] = checked_level(body[COMPRESSION_KEY])  # -153 when unknown
    if not changes and not _has_other_options(body):
        raise TwinvaultError(
            errors.INVALID_PARAMETER,
            "nothing to change: give --bandwidth, a period, --route or --compression",
        )
    return changes


def _has_other_options(body: dict[str, Any]) -> bool:
    """Keys another module of ``job set`` handles (e.g. compression)."""
    known = (*BANDWIDTH_KEYS, *ROUTE_KEYS, COMPRESSION_KEY)
    return any(v is not None for k, v in body.items() if k not in known)


def _address(text: str, option: str) -> str:
    """An IP address, or "" (back to the default)."""
    text = text.strip()
    if text in ("", "default"):
        return ""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError as exc:
        raise TwinvaultError(errors.INVALID_PARAMETER, f"{option} {text!r}: give an IP address") from exc


@dataclass(frozen=True, slots=True)
class Receiver:
    """The receiving host as a job's spec names it (default address, peer port, pinned
    certificate): what a route must reach."""

    address: str
    port: int
    name: str
    fingerprint: str


async def check_transmission(spec: dict[str, Any], receiver: Receiver, *, probe: bool = True) -> None:
    """Check a spec's options before it is saved: the schedule holds together, and a chosen
    route or bind address really reaches the receiving host (whose certificate is pinned);
    ``probe=False`` when neither changed (a limit can change while the peer is down)."""
    BandwidthSchedule.from_json(spec.get("bandwidth"))
    route, bind = str(spec.get("route") or ""), str(spec.get("bind_address") or "")
    if probe and (route or bind):
        await probe_route(route or receiver.address, receiver.port, server_hostname=receiver.name or None,
                          fingerprint=receiver.fingerprint, bind=bind)  # fmt: skip


def rerouted(changes: dict[str, Any]) -> bool:
    """Whether changed spec keys move the link (a new route or bind address)."""
    return "route" in changes or "bind_address" in changes


def transmission_view(keeper: BandwidthKeeper, spec: Any) -> dict[str, Any]:
    """A job's options and the limit in force, for ``job show`` (``transmission``) and the
    statistics (``conBandwidthLimit``); ``spec`` is a protection or recovery job's spec."""
    return {
        "transmission": {
            **keeper.view(),
            "route": spec.route,
            "bind_address": spec.bind_address,
            "peer_address": spec.peer_address,
            "compression": spec.compression,
        },
        "statistics": {"conBandwidthLimit": keeper.statistic},
    }
