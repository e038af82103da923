"""A read-only view of a chunk store that another process has open (the daemon).

Mounts of a point in time run in their own processes (one FUSE filesystem per process),
while the daemon holds the store: its state dir is flock'ed and its open pack grows.
`StoreReader` takes no lock, repairs nothing and never writes: it reads the config (the
state dir's copy, else the backend's), unlocks the keys, opens the index read-only
(SQLite ``mode=ro``; WAL lets it read beside the daemon's writer) and reads packs where
they are now, through the same `BlobFetcher` as the store itself.

What it sees: every blob the owner has committed (`ChunkStore.commit`): the index row is
written after the blob is synced. The catalog references a chunk only after that commit
(``docs/history.md``), so whatever a version names is there to read. A blob that the
owner's garbage collection moves between the look-up and the read is looked up again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.repository.chunkstore.backend import Backend
from twinvault.repository.chunkstore.codec import BlobCodec
from twinvault.repository.chunkstore.fetch import BlobFetcher, Span, locate_in
from twinvault.repository.chunkstore.index import Index, IndexDamaged
from twinvault.repository.chunkstore.keys import unlock
from twinvault.repository.chunkstore.layout import StateDir
from twinvault.repository.chunkstore.opening import load_config
from twinvault.repository.chunkstore.pack import BlobEntry
from twinvault.repository.chunkstore.retry import RetryingBackend, RetryPolicy


class StoreReader:
    """`get` and `get_many` of a store, from any number of threads; nothing else."""

    def __init__(self, state: StateDir, backend: Backend, codec: BlobCodec, index: Index) -> None:
        """Use `open` (or `ChunkStore.open_reader`)."""
        self.state = state
        self.index = index
        self._fetch = BlobFetcher(state, backend, codec, self._locate)

    @classmethod
    def open(
        cls,
        state_dir: Path,
        backend: Backend,
        *,
        passphrase: str | None = None,
        key_file: Path | None = None,
        retry: RetryPolicy | None = None,
    ) -> StoreReader:
        """PATH_NOT_FOUND when there is no store; STORE_KEY_REQUIRED / STORE_WRONG_KEY
        as for `ChunkStore.open`; STORE_FORMAT_UNSUPPORTED for an index it cannot read
        (the owner rebuilds a damaged index at its next open; a reader cannot)."""
        state = StateDir(Path(state_dir))
        retrying = RetryingBackend(backend, retry)
        config, _ = load_config(state, retrying)
        keys = unlock(config, passphrase=passphrase, key_file=key_file, where=backend.name)
        if not state.index.exists():
            raise TwinvaultError(errors.PATH_NOT_FOUND, f"no chunk store index at {state.index}")
        try:
            index = Index(state.index, config.store_uuid, read_only=True)
        except IndexDamaged as exc:
            raise TwinvaultError(errors.STORE_FORMAT_UNSUPPORTED, f"index {state.index}: {exc}") from exc
        return cls(state, retrying, BlobCodec(config.compression_level, keys), index)

    def get(self, digest: bytes) -> bytes:
        """The plain chunk, verified: CHUNK_MISSING, CHUNK_CORRUPT or STORE_UNREACHABLE otherwise."""
        return self._fetch.get(digest)

    def get_many(self, digests: Sequence[bytes]) -> Iterator[tuple[bytes, bytes]]:
        """As `ChunkStore.get_many`: each distinct chunk once, neighbours read as one range."""
        return self._fetch.get_many(digests)

    def get_views(self, digests: Sequence[bytes]) -> Iterator[tuple[bytes, bytes | memoryview]]:
        """`get_many` without copying chunks stored as they are out of the buffer they were
        read into (`fetch.BlobFetcher.get_views`): for readers that only pass them on."""
        return self._fetch.get_views(digests)

    def get_spans(self, digests: Sequence[bytes]) -> Iterator[tuple[bytes, Span]]:
        """`get_views` with where each chunk lies, so neighbours read together can be
        passed on as one slice (`fetch.BlobFetcher.get_spans`)."""
        return self._fetch.get_spans(digests)

    def advise(self, digests: Sequence[bytes]) -> None:
        """Have the disk start reading these chunks now (`fetch.BlobFetcher.advise`)."""
        self._fetch.advise(digests)

    def _locate(self, wanted: list[tuple[bytes, bytes]]) -> list[tuple[str, BlobEntry]]:
        # Blobs the owner has not committed are not in the index, and no version names them.
        return locate_in(self.index, wanted, lambda store_id: None)

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
