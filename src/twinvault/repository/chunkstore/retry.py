"""A backend wrapper that retries failing calls with backoff and reports outages (restic's
`backend_retry`): cross-cutting behaviour around the small interface, not flags inside
each backend.

A call that fails with an `OSError` (except `FileNotFoundError`, which is an answer) is
retried with exponential backoff until it succeeds or `give_up_after` seconds have passed;
then it raises `TwinvaultError(STORE_UNREACHABLE)`. The first failure after a success calls
`on_failing(reason)` once, the first success after failures `on_recovered()` once, whatever
thread made the call, so an outage is one event and its end another. The backoff delay is
shared by all callers and kept across calls while the backend keeps failing, so a caller
that loops (the uploader) keeps backing off instead of hammering a dead endpoint.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.repository.chunkstore.backend import Backend, FileAdoptingBackend, FileBackedBackend

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    first_delay: float = 0.1  # seconds before the first retry; doubled after each failure
    max_delay: float = 5.0
    give_up_after: float = 10.0  # one call fails with STORE_UNREACHABLE after this long


class RetryingBackend:
    def __init__(
        self,
        inner: Backend,
        policy: RetryPolicy | None = None,
        *,
        on_failing: Callable[[str], None] | None = None,
        on_recovered: Callable[[], None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.policy = policy or RetryPolicy()
        self.on_failing = on_failing
        self.on_recovered = on_recovered
        self._stop = stop or threading.Event()
        self._lock = threading.Lock()
        self._failing = False
        self._delay = self.policy.first_delay

    @property
    def failing(self) -> bool:
        return self._failing

    def current_delay(self) -> float:
        """How long a caller that loops should wait before its next call."""
        return self._delay if self._failing else 0.0

    def _succeeded(self) -> None:
        if not self._failing:
            return
        with self._lock:
            was, self._failing = self._failing, False
            self._delay = self.policy.first_delay
        if was and self.on_recovered is not None:
            self.on_recovered()

    def _failed(self, exc: OSError) -> float:
        with self._lock:
            was, self._failing = self._failing, True
            delay = self._delay
            self._delay = min(self._delay * 2, self.policy.max_delay)
        if not was:
            log.warning("backend %s failing: %s", self.name, exc)
            if self.on_failing is not None:
                self.on_failing(_reason(exc))
        return delay

    def _call(self, fn: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.policy.give_up_after
        while True:
            try:
                result = fn()
            except FileNotFoundError:
                self._succeeded()  # the backend answered
                raise
            except OSError as exc:
                delay = self._failed(exc)
                if time.monotonic() + delay > deadline or self._stop.is_set():
                    raise TwinvaultError(errors.STORE_UNREACHABLE, f"{self.name}: {_reason(exc)}") from exc
                self._stop.wait(delay)
            else:
                self._succeeded()
                return result

    def save(self, name: str, data: bytes) -> None:
        self._call(lambda: self.inner.save(name, data))

    def adopt(self, name: str, path: Path) -> None:
        inner = self.inner
        if isinstance(inner, FileAdoptingBackend):
            self._call(lambda: inner.adopt(name, path))
        else:
            self._call(lambda: self.inner.save(name, path.read_bytes()))

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call(lambda: self.inner.load(name, offset, length))

    def local_path(self, name: str) -> Path | None:
        """The file of `name` if the backend keeps its blobs as local files, else None."""
        return self.inner.local_path(name) if isinstance(self.inner, FileBackedBackend) else None

    def list(self, prefix: str) -> list[tuple[str, int]]:
        return self._call(lambda: self.inner.list(prefix))

    def remove(self, name: str) -> None:
        self._call(lambda: self.inner.remove(name))

    def exists(self, name: str) -> bool:
        return self._call(lambda: self.inner.exists(name))


def _reason(exc: OSError) -> str:
    return str(exc) or type(exc).__name__
