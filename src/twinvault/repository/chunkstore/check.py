"""Integrity check of the store: does every indexed blob exist, whole, where the index says?

Without `read_data`: every pack the index lists must exist (locally or on the backend) at
least as long as its last blob's end; a shorter pack is truncated and the blobs past its
end are missing. With `read_data`, every blob is also read, its header compared with the
index, decrypted, decompressed and hashed. Given the plain digests a catalog references,
the check also reports those the index does not hold at all.

Results name plain digests (what the catalog knows), and problems as sentences for a
human. The check reads only; repairs are the caller's decision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from twinvault.repository.chunkstore import index as ix
from twinvault.repository.chunkstore.codec import BlobCodec
from twinvault.repository.chunkstore.index import Index, PackRow
from twinvault.repository.chunkstore.layout import PACKS_PREFIX, StateDir, pack_key, pack_of_key
from twinvault.repository.chunkstore.pack import BLOB_HEADER, BlobEntry, parse_blob_header
from twinvault.repository.chunkstore.retry import RetryingBackend


@dataclass(frozen=True)
class CheckReport:
    checked_chunks: int
    missing: set[bytes]  # plain digests with no readable copy (unknown, pack gone, cut off)
    corrupt: set[bytes]  # plain digests whose bytes fail verification (read_data only)
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.problems)


class StoreCheck:
    def __init__(
        self,
        state: StateDir,
        index: Index,
        codec: BlobCodec,
        backend: RetryingBackend,
        is_pending: Callable[[bytes], bool],
    ) -> None:
        self.state = state
        self.index = index
        self.codec = codec
        self.backend = backend
        self.is_pending = is_pending
        self.missing: set[bytes] = set()
        self.corrupt: set[bytes] = set()
        self.problems: list[str] = []

    def run(self, read_data: bool, digests: Iterable[bytes] | None) -> CheckReport:
        wanted = None if digests is None else {self.codec.store_id(d): d for d in digests}
        on_backend: dict[str, int] = {}
        for key, size in self.backend.list(PACKS_PREFIX):
            pack = pack_of_key(key)
            if pack is not None:
                on_backend[pack] = size
        rows = self.index.packs()
        for pack in sorted(on_backend.keys() - {r.name for r in rows}):
            self.problems.append(f"pack {pack} is on the backend but not in the index")
        checked = 0
        for row in rows:
            entries = self.index.blobs_in(row.id)
            if wanted is not None:
                entries = [e for e in entries if e.store_id in wanted]
            checked += len(entries)
            self._check_pack(row, entries, on_backend, read_data)
        if wanted is not None:
            for sid, digest in wanted.items():
                if not self.index.contains(sid) and not self.is_pending(sid):
                    self.missing.add(digest)
                    self.problems.append(f"chunk {digest.hex()} is not in the store")
        return CheckReport(checked, self.missing, self.corrupt, self.problems)

    def _size(self, row: PackRow, on_backend: dict[str, int]) -> int | None:
        for path in (self.state.open_pack(row.name), self.state.sealed_pack(row.name)):
            try:
                return path.stat().st_size
            except FileNotFoundError:
                continue
        return on_backend.get(row.name)

    def _check_pack(
        self, row: PackRow, entries: list[BlobEntry], on_backend: dict[str, int], read_data: bool
    ) -> None:
        size = self._size(row, on_backend)
        if size is None:
            if entries and row.state != ix.DELETING:
                self.missing.update(e.digest for e in entries)
                self.problems.append(f"pack {row.name} is missing ({len(entries)} chunks)")
            return
        cut = [e for e in entries if e.end > size]
        if cut:
            self.missing.update(e.digest for e in cut)
            self.problems.append(
                f"pack {row.name} is {size} bytes, shorter than its index says:"
                f" {len(cut)} chunks lie past its end"
            )
        if not read_data:
            return
        whole = [e for e in entries if e.end <= size]
        if not whole:
            return
        data = self._read_pack(row.name)
        for entry in whole:
            reason = self._verify(data, entry)
            if reason:
                self.corrupt.add(entry.digest)
                self.problems.append(
                    f"chunk {entry.digest.hex()} in pack {row.name} at {entry.offset}: {reason}"
                )

    def _read_pack(self, pack: str) -> bytes:
        for path in (self.state.open_pack(pack), self.state.sealed_pack(pack)):
            try:
                return path.read_bytes()
            except FileNotFoundError:
                continue
        return self.backend.load(pack_key(pack))

    def _verify(self, data: bytes, entry: BlobEntry) -> str:
        head = parse_blob_header(data, entry.offset)
        if head is None:
            return "blob header damaged"
        flags, store_id, raw_len, stored_len = head
        if (store_id, flags, raw_len, stored_len) != (
            entry.store_id,
            entry.flags,
            entry.raw_len,
            entry.stored_len,
        ):
            return "blob header does not match the index"
        payload = memoryview(data)[entry.offset + BLOB_HEADER.size : entry.end]
        if self.codec.verify(store_id, flags, raw_len, payload) is None:
            return "content does not match its digest (damaged)"
        return ""
