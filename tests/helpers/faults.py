"""Fault injection shared by all tests: a disk that fills up, a killed process, a cut network.

Neighbours: `procs` starts and stops every process these helpers run; `tree` checks what
survived.  Everything here needs root (loop mounts, network namespaces) and cleans up
after itself even when the test body raises: filesystems are unmounted and their images
removed, namespaces deleted, processes stopped by their own pid/process group.

Recipes follow the shared TESTBED notes: ext4 with `-m 0` (else root writes into the
reserved blocks and never sees ENOSPC), the peer end of a veth set down for a cut that
makes connects time out like a real outage, tbf for bandwidth (netem is absent here).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from tests.helpers.procs import start_child, stop_child


def _run(argv: Sequence[str]) -> None:
    """Run a setup command; raise with its stderr so a broken test bed says why."""
    res = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")


# --- disk ------------------------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(size_mb: int = 16) -> Iterator[str]:
    """Yield the mountpoint of a fresh `size_mb` MiB ext4 (xattrs and ACLs on).

    The image lives in a private temp dir; on exit the filesystem is unmounted (lazily if
    a straggler still holds it, so teardown never hangs) and the image removed.
    """
    base = tempfile.mkdtemp(prefix="tv-smallfs-")
    img = os.path.join(base, "fs.img")
    mnt = os.path.join(base, "mnt")
    os.mkdir(mnt)
    mounted = False
    try:
        with open(img, "wb") as f:
            f.truncate(size_mb * 1024 * 1024)
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-b", "4096", img])
        _run(["mount", "-o", "loop,user_xattr,acl", img, mnt])
        mounted = True
        yield mnt
    finally:
        if mounted:
            res = subprocess.run(["umount", mnt], capture_output=True, check=False)
            if res.returncode != 0:
                # Busy (a child of the test still has a file open): detach now, the kernel
                # frees the loop device when the last user goes.
                subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


def fill_filesystem(path: str) -> str:
    """Fill the filesystem holding directory `path` until ENOSPC; return the filler's path.

    Writes are unbuffered os.write calls, stepping down from 1 MiB to 1 byte, so the last
    free bytes are taken as well: afterwards even a 1-byte append fails (empty files can
    still be created while inodes remain).  Remove the returned file to free the space.
    """
    filler = os.path.join(path, f".tv-filler-{os.getpid()}-{random.randrange(1 << 30):x}")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for chunk in (1 << 20, 64 << 10, 4096, 512, 1):
            buf = b"\xa5" * chunk
            while True:
                try:
                    if os.write(fd, buf) < chunk:
                        break  # a short write means the space ran out within this chunk
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        # Delayed allocation could still fail at writeback; fsync makes "full" real now.
        os.fsync(fd)
    finally:
        os.close(fd)
    return filler


# --- processes -------------------------------------------------------------------------


def kill9(pid: int) -> None:
    """SIGKILL `pid`: the crash a daemon cannot intercept. Reaping is the owner's job."""
    os.kill(pid, signal.SIGKILL)


# --- network ---------------------------------------------------------------------------


