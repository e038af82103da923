"""A framed, counted connection over a TLS stream (either end of the peer protocol)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from twinvault.protocol.frames import encode_frame, read_frame


@dataclass(slots=True)
class LinkCounters:
    bytes_tx: int = 0
    bytes_rx: int = 0
    frames_tx: int = 0
    frames_rx: int = 0


class Link:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.counters = LinkCounters()
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    async def send(self, message: list[Any]) -> None:
        await self.send_raw(encode_frame(message))

    async def send_raw(self, frame: bytes) -> None:
        self.writer.write(frame)
        self.counters.bytes_tx += len(frame)
        self.counters.frames_tx += 1
        if self.writer.transport.get_write_buffer_size() > 4 * 1024 * 1024:
            await self.writer.drain()

    async def flush(self) -> None:
        await self.writer.drain()

    async def recv(self) -> list[Any]:
        message, size = await read_frame(self.reader)
        self.counters.bytes_rx += size
        self.counters.frames_rx += 1
        return message

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(self.writer.wait_closed(), 2)
