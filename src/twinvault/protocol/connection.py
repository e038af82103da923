"""Opening peer links: the source connects and pins the repository's certificate; the
repository listens on its peer port and accepts.

The TCP connect and the TLS handshake run in a worker thread on a blocking socket with a
timeout; the finished socket becomes a ``link.Link``, whose own thread does the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.protocol import messages as m
from twinvault.protocol.link import Link
from twinvault.protocol.tls import check_pinned, client_context

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 15.0
OnLink = Callable[[Link], Awaitable[None]]


async def connect_link(
    address: str,
    port: int,
    *,
    context: ssl.SSLContext,
    server_hostname: str | None,
    fingerprint: str,
    timeout: float = 10.0,
    bind: str = "",
) -> Link:
    """A link to a repository whose certificate has the pinned ``fingerprint``, from the
    local address ``bind`` when one is given (a host with several interfaces)."""
    sock = await asyncio.to_thread(
        _connect, address, port, context, server_hostname, fingerprint, timeout, bind
    )
    return Link(sock)


async def open_peer_link(
    address: str,
    port: int,
    *,
    server_hostname: str | None,
    fingerprint: str,
    hello: dict[str, Any],
    bind: str = "",
) -> tuple[Link, dict[str, Any]]:
    """Connect, say hello, and return the link with the peer's welcome; a refusal is raised
    as the error the peer gave (the sending side of a protection or a recovery job)."""
    link = await connect_link(
        address,
        port,
        context=client_context(),
        server_hostname=server_hostname,
        fingerprint=fingerprint,
        bind=bind,
    )
    try:
        await link.send([m.HELLO, {"proto": m.PROTOCOL_NAME, "version": m.PROTOCOL_VERSION, **hello}])
        reply = await link.recv(HANDSHAKE_TIMEOUT)
    except BaseException:
        await link.close()
        raise
    if reply[0] == m.REFUSE:
        await link.close()
        raise TwinvaultError(int(reply[1]), str(reply[2]))
    if reply[0] != m.WELCOME:
        await link.close()
        raise TwinvaultError(-1007, f"expected welcome, got {reply[0]!r}")
    return link, reply[1] if len(reply) > 1 and isinstance(reply[1], dict) else {}


async def probe_route(
    address: str,
    port: int,
    *,
    server_hostname: str | None,
    fingerprint: str,
    bind: str = "",
    timeout: float = 5.0,
) -> None:
    """Check that a route (``address``, from ``bind``) reaches the receiving host: a TLS
    handshake whose certificate is the pinned one. Raises the catalog's route errors."""
    where = f"{address}:{port}" + (f" from {bind}" if bind else "")
    try:
        sock = await asyncio.to_thread(
            _connect, address, port, client_context(), server_hostname, fingerprint, timeout, bind
        )
    except TwinvaultError as exc:
        if exc.code == errors.FINGERPRINT_MISMATCH:
            raise TwinvaultError(
                errors.ROUTE_NOT_ON_TARGET, f"{where} is another host ({exc.detail})"
            ) from exc
        raise
    except _BindFailed as exc:
        raise TwinvaultError(errors.BIND_ADDRESS_NOT_LOCAL, f"{bind}: {exc}") from exc
    except ConnectionRefusedError as exc:
        raise TwinvaultError(errors.ROUTE_NOT_ON_TARGET, f"{where}: no twinvault peer port there") from exc
    except ssl.SSLError as exc:
        raise TwinvaultError(
            errors.ROUTE_NOT_ON_TARGET, f"{where}: not a twinvault peer port ({exc})"
        ) from exc
    except (TimeoutError, OSError) as exc:
        raise TwinvaultError(errors.ROUTE_UNREACHABLE, f"{where}: {exc}") from exc
    sock.close()


class _BindFailed(OSError):
    """The local address to connect from cannot be bound."""


def _connect(
    address: str,
    port: int,
    context: ssl.SSLContext,
    server_hostname: str | None,
    fingerprint: str,
    timeout: float,
    bind: str = "",
) -> ssl.SSLSocket:
    if bind:
        raw = _bound_socket(address, port, bind)
        try:
            raw.settimeout(timeout)
            raw.connect((address, port))
        except BaseException:
            raw.close()
            raise
    else:
        raw = socket.create_connection((address, port), timeout=timeout)
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = context.wrap_socket(raw, server_hostname=server_hostname)  # the handshake, within timeout
    except BaseException:
        raw.close()
        raise
    try:
        check_pinned(sock, fingerprint)
    except BaseException:
        sock.close()
        raise
    return sock


def _bound_socket(address: str, port: int, bind: str) -> socket.socket:
    family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0][0]
    raw = socket.socket(family, socket.SOCK_STREAM)
    try:
        raw.bind((bind, 0))
    except OSError as exc:
        raw.close()
        raise _BindFailed(exc.errno, exc.strerror) from exc
    return raw


class LinkListener:
    """The peer port: accepts connections and hands each handshaken link to ``on_link``
    in a task of its own (which owns the link and closes it)."""

    def __init__(self, socks: list[socket.socket], on_link: OnLink, context: ssl.SSLContext) -> None:
        self._socks = socks
        self._on_link = on_link
        self._context = context
        self._connections: set[asyncio.Task[None]] = set()
        self._acceptors = [asyncio.create_task(self._accept(s), name="peer-accept") for s in socks]

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets (as ``asyncio.Server.sockets``)."""
        return tuple(self._socks)

    def close(self) -> None:
        """Stop accepting; links already open keep running."""
        for task in self._acceptors:
            task.cancel()
        for sock in self._socks:
            sock.close()

    async def wait_closed(self) -> None:
        for task in self._acceptors:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:  # out of descriptors, a connection reset while queued
                log.warning("peer port: accept failed (%s)", exc)
                await asyncio.sleep(0.1)
                continue
            task = asyncio.create_task(self._serve(conn), name="peer")
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            sock = await asyncio.to_thread(_handshake, conn, self._context)
        except OSError as exc:  # a scanner, a client that is not a twinvault source
            log.info("peer port: TLS handshake failed (%s)", exc)
            return
        await self._on_link(Link(sock))


def _handshake(conn: socket.socket, context: ssl.SSLContext) -> ssl.SSLSocket:
    try:
        conn.setblocking(True)
        conn.settimeout(HANDSHAKE_TIMEOUT)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return context.wrap_socket(conn, server_side=True)
    except BaseException:
        conn.close()
        raise


async def listen_links(on_link: OnLink, host: str, port: int, context: ssl.SSLContext) -> LinkListener:
    """Bind the peer port on every address ``host`` resolves to (OSError, e.g.
    EADDRINUSE, if one is taken) and start accepting."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(100)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return LinkListener(socks, on_link, context)
