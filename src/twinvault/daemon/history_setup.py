"""Opening a repository's history at daemon start: backend, chunk store, journal, catalog.

Everything a crash can leave behind is repaired here without a human (ARCHITECTURE:
"locks never need a human"): the store recovers its open pack, the journal cuts a torn
tail, and the catalog catches up with the journal, or is rebuilt from it when it is
missing or fails its integrity check (event 9013).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from twinvault.daemon.config import Home, HostConfig
from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.repository.catalog import Catalog, open_catalog
from twinvault.repository.chunkstore import ChunkStore
from twinvault.repository.chunkstore.backend import Backend
from twinvault.repository.chunkstore.local import LocalBackend
from twinvault.repository.history import Emit, History
from twinvault.repository.journal import Journal

log = logging.getLogger(__name__)


def open_backend(home: Home, config: HostConfig) -> Backend:
    store = config.store
    if store.backend == "local":
        path = home.store_path(config)
        path.mkdir(parents=True, exist_ok=True)
        return LocalBackend(path)
    if store.backend == "s3":
        from twinvault.repository.chunkstore.s3 import S3Backend

        secret = _read_secret(store.s3_secret_key_file) if store.s3_secret_key_file else ""
        return S3Backend(
            endpoint_url=store.s3_endpoint,
            bucket=store.s3_bucket,
            prefix=store.s3_prefix,
            access_key=store.s3_access_key,
            secret_key=secret,
            region=store.s3_region,
        )
    raise TwinvaultError(errors.INVALID_OPTION, f"store backend {store.backend!r} (local or s3)")


def _read_secret(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise TwinvaultError(errors.INVALID_OPTION, f"cannot read {path}: {exc.strerror}") from exc


def open_history(home: Home, config: HostConfig, emit: Emit) -> History:
    state = home.history_dir
    state.mkdir(parents=True, exist_ok=True)
    backend = open_backend(home, config)
    passphrase = _read_secret(config.store.passphrase_file) if config.store.passphrase_file else None
    key_file = Path(config.store.key_file) if config.store.key_file else None

    def on_event(event_id: int, fields: dict[str, Any]) -> None:
        emit(event_id, **fields)

    store = ChunkStore.open_or_create(
        state / "store",
        backend,
        passphrase=passphrase,
        key_file=key_file,
        compression_level=config.store.compression_level,
        on_event=on_event,
    )
    journal = Journal(state / "journal", save_sealed=store.save_object)
    try:
        journal.save_unsent(set(store.list_objects("journal/")))
    except TwinvaultError as exc:  # an unreachable remote backend: retried at the next rotation
        log.warning("journal segments not copied to the store yet: %s", exc)
    url = home.catalog_url(config)
    sqlite_path = Path(url.removeprefix("sqlite://")) if url.startswith("sqlite:///") else None
    reason = ""
    if sqlite_path is not None and not sqlite_path.exists() and journal.last_time:
        reason = "missing"
    catalog: Catalog | None = None
    try:
        catalog = open_catalog(url)
        if not catalog.integrity_ok():
            reason = "damaged"
    except TwinvaultError:
        if sqlite_path is None:
            raise  # a shared catalog server that is down is not ours to replace
        reason = "unreadable"
    if reason in ("damaged", "unreadable") and sqlite_path is not None:
        if catalog is not None:
            with contextlib.suppress(Exception):  # it is set aside either way
                catalog.close()
        _set_aside(sqlite_path)
        catalog = None
    if catalog is None:
        catalog = open_catalog(url)
    history = History(store, journal, catalog, emit)
    if reason:
        history.rebuild(reason)
    else:
        history.catch_up()
    history.close_open_ranges()
    return history


def _set_aside(db: Path) -> None:
    """Keep a damaged catalog file for inspection instead of deleting it."""
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{db}{suffix}")
        if path.exists():
            path.rename(Path(f"{db}{suffix}.damaged"))
