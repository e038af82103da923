"""The event log of a host: formats catalog events, appends them to a rotated
JSON-lines file, logs them to the `twinvault.events` logger and hands them to live
subscribers (e-mail rules, SNMP traps). The catalog itself is `ops.events`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, cast

from twinvault.ops.errors import INVALID_ARGUMENT, TwinvaultError
from twinvault.ops.events import EVENT_CATALOG, FORMAT_VERSION, LOG_NAME, SEVERITIES, FieldValue, Severity

_log = logging.getLogger("twinvault.events")
_LOG_LEVELS: Final[dict[str, int]] = {
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
}


class _KeepMissing(dict[str, FieldValue]):
    """Format mapping that leaves `{name}` in place when the caller did not supply `name`."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def format_template(template: str, fields: dict[str, FieldValue]) -> str:
    """Fill a catalog template; a missing field stays as its placeholder instead of failing."""
    try:
        return template.format_map(_KeepMissing(fields))
    except (ValueError, IndexError, AttributeError) as exc:
        # Only a malformed template gets here; an event is still worth recording.
        _log.warning("cannot format event template %r: %s", template, exc)
        return template


@dataclass(frozen=True)
class Event:
    """One recorded event: catalog ID, when (epoch seconds), severity, category, text, fields."""

    id: int
    time: float
    severity: Severity
    category: str
    message: str
    fields: dict[str, FieldValue] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the event as a JSON-ready dict (the API's and the log file's shape)."""
        return {
            "id": self.id,
            "time": self.time,
            "severity": self.severity,
            "category": self.category,
            "message": self.message,
            "fields": dict(self.fields),
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Event:
        """Rebuild an event from `to_json()` output; raises ValueError when it is not one."""
        try:
            severity = document["severity"]
            if severity not in SEVERITIES:
                raise ValueError(f"unknown severity {severity!r}")
            fields = document.get("fields", {})
            if not isinstance(fields, dict):
                raise ValueError("fields is not an object")
            return cls(
                id=int(document["id"]),
                time=float(document["time"]),
                severity=cast(Severity, severity),
                category=str(document["category"]),
                message=str(document["message"]),
                fields=_json_fields(fields),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an event: {document!r}") from exc


Subscriber = Callable[[Event], None]


class EventLog:
    """A host's event log: `events.log` in `directory`, rotated to `events.log.1` ... `.N`.

    Each event is one JSON line (`{"v": 1, ...Event.to_json()}`), flushed to the OS as it is
    written but not fsynced: events are diagnostics, and a process crash loses nothing
    flushed. A line torn by a crash or a full disk is skipped by `read()` and terminated
    before the next append, so it never swallows the event after it. Thread-safe.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = 10 * 1024 * 1024,
        backups: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / LOG_NAME
        self._max_bytes = max_bytes
        self._backups = backups
        self._clock = clock
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._size = 0
        self._subscribers: list[Subscriber] = []

    def emit(self, event_id: int, **fields: FieldValue) -> Event:
        """Record event `event_id` with the template's fields; return the recorded event.

        An unknown ID is a programming error (TwinvaultError INVALID_ARGUMENT). A failure to
        write the file is logged, not raised: reporting an event must not break the caller.
        """
        spec = EVENT_CATALOG.get(event_id)
        if spec is None:
            raise TwinvaultError(INVALID_ARGUMENT, f"unknown event id {event_id}")
        values = _json_fields(fields)
        event = Event(
            id=spec.id,
            time=self._clock(),
            severity=spec.severity,
            category=spec.category,
            message=format_template(spec.template, values),
            fields=values,
        )
        line = (json.dumps({"v": FORMAT_VERSION, **event.to_json()}, separators=(",", ":")) + "\n").encode()
        with self._lock:
            try:
                self._append(line)
            except OSError:
                _log.exception("cannot write event %d to %s", event.id, self.path)
                self._close_file()
            subscribers = list(self._subscribers)
        _log.log(_LOG_LEVELS[event.severity], "%d %s", event.id, event.message, extra={"event_id": event.id})
        # Outside the lock, so a subscriber may emit events itself.
        for callback in subscribers:
            try:
                callback(event)
            except Exception:
                _log.exception("event subscriber %r failed on event %d", callback, event.id)
        return event

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback` with every event emitted from now on; returns an unsubscribe function.

        Callbacks run on the emitting thread after the event is written; a callback that
        raises is logged and does not affect the others.
        """
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def read(
        self, since: float | None = None, severity: str | None = None, limit: int | None = None
    ) -> list[Event]:
        """Return recorded events, oldest first, from the rotated files and the current one.

        `since`: only events at or after this epoch time. `severity`: only events of exactly
        that severity (`error` does not include warnings). `limit`: only the newest `limit`
        of the matching events. Unparseable lines (a torn last line) are skipped.
        """
        if severity is not None and severity not in SEVERITIES:
            raise TwinvaultError(INVALID_ARGUMENT, f"severity must be one of {', '.join(SEVERITIES)}")
        if limit is not None and limit < 0:
            raise TwinvaultError(INVALID_ARGUMENT, "limit must not be negative")
        # Open every file under the lock so a rotation cannot shift names between opens;
        # the open handles then read a consistent set without holding up writers.
        handles: list[IO[bytes]] = []
        with self._lock:
            for path in self._paths_oldest_first():
                try:
                    handles.append(path.open("rb"))
                except FileNotFoundError:
                    continue
        events: list[Event] = []
        for handle in handles:
            with handle:
                for raw in handle:
                    event = _parse_line(raw)
                    if event is None:
                        continue
                    if since is not None and event.time < since:
                        continue
                    if severity is not None and event.severity != severity:
                        continue
                    events.append(event)
        if limit is not None:
            events = events[len(events) - limit :] if limit else []
        return events

    def close(self) -> None:
        """Close the log file; a later `emit` reopens it."""
        with self._lock:
            self._close_file()

    def _paths_oldest_first(self) -> list[Path]:
        backups = [self.path.with_name(f"{LOG_NAME}.{n}") for n in range(self._backups, 0, -1)]
        return [*backups, self.path]

    def _append(self, line: bytes) -> None:
        if self._file is None:
            self._open()
        if self._size > 0 and self._size + len(line) > self._max_bytes:
            self._rotate()
            self._open()
        assert self._file is not None
        self._file.write(line)
        self._file.flush()
        self._size += len(line)

    def _open(self) -> None:
        handle = self.path.open("ab")
        size = handle.tell()
        if size > 0:
            # A torn last line (crash mid-write) must not absorb the next event.
            with self.path.open("rb") as reader:
                reader.seek(size - 1)
                if reader.read(1) != b"\n":
                    handle.write(b"\n")
                    handle.flush()
                    size += 1
        self._file = handle
        self._size = size

    def _rotate(self) -> None:
        self._close_file()
        if self._backups <= 0:
            self.path.unlink(missing_ok=True)
            return
        # Each rename replaces its destination, so the oldest backup drops out by itself.
        for n in range(self._backups - 1, 0, -1):
            older = self.path.with_name(f"{LOG_NAME}.{n}")
            if older.exists():
                older.rename(self.path.with_name(f"{LOG_NAME}.{n + 1}"))
        self.path.rename(self.path.with_name(f"{LOG_NAME}.1"))

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                _log.exception("cannot close %s", self.path)
            self._file = None
            self._size = 0


def _json_fields(fields: dict[Any, Any]) -> dict[str, FieldValue]:
    """Event fields as JSON scalars: a non-scalar value (a Path, say) is kept as its text."""
    return {str(k): v if isinstance(v, str | int | float) else str(v) for k, v in fields.items()}


def _parse_line(raw: bytes) -> Event | None:
    """Parse one log line; None for a blank, torn or foreign line."""
    if not raw.strip():
        return None
    try:
        document = json.loads(raw)
        if not isinstance(document, dict):
            return None
        return Event.from_json(document)
    except ValueError:
        return None
