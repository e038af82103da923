"""The console's HTTPS client (`twinvault.cli.https`) against a real TLS server that
answers with each body framing a server may use, and with answers it must refuse."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from twinvault.cli.https import Connection, ProtocolError
from twinvault.protocol.tls import client_context, create_identity, server_context


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, list[bytes], list[bytes]]]:
    """A one-thread TLS server: each connection gets the next canned answer, and what
    it received is kept (request head and body)."""
    create_identity(tmp_path / "cert.pem", tmp_path / "key.pem", "test")
    ctx = server_context(tmp_path / "cert.pem", tmp_path / "key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    answers: list[bytes] = []
    received: list[bytes] = []
    stop = threading.Event()
    listener.settimeout(0.05)  # closing a socket does not wake a thread in accept()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            raw.settimeout(10)
            with ctx.wrap_socket(raw, server_side=True) as conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(
                    next(h for h in head.split(b"\r\n") if h.startswith(b"Content-Length")).split()[1]
                )
                while len(body) < length:
                    body += conn.recv(65536)
                received.append(head + b"\r\n\r\n" + body)
                conn.sendall(answers.pop(0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], answers, received
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _ask(port: int, body: bytes | None = b'{"a": 1}') -> tuple[int, bytes]:
    conn = Connection("127.0.0.1", port, timeout=10, context=client_context())
    try:
        conn.connect()
        conn.request("POST", "/api/x?y=1", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_bodies_by_length_by_chunks_and_until_close(tls_server: tuple[int, list[bytes], list[bytes]]) -> None:
    port, answers, received = tls_server
    answers.append(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{"b": 2}')
    assert _ask(port) == (200, b'{"b": 2}')
    head = received[0].split(b"\r\n")
    assert head[0] == b"POST /api/x?y=1 HTTP/1.1"
    assert b"Host: 127.0.0.1:%d" % port in head and b"Connection: close" in head
    assert received[0].endswith(b'\r\n\r\n{"a": 1}')

    big = bytes(range(256)) * 4000  # more than one read's worth
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in (big[:1000], big[1000:]))
    answers.append(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\nX-Trailer: t\r\n\r\n"
    )
    assert _ask(port, None) == (200, big)

    answers.append(b'HTTP/1.0 404 Not Found\r\nContent-Type: application/json\r\n\r\n{"error": 1}')
    assert _ask(port) == (404, b'{"error": 1}')


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",  # not HTTP
        b"HTTP/1.1 OK\r\n\r\n",  # no status code
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # closed before the body's end
        b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc",  # closed inside a chunk
        b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"x" * 70000 + b"\r\n\r\n",
    ],
)
def test_answers_that_are_not_http_are_refused(
    tls_server: tuple[int, list[bytes], list[bytes]], answer: bytes
) -> None:
    port, answers, _ = tls_server
    answers.append(answer)
    with pytest.raises(ProtocolError):
        _ask(port)
