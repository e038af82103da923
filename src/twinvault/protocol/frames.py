"""Frames of the peer protocol: length-prefixed msgpack arrays over a byte stream.

A frame on the wire is ``u32 length (big endian) | body``; the body is one msgpack
array whose first element is the message kind (a short string, see ``messages``).
The format is documented in ``docs/wire.md``. Neighbours: ``link`` (moves frames over
TLS), ``messages`` (what the arrays mean).
"""

from __future__ import annotations

import struct
import threading
from typing import Any

import msgpack

from twinvault.ops.errors import FRAME_TOO_LARGE, MALFORMED_FRAME, TwinvaultError

# Why 32 MiB: a data frame carries at most ~8 MiB of chunk payload plus its header;
# anything much larger is a broken or hostile peer, and refusing it bounds the memory
# one connection can make us allocate.
MAX_FRAME_BYTES = 32 * 1024 * 1024
HEADER_BYTES = 4
_LEN = struct.Struct(">I")
# One packer per thread (a packer is not thread-safe): it keeps its buffer between
# frames, so a frame is packed once and copied once, behind its length.
_packers = threading.local()


def encode_frame(message: list[Any]) -> bytes:
    packer: msgpack.Packer | None = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    try:
        packer.pack(message)
        body = packer.getbuffer()
        try:
            if len(body) > MAX_FRAME_BYTES:
                raise TwinvaultError(FRAME_TOO_LARGE, f"{len(body)} bytes")
            return b"".join((_LEN.pack(len(body)), body))
        finally:
            body.release()
    finally:
        packer.reset()


def decode_body(body: bytes | memoryview) -> list[Any]:
    try:
        message = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise TwinvaultError(MALFORMED_FRAME, f"undecodable body: {exc}") from exc
    if not isinstance(message, list) or not message or not isinstance(message[0], str):
        raise TwinvaultError(MALFORMED_FRAME, "body is not a [kind, ...] array")
    return message


class FrameReader:
    """Cuts frames out of a received byte stream, in one buffer that bytes are received
    into directly (``space`` then ``received``), so a frame's body is never joined from
    pieces. A header announcing more than ``MAX_FRAME_BYTES`` is refused as soon as
    its four bytes are in, before any body is awaited.
    """

    # Free room worth receiving into; less than this and the buffer is compacted first.
    MIN_SPACE = 64 * 1024

    def __init__(self, capacity: int = 1024 * 1024) -> None:
        self._buf = bytearray(capacity)
        self._view = memoryview(self._buf)
        self._start = 0  # first byte not yet cut into a frame
        self._end = 0  # end of the received bytes
        self._error: TwinvaultError | None = None

    def space(self) -> memoryview:
        """Room to receive into: at least MIN_SPACE, and all the frame in progress needs."""
        pending = self._end - self._start
        rest = 0  # bytes of the frame in progress still to come
        if pending >= HEADER_BYTES:
            (length,) = _LEN.unpack_from(self._buf, self._start)
            rest = max(0, HEADER_BYTES + min(length, MAX_FRAME_BYTES) - pending)
        want = max(self.MIN_SPACE, rest)
        if len(self._buf) - self._end < want:
            if self._start and len(self._buf) - pending >= want:  # reuse the cut frames' room
                self._view[:pending] = self._view[self._start : self._end]
            else:  # the frame in progress does not fit: a larger buffer
                grown = bytearray(max(2 * len(self._buf), pending + want))
                grown[:pending] = self._view[self._start : self._end]
                self._view.release()
                self._buf, self._view = grown, memoryview(grown)
            self._start, self._end = 0, pending
        return self._view[self._end :]

    def received(self, count: int) -> None:
        self._end += count

    def cut(self) -> tuple[list[tuple[list[Any], int]], TwinvaultError | None]:
        """Every complete frame received so far, decoded, with its size on the wire; and
        the error that ends the stream, if a frame is too large or not a message (the
        frames before it are good and returned with it; nothing after it is cut)."""
        if self._error is not None:
            return [], self._error
        out: list[tuple[list[Any], int]] = []
        buf, start, end = self._buf, self._start, self._end
        try:
            while end - start >= HEADER_BYTES:
                (length,) = _LEN.unpack_from(buf, start)
                if length > MAX_FRAME_BYTES:
                    raise TwinvaultError(FRAME_TOO_LARGE, f"peer announced {length} bytes")
                stop = start + HEADER_BYTES + length
                if stop > end:
                    break
                out.append((decode_body(self._view[start + HEADER_BYTES : stop]), HEADER_BYTES + length))
                start = stop
        except TwinvaultError as exc:
            self._error = exc
        if start == end:
            start = end = 0  # empty: receive at the front again, no compaction needed
        self._start, self._end = start, end
        return out, self._error
