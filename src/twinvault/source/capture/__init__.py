"""Change capture: which paths under a selection's roots changed, as hints for replication.

`open_capture` picks the method: fanotify filesystem marks where the kernel allows them
(`fanotify.py`), recursive inotify watches otherwise (`inotify.py`). Both report the same
`Change` records (`events.py`); the change set downstream coalesces them, and OVERFLOW tells
it to run a difference mirror because capture may have missed something.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from twinvault.source.capture.events import (
    CaptureUnavailable,
    Change,
    ChangeCapture,
    ChangeKind,
)
from twinvault.source.capture.fanotify import FanotifyCapture, check_fanotify
from twinvault.source.capture.inotify import InotifyCapture

__all__ = [
    "CaptureUnavailable",
    "Change",
    "ChangeCapture",
    "ChangeKind",
    "FanotifyCapture",
    "InotifyCapture",
    "open_capture",
]

log = logging.getLogger(__name__)


def open_capture(roots: Sequence[str], prefer: str = "auto") -> ChangeCapture:
    """Return an unstarted capture for `roots` (absolute paths; they must exist at `start`).

    `prefer` "fanotify" or "inotify" forces a method (`start` raises CaptureUnavailable if
    the kernel refuses it); "auto" tries fanotify here, with a throwaway group and marks, and
    falls back to inotify with a warning saying why. Reported paths keep the spelling of
    `roots`, even where a root's path goes through a symlink.
    """
    if prefer == "fanotify":
        return FanotifyCapture(roots)
    if prefer == "inotify":
        return InotifyCapture(roots)
    if prefer != "auto":
        raise ValueError(f"unknown capture method {prefer!r} (auto, fanotify or inotify)")
    try:
        check_fanotify(roots)
    except CaptureUnavailable as exc:
        log.warning("fanotify capture unavailable, using inotify: %s", exc)
        return InotifyCapture(roots)
    return FanotifyCapture(roots)
