"""``twinvault serve``: run a host until SIGTERM or SIGINT, then shut down cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import signal

from aiohttp import web

from twinvault.api.server import build_app
from twinvault.daemon.config import Home, load_config
from twinvault.daemon.cpus import confine
from twinvault.daemon.host import Host
from twinvault.memory import keep_freed_memory
from twinvault.ops import errors
from twinvault.ops import events as ev
from twinvault.ops.errors import TwinvaultError
from twinvault.protocol.tls import server_context

log = logging.getLogger(__name__)


async def serve(home: Home) -> None:
    host = Host(home)
    try:
        await host.start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            host.emit(ev.PORT_CONFLICT, error=str(exc))
            raise TwinvaultError(errors.INVALID_ARGUMENT, f"a port of this host is in use: {exc}") from exc
        raise
    app = build_app(host)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(
        runner,
        host.config.bind_address,
        host.config.api_port,
        ssl_context=server_context(home.cert, home.key),
    )
    try:
        await site.start()
    except OSError as exc:
        await host.stop()
        if exc.errno == errno.EADDRINUSE:
            host.emit(ev.PORT_CONFLICT, error=str(exc))
            raise TwinvaultError(errors.INVALID_ARGUMENT, f"the API port is in use: {exc}") from exc
        raise
    log.info(
        "twinvault %s serving: peer port %d, api port %d",
        host.config.name,
        host.config.peer_port,
        host.config.api_port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await host.stop()


def run(home: Home) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Before any thread starts: each keeps the CPUs it was started with.
    cpus = confine(load_config(home).cpus)
    log.info("running on CPUs %s", ",".join(str(c) for c in sorted(cpus)))
    keep_freed_memory()
    _raise_open_files_limit()
    asyncio.run(serve(home))


def _raise_open_files_limit() -> None:
    """Up to the hard limit (at most 65536): a repository holds a descriptor per cached
    image directory and per file written since the last group commit, a source one per
    watched directory with inotify; systemd's default soft limit of 1024 is too few."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
