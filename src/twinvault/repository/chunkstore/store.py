"""The chunk store: content-addressed blobs in packs, with an index, on a backend.

It stores blobs addressed by the 32-byte BLAKE3 digest of the plain chunk (computed by
the caller, checked here) and knows nothing of files, images, the catalog or the source
(kopia's layering). Neighbours: `writer` (the pack being filled and the group commit),
`uploader` (sealed packs to the backend), `recovery` (repairs at open), `garbage`
(collection), `check` (integrity), `index`, `codec`, `pack`, `keys`; the history
recorder and the restore path are its callers. `docs/chunkstore.md` is the full story.

Threads: any number of threads may put, commit, get and has at once. Puts compress and
encrypt outside every lock; the short critical section appends the blob to the open pack.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from twinvault.durable import write_private
from twinvault.ops import errors
from twinvault.ops import events as ev
from twinvault.ops.errors import TwinvaultError
from twinvault.repository.chunkstore import index as ix
from twinvault.repository.chunkstore.backend import Backend, check_name
from twinvault.repository.chunkstore.check import CheckReport, StoreCheck
from twinvault.repository.chunkstore.codec import BlobCodec, BlobInvalid, digest_of
from twinvault.repository.chunkstore.fetch import BlobFetcher, Span, checked_digest, locate_in
from twinvault.repository.chunkstore.garbage import GarbageCollector, GcReport, Progress
from twinvault.repository.chunkstore.index import Index
from twinvault.repository.chunkstore.keys import CONFIG_NAME, StoreConfig, StoreKeys, new_config, unlock
from twinvault.repository.chunkstore.layout import OBJECTS_PREFIX, StateDir, object_key
from twinvault.repository.chunkstore.local import fsync_dir, write_durably
from twinvault.repository.chunkstore.opening import OnEvent, Opening, load_config, open_index, start_opening
from twinvault.repository.chunkstore.pack import BlobEntry
from twinvault.repository.chunkstore.reader import StoreReader
from twinvault.repository.chunkstore.retry import RetryingBackend, RetryPolicy
from twinvault.repository.chunkstore.uploader import Uploader
from twinvault.repository.chunkstore.writer import PackWriter

log = logging.getLogger(__name__)

DEFAULT_PACK_SIZE: Final = 16 << 20
DEFAULT_LEVEL: Final = 3


@dataclass(frozen=True)
class StoreStats:
    chunks: int
    raw_bytes: int  # sum of the chunks' plain lengths
    stored_bytes: int  # sum of the packs' sizes (local and on the backend)
    packs: int
    pending_uploads: int  # sealed packs and saved objects not on the backend yet


class ChunkStore:
    def __init__(
        self,
        opening: Opening,
        config: StoreConfig,
        keys: StoreKeys | None,
        index: Index,
        *,
        level: int,
        pack_size: int,
    ) -> None:
        """Use `create`, `open` or `open_or_create`."""
        self.state = state = opening.state
        self.backend = backend = opening.backend
        self.config = config
        self.store_uuid = config.store_uuid
        self.index = index
        self.codec = BlobCodec(level, keys)
        self.pack_size = pack_size
        self._lock_fd = opening.lock_fd
        self._stop = opening.stop
        self._objects_lock = threading.Lock()
        self._uploader = Uploader(state, index, backend, self._objects_lock)
        seal = self.codec.seal_trailer if self.codec.encrypted else None
        self._writer = PackWriter(state, index, self.store_uuid, pack_size, seal, self._uploader.wake)
        self._gc = GarbageCollector(
            index, self.codec, backend, self.store_uuid, pack_size, self._writer, self._uploader
        )
        self._fetch = BlobFetcher(state, backend, self.codec, self._locate)
        self._closed = False
        self._uploader.start()

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        state_dir: Path,
        backend: Backend,
        *,
        passphrase: str | None = None,
        key_file: Path | None = None,
        compression_level: int = DEFAULT_LEVEL,
        pack_size: int = DEFAULT_PACK_SIZE,
        on_event: OnEvent | None = None,
        retry: RetryPolicy | None = None,
    ) -> ChunkStore:
        """Make a new store on `backend`; STORE_EXISTS if it (or `state_dir`) already holds one."""
        with start_opening(state_dir, backend, retry, on_event) as opening:
            state = opening.state
            if state.config.exists() or state.index.exists():
                raise TwinvaultError(
                    errors.STORE_EXISTS, f"state dir {state.root} already holds a chunk store"
                )
            if opening.backend.exists(CONFIG_NAME):
                raise TwinvaultError(errors.STORE_EXISTS, backend.name)
            config, keys = new_config(
                passphrase=passphrase,
                key_file=key_file,
                compression_level=compression_level,
                pack_size=pack_size,
            )
            opening.backend.save(CONFIG_NAME, config.to_json())
            write_private(state.config, config.to_json())
            index = Index(state.index, config.store_uuid)
            index.mark_complete()
        return cls(opening, config, keys, index, level=compression_level, pack_size=pack_size)

    @classmethod
    def open(
        cls,
        state_dir: Path,
        backend: Backend,
        *,
        passphrase: str | None = None,
        key_file: Path | None = None,
        on_event: OnEvent | None = None,
        compression_level: int | None = None,
        pack_size: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> ChunkStore:
        """Open an existing store, repairing what an unclean stop left (event 9017).

        `compression_level` and `pack_size` override the store's defaults for this session.
        """
        with start_opening(state_dir, backend, retry, on_event) as opening:
            state = opening.state
            config, raw = load_config(state, opening.backend)
            keys = unlock(config, passphrase=passphrase, key_file=key_file, where=backend.name)
            if not state.config.exists():
                write_private(state.config, raw)
            clean = state.clean.exists()
            if clean:
                state.clean.unlink()
                fsync_dir(state.root)
            codec = BlobCodec(config.compression_level, keys)
            index, repaired = open_index(state, config, codec, opening.backend, clean)
        store = cls(
            opening,
            config,
            keys,
            index,
            level=config.compression_level if compression_level is None else compression_level,
            pack_size=config.pack_size if pack_size is None else pack_size,
        )
        if repaired:
            opening.emit(ev.STORE_RECOVERED_AFTER_CRASH, {"detail": "; ".join(repaired)})
        return store

    @classmethod
    def open_or_create(
        cls,
        state_dir: Path,
        backend: Backend,
        *,
        passphrase: str | None = None,
        key_file: Path | None = None,
        compression_level: int = DEFAULT_LEVEL,
        pack_size: int = DEFAULT_PACK_SIZE,
        on_event: OnEvent | None = None,
        retry: RetryPolicy | None = None,
    ) -> ChunkStore:
        """What the daemon calls at start: open the store if there is one, else create it."""
        state = StateDir(Path(state_dir))
        if state.config.exists() or RetryingBackend(backend, retry).exists(CONFIG_NAME):
            return cls.open(
                state_dir,
                backend,
                passphrase=passphrase,
                key_file=key_file,
                on_event=on_event,
                compression_level=compression_level,
                pack_size=pack_size,
                retry=retry,
            )
        return cls.create(
            state_dir,
            backend,
            passphrase=passphrase,
            key_file=key_file,
            compression_level=compression_level,
            pack_size=pack_size,
            on_event=on_event,
            retry=retry,
        )

    @staticmethod
    def open_reader(
        state_dir: Path,
        backend: Backend,
        *,
        passphrase: str | None = None,
        key_file: Path | None = None,
        retry: RetryPolicy | None = None,
    ) -> StoreReader:
        """A read-only view (get, get_many) of a store another process has open: no lock,
        no repair, no write (`reader.StoreReader`)."""
        return StoreReader.open(state_dir, backend, passphrase=passphrase, key_file=key_file, retry=retry)

    # --- writing ---------------------------------------------------------------------------

    def has(self, digest: bytes) -> bool:
        """True if the chunk is stored (a True answer protects it from a running collection)."""
        return self._dedup_hit(self.codec.store_id(checked_digest(digest)))

    def put(self, digest: bytes, data: bytes) -> bool:
        """Store a chunk given plain; False if it was already stored. Durable after `commit`."""
        store_id = self.codec.store_id(checked_digest(digest))
        if self._dedup_hit(store_id):
            return False
        if digest_of(data) != digest:
            raise TwinvaultError(errors.CHUNK_CORRUPT, f"put: data does not hash to {digest.hex()}")
        flags, payload = self.codec.encode(store_id, data)
        return self._append(store_id, digest, len(data), flags, payload)

    def put_many(self, chunks: Sequence[tuple[bytes, bytes]]) -> int:
        """`put` of many chunks given plain, with one index look-up for all of them; returns
        how many were new. Durable after `commit`."""
        ids = [self.codec.store_id(checked_digest(digest)) for digest, _ in chunks]
        indexed = self.index.contains_many(ids)
        added = 0
        for (digest, data), store_id in zip(chunks, ids, strict=True):
            if self._dedup_hit(store_id, store_id in indexed):
                continue
            if digest_of(data) != digest:
                raise TwinvaultError(errors.CHUNK_CORRUPT, f"put: data does not hash to {digest.hex()}")
            flags, payload = self.codec.encode(store_id, data)
            added += self._append(store_id, digest, len(data), flags, payload)
        return added

    def put_compressed(
        self, digest: bytes, raw_length: int, frame: bytes, plain: bytes | None = None
    ) -> bool:
        """Store a chunk that arrived as a zstd frame, as it is (checked, never recompressed).

        `plain`: what the caller got by decompressing this very frame (the applier needs
        the bytes anyway), saving a second decompression; it is hashed all the same, so
        the stored frame is known to decode to the chunk whose digest it is filed under."""
        store_id = self.codec.store_id(checked_digest(digest))
        if self._dedup_hit(store_id):
            return False
        if plain is None:
            try:
                plain = self.codec.decompress(frame, raw_length)
            except BlobInvalid as exc:
                raise TwinvaultError(errors.CHUNK_CORRUPT, f"put_compressed {digest.hex()}: {exc}") from exc
        if len(plain) != raw_length or digest_of(plain) != digest:
            raise TwinvaultError(errors.CHUNK_CORRUPT, f"put_compressed: frame does not hold {digest.hex()}")
        flags, payload = self.codec.encode_frame(store_id, frame)
        return self._append(store_id, digest, raw_length, flags, payload)

    def _dedup_hit(self, store_id: bytes, indexed: bool | None = None) -> bool:
        """Stored already (pending in the open pack, or indexed and not collected);
        `indexed` when the caller has looked the index up already."""
        if indexed is None:
            indexed = self.index.contains(store_id)
        with self._writer.lock:
            found = self._writer.pending_locked(store_id) is not None or (
                indexed and store_id not in self._gc.dead
            )
            if found and self._gc.touched is not None:
                self._gc.touched.add(store_id)
        return found

    def _append(self, store_id: bytes, digest: bytes, raw_len: int, flags: int, payload: bytes) -> bool:
        self._check_open()
        with self._writer.lock:
            # Another thread may have put the same chunk while we compressed it.
            if self._writer.pending_locked(store_id) is not None:
                return False
            replace = store_id in self._gc.dead
            self._writer.append_locked(store_id, digest, raw_len, flags, payload, replace=replace)
        return True

    def commit(self) -> None:
        """Every chunk put so far is durable on local disk; never waits for the backend."""
        self._writer.commit()

    # --- reading ---------------------------------------------------------------------------

    def get(self, digest: bytes) -> bytes:
        """The plain chunk, verified: CHUNK_MISSING, CHUNK_CORRUPT or STORE_UNREACHABLE otherwise."""
        return self._fetch.get(digest)

    def get_many(self, digests: Sequence[bytes]) -> Iterator[tuple[bytes, bytes]]:
        """Every distinct chunk of `digests` once, in pack order (neighbours read as one range).

        Raises CHUNK_MISSING before yielding anything if a digest is unknown.
        """
        return self._fetch.get_many(digests)

    def get_frames(self, digests: Sequence[bytes]) -> Iterator[tuple[bytes, bytes, bytes | None]]:
        """`get_many` with, for a chunk stored compressed, its zstd frame as stored
        (decrypted): a sender puts that on the wire instead of compressing the chunk again."""
        return self._fetch.get_frames(digests)

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
        return locate_in(self.index, wanted, self._writer.pending)

    # --- maintenance -----------------------------------------------------------------------

    def begin_collection(self) -> None:
        """Call before computing `referenced` for `collect_garbage`: chunks that put/has find
        already stored from now on are kept even if `referenced` misses them."""
        self._gc.begin()

    def collect_garbage(
        self, referenced: Container[bytes], *, on_progress: Progress | None = None
    ) -> GcReport:
        """Drop chunks whose plain digest is not in `referenced`; crash-safe at every step."""
        self._check_open()
        return self._gc.collect(
            referenced, flush_timeout=self.backend.policy.give_up_after, on_progress=on_progress
        )

    def check(self, read_data: bool = False, digests: Iterable[bytes] | None = None) -> CheckReport:
        """Report missing and corrupt chunks (plain digests) and problems in words."""
        with self._gc.exclusive():
            check = StoreCheck(self.state, self.index, self.codec, self.backend, self._is_pending)
            return check.run(read_data, digests)

    def _is_pending(self, store_id: bytes) -> bool:
        return self._writer.pending(store_id) is not None

    def stats(self) -> StoreStats:
        chunks, raw = self.index.totals()
        pending, pending_raw = self._writer.pending_totals()
        unsealed, unsealed_bytes = self._writer.counts()
        rows = [r for r in self.index.packs() if r.state != ix.OPEN]
        return StoreStats(
            chunks=chunks + pending,
            raw_bytes=raw + pending_raw,
            stored_bytes=sum(r.size for r in rows) + unsealed_bytes,
            packs=len(rows) + unsealed,
            pending_uploads=self._uploader.pending(),
        )

    # --- objects that live with the store ---------------------------------------------------

    def save_object(self, name: str, data: bytes) -> None:
        """Keep `data` as `name` (encrypted when the store is): durable locally when this
        returns, on the backend once the uploader has sent it."""
        check_name(name)
        blob = self.codec.encode_object(name, data)
        with self._objects_lock:
            write_durably(self.state.outbox_file(name), blob, self.state.tmp)
        self._uploader.wake()

    def load_object(self, name: str) -> bytes:
        """The object's data; FileNotFoundError if there is none, CHUNK_CORRUPT if damaged."""
        check_name(name)
        with self._objects_lock:
            try:
                blob = self.state.outbox_file(name).read_bytes()
            except FileNotFoundError:
                blob = None
        if blob is None:
            blob = self.backend.load(object_key(name))
        try:
            return self.codec.decode_object(name, blob)
        except BlobInvalid as exc:
            raise TwinvaultError(errors.CHUNK_CORRUPT, f"object {name}: {exc}") from None

    def list_objects(self, prefix: str) -> list[str]:
        names = {n for n in self.state.outbox_names() if n.startswith(prefix)}
        names.update(key[len(OBJECTS_PREFIX) :] for key, _ in self.backend.list(object_key(prefix)))
        return sorted(names)

    def remove_object(self, name: str) -> None:
        check_name(name)
        with self._objects_lock:
            self.state.outbox_file(name).unlink(missing_ok=True)
            self.backend.remove(object_key(name))

    # --- lifecycle -------------------------------------------------------------------------

    def seal(self) -> None:
        """Seal the open pack now (it then goes to the backend like any full pack); for a
        clean shutdown that leaves nothing local: seal, flush_uploads, close."""
        self._writer.rotate()
        self._writer.wait_sealed()

    def flush_uploads(self, timeout: float) -> bool:
        """Wait until every sealed pack and saved object is on the backend."""
        deadline = _Deadline(timeout)
        return self._writer.wait_sealed(deadline.left()) and self._uploader.wait_idle(deadline.left())

    def close(self) -> None:
        """Seal the open pack, stop the uploader (what is not uploaded goes at next open)."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        self._stop.set()
        self._uploader.stop()
        self.index.close()
        write_private(self.state.clean, b"")
        os.close(self._lock_fd)

    def _check_open(self) -> None:
        if self._closed:
            raise TwinvaultError(errors.INTERNAL_ERROR, "chunk store is closed")

    def __enter__(self) -> ChunkStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- helpers of the constructors -----------------------------------------------------------


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self._end - time.monotonic())
