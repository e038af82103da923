"""The repository role's mounts: each point in time served by its own FUSE child process.

pyfuse3 serves one filesystem per process, so ``twinvault mount`` asks the daemon, which
checks the request (FUSE present, image, point, mount point), freezes the instant and
starts ``python -m twinvault.daemon.mount_service SPEC`` in its own session. The child
opens its own catalog connection and a read-only view of the chunk store
(`ChunkStore.open_reader`: the daemon holds the store's lock), mounts, and says so on
its stdout (``{"ready": true}`` or ``{"error": ...}``); its log goes to
``repository/mounts/ID.log``.

Each mount is recorded in ``repository/mounts/ID.json`` (id, pid, mount point, image,
instant) while it lives. A child is stopped by SIGTERM to its process group (it unmounts
on the way out: lazily, as root, so a busy mount point never keeps it alive); one that
dies on its own leaves "Transport endpoint is not connected", which the daemon cleans
with ``fusermount3 -u -z`` as soon as it sees the exit. At daemon shutdown every mount is
stopped; after a crash of the daemon, the next start stops the children it left behind
(checked by their command line, so a reused pid is never signalled) and cleans their
mount points.

``--live`` mounts the live data as of the moment of the mount: history is committed and
the next instant is taken under the history lock, so every record before it is in the
catalog and none after it is shown. A mount never changes under its readers; mount again
to see later data.

While a mount lives, its instant is held against retention (`History.hold`): ``repo
prune`` stops its image's horizon at that instant, so neither the versions a mount
serves nor their chunks go while it is mounted. The hold ends with the mount (umount,
the child's death, the daemon's stop; a daemon restart ends every mount).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from twinvault.daemon.config import Home, HostConfig, load_config
from twinvault.daemon.history_setup import open_backend
from twinvault.durable import write_private
from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.pit.mountinfo import mounts
from twinvault.repository.catalog import open_catalog
from twinvault.timefmt import iso_from_ns

if TYPE_CHECKING:  # the mount child imports this module: it needs none of the daemon's
    from twinvault.daemon.history_service import HistoryService

log = logging.getLogger(__name__)

FUSE_DEVICE: Final = Path("/dev/fuse")
START_TIMEOUT: Final = 120.0  # opening the catalog and reading link counts of a big image
STOP_TIMEOUT: Final = 10.0
_CHILD_MODULE: Final = "twinvault.daemon.mount_service"


@dataclass(frozen=True)
class MountRecord:
    id: str
    pid: int
    mountpoint: str
    image: str
    point: str  # "live", "snapshot N" or the instant asked for
    t: int  # the instant served, ns
    started: float

    def view(self) -> dict[str, Any]:
        return {**asdict(self), "time": iso_from_ns(self.t)}


def check_fuse(device: Path = FUSE_DEVICE) -> str:
    """The path of fusermount3; FUSE_UNAVAILABLE naming everything that is missing."""
    missing = []
    if not device.exists():
        missing.append(f"{device} does not exist (no FUSE in this kernel or container)")
    fusermount = shutil.which("fusermount3")
    if fusermount is None:
        missing.append("fusermount3 is not installed (Debian package fuse3)")
    try:
        importlib.import_module("pyfuse3")
    except ImportError as exc:
        missing.append(f"pyfuse3 cannot be imported: {exc} (pip install 'twinvault[mount]')")
    if missing or fusermount is None:
        raise TwinvaultError(errors.FUSE_UNAVAILABLE, "; ".join(missing))
    return fusermount


def mounted_paths() -> set[str]:
    """Every mount point of this mount namespace (a dead FUSE mount included)."""
    return set(mounts())


def _absolute(path: str) -> str:
    if not os.path.isabs(path):
        raise TwinvaultError(errors.INVALID_ARGUMENT, f"a mount point is an absolute path: {path}")
    return os.path.normpath(path)


def check_mountpoint(path: str) -> str:
    """The mount point's real path if it is an existing, empty directory nothing is
    mounted on; MOUNTPOINT_NOT_DIRECTORY, MOUNTPOINT_BUSY or MOUNTPOINT_NOT_EMPTY."""
    path = _absolute(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TwinvaultError(errors.MOUNTPOINT_NOT_DIRECTORY, f"{path} does not exist") from None
    except OSError as exc:  # ENOTCONN: a FUSE server died and left its mount behind
        raise TwinvaultError(
            errors.MOUNTPOINT_BUSY, f"{path}: {exc.strerror} (a dead mount? fusermount3 -u {path})"
        ) from None
    real = os.path.realpath(path)
    if real in mounted_paths():
        raise TwinvaultError(errors.MOUNTPOINT_BUSY, f"{real} is a mount point")
    if not stat.S_ISDIR(st.st_mode):
        raise TwinvaultError(errors.MOUNTPOINT_NOT_DIRECTORY, f"{path} is not a directory")
    if os.listdir(real):
        raise TwinvaultError(errors.MOUNTPOINT_NOT_EMPTY, real)
    return real


class MountService:
    def __init__(self, home: Home, config: HostConfig, history: HistoryService) -> None:
        self._home = home
        self._config = config
        self._history = history
        self._dir = home.root / "repository" / "mounts"
        self._records: dict[str, MountRecord] = {}  # by mount point
        self._children: dict[str, asyncio.subprocess.Process] = {}  # by mount id
        self._watchers: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._spare: tuple[str, asyncio.subprocess.Process] | None = None
        self._stopping = False
        self._ready_notes: dict[str, str] = {}  # what each child said it spent, for the log
        self._holds: dict[str, int] = {}  # mount id -> its instant's hold against retention

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Stop what a previous run of the daemon left mounted (it crashed, or was killed)."""
        if not self._dir.exists():
            return
        for path in sorted(self._dir.glob("*.json")):
            try:
                record = MountRecord(**json.loads(path.read_bytes()))
            except (ValueError, TypeError) as exc:
                log.warning("mount record %s unreadable (%s): removed", path, exc)
                path.unlink(missing_ok=True)
                continue
            log.warning("cleaning mount %s of %s left by an earlier run", record.mountpoint, record.image)
            await asyncio.to_thread(_stop_orphan, record)
            await self._cleaned(record)

    async def stop(self) -> None:
        self._stopping = True
        async with self._lock:
            await self._discard_spare()
            for record in list(self._records.values()):
                await self._stop(record)

    # -- console operations --------------------------------------------------------------

    def mounts(self) -> list[dict[str, Any]]:
        return [r.view() for r in sorted(self._records.values(), key=lambda r: r.mountpoint)]

    async def mount(
        self, image: str, *, live: bool, snapshot: int | None, at: str | None, mountpoint: str
    ) -> dict[str, Any]:
        started = time.monotonic()
        await asyncio.to_thread(check_fuse)
        t, hold = await self._instant(image, live=live, snapshot=snapshot, at=at)
        point = "live" if live else f"snapshot {snapshot}" if snapshot is not None else str(at)
        try:
            async with self._lock:
                real = await asyncio.to_thread(check_mountpoint, mountpoint)
                checked = time.monotonic()
                record = await self._start_child(image, point, t, real)
                self._records[real] = record
                self._holds[record.id] = hold
        except BaseException:
            await self._release(hold)
            raise
        log.info(
            "mounted %s at %s (%s) in process %d: checks %.3f s, mount process %.3f s (%s)",
            image,
            real,
            point,
            record.pid,
            checked - started,
            time.monotonic() - checked,
            self._ready_notes.pop(record.id, ""),
        )
        return record.view()

    async def umount(self, mountpoint: str) -> dict[str, Any]:
        mountpoint = _absolute(mountpoint)
        async with self._lock:
            record = self._records.get(mountpoint) or self._records.get(os.path.realpath(mountpoint))
            if record is None:
                mine = ", ".join(sorted(self._records)) or "none"
                raise TwinvaultError(errors.NOT_A_MOUNT, f"{mountpoint} (twinvault mounts here: {mine})")
            await self._stop(record)
        return {**record.view(), "unmounted": True}

    # -- the instant ---------------------------------------------------------------------

    async def _instant(
        self, image: str, *, live: bool, snapshot: int | None, at: str | None
    ) -> tuple[int, int]:
        """The instant to serve and its hold against retention (`History.hold`), taken
        before the point is checked the last time, so a prune running meanwhile either
        sees the hold or has its records committed before the check."""
        from twinvault.pit.restore import resolve_point

        history = await asyncio.to_thread(self._history.history)
        url = self._home.catalog_url(self._config)

        def resolve() -> int | None:
            catalog = open_catalog(url)  # its own connection, as restore's
            try:
                return resolve_point(catalog, image, live=live, snapshot=snapshot, at=at)
            finally:
                catalog.close()

        def held() -> tuple[int, int]:
            t = resolve()
            if t is None:
                with history.lock:  # live: freeze it (see the module's docstring)
                    history.commit()
                    t = history.now()
                    return t, history.hold(image, t)
            hold = history.hold(image, t)
            try:
                history.commit()  # a prune recorded before the hold is in the catalog now
                resolve()  # ... and the point must still be valid after it
            except BaseException:
                history.release(hold)
                raise
            return t, hold

        return await asyncio.to_thread(held)

    async def _release(self, hold: int) -> None:
        history = self._history.opened  # a hold was taken: it is open (it may be closing)
        if history is not None:
            await asyncio.to_thread(history.release, hold)  # a collection may hold its lock

    # -- children ------------------------------------------------------------------------

    async def _spawn(self) -> tuple[str, asyncio.subprocess.Process]:
        """A mount process that has done its imports and waits for its spec on stdin."""
        self._dir.mkdir(parents=True, exist_ok=True)
        mount_id = secrets.token_hex(6)
        with open(self._dir / f"{mount_id}.log", "ab") as log_file:  # the child keeps its own
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                _CHILD_MODULE,
                mount_id,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                start_new_session=True,
            )
        return mount_id, proc

    async def _prepare_spare(self) -> None:
        """Start the process the next mount will use: its interpreter and imports (about
        half a second) are then paid before that mount is asked for, not while it waits."""
        if self._spare is None and not self._stopping:
            self._spare = await self._spawn()

    async def _discard_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            await _end(spare[1])
            (self._dir / f"{spare[0]}.log").unlink(missing_ok=True)

    async def _start_child(self, image: str, point: str, t: int, mountpoint: str) -> MountRecord:
        spec: dict[str, Any] = {
            "home": str(self._home.root),
            "image": image,
            "t": t,
            "mountpoint": mountpoint,
        }
        mount_id, proc = self._spare if self._spare is not None else await self._spawn()
        self._spare = None
        if not await _hand(proc, spec):  # the spare died meanwhile
            await _end(proc)
            (self._dir / f"{mount_id}.log").unlink(missing_ok=True)
            mount_id, proc = await self._spawn()
            await _hand(proc, spec)
        spare = asyncio.create_task(self._prepare_spare())
        self._watchers.add(spare)
        spare.add_done_callback(self._watchers.discard)
        log_path = self._dir / f"{mount_id}.log"
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
        except TimeoutError:
            line = b""
        reply = _parse_reply(line)
        if reply.get("ready") is not True:
            await _end(proc)
            await asyncio.to_thread(_unmount, mountpoint)
            tail = log_path.read_text(errors="replace")[-1500:].strip()
            log_path.unlink(missing_ok=True)
            if "error" in reply:
                raise TwinvaultError.from_json(reply)
            raise TwinvaultError(
                errors.MOUNT_FAILED, f"{mountpoint}: {tail or 'the mount process gave no answer'}"
            )
        record = MountRecord(mount_id, proc.pid, mountpoint, image, point, t, time.time())
        self._ready_notes[mount_id] = ", ".join(
            f"{k} {v:.3f} s" for k, v in reply.items() if isinstance(v, float)
        )
        write_private(self._dir / f"{mount_id}.json", json.dumps(asdict(record)).encode())
        self._children[mount_id] = proc
        watcher = asyncio.create_task(self._watch(record, proc))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return record

    async def _watch(self, record: MountRecord, proc: asyncio.subprocess.Process) -> None:
        """A child that exits while its mount is recorded died on its own (killed, or
        unmounted from outside): clean its mount point and forget it."""
        code = await proc.wait()
        async with self._lock:
            if self._records.get(record.mountpoint) is not record:
                return  # stopped by us
            log.warning("mount process %d of %s exited (%s): cleaning", proc.pid, record.mountpoint, code)
            await self._cleaned(record)

    async def _stop(self, record: MountRecord) -> None:
        proc = self._children.get(record.id)
        if proc is not None:
            await _end(proc)
        else:
            await asyncio.to_thread(_stop_orphan, record)
        await self._cleaned(record)
        log.info("unmounted %s from %s", record.image, record.mountpoint)

    async def _cleaned(self, record: MountRecord) -> None:
        """The child is gone: make sure nothing is left mounted, forget the record."""
        await asyncio.to_thread(_unmount, record.mountpoint)
        self._records.pop(record.mountpoint, None)
        self._children.pop(record.id, None)
        hold = self._holds.pop(record.id, None)
        if hold is not None:
            await self._release(hold)
        (self._dir / f"{record.id}.json").unlink(missing_ok=True)
        (self._dir / f"{record.id}.log").unlink(missing_ok=True)


