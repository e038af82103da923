"""A file version's chunk list: the packed `(digest, length)` pieces that cover the file.

The catalog stores it as a version's opaque ``content``; the history recorder packs it,
point-in-time readers, ``repo check`` and the chunk store's garbage collection unpack it.
Format (``docs/history.md``, "Chunk lists"): per piece a 32-byte digest then the length
as u64 little-endian, pieces in file order from offset 0, no header (the catalog's schema
version covers it). A sparse hole is the all-zero digest with its length: it references
no chunk.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

DIGEST_BYTES: Final = 32
HOLE_DIGEST: Final = bytes(DIGEST_BYTES)
_PIECE: Final = struct.Struct(f"<{DIGEST_BYTES}sQ")
_DIGEST_ONLY: Final = struct.Struct(f"<{DIGEST_BYTES}s8x")  # the same piece, length skipped
PIECE_BYTES: Final = _PIECE.size


@dataclass(frozen=True, slots=True)
class Piece:
    digest: bytes  # HOLE_DIGEST for a sparse hole
    length: int

    @property
    def is_hole(self) -> bool:
        return self.digest == HOLE_DIGEST


def pack_chunks(pieces: Iterable[Piece]) -> bytes:
    """Pack pieces in file order; a digest must be exactly 32 bytes."""
    pack = _PIECE.pack
    out = []
    for p in pieces:
        if len(p.digest) != DIGEST_BYTES:
            # struct would silently pad or cut it: a wrong length is a caller's bug.
            raise ValueError(f"chunk digest must be {DIGEST_BYTES} bytes, not {len(p.digest)}")
        out.append(pack(p.digest, p.length))
    return b"".join(out)


def unpack_chunks(blob: bytes) -> list[Piece]:
    """All pieces of a packed chunk list, holes included; ValueError if it is truncated."""
    _check(blob)
    return [Piece(d, n) for d, n in _PIECE.iter_unpack(blob)]


def chunk_digests(blob: bytes) -> Iterator[bytes]:
    """The digests a chunk list references, in order, holes skipped (duplicates kept)."""
    _check(blob)
    # Unpacking only the digest skips an int object per piece nobody asked for.
    return (d for (d,) in _DIGEST_ONLY.iter_unpack(blob) if d != HOLE_DIGEST)


def content_size(blob: bytes) -> int:
    """The file size a chunk list covers (sum of piece lengths, holes included)."""
    _check(blob)
    return sum(n for _, n in _PIECE.iter_unpack(blob))


def _check(blob: bytes) -> None:
    if len(blob) % PIECE_BYTES:
        raise ValueError(f"chunk list of {len(blob)} bytes is not a multiple of {PIECE_BYTES}")
