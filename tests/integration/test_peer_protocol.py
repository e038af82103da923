"""The peer port under hostile or mismatched peers: drop the link, log it, keep serving."""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
from pathlib import Path
from typing import Any

import blake3
import msgpack

from tests.helpers.hosts import Console, TestHost, wait_for
from tests.helpers.protection import event_ids, in_image, protect, wait_equal, wait_idle
from twinvault import fsmeta

Hosts = tuple[Console, TestHost, TestHost]


def _tls(host: TestHost) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", host.peer_port), timeout=10)
    return ctx.wrap_socket(raw)


def _frame(message: list[Any]) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def _read(sock: ssl.SSLSocket) -> list[Any] | None:
    try:
        header = sock.recv(4)
        if len(header) < 4:
            return None
        (n,) = struct.unpack(">I", header)
        body = b""
        while len(body) < n:
            part = sock.recv(n - len(body))
            if not part:
                return None
            body += part
        reply: list[Any] = msgpack.unpackb(body, raw=False)
        return reply
    except (ConnectionError, ssl.SSLError, TimeoutError):
        return None


def _closed(sock: ssl.SSLSocket) -> bool:
    """True when the daemon ends the connection (after at most a refuse frame)."""
    try:
        while sock.recv(65536):
            pass
        return True
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False


def _hello(version: int, job: str = "x", token: str = "y") -> list[Any]:
    return [
        "hello",
        {"proto": "twinvault", "version": version, "job": job, "token": token, "source": "t", "epoch": 1},
    ]


def test_hostile_frames_drop_the_link_and_the_daemon_keeps_serving(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    (src / "before").write_text("before")
    job, image = protect(console, alpha, beta, src)
    wait_idle(console, alpha, job)

    with _tls(beta) as s:  # announces a 1 GiB frame
        s.sendall(struct.pack(">I", 1 << 30))
        assert _closed(s)
    with _tls(beta) as s:  # garbage that is not msgpack
        s.sendall(struct.pack(">I", 8) + b"\xc1\xc1\xc1\xc1\xc1\xc1\xc1\xc1")
        assert _closed(s)
    with _tls(beta) as s:  # a valid frame that is not a hello
        s.sendall(_frame([42, "not a kind"]))
        assert _closed(s)
    with _tls(beta) as s:  # truncated frame, then the peer vanishes
        s.sendall(struct.pack(">I", 100) + b"abc")
    wait_for(lambda: event_ids(beta).count(9001) >= 3, 10, what="malformed-frame events")

    (src / "after").write_text("after")  # the real job was never disturbed
    wait_equal(src, in_image(image, src))


def test_wrong_job_credential_is_refused(two_hosts: Hosts) -> None:
    _, _, beta = two_hosts
    with _tls(beta) as s:
        s.sendall(_frame(_hello(1, job="nosuchjob", token="guess")))
        reply = _read(s)
    assert reply is not None and reply[0] == "refuse" and reply[1] == -1009
    assert 9006 in event_ids(beta)


def test_newer_source_is_refused_older_source_is_accepted(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    job, image = protect(console, alpha, beta, src)
    wait_idle(console, alpha, job)
    token = __import__("json").loads((beta.home / "repository" / "jobs" / f"{job}.json").read_text())["token"]
    with _tls(beta) as s:
        s.sendall(_frame(_hello(99, job=job, token=token)))
        reply = _read(s)
    assert reply is not None and reply[0] == "refuse" and reply[1] == -157
    # Version 1 (the oldest this repository speaks) with the right credential is
    # welcomed; it replaces the live link, as a restarted source would.
    with _tls(beta) as s:
        s.sendall(_frame(_hello(1, job=job, token=token)))
        reply = _read(s)
    assert reply is not None and reply[0] == "welcome" and reply[1]["version"] == 1
    # ... and the real source takes its job back.
    (src / "later").write_text("later")
    wait_equal(src, in_image(image, src))


def test_a_version_1_source_still_mirrors_into_this_repository(two_hosts: Hosts, tmp_path: Path) -> None:
    """Version 2 added compressed chunks; a version 1 source's stream (plain data
    segments) is still applied and acknowledged as it always was."""
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    (src / "first").write_text("first")
    job, image = protect(console, alpha, beta, src)
    wait_idle(console, alpha, job)
    console.json("job", "stop", job, "--server", alpha.api)  # the v1 "source" takes the link
    token = json.loads((beta.home / "repository" / "jobs" / f"{job}.json").read_text())["token"]
    old = src / "from-a-version-1-source.txt"
    data = b"written by a version 1 stream\n" * 1000
    old.write_bytes(data)
    meta = fsmeta.read_meta(str(old)).to_wire()
    with _tls(beta) as s:
        s.sendall(_frame(_hello(1, job=job, token=token)))
        reply = _read(s)
        assert reply is not None and reply[0] == "welcome" and reply[1]["version"] == 1
        path = os.fsencode(str(old))
        segment = [0, blake3.blake3(data).digest(), data]
        s.sendall(_frame(["file", 1, path, len(data), b"", [segment], meta]))
        while (reply := _read(s)) is not None and not (reply[0] == "ack" and reply[1] >= 1):
            pass
        assert reply is not None, "the version 1 op was never acknowledged"
    assert in_image(image, old).read_bytes() == data
    console.json("job", "resume", job, "--server", alpha.api)
    (src / "later").write_text("later")
    wait_equal(src, in_image(image, src))