def _parse_reply(line: bytes) -> dict[str, Any]:
    try:
        reply = json.loads(line) if line.strip() else {}
    except ValueError:
        return {}
    return reply if isinstance(reply, dict) else {}


async def _hand(proc: asyncio.subprocess.Process, spec: dict[str, Any]) -> bool:
    """Give a waiting mount process its spec; False if it is gone."""
    assert proc.stdin is not None
    try:
        proc.stdin.write(json.dumps(spec).encode() + b"\n")
        await proc.stdin.drain()
        proc.stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


async def _end(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM to the child's process group, SIGKILL if it does not go; reaped."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


def _is_our_child(record: MountRecord) -> bool:
    """The pid still runs this mount's child (not a stranger that reused the pid)."""
    try:
        cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes()
    except OSError:
        return False
    args = cmdline.split(b"\0")
    return _CHILD_MODULE.encode() in args and record.id.encode() in args


def _stop_orphan(record: MountRecord) -> None:
    """Stop a child this daemon did not start (a previous run's): by pid, once checked."""
    if not _is_our_child(record):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while _is_our_child(record) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _is_our_child(record):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, signal.SIGKILL)


def _unmount(mountpoint: str) -> None:
    """Detach whatever is still mounted there (a dead FUSE mount included)."""
    if mountpoint not in mounted_paths():
        return
    fusermount = shutil.which("fusermount3") or "fusermount3"
    done = subprocess.run([fusermount, "-u", "-z", mountpoint], capture_output=True, text=True)
    if done.returncode != 0 and mountpoint in mounted_paths():
        log.error("could not unmount %s: %s", mountpoint, done.stderr.strip())


