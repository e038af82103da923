"""Peer frames round-trip, and a broken or hostile peer's frame is refused with a code.

`read_frame` is driven through a real `asyncio.StreamReader` fed the bytes a peer would
send; nothing stands in for the decoder.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack
import pytest

from twinvault.ops.errors import FRAME_TOO_LARGE, MALFORMED_FRAME, TwinvaultError
from twinvault.protocol import messages as m
from twinvault.protocol.frames import MAX_FRAME_BYTES, decode_body, encode_frame, read_frame


def stream_of(data: bytes, *, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


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


async def test_read_frame_reads_frames_back_to_back_and_reports_their_wire_size() -> None:
    first, second = encode_frame([m.ACK, 5]), encode_frame([m.NEED, 6, b"/a"])
    reader = stream_of(first + second)
    assert await read_frame(reader) == ([m.ACK, 5], len(first))
    assert await read_frame(reader) == ([m.NEED, 6, b"/a"], len(second))
    with pytest.raises(asyncio.IncompleteReadError):
        await read_frame(reader)


def test_encoding_a_frame_beyond_the_limit_is_refused() -> None:
    with pytest.raises(TwinvaultError) as info:
        encode_frame([m.FDATA, 1, [[m.SEG_DATA, b"h" * 32, bytes(MAX_FRAME_BYTES)]]])
    assert info.value.code == FRAME_TOO_LARGE


async def test_an_oversized_announced_length_is_refused_before_the_body_is_read() -> None:
    # Only the header arrives and the stream stays open: reading a body would hang.
    reader = stream_of(struct.pack(">I", MAX_FRAME_BYTES + 1), eof=False)
    with pytest.raises(TwinvaultError) as info:
        await asyncio.wait_for(read_frame(reader), timeout=5)
    assert info.value.code == FRAME_TOO_LARGE


async def test_a_frame_of_exactly_the_limit_is_read() -> None:
    overhead = len(msgpack.packb(["x", bytes(1 << 20)], use_bin_type=True)) - (1 << 20)
    body = msgpack.packb(["x", bytes(MAX_FRAME_BYTES - overhead)], use_bin_type=True)
    assert len(body) == MAX_FRAME_BYTES
    message, size = await read_frame(stream_of(struct.pack(">I", len(body)) + body))
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


async def test_read_frame_refuses_a_garbage_body_with_its_code() -> None:
    reader = stream_of(struct.pack(">I", 1) + b"\xc1")
    with pytest.raises(TwinvaultError) as info:
        await read_frame(reader)
    assert info.value.code == MALFORMED_FRAME
