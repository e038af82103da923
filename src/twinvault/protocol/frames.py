"""Frames of the peer protocol: length-prefixed msgpack arrays over a byte stream.

A frame on the wire is ``u32 length (big endian) | body``; the body is one msgpack
array whose first element is the message kind (a short string, see ``messages``).
The format is documented in ``docs/wire.md``. Neighbours: ``link`` (reads and writes
frames on TLS streams), ``messages`` (what the arrays mean).
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack

from twinvault.ops.errors import FRAME_TOO_LARGE, MALFORMED_FRAME, TwinvaultError

# Why 32 MiB: a data frame carries at most ~8 MiB of chunk payload plus its header;
# anything much larger is a broken or hostile peer, and refusing it bounds the memory
# one connection can make us allocate.
MAX_FRAME_BYTES = 32 * 1024 * 1024
_LEN = struct.Struct(">I")


def encode_frame(message: list[Any]) -> bytes:
    body: bytes = msgpack.packb(message, use_bin_type=True)
    if len(body) > MAX_FRAME_BYTES:
        raise TwinvaultError(FRAME_TOO_LARGE, f"{len(body)} bytes")
    return _LEN.pack(len(body)) + body


def decode_body(body: bytes) -> list[Any]:
    try:
        message = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise TwinvaultError(MALFORMED_FRAME, f"undecodable body: {exc}") from exc
    if not isinstance(message, list) or not message or not isinstance(message[0], str):
        raise TwinvaultError(MALFORMED_FRAME, "body is not a [kind, ...] array")
    return message


async def read_frame(reader: asyncio.StreamReader) -> tuple[list[Any], int]:
    """Read one frame; return the decoded message and its size on the wire.

    Raises ``asyncio.IncompleteReadError`` at a clean or torn end of stream and
    ``TwinvaultError`` for a frame that is too large or not a message.
    """
    header = await reader.readexactly(_LEN.size)
    (length,) = _LEN.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise TwinvaultError(FRAME_TOO_LARGE, f"peer announced {length} bytes")
    body = await reader.readexactly(length)
    return decode_body(body), length + _LEN.size
