"""The chunk-list format: (digest, length) pieces, holes as the all-zero digest."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twinvault.repository.chunklist import (
    HOLE_DIGEST,
    PIECE_BYTES,
    Piece,
    chunk_digests,
    content_size,
    pack_chunks,
    unpack_chunks,
)

digests = st.one_of(st.just(HOLE_DIGEST), st.binary(min_size=32, max_size=32))
pieces = st.lists(st.builds(Piece, digests, st.integers(0, 2**64 - 1)), max_size=50)


def test_a_piece_is_a_digest_then_its_length_as_u64_little_endian() -> None:
    blob = pack_chunks([Piece(b"\x01" * 32, 65536), Piece(HOLE_DIGEST, 3)])
    assert PIECE_BYTES == 40
    assert blob == b"\x01" * 32 + struct.pack("<Q", 65536) + bytes(32) + struct.pack("<Q", 3)


@given(pieces)
def test_unpack_returns_what_pack_packed(ps: list[Piece]) -> None:
    assert unpack_chunks(pack_chunks(ps)) == ps


@given(pieces)
def test_chunk_digests_skips_holes_and_keeps_order_and_duplicates(ps: list[Piece]) -> None:
    assert list(chunk_digests(pack_chunks(ps))) == [p.digest for p in ps if p.digest != HOLE_DIGEST]


def test_a_sparse_file_references_only_its_data_chunks() -> None:
    data = b"\x07" * 32
    blob = pack_chunks([Piece(HOLE_DIGEST, 1 << 20), Piece(data, 4096), Piece(HOLE_DIGEST, 1 << 30)])
    assert list(chunk_digests(blob)) == [data]
    assert content_size(blob) == (1 << 20) + 4096 + (1 << 30)
    assert [p.is_hole for p in unpack_chunks(blob)] == [True, False, True]


def test_an_empty_file_has_an_empty_chunk_list() -> None:
    assert pack_chunks([]) == b""
    assert unpack_chunks(b"") == []
    assert list(chunk_digests(b"")) == []


@pytest.mark.parametrize("digest", [b"", b"\x01" * 31, b"\x01" * 33])
def test_a_digest_of_the_wrong_length_is_refused(digest: bytes) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        pack_chunks([Piece(digest, 1)])


def test_a_truncated_chunk_list_is_refused_by_every_reader() -> None:
    blob = pack_chunks([Piece(b"\x01" * 32, 1)])[:-1]
    for reader in (unpack_chunks, chunk_digests, content_size):
        with pytest.raises(ValueError, match="not a multiple"):
            reader(blob)
