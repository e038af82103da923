"""The reference side of every benchmark: rsync over ssh to a private sshd on loopback.

Benchmarks print twinvault's figure next to rsync's from the same run.  `RsyncOverSsh`
starts its own sshd on a free 127.0.0.1 port with throwaway host and client keys (the
TESTBED recipe), so the reference needs no system ssh setup and leaves nothing behind:
keys live in a temp dir and sshd is stopped by its pid.

    python bench/reference.py --selftest    # rsync a 1,000-file corpus, print the figures
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

SSHD = "/usr/sbin/sshd"
_START_TIMEOUT = 10.0


@dataclass(frozen=True)
class RsyncResult:
    seconds: float  # wall time of the whole rsync run, ssh handshake included
    bytes_sent: int  # rsync's "Total bytes sent": what went over the wire, protocol included


def _free_port() -> int:
    # The port is free when we look; sshd binds it a moment later.  Good enough for a
    # benchmark on one machine; a lost race shows up as sshd failing to start.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _keygen(path: str) -> str:
    """Create an ed25519 key pair at `path`; return the public key line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)
    with open(path + ".pub") as f:
        return f.read().strip()


def parse_bytes_sent(stats: str) -> int:
    """Return "Total bytes sent" from `rsync --stats` output (digits may have commas)."""
    m = re.search(r"^Total bytes sent:\s*([\d,.]+)", stats, re.MULTILINE)
    if not m:
        raise ValueError("rsync --stats output has no 'Total bytes sent' line")
    return int(re.sub(r"[,.]", "", m.group(1)))


class RsyncOverSsh:
    """A private sshd on 127.0.0.1 for rsync to push to; use as a context manager."""

    def __init__(self) -> None:
        self._dir = ""
        self._sshd: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.client_key = ""
        self.known_hosts = ""

    def __enter__(self) -> RsyncOverSsh:
        self._dir = tempfile.mkdtemp(prefix="tv-bench-sshd-")
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _start(self) -> None:
        d = self._dir
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
        host_pub = _keygen(os.path.join(d, "host_key"))
        self.client_key = os.path.join(d, "client_key")
        client_pub = _keygen(self.client_key)
        with open(os.path.join(d, "authorized_keys"), "w") as f:
            f.write(client_pub + "\n")
        self.port = _free_port()
        self.known_hosts = os.path.join(d, "known_hosts")
        with open(self.known_hosts, "w") as f:
            f.write(f"[127.0.0.1]:{self.port} {host_pub}\n")
        config = os.path.join(d, "sshd_config")
        with open(config, "w") as f:
            f.write(
                f"Port {self.port}\n"
                "ListenAddress 127.0.0.1\n"
                f"HostKey {d}/host_key\n"
                f"AuthorizedKeysFile {d}/authorized_keys\n"
                "PermitRootLogin prohibit-password\n"
                "PasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\n"
                "UsePAM no\n"
                # The temp dir is not root-owned-and-755 all the way up; skip the check.
                "StrictModes no\n"
                # Never touch the system sshd's pid file.
                "PidFile none\n"
            )
        log = open(os.path.join(d, "sshd.log"), "wb")  # noqa: SIM115 - lives as long as sshd
        try:
            self._sshd = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", config],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()  # the child holds its own copy
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self._sshd.poll() is not None:
                raise RuntimeError(f"sshd exited at start ({self._sshd.returncode}): {self._log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"sshd not listening after {_START_TIMEOUT}s: {self._log_tail()}"
                    ) from None
                time.sleep(0.02)

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self._dir, "sshd.log"), errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return "(no log)"

    def close(self) -> None:
        """Stop sshd (by its pid) and remove the keys."""
        if self._sshd is not None:
            if self._sshd.poll() is None:
                self._sshd.terminate()
                try:
                    self._sshd.wait(5)
                except subprocess.TimeoutExpired:
                    self._sshd.kill()
                    self._sshd.wait(5)
            self._sshd = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = ""

    def ssh_command(self) -> list[str]:
        """The ssh command line rsync runs: our key, our known_hosts, no prompts."""
        return [
            "ssh", "-F", "/dev/null", "-i", self.client_key, "-p", str(self.port),
            "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
        ]  # fmt: skip

    def rsync(self, src_dir: str, dst_dir: str, extra_args: Sequence[str] = ()) -> RsyncResult:
        """Run `rsync -a --stats` from `src_dir` to `dst_dir` over ssh; time it."""
        if self._sshd is None:
            raise RuntimeError("RsyncOverSsh is not started (use it in a with block)")
        argv = [
            "rsync", "-a", "--stats", *extra_args,
            "-e", shlex.join(self.ssh_command()),
            src_dir.rstrip("/") + "/",
            f"root@127.0.0.1:{dst_dir.rstrip('/')}/",
        ]  # fmt: skip
        started = time.perf_counter()
        res = subprocess.run(argv, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if res.returncode != 0:
            raise RuntimeError(f"rsync failed ({res.returncode}): {res.stderr.strip()}")
        return RsyncResult(seconds=seconds, bytes_sent=parse_bytes_sent(res.stdout))


def _selftest() -> int:
    # Imported here: corpus sits beside this file and is on sys.path when run as a script.
    from corpus import make_small_files

    with tempfile.TemporaryDirectory(prefix="tv-bench-selftest-") as tmp:
        src, dst = os.path.join(tmp, "src"), os.path.join(tmp, "dst")
        total = make_small_files(src, count=1000)
        with RsyncOverSsh() as ref:
            first = ref.rsync(src, dst)
            again = ref.rsync(src, dst)
        print(f"corpus: 1000 files, {total} bytes")
        print(f"rsync initial:   {first.seconds:.3f} s, {first.bytes_sent} bytes sent")
        print(f"rsync unchanged: {again.seconds:.3f} s, {again.bytes_sent} bytes sent")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--selftest", action="store_true", help="rsync a 1,000-file corpus and print the figures"
    )
    args = parser.parse_args(argv)
    if args.selftest:
        return _selftest()
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
