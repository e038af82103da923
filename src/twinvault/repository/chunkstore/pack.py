"""The pack file format (version 1): how blobs sit in a file, locally and on the backend.

    header | blob* | trailer | footer

- header (40 bytes): magic `TVPK`, u16 version, u16 flags (0), the store's uuid (16), the
  pack's id (16).
- blob: a 52-byte header — magic `TVBL`, u8 flags (1 compressed, 2 encrypted), 3 zero
  bytes, the blob's store id (32), u32 raw length, u32 stored length, u32 CRC-32 of the
  header's first 48 bytes — then `stored length` bytes of payload.
- trailer: one 84-byte entry per blob (store id, plain digest, u64 offset of the blob
  header, u32 raw length, u32 stored length, u8 flags, 3 zero bytes); in an encrypted
  store the whole trailer is sealed with AES-256-GCM because it carries plain digests.
- footer (28 bytes, last in the file): u64 trailer offset, u32 trailer length, u32 blob
  count, u32 CRC-32 of the stored trailer, u8 flags (1 = trailer encrypted), 3 zero
  bytes, magic `TVPE`.

A pack being filled has no trailer yet: it is valid up to its last complete blob, and
`scan_blobs` finds its blobs from the blob headers alone (after a crash, or when a trailer
is lost). All integers are little-endian. `docs/chunkstore.md` is the prose version.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, NamedTuple

MAGIC: Final = b"TVPK"
END_MAGIC: Final = b"TVPE"
BLOB_MAGIC: Final = b"TVBL"
VERSION: Final = 1

FLAG_COMPRESSED: Final = 1
FLAG_ENCRYPTED: Final = 2
_KNOWN_FLAGS: Final = FLAG_COMPRESSED | FLAG_ENCRYPTED
TRAILER_ENCRYPTED: Final = 1

HEADER: Final = struct.Struct("<4sHH16s16s")
BLOB_HEADER: Final = struct.Struct("<4sB3x32sIII")
_BLOB_CRC_SPAN: Final = BLOB_HEADER.size - 4
TRAILER_ENTRY: Final = struct.Struct("<32s32sQIIB3x")
FOOTER: Final = struct.Struct("<QIIIB3x4s")

# Sealing and opening the trailer: the codec's AEAD in an encrypted store, None otherwise.
Seal = Callable[[bytes], bytes]


class PackFormatError(ValueError):
    """Bytes that are not a (complete) pack of this format."""


class BlobEntry(NamedTuple):
    """Where one blob sits in its pack. `offset` is the blob header's position.

    A named tuple, not a dataclass: one is made per put and per index row read, and a
    tuple is several times cheaper to build than a frozen dataclass.
    """

    store_id: bytes
    digest: bytes  # the plain digest; equal to store_id in an unencrypted store
    offset: int
    raw_len: int
    stored_len: int
    flags: int

    @property
    def end(self) -> int:
        return self.offset + BLOB_HEADER.size + self.stored_len

    @property
    def payload_offset(self) -> int:
        return self.offset + BLOB_HEADER.size


@dataclass(frozen=True, slots=True)
class Footer:
    trailer_offset: int
    trailer_len: int
    count: int
    crc: int
    flags: int


def pack_header(store_uuid: bytes, pack_id: bytes) -> bytes:
    return HEADER.pack(MAGIC, VERSION, 0, store_uuid, pack_id)


def parse_pack_header(data: bytes) -> tuple[bytes, bytes]:
    """Return (store uuid, pack id) of a pack starting with `data`."""
    if len(data) < HEADER.size:
        raise PackFormatError("shorter than a pack header")
    magic, version, _flags, store_uuid, pack_id = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise PackFormatError("not a pack (bad magic)")
    if version != VERSION:
        raise PackFormatError(f"pack format version {version} (this build reads {VERSION})")
    return store_uuid, pack_id


def blob_header(store_id: bytes, flags: int, raw_len: int, stored_len: int) -> bytes:
    head = BLOB_HEADER.pack(BLOB_MAGIC, flags, store_id, raw_len, stored_len, 0)[:_BLOB_CRC_SPAN]
    return head + struct.pack("<I", zlib.crc32(head))


def parse_blob_header(data: bytes | memoryview, at: int) -> tuple[int, bytes, int, int] | None:
    """(flags, store id, raw length, stored length) of the blob header at `at`, or None if
    there is no intact blob header there (torn, zeroed or foreign bytes)."""
    if at + BLOB_HEADER.size > len(data):
        return None
    magic, flags, store_id, raw_len, stored_len, crc = BLOB_HEADER.unpack_from(data, at)
    if magic != BLOB_MAGIC or flags & ~_KNOWN_FLAGS:
        return None
    if zlib.crc32(data[at : at + _BLOB_CRC_SPAN]) != crc:
        return None
    return flags, bytes(store_id), raw_len, stored_len


def encode_trailer(entries: Iterable[BlobEntry], seal: Seal | None, at: int) -> bytes:
    """The trailer and footer for `entries`, to be written at offset `at` (the pack's end)."""
    items = list(entries)
    body = b"".join(
        TRAILER_ENTRY.pack(e.store_id, e.digest, e.offset, e.raw_len, e.stored_len, e.flags) for e in items
    )
    stored = seal(body) if seal is not None else body
    flags = TRAILER_ENCRYPTED if seal is not None else 0
    footer = FOOTER.pack(at, len(stored), len(items), zlib.crc32(stored), flags, END_MAGIC)
    return stored + footer


def parse_footer(tail: bytes, pack_size: int) -> Footer:
    """The footer at the end of `tail` (the last bytes of a pack of `pack_size` bytes)."""
    if len(tail) < FOOTER.size:
        raise PackFormatError("shorter than a footer")
    off, length, count, crc, flags, magic = FOOTER.unpack_from(tail, len(tail) - FOOTER.size)
    if magic != END_MAGIC:
        raise PackFormatError("no footer (the pack is unsealed or truncated)")
    if off < HEADER.size or off + length + FOOTER.size != pack_size:
        raise PackFormatError("footer does not match the pack's size")
    return Footer(off, length, count, crc, flags)


def decode_trailer(stored: bytes, footer: Footer, open_sealed: Seal | None) -> list[BlobEntry]:
    if len(stored) != footer.trailer_len or zlib.crc32(stored) != footer.crc:
        raise PackFormatError("trailer checksum mismatch")
    if footer.flags & TRAILER_ENCRYPTED:
        if open_sealed is None:
            raise PackFormatError("trailer is encrypted but the store is not")
        body = open_sealed(stored)
    else:
        body = stored
    if len(body) != footer.count * TRAILER_ENTRY.size:
        raise PackFormatError("trailer length does not match its blob count")
    entries = [BlobEntry(s, d, o, r, n, f) for s, d, o, r, n, f in TRAILER_ENTRY.iter_unpack(body)]
    for e in entries:
        if e.end > footer.trailer_offset:
            raise PackFormatError("trailer entry points past the blobs")
    return entries


@dataclass
class Scan:
    """What `scan_blobs` found: intact blobs, where the last one ends, damaged spans."""

    entries: list[BlobEntry]
    end: int
    damaged: list[tuple[int, int]]


# Verifies one blob's payload; returns its plain digest, or None if the payload is bad.
Verify = Callable[[bytes, int, int, memoryview], bytes | None]


def scan_blobs(data: bytes, start: int, verify: Verify) -> Scan:
    """Walk the blobs of `data` from `start` by their headers.

    Every blob must also pass `verify(store_id, flags, raw_len, payload)`, which yields its
    plain digest (a scan is rare and a pack small: decrypting and hashing it all costs
    tens of milliseconds). An unreadable span is skipped up to the next intact blob
    (recorded in `damaged`); bytes after the last intact blob are a torn tail: `end`
    stops before them.
    """
    view = memoryview(data)
    entries: list[BlobEntry] = []
    damaged: list[tuple[int, int]] = []
    at = end = start
    bad_since: int | None = None
    while at < len(data):
        entry = _blob_at(view, at, verify)
        if entry is None:
            if bad_since is None:
                bad_since = at
            nxt = data.find(BLOB_MAGIC, at + 1)
            if nxt < 0:
                break
            at = nxt
            continue
        if bad_since is not None:
            damaged.append((bad_since, at))
            bad_since = None
        entries.append(entry)
        at = end = entry.end
    return Scan(entries, end, damaged)


def _blob_at(view: memoryview, at: int, verify: Verify) -> BlobEntry | None:
    head = parse_blob_header(view, at)
    if head is None:
        return None
    flags, store_id, raw_len, stored_len = head
    payload_at = at + BLOB_HEADER.size
    if payload_at + stored_len > len(view):
        return None
    digest = verify(store_id, flags, raw_len, view[payload_at : payload_at + stored_len])
    if digest is None:
        return None
    return BlobEntry(store_id, digest, at, raw_len, stored_len, flags)