class NetnsPair:
    """Two network namespaces joined by a veth pair, as two hosts on one machine.

    Addresses come from 10.231.X.0/24 (X random) which exists only between these two
    namespaces: neither has a default route, so nothing here can reach another address.
    Names carry our pid and a random suffix, so concurrent test runs never collide.

        with NetnsPair() as net:
            server = net.run_in(net.ns_b, [...])
            net.cut(); ...; net.restore()
    """

    dev_a = "veth-a"
    dev_b = "veth-b"

    dev_a2 = "veth-a2"
    dev_b2 = "veth-b2"

    def __init__(self, *, second_path: bool = False) -> None:
        """``second_path``: a second veth pair (``dev_a2``/``dev_b2``, ``addr_a2``/``addr_b2``
        from 10.233.X.0/24), so each host has two interfaces, as for routing tests."""
        suffix = f"{os.getpid()}-{random.randrange(1 << 24):06x}"
        self.ns_a = f"tv-a-{suffix}"
        self.ns_b = f"tv-b-{suffix}"
        subnet = random.randrange(256)
        self.addr_a = f"10.231.{subnet}.1"
        self.addr_b = f"10.231.{subnet}.2"
        self.second_path = second_path
        self.addr_a2 = f"10.233.{subnet}.1"
        self.addr_b2 = f"10.233.{subnet}.2"
        self._children: list[subprocess.Popen[Any]] = []
        self._created: list[str] = []

    def __enter__(self) -> NetnsPair:
        try:
            for ns in (self.ns_a, self.ns_b):
                _run(["ip", "netns", "add", ns])
                self._created.append(ns)
            # Created straight inside the namespaces, so the short fixed device names
            # never meet another test's devices in the root namespace.
            paths = [(self.dev_a, self.addr_a, self.dev_b, self.addr_b)]
            if self.second_path:
                paths.append((self.dev_a2, self.addr_a2, self.dev_b2, self.addr_b2))
            for dev_a, addr_a, dev_b, addr_b in paths:
                veth_a = ["ip", "link", "add", dev_a, "netns", self.ns_a, "type", "veth"]
                _run([*veth_a, "peer", "name", dev_b, "netns", self.ns_b])
                for ns, dev, addr in ((self.ns_a, dev_a, addr_a), (self.ns_b, dev_b, addr_b)):
                    _run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev])
                    _run(["ip", "-n", ns, "link", "set", dev, "up"])
            for ns in (self.ns_a, self.ns_b):
                _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the processes started here, then delete the namespaces (and the veth)."""
        for p in self._children:
            stop_child(p, timeout=3.0)
        self._children.clear()
        for ns in self._created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self._created.clear()

    def run_in(self, ns: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside namespace `ns`; it is stopped at teardown if still running."""
        if ns not in (self.ns_a, self.ns_b):
            raise ValueError(f"{ns!r} is not one of this pair's namespaces")
        p = start_child(["ip", "netns", "exec", ns, *argv], **popen_kwargs)
        self._children.append(p)
        return p

    def cut(self) -> None:
        """Partition: B's end down, so A's packets vanish and its connects time out.

        (Setting A's own end down would fail fast with ENETUNREACH, which is not what a
        real outage looks like.)  Established connections survive a short cut.
        """
        _run(["ip", "-n", self.ns_b, "link", "set", self.dev_b, "down"])

    def restore(self) -> None:
        """Undo `cut`."""
        _run(["ip", "-n", self.ns_b, "link", "set", self.dev_b, "up"])

    def shape(self, rate_kbit: int) -> None:
        """Limit both directions to `rate_kbit` kbit/s with tbf; call again to change it."""
        # Burst must hold at least one full frame and about a timer tick of traffic at the
        # rate, else tbf throttles below the rate asked for; 10 ms worth covers HZ>=100.
        burst_bytes = max(4096, rate_kbit * 1000 // 8 // 100)
        for ns, dev in ((self.ns_a, self.dev_a), (self.ns_b, self.dev_b)):
            qdisc = ["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf"]
            _run([*qdisc, "rate", f"{rate_kbit}kbit", "burst", str(burst_bytes), "latency", "400ms"])

    def unshape(self) -> None:
        """Remove the bandwidth limit."""
        for ns, dev in ((self.ns_a, self.dev_a), (self.ns_b, self.dev_b)):
            subprocess.run(
                ["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"],
                capture_output=True,
                check=False,
            )


class NetnsLan:
    """Several hosts, each in its own network namespace, on one switched LAN: a bridge in
    a namespace of its own, one veth per host. Private 10.232.X.0/24 addresses, no default
    route, names with our pid and a random suffix (see NetnsPair).

        with NetnsLan(3) as lan:   # lan.namespaces[i], lan.addresses[i]
    """

    def __init__(self, hosts: int) -> None:
        suffix = f"{os.getpid()}-{random.randrange(1 << 24):06x}"
        self.switch = f"tv-sw-{suffix}"
        self.namespaces = [f"tv-h{i}-{suffix}" for i in range(hosts)]
        subnet = random.randrange(256)
        self.addresses = [f"10.232.{subnet}.{i + 1}" for i in range(hosts)]
        self._created: list[str] = []

    def __enter__(self) -> NetnsLan:
        try:
            for ns in (self.switch, *self.namespaces):
                _run(["ip", "netns", "add", ns])
                self._created.append(ns)
            _run(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge"])
            _run(["ip", "-n", self.switch, "link", "set", "br0", "up"])
            for i, (ns, addr) in enumerate(zip(self.namespaces, self.addresses, strict=True)):
                _run(["ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p{i}",
                      "netns", self.switch])  # fmt: skip
                _run(["ip", "-n", self.switch, "link", "set", f"p{i}", "master", "br0"])
                _run(["ip", "-n", self.switch, "link", "set", f"p{i}", "up"])
                _run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0"])
                _run(["ip", "-n", ns, "link", "set", "lo", "up"])
                _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for ns in self._created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self._created.clear()
