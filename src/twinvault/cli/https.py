"""The console's HTTPS: one HTTP/1.1 request per TLS connection, nothing more.

Why not ``http.client``: importing it (and the e-mail parser it brings) was a third of a
console command's cold start, ~60 of ~200 ms, and ``job resume`` is part of what a
difference mirror is timed by. The console needs little: send one request with a JSON
body, read one response whose body has a ``Content-Length``, is ``chunked`` (a restore's
stream), or ends with the connection.
"""

from __future__ import annotations

import socket
import ssl

MAX_HEAD = 64 * 1024  # status line and headers; the management API sends a few hundred bytes
_RECV = 256 * 1024


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.x as this client reads it."""


class Response:
    """A response's status and headers, and its body read as it arrives."""

    def __init__(self, conn: _Stream, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers
        self._conn = conn
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        if length is not None and not length.isdigit():
            raise ProtocolError(f"bad Content-Length {length!r}")
        self._left: int | None = None if self._chunked or length is None else int(length)
        self._chunk_left = 0
        self._done = self._left == 0

    def read(self) -> bytes:
        """The whole (rest of the) body."""
        return b"".join(iter(lambda: self.read1(_RECV), b""))

    def read1(self, limit: int) -> bytes:
        """The next piece of the body (at most ``limit`` bytes); b"" at its end."""
        if self._done:
            return b""
        if self._chunked:
            return self._read_chunked(limit)
        if self._left is None:  # the body ends with the connection
            piece = self._conn.some(limit)
            self._done = not piece
            return piece
        piece = self._conn.some(min(limit, self._left))
        if not piece:
            raise ProtocolError(f"connection closed with {self._left} bytes of the body to come")
        self._left -= len(piece)
        self._done = self._left == 0
        return piece

    def _read_chunked(self, limit: int) -> bytes:
        if self._chunk_left == 0:
            size_line = self._conn.line().split(b";", 1)[0].strip()
            try:
                self._chunk_left = int(size_line, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {size_line[:20]!r}") from None
            if self._chunk_left == 0:
                while self._conn.line() not in (b"\r\n", b"\n"):  # trailers, then the end
                    pass
                self._done = True
                return b""
        piece = self._conn.some(min(limit, self._chunk_left))
        if not piece:
            raise ProtocolError("connection closed inside a chunk")
        self._chunk_left -= len(piece)
        if self._chunk_left == 0:
            self._conn.line()  # the CRLF after a chunk's data
        return piece


class _Stream:
    """Buffered reads from a socket: lines for the head, pieces for the body."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""

    def line(self) -> bytes:
        while b"\n" not in self._buf:
            if len(self._buf) > MAX_HEAD:
                raise ProtocolError("line too long")
            piece = self._sock.recv(_RECV)
            if not piece:
                raise ProtocolError("connection closed in the middle of a line")
            self._buf += piece
        line, _, self._buf = self._buf.partition(b"\n")
        return line + b"\n"

    def some(self, limit: int) -> bytes:
        if not self._buf:
            return self._sock.recv(min(limit, _RECV))
        piece, self._buf = self._buf[:limit], self._buf[limit:]
        return piece


class Connection:
    """``http.client.HTTPSConnection``'s shape, for one request."""

    def __init__(self, host: str, port: int, *, timeout: float | None, context: ssl.SSLContext) -> None:
        self.host, self.port, self.timeout, self.context = host, port, timeout, context
        self.sock: ssl.SSLSocket | None = None

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            self.sock = self.context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise

    def request(self, method: str, path: str, *, body: bytes | None, headers: dict[str, str]) -> None:
        assert self.sock is not None, "connect() first"
        host = f"[{self.host}]" if ":" in self.host else self.host
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{self.port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {len(body) if body is not None else 0}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))

    def getresponse(self) -> Response:
        assert self.sock is not None, "connect() first"
        stream = _Stream(self.sock)
        status_line = stream.line()
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {status_line[:80]!r}")
        headers: dict[str, str] = {}
        size = len(status_line)
        while (line := stream.line()) not in (b"\r\n", b"\n"):
            size += len(line)
            if size > MAX_HEAD:
                raise ProtocolError("response head too large")
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise ProtocolError(f"bad header line {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        return Response(stream, int(parts[1]), headers)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
