"""Repairs at open: what a kill -9 or a lost index leaves behind, fixed without a human.

`recover` (every open):
- `tmp/` is emptied (temp files of saves that never finished);
- each pack in `open/` (the pack being filled when the process died) is scanned from its
  first blob: every blob is verified (decrypted, decompressed, hashed), a torn tail is cut,
  the intact blobs are indexed, and the pack is sealed and moved to `sealed/`, where the
  uploader finds it. Blobs appended after the last commit that survived intact are kept;
- each pack in `sealed/` that the index does not list as sealed (a kill between the rename
  and the index update) is indexed from its trailer; one already stored is removed;
- index rows of local packs whose file is gone (a kill between an upload and the index
  update) are marked stored when the backend has the pack;
- after an unclean stop, `reconcile_backend` compares the backend's packs with the index:
  a pack the index does not know is indexed, or removed when every blob in it is already
  indexed elsewhere (a garbage collection that was killed before its index commit).

`rebuild_index` fills a new, empty index from the packs themselves: local ones by scanning
or by their trailers, backend ones by their trailers (two ranged reads each), falling back
to scanning the blob headers of a pack whose trailer is missing or damaged.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.repository.chunkstore import index as ix
from twinvault.repository.chunkstore.appender import write_at
from twinvault.repository.chunkstore.codec import BlobCodec, BlobInvalid
from twinvault.repository.chunkstore.index import Index
from twinvault.repository.chunkstore.layout import PACKS_PREFIX, StateDir, pack_key, pack_of_key
from twinvault.repository.chunkstore.local import fsync_dir
from twinvault.repository.chunkstore.pack import (
    FOOTER,
    HEADER,
    BlobEntry,
    PackFormatError,
    Seal,
    decode_trailer,
    encode_trailer,
    parse_footer,
    parse_pack_header,
    scan_blobs,
)
from twinvault.repository.chunkstore.retry import RetryingBackend

log = logging.getLogger(__name__)

_TAIL_READ = 256 << 10  # one ranged read usually holds a pack's whole trailer and footer


def recover(
    state: StateDir,
    index: Index,
    codec: BlobCodec,
    backend: RetryingBackend,
    store_uuid: bytes,
    *,
    clean: bool,
) -> list[str]:
    """Repair the state dir (and, after an unclean stop, the backend); returns what was done."""
    done: list[str] = []
    stale = list(state.tmp.iterdir())
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if stale:
        done.append(f"temporary files removed: {len(stale)}")
    for pack in state.packs_in(state.open):
        done.append(reseal_open_pack(state, index, codec, store_uuid, pack))
    for pack in state.packs_in(state.sealed):
        note = _adopt_sealed_pack(state, index, codec, store_uuid, pack)
        if note:
            done.append(note)
    done.extend(_find_uploaded_packs(state, index, codec, backend, store_uuid))
    deleting = index.packs(ix.DELETING)
    if deleting:  # the uploader removes them
        done.append(
            f"{len(deleting)} packs superseded by an interrupted garbage collection are being removed"
        )
    if not clean:
        try:
            indexed, removed = reconcile_backend(index, codec, backend, store_uuid)
        except TwinvaultError as exc:
            if exc.code != errors.STORE_UNREACHABLE:
                raise
            log.warning("backend packs not compared with the index (backend unreachable): %s", exc)
        else:
            if indexed:
                done.append(f"{indexed} backend packs missing from the index were indexed")
            if removed:
                done.append(
                    f"{removed} backend packs superseded by an interrupted garbage collection were removed"
                )
    return done


def rebuild_index(
    state: StateDir, index: Index, codec: BlobCodec, backend: RetryingBackend, store_uuid: bytes
) -> str:
    """Fill an empty index from every pack; raises STORE_UNREACHABLE if the backend cannot be listed."""
    for pack in state.packs_in(state.open):
        reseal_open_pack(state, index, codec, store_uuid, pack)
    for pack in state.packs_in(state.sealed):
        _adopt_sealed_pack(state, index, codec, store_uuid, pack)
    reconcile_backend(index, codec, backend, store_uuid, remove_superseded=False)
    chunks, _ = index.totals()
    return f"{len(index.packs())} packs, {chunks} chunks"


def reseal_open_pack(state: StateDir, index: Index, codec: BlobCodec, store_uuid: bytes, pack: str) -> str:
    """Verify, cut, index and seal a pack left in `open/`; returns what was done."""
    path = state.open_pack(pack)
    data = path.read_bytes()
    try:
        found_uuid, _ = parse_pack_header(data)
    except PackFormatError:
        found_uuid = None
    if found_uuid != store_uuid:
        # Torn while its header was written (no blob can have been committed), or foreign.
        with index.writing() as w:
            w.delete_pack(pack)
        path.unlink()
        return f"pack {pack}: no usable header, removed"
    scan = scan_blobs(data, HEADER.size, codec.verify)
    with index.writing() as w:
        row_id = w.add_pack(pack, ix.OPEN, 0)
        committed_end = w.committed_end(row_id)
        new = w.missing([e.store_id for e in scan.entries])
        w.add_blobs(row_id, scan.entries)
    # Never cut below what the index points at: damage there is reported by check, not hidden.
    cut = max(scan.end, committed_end)
    torn = len(data) - cut
    if not scan.entries and not committed_end:
        with index.writing() as w:
            w.delete_pack(pack)
        path.unlink()
        return f"pack {pack}: no intact blob, removed ({torn} bytes)"
    entries = [e for e in scan.entries if e.end <= cut]
    size = _write_trailer(path, cut, entries, _trailer_seal(codec))
    sealed = state.sealed_pack(pack)
    os.rename(path, sealed)
    fsync_dir(state.sealed)
    fsync_dir(state.open)
    with index.writing() as w:
        w.set_pack(pack, ix.SEALED, size)
    note = f"pack {pack}: sealed with {len(entries)} chunks ({len(new)} written after the last commit kept)"
    if torn:
        note += f", {torn} torn bytes cut"
    if scan.damaged:
        note += f", {len(scan.damaged)} damaged spans skipped"
    return note


def _write_trailer(path: Path, at: int, entries: list[BlobEntry], seal: Seal | None) -> int:
    trailer = encode_trailer(entries, seal, at)
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, at)
        write_at(fd, [trailer], at)
        os.fsync(fd)
    finally:
        os.close(fd)
    return at + len(trailer)


def _trailer_seal(codec: BlobCodec) -> Seal | None:
    return codec.seal_trailer if codec.encrypted else None


def _adopt_sealed_pack(state: StateDir, index: Index, codec: BlobCodec, store_uuid: bytes, pack: str) -> str:
    path = state.sealed_pack(pack)
    row = index.pack(pack)
    if row is not None and row.state in (ix.STORED, ix.DELETING):
        path.unlink()
        return ""
    if row is not None and row.state == ix.SEALED:
        return ""
    data = path.read_bytes()
    entries = pack_entries(data, len(data), codec, store_uuid)
    if entries is None:
        # The trailer is unusable: treat it as an unsealed pack (rescan, cut, reseal).
        os.rename(path, state.open_pack(pack))
        return reseal_open_pack(state, index, codec, store_uuid, pack)
    with index.writing() as w:
        row_id = w.add_pack(pack, ix.SEALED, len(data))
        w.set_pack(pack, ix.SEALED, len(data))
        w.add_blobs(row_id, entries)
    return f"pack {pack}: sealed before the stop, indexed ({len(entries)} chunks)"


def _find_uploaded_packs(
    state: StateDir, index: Index, codec: BlobCodec, backend: RetryingBackend, store_uuid: bytes
) -> list[str]:
    done = []
    for row in index.packs(ix.OPEN, ix.SEALED):
        if state.open_pack(row.name).exists() or state.sealed_pack(row.name).exists():
            continue
        key = pack_key(row.name)
        try:
            if not backend.exists(key):
                log.error("pack %s is neither local nor on the backend", row.name)
                done.append(f"pack {row.name}: lost (neither local nor on the backend)")
                continue
            # After a power cut the index may also lack the pack's last blobs: re-read them.
            size = dict(backend.list(key)).get(key, row.size)
            entries = load_pack_entries(backend, key, size, codec, store_uuid) or []
        except TwinvaultError as exc:
            if exc.code != errors.STORE_UNREACHABLE:
                raise
            log.warning("cannot tell whether pack %s reached the backend: %s", row.name, exc)
            continue
        with index.writing() as w:
            w.set_pack(row.name, ix.STORED, size)
            w.add_blobs(row.id, entries)
        done.append(f"pack {row.name}: upload finished before the stop, index updated")
    return done


def reconcile_backend(
    index: Index,
    codec: BlobCodec,
    backend: RetryingBackend,
    store_uuid: bytes,
    *,
    remove_superseded: bool = True,
) -> tuple[int, int]:
    """Index the backend's packs the index does not know, or remove them when superseded.

    Returns (packs indexed, packs removed).
    """
    known = {row.name for row in index.packs()}
    indexed = removed = 0
    for key, size in backend.list(PACKS_PREFIX):
        pack = pack_of_key(key)
        if pack is None or pack in known:
            continue
        entries = load_pack_entries(backend, key, size, codec, store_uuid)
        if entries is None:
            log.error("backend pack %s is not a pack of this store; left alone", key)
            continue
        with index.writing() as w:
            new = w.missing([e.store_id for e in entries])
            if new or not remove_superseded:
                row_id = w.add_pack(pack, ix.STORED, size)
                w.add_blobs(row_id, entries)
        if new or not remove_superseded:
            indexed += 1
        else:
            backend.remove(key)
            removed += 1
    return indexed, removed


def load_pack_entries(
    backend: RetryingBackend, key: str, size: int, codec: BlobCodec, store_uuid: bytes
) -> list[BlobEntry] | None:
    """The blobs of a backend pack: from its trailer, else by scanning it whole."""
    tail_len = min(size, _TAIL_READ)
    tail = backend.load(key, size - tail_len, tail_len)
    try:
        header = tail if tail_len == size else backend.load(key, 0, HEADER.size)
        if parse_pack_header(header)[0] != store_uuid:
            return None
        footer = parse_footer(tail, size)
        start = footer.trailer_offset - (size - tail_len)
        if start >= 0:
            stored = tail[start : start + footer.trailer_len]
        else:
            stored = backend.load(key, footer.trailer_offset, footer.trailer_len)
        return decode_trailer(stored, footer, codec.open_trailer if codec.encrypted else None)
    except (PackFormatError, BlobInvalid):
        pass
    data = backend.load(key)
    return pack_entries(data, size, codec, store_uuid)


def pack_entries(data: bytes, size: int, codec: BlobCodec, store_uuid: bytes) -> list[BlobEntry] | None:
    """The blobs of a whole pack in memory: its trailer, else a scan; None if not ours."""
    try:
        if parse_pack_header(data)[0] != store_uuid:
            return None
    except PackFormatError:
        return None
    try:
        footer = parse_footer(data[-FOOTER.size :], size)
        stored = data[footer.trailer_offset : footer.trailer_offset + footer.trailer_len]
        return decode_trailer(stored, footer, codec.open_trailer if codec.encrypted else None)
    except (PackFormatError, BlobInvalid):
        return scan_blobs(data, HEADER.size, codec.verify).entries