# -- the child ---------------------------------------------------------------------------


def _serve_mount(spec: dict[str, Any], reply: Any) -> None:
    """In the child: open catalog and store read-only, build the filesystem, serve it."""
    from twinvault.pit.chunk_cache import ChunkCache
    from twinvault.pit.instant_tree import InstantTree
    from twinvault.pit.mount import PointInTimeFs, serve
    from twinvault.repository.chunkstore import ChunkStore

    home = Home(Path(spec["home"]))
    config = load_config(home)
    passphrase = (
        Path(config.store.passphrase_file).read_text().strip() if config.store.passphrase_file else None
    )
    key_file = Path(config.store.key_file) if config.store.key_file else None
    catalog = open_catalog(home.catalog_url(config))
    store = ChunkStore.open_reader(
        home.history_dir / "store", open_backend(home, config), passphrase=passphrase, key_file=key_file
    )
    cache = ChunkCache(store)
    try:
        opened = time.monotonic()
        tree = InstantTree(catalog, spec["image"], int(spec["t"]))
        fs = PointInTimeFs(tree, cache)
        seconds = {"open": opened - spec["waited"], "tree": time.monotonic() - opened}
        serve(fs, spec["mountpoint"], f"twinvault:{spec['image']}", lambda: reply({"ready": True, **seconds}))
    finally:
        cache.close()
        store.close()
        catalog.close()


def child_main(argv: list[str]) -> int:
    """``python -m twinvault.daemon.mount_service MOUNT_ID``: import what a mount needs,
    then wait for the spec (one JSON line on stdin; end of file: not needed, exit)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for module in ("twinvault.pit.mount", "twinvault.repository.chunkstore"):
        importlib.import_module(module)  # pyfuse3, trio, the store: before the spec arrives

    line = sys.stdin.readline()
    if not line.strip():
        return 0
    spec = json.loads(line)
    waited = time.monotonic()
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # nothing else may write into the reply pipe

    def reply(document: dict[str, Any]) -> None:
        if not answer.closed:
            answer.write(json.dumps(document) + "\n")
            answer.close()

    try:
        _serve_mount({**spec, "waited": waited}, reply)
    except TwinvaultError as exc:
        log.error("mount failed: %s", exc)
        reply(exc.to_json())
        return 1
    except Exception as exc:  # pyfuse3.init's RuntimeError, an unreadable config...
        log.exception("mount failed")
        reply(TwinvaultError(errors.MOUNT_FAILED, f"{spec.get('mountpoint')}: {exc}").to_json())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
