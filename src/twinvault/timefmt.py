"""Instants as users write them: ISO 8601, local time unless an offset is given (CONTRACT).

History keeps integer nanoseconds since the Unix epoch (UTC); these two functions are
the only conversions between the two.
"""

from __future__ import annotations

from datetime import datetime

from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError


def iso_from_ns(t: int, *, round_up: bool = False) -> str:
    """Local time with its offset, to the microsecond when the instant has one.

    ISO 8601 here stops at microseconds; history counts nanoseconds. ``round_up`` for
    the start of a valid range (so the printed instant is inside it); the default
    rounds down, right for the end of one.
    """
    micros = -(-t // 1000) if round_up else t // 1000
    moment = datetime.fromtimestamp(micros // 1_000_000).astimezone()
    moment = moment.replace(microsecond=micros % 1_000_000)
    return moment.isoformat(timespec="microseconds" if moment.microsecond else "seconds")


def ns_from_iso(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise TwinvaultError(errors.INVALID_DATE, f"{text!r} (ISO 8601, e.g. 2026-11-24T13:05:00)") from exc
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time, as the contract says
    # Whole seconds since the epoch plus the microseconds, without float rounding.
    return int(moment.replace(microsecond=0).timestamp()) * 1_000_000_000 + moment.microsecond * 1000
