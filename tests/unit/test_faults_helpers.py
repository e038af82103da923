"""The fault-injection helpers do what other tests rely on: fill, kill, cut, clean up."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time

import pytest

from tests.helpers.faults import NetnsPair, fill_filesystem, kill9, small_filesystem
from tests.helpers.procs import start_child, stop_child, tracked_children

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts and namespaces need root")

# A one-shot TCP client run inside namespace A: prints "connected" or the error's name.
CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("connected")
except OSError as exc:
    print(type(exc).__name__)
"""

LISTEN = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7777))
s.listen(16)
print("ready", flush=True)
while True:
    s.accept()[0].close()
"""


def _mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == path for line in f)


def test_small_filesystem_fills_up_and_is_removed() -> None:
    with small_filesystem(16) as mnt:
        assert _mounted(mnt)
        os.setxattr(mnt, "user.ok", b"1")  # user_xattr is on
        filler = fill_filesystem(mnt)
        assert os.path.getsize(filler) > 10 << 20
        fd = os.open(os.path.join(mnt, "more"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            with pytest.raises(OSError) as info:
                os.write(fd, b"x" * 4096)
            assert info.value.errno == errno.ENOSPC
        finally:
            os.close(fd)
        os.unlink(filler)
        with open(os.path.join(mnt, "after"), "wb") as f:
            f.write(b"x" * (1 << 20))  # space is back once the filler is gone
    assert not _mounted(mnt)
    assert not os.path.exists(os.path.dirname(mnt))


def test_small_filesystem_unmounts_when_the_test_raises() -> None:
    with pytest.raises(RuntimeError), small_filesystem(8) as mnt:
        raise RuntimeError("test body failed")
    assert not _mounted(mnt)


def test_kill9_and_stop_child() -> None:
    p = start_child([sys.executable, "-c", "import time; time.sleep(60)"])
    assert p in tracked_children()
    kill9(p.pid)
    assert stop_child(p, timeout=5) == -9
    assert p not in tracked_children()
    q = start_child(["sleep", "60"])
    assert stop_child(q, timeout=5) == -15


def test_netns_pair_pings_cuts_and_restores() -> None:
    with NetnsPair() as net:
        ping = ["ping", "-c", "1", "-W", "2", net.addr_b]
        assert net.run_in(net.ns_a, ping, stdout=subprocess.DEVNULL).wait(10) == 0

        server = net.run_in(net.ns_b, [sys.executable, "-c", LISTEN], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"

        def connect(timeout: float) -> str:
            client = net.run_in(
                net.ns_a,
                [sys.executable, "-c", CONNECT, net.addr_b, "7777", str(timeout)],
                stdout=subprocess.PIPE,
            )
            out, _ = client.communicate(timeout=timeout + 10)
            return str(out.decode().strip())

        assert connect(2.0) == "connected"
        net.cut()
        started = time.monotonic()
        assert connect(0.5) == "TimeoutError"  # a silent cut, not a fast ENETUNREACH
        assert time.monotonic() - started >= 0.5
        net.restore()
        # The veth carrier comes back asynchronously after link up.
        deadline = time.monotonic() + 5
        while (result := connect(1.0)) != "connected" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert result == "connected"

        net.shape(8000)
        qdisc = subprocess.run(
            ["ip", "netns", "exec", net.ns_a, "tc", "qdisc", "show", "dev", net.dev_a],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "tbf" in qdisc.stdout and "8Mbit" in qdisc.stdout
        net.unshape()
        names = (net.ns_a, net.ns_b)
    assert server.poll() is not None  # stopped by the pair's teardown
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(name in listed for name in names)
