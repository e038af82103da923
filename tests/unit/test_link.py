"""A peer link over real TLS on localhost: frames arrive whole and in order, a close
delivers what was posted before it, silence and a vanished peer are reported."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from twinvault.ops.errors import FINGERPRINT_MISMATCH, TwinvaultError
from twinvault.protocol import messages as m
from twinvault.protocol.connection import connect_link, listen_links
from twinvault.protocol.frames import encode_frame
from twinvault.protocol.link import Link
from twinvault.protocol.tls import client_context, create_identity, fingerprint_of_cert_file, server_context


@asynccontextmanager
async def linked(tmp_path: Path, fingerprint: str | None = None) -> AsyncIterator[tuple[Link, Link]]:
    """(source end, repository end) of one link on 127.0.0.1."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    create_identity(cert, key, "beta")
    accepted: asyncio.Queue[Link] = asyncio.Queue()
    held = asyncio.Event()

    async def on_link(link: Link) -> None:
        await accepted.put(link)
        await held.wait()  # the test owns the link until it ends

    listener = await listen_links(on_link, "127.0.0.1", 0, server_context(cert, key))
    port = listener.sockets[0].getsockname()[1]
    try:
        source = await connect_link(
            "127.0.0.1",
            port,
            context=client_context(),
            server_hostname=None,
            fingerprint=fingerprint_of_cert_file(cert) if fingerprint is None else fingerprint,
        )
        repository = await asyncio.wait_for(accepted.get(), 10)
        try:
            yield source, repository
        finally:
            await source.close()
            await repository.close()
    finally:
        held.set()
        listener.close()
        await listener.wait_closed()


async def test_frames_arrive_whole_and_in_order_small_large_and_from_a_feed(tmp_path: Path) -> None:
    big = os.urandom(4 * 1024 * 1024 + 7)
    fed = [encode_frame([m.MARK, seq, os.urandom(seq * 97 % 30_000)]) for seq in range(1, 400)]

    def feed(budget: int) -> list[bytes]:
        out: list[bytes] = []
        while fed and sum(map(len, out)) < budget:
            out.append(fed.pop(0))
        return out

    async with linked(tmp_path) as (source, repository):
        await source.send([m.STATUS, {"hello": 1}])
        await source.send([m.FDATA, 0, [[m.SEG_DATA, b"h" * 32, big]]])
        source.set_feed(feed)
        got = [await repository.recv(10) for _ in range(401)]
        await repository.send([m.ACK, 399])
        assert await source.recv(10) == [m.ACK, 399]
    assert got[0] == [m.STATUS, {"hello": 1}]
    assert got[1][2][0][2] == big
    assert [msg[1] for msg in got[2:]] == list(range(1, 400))
    assert all(len(msg[2]) == seq * 97 % 30_000 for seq, msg in enumerate(got[2:], 1))
    assert repository.counters.frames_rx == 401


async def test_close_sends_what_was_posted_before_it(tmp_path: Path) -> None:
    async with linked(tmp_path) as (source, repository):
        await repository.send([m.REFUSE, -1009, "unknown job"])
        await repository.close()
        assert await source.recv(10) == [m.REFUSE, -1009, "unknown job"]
        with pytest.raises(asyncio.IncompleteReadError):
            await source.recv(10)
        with pytest.raises(ConnectionError):
            await repository.send([m.ACK, 1])


async def test_silence_is_a_timeout_and_the_link_stays_usable(tmp_path: Path) -> None:
    async with linked(tmp_path) as (source, repository):
        with pytest.raises(TimeoutError):
            await repository.recv(0.2)
        await source.send([m.ACK, 5])
        assert await repository.recv(10) == [m.ACK, 5]


async def test_a_vanished_peer_ends_the_stream_after_the_frames_that_arrived(tmp_path: Path) -> None:
    async with linked(tmp_path) as (source, repository):
        for seq in range(1, 50):
            await source.send([m.MARK, seq, b"x" * 1000])
        await source.close()
        got: list[list[Any]] = []
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            while True:
                got.append(await repository.recv(10))
        assert [msg[1] for msg in got] == list(range(1, 50))


async def test_a_repository_with_another_certificate_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TwinvaultError) as info:
        async with linked(tmp_path, fingerprint="ab" * 32):
            pass
    assert info.value.code == FINGERPRINT_MISMATCH
