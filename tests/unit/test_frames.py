"""Peer frames round-trip, and a broken or hostile peer's frame is refused with a code.

The link's `FrameReader` is fed the bytes a peer would send, as a socket delivers them
(in pieces of any size); nothing stands in for the decoder.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest

from twinvault.ops.errors import FRAME_TOO_LARGE, MALFORMED_FRAME, TwinvaultError
from twinvault.protocol import messages as m
from twinvault.protocol.frames import MAX_FRAME_BYTES, FrameReader, decode_body, encode_frame


def received(data: bytes, piece: int = 1 << 30) -> tuple[list[tuple[list[Any], int]], TwinvaultError | None]:
    """Feed ``data`` to a FrameReader in pieces of ``piece`` bytes; every frame it cut."""
    reader = FrameReader(capacity=4096)
    frames: list[tuple[list[Any], int]] = []
    for at in range(0, len(data), piece):
        part = data[at : at + piece]
        while part:
            space = reader.space()
            n = min(len(space), len(part))
            space[:n] = part[:n]
            reader.received(n)
            part = part[n:]
            cut, error = reader.cut()
            frames += cut
            if error is not None:
                return frames, error
    return frames, None


def test_an_op_frame_round_trips_with_bytes_paths_and_nested_segments() -> None:
    message: list[Any] = [
        m.FILE,
        12,
        b"/data/bad-\xff\xfe-name.bin",
        70000,
        b"\x01" * 32,
        [[m.SEG_DATA, b"\x02" * 32, b"\x00\xff" * 100], [m.SEG_HOLE, 4096], [m.SEG_RUN, 0, 3]],
        [1, "file", 0o644, 0, 0, 5, 6, 70000, 0, b"", [[b"user.x", b""]]],
    ]
    data = encode_frame(message)
    assert struct.unpack(">I", data[:4])[0] == len(data) - 4
    assert decode_body(data[4:]) == message


@pytest.mark.parametrize("piece", [1, 3, 4096, 1 << 30])
def test_frames_are_cut_back_to_back_whatever_pieces_they_arrive_in(piece: int) -> None:
    first, second = encode_frame([m.ACK, 5]), encode_frame([m.NEED, 6, b"/a"])
    third = encode_frame([m.FDATA, 7, [[m.SEG_DATA, b"h" * 32, bytes(range(256)) * 400]]])
    frames, error = received(first + second + third + first[:3], piece)
    assert error is None
    assert frames == [
        ([m.ACK, 5], len(first)),
        ([m.NEED, 6, b"/a"], len(second)),
        ([m.FDATA, 7, [[m.SEG_DATA, b"h" * 32, bytes(range(256)) * 400]]], len(third)),
    ]


def test_encoding_a_frame_beyond_the_limit_is_refused() -> None:
    with pytest.raises(TwinvaultError) as info:
        encode_frame([m.FDATA, 1, [[m.SEG_DATA, b"h" * 32, bytes(MAX_FRAME_BYTES)]]])
    assert info.value.code == FRAME_TOO_LARGE


def test_an_oversized_announced_length_is_refused_before_the_body_is_read() -> None:
    # Only the header arrives: waiting for a body would hang (and allocate it).
    good = encode_frame([m.ACK, 5])
    frames, error = received(good + struct.pack(">I", MAX_FRAME_BYTES + 1))
    assert frames == [([m.ACK, 5], len(good))]  # what came before it is kept
    assert error is not None and error.code == FRAME_TOO_LARGE


def test_a_frame_of_exactly_the_limit_is_read() -> None:
    overhead = len(msgpack.packb(["x", bytes(1 << 20)], use_bin_type=True)) - (1 << 20)
    body = msgpack.packb(["x", bytes(MAX_FRAME_BYTES - overhead)], use_bin_type=True)
    assert len(body) == MAX_FRAME_BYTES
    frames, error = received(struct.pack(">I", len(body)) + body, 1 << 20)
    assert error is None and len(frames) == 1
    message, size = frames[0]
    assert message[0] == "x" and size == MAX_FRAME_BYTES + 4


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\xc1", id="reserved-byte"),
        pytest.param(b"\x92\xa1", id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\x91\xa1a\x90", id="trailing-data"),
        pytest.param(b"\x91\xa1\xff", id="invalid-utf8-string"),
        pytest.param(b"\xdd\xff\xff\xff\xff", id="absurd-array-length"),
        pytest.param(b"\x91" * 100_000, id="deep-nesting"),
    ],
)
def test_a_garbage_body_is_a_malformed_frame(body: bytes) -> None:
    with pytest.raises(TwinvaultError) as info:
        decode_body(body)
    assert info.value.code == MALFORMED_FRAME


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\x92\xa3ack\x81\x91\x01\x02", id="map-with-array-key"),
        pytest.param(b"\x92\xa3ack\x81\x80\x01", id="map-with-map-key"),
    ],
)
def test_a_map_with_an_unhashable_key_is_a_malformed_frame(body: bytes) -> None:
    with pytest.raises(TwinvaultError) as info:
        decode_body(body)
    assert info.value.code == MALFORMED_FRAME


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(5, id="integer"),
        pytest.param("ack", id="bare-string"),
        pytest.param({"kind": "ack"}, id="map"),
        pytest.param([], id="empty-array"),
        pytest.param([1, 2], id="kind-not-a-string"),
        pytest.param([b"ack", 2], id="kind-as-bytes"),
        pytest.param([None], id="kind-nil"),
    ],
)
def test_a_body_that_is_not_a_kind_array_is_refused(message: Any) -> None:
    with pytest.raises(TwinvaultError) as info:
        decode_body(msgpack.packb(message, use_bin_type=True))
    assert info.value.code == MALFORMED_FRAME


def test_the_frame_reader_refuses_a_garbage_body_with_its_code() -> None:
    frames, error = received(struct.pack(">I", 1) + b"\xc1" + encode_frame([m.ACK, 5]))
    assert frames == []  # nothing after a bad frame is trusted
    assert error is not None and error.code == MALFORMED_FRAME
