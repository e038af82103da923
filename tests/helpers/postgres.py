"""A throwaway PostgreSQL server for tests and benchmarks (TESTBED.md, "PostgreSQL").

`running_postgres()` runs initdb into a fresh temp dir and starts ``postgres`` as a child
(`procs.start_child`, its own process group) listening only on a Unix socket in that dir;
it yields a `PostgresServer` whose `url(dbname)` is a psycopg conninfo and `create_database`
makes a fresh database per test. At exit the server is stopped by pid (SIGINT: fast
shutdown, which also ends open client sessions), waited for, and the dir removed.
`postgres_server_fixture()` makes the module-scoped pytest fixture of it, which skips
(saying why) where PostgreSQL is not installed.

initdb and postgres refuse to run as root: as root they run as the ``postgres`` user, and
the temp dir is chowned to it first (mkdtemp makes it 0700 root).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.procs import start_child, stop_child

READY_TIMEOUT = 20.0
# Unix socket only; a test server needs no durability.
_SETTINGS = ("-c", "listen_addresses=", "-c", "fsync=off", "-c", "synchronous_commit=off")


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL bin dir holding initdb and postgres, or None."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
    )
    for bindir in reversed(candidates):
        if os.access(f"{bindir}/initdb", os.X_OK) and os.access(f"{bindir}/postgres", os.X_OK):
            return Path(bindir)
    return None


def free_port() -> int:
    """A TCP port nobody listens on now: it only names the socket file here, but two
    servers sharing a number could not share a socket dir by mistake."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    socket_dir: Path
    port: int
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@/{dbname}?host={self.socket_dir}&port={self.port}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its conninfo URL."""
        import psycopg

        name = f"{prefix}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_postgres() -> dict[str, Any]:
    """Popen arguments that drop root to the postgres user (nothing when not root)."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a private PostgreSQL; RuntimeError if its binaries are missing or it fails."""
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin")
    # Short path: the socket path must stay under 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="tvpg", dir="/tmp"))
    server = None
    try:
        data = root / "data"
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(root, pw.pw_uid, pw.pw_gid)
        subprocess.run(
            [f"{bindir}/initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
            check=True,
            capture_output=True,
            cwd=root,
            **_as_postgres(),
        )
        port = free_port()
        log = open(root / "postgres.log", "wb")  # noqa: SIM115 (closed with the server)
        try:
            server = start_child(
                [f"{bindir}/postgres", "-D", str(data), "-k", str(root), "-p", str(port), *_SETTINGS],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=root,
                **_as_postgres(),
            )
        finally:
            log.close()
        pg = PostgresServer(root, port)
        _wait_ready(pg, server, root)
        yield pg
    finally:
        if server is not None:
            _stop(server)
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(pg: PostgresServer, server: subprocess.Popen[Any], root: Path) -> None:
    import psycopg

    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"postgres exited with {server.returncode}: {_log_tail(root)}")
        try:
            psycopg.connect(pg.url(), connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres not ready after {READY_TIMEOUT}s: {_log_tail(root)}") from None
            time.sleep(0.05)


def _stop(server: subprocess.Popen[Any]) -> None:
    # SIGINT is PostgreSQL's fast shutdown: it ends client sessions instead of waiting for
    # them (SIGTERM, what stop_child sends first, waits for every client to leave).
    with contextlib.suppress(ProcessLookupError):
        os.kill(server.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(10)
    stop_child(server)  # reaps it, or ends it (and its group) if it is still running


def _log_tail(root: Path) -> str:
    try:
        return (root / "postgres.log").read_text(errors="replace")[-2000:]
    except OSError as e:
        return f"(no log: {e})"


def postgres_server_fixture() -> Any:
    """A module-scoped fixture yielding a running `PostgresServer`; in a test module:
    ``postgres_server = postgres_server_fixture()``."""

    @pytest.fixture(scope="module")
    def postgres_server() -> Iterator[PostgresServer]:
        if postgres_bin() is None:
            pytest.skip("PostgreSQL binaries not installed (no /usr/lib/postgresql/*/bin/initdb)")
        with running_postgres() as pg:
            yield pg

    return postgres_server
