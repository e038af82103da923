"""The pack being filled: appends, group commit, sealing.

`append_locked` writes a blob (header + payload) at the end of the open pack in the state
dir, in the page cache only. `commit` is the group commit: one `fdatasync` per pack that
received blobs since the last commit, then one index transaction (synchronous=FULL) for
all of them. Nothing is durable before a commit returns, and a commit never waits for the
backend. A pack that reaches `pack_size` moves to the full list and a fresh one takes its
place; the sealer thread then commits what is left of it, appends its trailer and footer,
fsyncs it and renames it into `sealed/`, where the uploader finds it.

Crash cases: a kill between appends and commit leaves a tail of unindexed (maybe torn)
blobs, which recovery verifies and keeps or cuts; a kill while sealing leaves the pack in
`open/`, possibly with a trailer after its blobs, which recovery rescans and reseals.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections.abc import Callable

from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.pagecache import DropBehind
from twinvault.repository.chunkstore import index as ix
from twinvault.repository.chunkstore.index import Index
from twinvault.repository.chunkstore.layout import StateDir, new_pack_id
from twinvault.repository.chunkstore.local import fsync_dir
from twinvault.repository.chunkstore.pack import BlobEntry, Seal, blob_header, encode_trailer, pack_header

log = logging.getLogger(__name__)

# Start writeback of every this many appended bytes, so a commit's fdatasync finds little
# left to flush and the disk works while puts go on (RocksDB's bytes_per_sync); the step
# two before is dropped from the page cache then (``pagecache``: a pack is read rarely, and
# its pages are better spent as the next ones).
WRITEBACK_STEP = 1 << 20


def write_at(fd: int, parts: list[bytes], offset: int) -> None:
    """Write all of `parts` at `offset` (pwritev may write less than asked)."""
    total = len(parts[0]) if len(parts) == 1 else sum(map(len, parts))
    done = os.pwritev(fd, parts, offset)
    if done < total:
        rest = b"".join(parts)[done:]
        while rest:
            n = os.pwrite(fd, rest, offset + done)
            done += n
            rest = rest[n:]


class OpenPack:
    """A pack file in `open/` being appended to; its blobs are listed for the trailer."""

    def __init__(self, state: StateDir, store_uuid: bytes) -> None:
        self.name = new_pack_id()
        self.path = state.open_pack(self.name)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        header = pack_header(store_uuid, bytes.fromhex(self.name))
        try:
            write_at(self.fd, [header], 0)
        except OSError:
            os.close(self.fd)
            self.path.unlink(missing_ok=True)
            raise
        self.size = len(header)
        self._behind = DropBehind(self.fd, len(header), WRITEBACK_STEP)
        self.entries: list[BlobEntry] = []
        self.uncommitted: list[BlobEntry] = []
        self.row_id: int | None = None
        self.dir_synced = False
        self.sealed_size: int | None = None

    def append(self, store_id: bytes, digest: bytes, raw_len: int, flags: int, payload: bytes) -> BlobEntry:
        entry = BlobEntry(store_id, digest, self.size, raw_len, len(payload), flags)
        try:
            write_at(self.fd, [blob_header(store_id, flags, raw_len, len(payload)), payload], self.size)
        except OSError as exc:
            # Cut what a failed write left, so the next blob follows the last good one.
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)
            if exc.errno == errno.ENOSPC:
                raise TwinvaultError(errors.TARGET_DISK_FULL, f"chunk store state dir: {exc}") from exc
            raise
        self.size = entry.end
        self.entries.append(entry)
        self.uncommitted.append(entry)
        self._behind.advance(self.size)
        return entry

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
        with self.lock:
            return self._pending.get(store_id)

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
            os.close(empty.fd)
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
            write_at(pack.fd, [trailer], pack.size)
            os.fdatasync(pack.fd)
            pack.sealed_size = pack.size + len(trailer)
        # The index says sealed before the file appears in sealed/: the uploader must never
        # see a pack there whose row a late update could set back from stored to sealed.
        with self.index.writing() as w:
            w.add_pack(pack.name, ix.SEALED, pack.sealed_size)
            w.set_pack(pack.name, ix.SEALED, pack.sealed_size)
        if pack.path.exists():  # else a failed attempt renamed it already
            os.rename(pack.path, self.state.sealed_pack(pack.name))
        fsync_dir(self.state.sealed)
        fsync_dir(self.state.open)
        if pack.fd >= 0:
            os.close(pack.fd)
            pack.fd = -1
        with self.lock:
            self._full.remove(pack)
            self._changed.notify_all()
        self._on_sealed()
