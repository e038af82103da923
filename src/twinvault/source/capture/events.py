"""What change capture reports, and the plumbing its two backends share.

Change capture turns kernel notifications (`fanotify.py`, `inotify.py` as the fallback) into
`Change` records for paths inside a protection job's roots. Its consumer, the change set,
coalesces them per path; the reader re-reads what changed. Capture is a hint, the mirror is
the truth: whenever the kernel could not tell us precisely what happened, capture reports
OVERFLOW and the caller answers with a difference mirror.

A `Change` says that something happened to a name, never what the entry holds now: events
are read after the fact and the kernel merges queued events, so a CHANGED path may already
be gone (or renamed on) by the time the consumer looks. Consumers stat the path and treat a
missing one as deleted.

This module holds the interface (`Change`, `ChangeCapture`, `CaptureUnavailable`), the root
filter both backends apply (`CaptureScope`) and the batch feed that drains a kernel fd from
the event loop (`ChangeFeed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


class ChangeKind(enum.Enum):
    CHANGED = "changed"
    DELETED = "deleted"
    RENAMED = "renamed"
    OVERFLOW = "overflow"


@dataclass(frozen=True, slots=True)
class Change:
    kind: ChangeKind
    path: str  # absolute path (for RENAMED: the old path); "" for OVERFLOW
    new_path: str = ""  # RENAMED only: the new path
    is_dir: bool = False


OVERFLOW = Change(ChangeKind.OVERFLOW, "")


class CaptureUnavailable(Exception):
    """The kernel refused what this capture method needs; `errno` is set when a syscall said why."""

    def __init__(self, reason: str, errno: int | None = None) -> None:
        detail = f"{reason} ({os.strerror(errno)}, errno {errno})" if errno else reason
        super().__init__(detail)
        self.reason = reason
        self.errno = errno


class ChangeCapture(Protocol):
    method: str  # "fanotify" or "inotify"

    async def start(self) -> None:
        """Place marks/watches; raise CaptureUnavailable if the kernel will not let us."""

    async def get_batch(self, max_wait: float) -> list[Change]:
        """Wait up to `max_wait` s for at least one change; return every change that is ready."""

    def close(self) -> None:
        """Stop capturing and release the kernel objects (idempotent)."""


class CaptureScope:
    """The roots of a selection: canonical for matching kernel paths, spelled as given for reporting.

    The kernel names entries by their canonical path (fanotify resolves handles through
    /proc/self/fd), so matching is done on `os.path.realpath` of each root; reports translate
    back to the caller's spelling so `Selection.contains` agrees with what capture reports.
    """

    def __init__(self, roots: Sequence[str]) -> None:
        pairs: dict[str, str] = {}
        for root in roots:
            if not os.path.isabs(root):
                raise ValueError(f"capture root must be absolute: {root!r}")
            given = os.path.normpath(root)
            pairs.setdefault(os.path.realpath(given), given)
        # A root inside another root adds nothing and would make inotify watch a tree twice.
        kept = {
            real: given
            for real, given in pairs.items()
            if not any(other != real and _is_within(real, other) for other in pairs)
        }
        if not kept:
            raise ValueError("capture needs at least one root")
        self.real_roots: tuple[str, ...] = tuple(sorted(kept))
        self._matchers = tuple(
            (real, _as_prefix(real), _as_prefix(kept[real]), kept[real]) for real in self.real_roots
        )

    def unrelated(self, directory: str) -> bool:
        """True if the canonical `directory` (ending in "/") is neither at or under a root
        nor above one: no entry of it is ever reported."""
        for _, real_prefix, _, _ in self._matchers:
            if directory.startswith(real_prefix) or real_prefix.startswith(directory):
                return False
        return True

    def report(self, path: str) -> str | None:
        """Return canonical `path` as the caller spells it if it is at or under a root, else None."""
        for real, real_prefix, given_prefix, given in self._matchers:
            if path.startswith(real_prefix):
                return given_prefix + path[len(real_prefix) :]
            if path == real:
                return given
        return None


def _as_prefix(path: str) -> str:
    return path if path.endswith("/") else path + "/"


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(_as_prefix(root))


# Changes waiting for the consumer. Past this many the consumer is so far behind that a
# difference mirror is cheaper than replaying them, so they collapse into one OVERFLOW and
# daemon memory stays bounded however long the consumer stalls.
MAX_READY = 200_000


class ChangeFeed:
    """Drains a backend's non-blocking kernel fd from the event loop into a list of ready changes.

    The fd is read whenever it is readable, not only while someone awaits `get_batch`: the
    kernel queue (16384 events by default) must be emptied while the consumer is busy, or a
    burst of creates overflows it. `drain` reads and parses; it is called on the loop thread.
    """

    def __init__(self, fd: int, drain: Callable[[], list[Change]]) -> None:
        self._fd = fd
        self._drain = drain
        self._ready: list[Change] = []
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._attached = False
        self._error: BaseException | None = None
        self._timer: asyncio.TimerHandle | None = None

    def attach(self) -> None:
        """Start reading the fd from the running loop."""
        self._loop = asyncio.get_running_loop()
        if not self._attached:
            self._loop.add_reader(self._fd, self._on_readable)
            self._attached = True

    def detach(self) -> None:
        """Stop reading the fd; events stay queued in the kernel until `attach`."""
        if self._attached and self._loop is not None:
            self._loop.remove_reader(self._fd)
        self._attached = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def poll_later(self, delay: float) -> None:
        """Drain again after `delay` s even if the fd stays quiet (for a backend's grace periods)."""
        if self._loop is not None and self._timer is None:
            self._timer = self._loop.call_later(delay, self._on_timer)

    def push(self, changes: Iterable[Change]) -> None:
        """Queue changes a backend found outside a drain (e.g. at start)."""
        self._ready.extend(changes)
        if len(self._ready) > MAX_READY:
            log.warning("change capture: %d changes unread, collapsed into one overflow", len(self._ready))
            self._ready = [OVERFLOW]
        if self._ready:
            self._wake.set()

    def fail(self, error: BaseException) -> None:
        """Stop reading and make the next `get_batch` raise `error`."""
        self.detach()
        self._error = error
        self._wake.set()

    async def get_batch(self, max_wait: float) -> list[Change]:
        if self._loop is None:
            raise RuntimeError("change capture is not started")
        if not self._ready and self._error is None:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max_wait)
        if self._error is not None:
            raise self._error
        batch, self._ready = self._ready, []
        return batch

    def _on_timer(self) -> None:
        self._timer = None
        if self._attached:
            self._on_readable()

    def _on_readable(self) -> None:
        try:
            changes = self._drain()
        except Exception as exc:
            # A reader callback that keeps raising would spin the loop; hand the failure to the
            # consumer, which owns the decision to restart capture or fall back to mirrors.
            log.exception("change capture failed while reading kernel events")
            self.fail(exc)
            return
        self.push(changes)
