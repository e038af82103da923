"""Opening a store: lock its state dir, wire its backend, read its config, get its index.

Every way of opening (`ChunkStore.create`, `open`, `open_or_create`) starts with
`start_opening()`; `open_index` is where a missing or damaged index is rebuilt and an unclean
stop repaired (`recovery`), before any thread of the store runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from twinvault.ops import errors
from twinvault.ops import events as ev
from twinvault.ops.errors import TwinvaultError
from twinvault.repository.chunkstore.backend import Backend
from twinvault.repository.chunkstore.codec import BlobCodec
from twinvault.repository.chunkstore.index import Index, IndexDamaged
from twinvault.repository.chunkstore.keys import CONFIG_NAME, StoreConfig
from twinvault.repository.chunkstore.layout import StateDir
from twinvault.repository.chunkstore.recovery import rebuild_index, recover
from twinvault.repository.chunkstore.retry import RetryingBackend, RetryPolicy

log = logging.getLogger(__name__)

OnEvent = Callable[[int, dict[str, object]], None]


@dataclass
class Opening:
    """What every way of opening a store sets up first: the locked state dir and the
    retrying backend wired to report outages through the caller's event callback."""

    state: StateDir
    lock_fd: int
    backend: RetryingBackend
    emit: Callable[[int, dict[str, object]], None]
    stop: threading.Event


def lock_state_dir(state: StateDir) -> int:
    """flock the state dir: two processes appending to one open pack would corrupt it."""
    fd = os.open(state.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise TwinvaultError(
            errors.REPOSITORY_PATH_NOT_WRITABLE,
            f"chunk store state dir {state.root} is in use by another process",
        ) from None
    return fd


@contextlib.contextmanager
def start_opening(
    state_dir: Path, backend: Backend, retry: RetryPolicy | None, on_event: OnEvent | None
) -> Iterator[Opening]:
    """Lock the state dir and wire the backend; the lock is let go if opening fails."""
    state = StateDir(Path(state_dir))
    state.make()
    lock_fd = lock_state_dir(state)

    def emit(event_id: int, fields: dict[str, object]) -> None:
        if on_event is None:
            return
        try:
            on_event(event_id, fields)
        except Exception:  # a broken listener must not stop an upload or a recovery
            log.exception("chunk store event %d listener failed", event_id)

    def failing(reason: str) -> None:
        pending = len(state.packs_in(state.sealed)) + len(state.outbox_names())
        emit(ev.STORE_BACKEND_FAILING, {"backend": backend.name, "reason": reason, "pending": pending})

    def recovered() -> None:
        emit(ev.STORE_BACKEND_RECOVERED, {"backend": backend.name})

    stop = threading.Event()
    retrying = RetryingBackend(backend, retry, on_failing=failing, on_recovered=recovered, stop=stop)
    try:
        yield Opening(state, lock_fd, retrying, emit, stop)
    except BaseException:
        os.close(lock_fd)
        raise


def load_config(state: StateDir, backend: RetryingBackend) -> tuple[StoreConfig, bytes]:
    """The store's config: the state dir's copy (so a store opens while its backend is down),
    else the backend's."""
    try:
        raw = state.config.read_bytes()
        where = str(state.config)
    except FileNotFoundError:
        try:
            raw = backend.load(CONFIG_NAME)
        except FileNotFoundError:
            raise TwinvaultError(errors.PATH_NOT_FOUND, f"no chunk store at {backend.name}") from None
        where = backend.name
    return StoreConfig.from_json(raw, where), raw


def open_index(
    state: StateDir, config: StoreConfig, codec: BlobCodec, backend: RetryingBackend, clean: bool
) -> tuple[Index, list[str]]:
    """The index, rebuilt from the packs if missing or damaged, and the repairs made."""
    reason = "" if state.index.exists() else "missing"
    try:
        # quick_check reads the whole file: only after an unclean stop.
        index = Index(state.index, config.store_uuid, integrity_check=not clean)
    except IndexDamaged as exc:
        reason = f"damaged ({exc})"
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{state.index}{suffix}", f"{state.index}{suffix}.damaged")
        index = Index(state.index, config.store_uuid)
    repaired: list[str] = []
    if not index.complete:
        try:
            found = rebuild_index(state, index, codec, backend, config.store_uuid)
        except BaseException:
            index.close()
            raise
        index.mark_complete()
        repaired.append(f"index {reason or 'incomplete'}: rebuilt from {found}")
    try:
        repaired += recover(state, index, codec, backend, config.store_uuid, clean=clean)
    except BaseException:
        index.close()
        raise
    return index, repaired
