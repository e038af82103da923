"""The backend interface: where sealed packs, the store config and saved objects live.

restic's shape: a backend stores named byte strings and knows nothing of chunks, packs or
keys. Everything smart (packing, compression, encryption, the index, retries) sits above
it, so a new storage system is a few hundred lines (`local.py`, `s3.py`). Names are
relative, `/`-separated paths (`packs/ab/abcd...`, `objects/journal/...`, `config`).

Failures: a name that does not exist is `FileNotFoundError` (an answer, never retried);
every other failure is an `OSError`, `BackendUnavailable` when the storage system itself
cannot be reached. `retry.RetryingBackend` retries those.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable


class BackendUnavailable(OSError):
    """The storage system cannot be reached or refused the request; retrying may help."""


class Backend(Protocol):
    """A flat namespace of immutable named blobs."""

    name: str  # e.g. "local:/path" or "s3://bucket/prefix", for events and messages

    def save(self, name: str, data: bytes) -> None:
        """Store `data` under `name`, replacing it: atomic, and durable when it returns."""
        ...

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return `length` bytes of `name` from `offset` (to its end when None).

        A range past the end is cut short, never padded: callers compare lengths.
        """
        ...

    def list(self, prefix: str) -> list[tuple[str, int]]:
        """Every (name, size) whose name starts with `prefix`."""
        ...

    def remove(self, name: str) -> None:
        """Remove `name`; a name that does not exist is not an error."""
        ...

    def exists(self, name: str) -> bool: ...


@runtime_checkable
class FileAdoptingBackend(Protocol):
    """A backend that can take over a local file without reading it into memory.

    `LocalBackend` on the same filesystem renames the file: sealing a pack then costs a
    rename, not a copy.
    """

    def adopt(self, name: str, path: Path) -> None:
        """Store the file at `path` as `name` (durable when it returns); `path` may be gone after."""
        ...


@runtime_checkable
class FileBackedBackend(Protocol):
    """A backend whose blobs are files on this machine: a reader may map them into
    memory instead of copying them (`fetch.BlobFetcher.get_views`)."""

    def local_path(self, name: str) -> Path:
        """Where the file of `name` is (it may not exist)."""
        ...


def check_name(name: str) -> str:
    """Refuse names that could escape a backend's namespace (absolute, `..`, empty parts)."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in name:
        raise ValueError(f"invalid backend name {name!r}")
    return name
