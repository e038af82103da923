"""The pack being filled: appends, group commit, sealing.

`append_locked` adds a blob (header + payload) at the end of the open pack in the state
dir: to its write buffer, written around the page cache in whole blocks (`appender`).
`commit` is the group commit: one `fdatasync` per pack that
received blobs since the last commit, then one index transaction (synchronous=FULL) for
all of them. Nothing is durable before a commit returns, and a commit never waits for the
backend. A pack that reaches `pack_size` moves to the full list and a fresh one takes its
place; the sealer thread then commits what is left of it, appends its trailer and footer,
writes and fsyncs it and renames it into `sealed/`, where the uploader finds it.

Crash cases: a kill between appends and commit leaves a tail of unindexed (maybe torn)
blobs, which recovery verifies and keeps or cuts; a kill while sealing leaves the pack in
`open/`, possibly with a trailer after its blobs, which recovery rescans and reseals.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable

from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.repository.chunkstore import index as ix
from twinvault.repository.chunkstore.appender import PackAppender
from twinvault.repository.chunkstore.index import Index
from twinvault.repository.chunkstore.layout import StateDir, new_pack_id
from twinvault.repository.chunkstore.local import fsync_dir
from twinvault.repository.chunkstore.pack import BlobEntry, Seal, blob_header, encode_trailer, pack_header

log = logging.getLogger(__name__)


class OpenPack:
    """A pack file in `open/` being appended to; its blobs are listed for the trailer."""

    def __init__(self, state: StateDir, store_uuid: bytes) -> None:
        self.name = new_pack_id()
        self.path = state.open_pack(self.name)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._out = PackAppender(self.fd)
        # The header goes out with the first blobs: a file cut short of it is removed by
        # recovery, as a pack torn while its header was written always was.
        self._out.append([pack_header(store_uuid, bytes.fromhex(self.name))])
        self.entries: list[BlobEntry] = []
        self.uncommitted: list[BlobEntry] = []
        self.row_id: int | None = None
        self.dir_synced = False
        self.sealed_size: int | None = None

    @property
    def size(self) -> int:
        return self._out.size

    def append(self, store_id: bytes, digest: bytes, raw_len: int, flags: int, payload: bytes) -> BlobEntry:
        entry = BlobEntry(store_id, digest, self.size, raw_len, len(payload), flags)
        try:
            self._out.append([blob_header(store_id, flags, raw_len, len(payload)), payload])
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise TwinvaultError(errors.TARGET_DISK_FULL, f"chunk store state dir: {exc}") from exc
            raise
        self.entries.append(entry)
        self.uncommitted.append(entry)
        return entry

    def readable(self, entry: BlobEntry) -> None:
        """Make ``entry`` readable from the file (it may still be in the write buffer)."""
        if entry.end > self._out.readable:
            self._out.flush()

    def flush(self) -> None:
        """Everything appended is in the file (``os.fdatasync(fd)`` then makes it durable)."""
        self._out.flush()

    def append_trailer(self, trailer: bytes) -> None:
        """The last bytes: the pack is in its file, exactly (``os.fdatasync(fd)`` then)."""
        self._out.append([trailer])
        self._out.finish()

    def close(self) -> None:
        self._out.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def take_uncommitted(self) -> list[BlobEntry]:
        taken, self.uncommitted = self.uncommitted, []
        return taken


class PackWriter:
    def __init__(
        self,
        state: StateDir,
        index: Index,
        store_uuid: bytes,
        pack_size: int,
        seal_trailer: Seal | None,
        on_sealed: Callable[[], None],
    ) -> None:
        self.state = state
        self.index = index
        self.store_uuid = store_uuid
        self.pack_size = pack_size
        self._seal_trailer = seal_trailer
        self._on_sealed = on_sealed
        self.lock = threading.Lock()  # guards the open pack, the full list and pending
        self._commit_lock = threading.Lock()  # one commit (fsync + index transaction) at a time
        self._changed = threading.Condition(self.lock)
        self._open: OpenPack | None = None
        self._full: list[OpenPack] = []
        # Appended blobs not yet in the index: readers find them here.
        self._pending: dict[bytes, tuple[str, BlobEntry]] = {}
        self._replace: set[bytes] = set()  # pending ids that must replace their index row (GC)
        self._stopping = False
        self._sealer = threading.Thread(target=self._seal_loop, name="chunkstore-sealer", daemon=True)
        self._sealer.start()

    # --- called with self.lock held --------------------------------------------------------

    def pending_locked(self, store_id: bytes) -> tuple[str, BlobEntry] | None:
        return self._pending.get(store_id)

    def append_locked(
        self, store_id: bytes, digest: bytes, raw_len: int, flags: int, payload: bytes, *, replace: bool
    ) -> BlobEntry:
        if self._open is None:
            self._open = OpenPack(self.state, self.store_uuid)
        pack = self._open
        entry = pack.append(store_id, digest, raw_len, flags, payload)
        self._pending[store_id] = (pack.name, entry)
        if replace:
            self._replace.add(store_id)
        if pack.size >= self.pack_size:
            self._full.append(pack)
            self._open = None
            self._changed.notify_all()
        return entry

    # --- any thread ----------------------------------------------------------------------

    def pending(self, store_id: bytes) -> tuple[str, BlobEntry] | None:
        """Where a blob appended but not yet indexed is; a reader finds it in the file."""
        with self.lock:
            found = self._pending.get(store_id)
            if found is not None:
                for pack in (self._open, *self._full):
                    if pack is not None and pack.name == found[0]:
                        pack.readable(found[1])
            return found

    def commit(self) -> None:
        """Every blob appended so far is durable (pack fsync'ed, index committed)."""
        with self._commit_lock:
            with self.lock:
                packs = [*self._full, self._open]
                batch = [(p, p.take_uncommitted()) for p in packs if p is not None and p.uncommitted]
            self._make_durable(batch)

    def _make_durable(self, batch: list[tuple[OpenPack, list[BlobEntry]]]) -> None:
        if not batch:
            return
        try:
            self._sync_and_index(batch)
        except BaseException as exc:
            # Nothing of this batch is known durable: the next commit must try it again
            # rather than return as if it had nothing to do.
            with self.lock:
                for pack, entries in batch:
                    pack.uncommitted[:0] = entries
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise TwinvaultError(errors.TARGET_DISK_FULL, f"chunk store state dir: {exc}") from exc
            raise

    def _sync_and_index(self, batch: list[tuple[OpenPack, list[BlobEntry]]]) -> None:
        with self.lock:  # the appends of other threads share the packs' write buffers
            for pack, _ in batch:
                pack.flush()
        for pack, _ in batch:
            os.fdatasync(pack.fd)
            if not pack.dir_synced:  # the new file's name must survive too
                fsync_dir(self.state.open)
                pack.dir_synced = True
        with self.lock:
            replace = {e.store_id for _, entries in batch for e in entries if e.store_id in self._replace}
        with self.index.writing() as w:
            for pack, entries in batch:
                if pack.row_id is None:
                    pack.row_id = w.add_pack(pack.name, ix.OPEN, 0)
                w.add_blobs(pack.row_id, [e for e in entries if e.store_id not in replace])
                w.add_blobs(pack.row_id, [e for e in entries if e.store_id in replace], replace=True)
        with self.lock:
            for pack, entries in batch:
                for e in entries:
                    if self._pending.get(e.store_id) == (pack.name, e):
                        del self._pending[e.store_id]
                        self._replace.discard(e.store_id)

    def rotate(self) -> None:
        """Hand the open pack to the sealer now (close, garbage collection)."""
        with self.lock:
            if self._open is not None and self._open.entries:
                self._full.append(self._open)
                self._open = None
                self._changed.notify_all()

    def wait_sealed(self, timeout: float | None = None) -> bool:
        """Wait until no full pack waits for the sealer."""
        with self.lock:
            return self._changed.wait_for(lambda: not self._full, timeout)

    def pending_totals(self) -> tuple[int, int]:
        """(blobs not indexed yet, their raw bytes), for stats."""
        with self.lock:
            return len(self._pending), sum(entry.raw_len for _, entry in self._pending.values())

    def counts(self) -> tuple[int, int]:
        """(unsealed packs, their bytes), for stats."""
        with self.lock:
            packs = [*self._full, *([self._open] if self._open is not None else [])]
            return len(packs), sum(p.size for p in packs)

    def close(self) -> None:
        """Seal every pack with blobs, stop the sealer; an empty open pack is removed."""
        self.rotate()
        with self.lock:
            self._stopping = True
            self._changed.notify_all()
        self._sealer.join()
        with self.lock:
            empty, self._open = self._open, None
        if empty is not None:
            empty.close()
            empty.path.unlink(missing_ok=True)

    # --- the sealer thread ---------------------------------------------------------------

    def _seal_loop(self) -> None:
        while True:
            with self.lock:
                self._changed.wait_for(lambda: bool(self._full) or self._stopping)
                if not self._full:
                    return
                pack = self._full[0]
            try:
                self._seal(pack)
            except Exception:
                # The pack stays full and unsealed (readable, committed by commit()); the
                # next attempt, or recovery at the next open, seals it.
                log.exception("sealing pack %s failed; retrying", pack.name)
                with self.lock:
                    if self._stopping:
                        return
                    self._changed.wait(1.0)

    def _seal(self, pack: OpenPack) -> None:
        with self._commit_lock:
            with self.lock:
                batch = [(pack, pack.take_uncommitted())] if pack.uncommitted else []
            self._make_durable(batch)
        if pack.sealed_size is None:  # else a failed attempt got past this point
            trailer = encode_trailer(pack.entries, self._seal_trailer, pack.size)
            sealed_size = pack.size + len(trailer)
            with self.lock:
                pack.append_trailer(trailer)
            os.fdatasync(pack.fd)
            pack.sealed_size = sealed_size
        # The index says sealed before the file appears in sealed/: the uploader must never
        # see a pack there whose row a late update could set back from stored to sealed.
        with self.index.writing() as w:
            w.add_pack(pack.name, ix.SEALED, pack.sealed_size)
            w.set_pack(pack.name, ix.SEALED, pack.sealed_size)
        if pack.path.exists():  # else a failed attempt renamed it already
            os.rename(pack.path, self.state.sealed_pack(pack.name))
        fsync_dir(self.state.sealed)
        fsync_dir(self.state.open)
        with self.lock:
            pack.close()
            self._full.remove(pack)
            self._changed.notify_all()
        self._on_sealed()
