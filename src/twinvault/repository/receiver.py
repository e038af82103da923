"""The repository end of a protection link: handshake, manifest, apply, acknowledge.

One session per connected job. Frames are applied in order on the session's single
applier thread while the next ones are being received (pipelining, bounded by
``MAX_PENDING_BYTES``). Durability is a group commit: every ``ACK_INTERVAL`` the
index is committed, the image's filesystem is synced (``syncfs``) and only then is
the highest applied sequence number acknowledged. An ack therefore promises that
the op survives a crash of the repository, daemon or machine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import hmac
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twinvault import pagecache
from twinvault.ops import events as ev
from twinvault.ops.errors import TwinvaultError
from twinvault.protocol import messages as m
from twinvault.protocol.link import Link
from twinvault.repository.applier import Applier, Outcome, Stopped
from twinvault.repository.image_index import ImageIndex
from twinvault.repository.image_tree import ImageTree, remove_temporaries
from twinvault.repository.manifest import manifest_batches

if TYPE_CHECKING:
    from twinvault.repository.history import History, Recorder

log = logging.getLogger(__name__)

ACK_INTERVAL = 0.05
HEARTBEAT_INTERVAL = 2.0
# One call into the applier thread handles at most this much, so that the group
# commit (which runs on the same thread) and its acknowledgement keep flowing.
BATCH_FRAMES = 256
BATCH_BYTES = 8 * 1024 * 1024
# Silence from the source this long means the link is dead even if TCP has not
# noticed (a cut cable sends no reset). Generous, because a source whose frames wait
# behind our own full buffers is not silent, only stuck behind us.
PEER_TIMEOUT = 60.0
MAX_PENDING_BYTES = 16 * 1024 * 1024
Emit = Callable[..., Any]


@dataclass(slots=True)
class ImageJob:
    """The repository's record of one protection job writing into one image."""

    job_id: str
    source_name: str
    image_name: str
    image_root: str
    token: str
    created: float = 0.0
    cdp_days: float = 0.0  # continuous data protection window; 0 = live + snapshots only
    snapshot_every_s: float = 0.0  # 0 = no scheduled snapshots
    snapshot_start: float = 0.0  # epoch seconds of the first one; 0 = when the job was created
    snapshot_schedule_enabled: bool = True
    kind: str = "protection"  # or "recovery": the receiving end of a Data Recovery job (no history)
    connected: bool = False
    peer: str = ""
    session: Any = None  # the live Session, replaced when the source reconnects
    last_status: dict[str, Any] = field(default_factory=dict)
    ops_applied: int = 0
    bytes_received: int = 0
    target_status: str = "Idle"
    retrying: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "source_name": self.source_name,
            "image_name": self.image_name,
            "image_root": self.image_root,
            "token": self.token,
            "created": self.created,
            "cdp_days": self.cdp_days,
            "snapshot_every_s": self.snapshot_every_s,
            "snapshot_start": self.snapshot_start,
            "snapshot_schedule_enabled": self.snapshot_schedule_enabled,
            "kind": self.kind,
        }


class Session:
    def __init__(
        self,
        job: ImageJob,
        link: Link,
        index_path: Path,
        emit: Emit,
        retry_limit: int,
        epoch: int,
        history: History | None = None,
    ) -> None:
        self.job = job
        self.history = history
        self.recorder: Recorder | None = None
        self.link = link
        self._emit = emit
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"apply-{job.job_id}")
        self._loop = asyncio.get_running_loop()
        self._index_path = index_path
        self._retry_limit = retry_limit
        self._epoch = epoch
        # Received messages not yet applied, each with its frame's size (the bound).
        self._pending: list[tuple[list[Any], int]] = []
        self._applying = False
        self._pending_bytes = 0
        # The clock (settled_now) read after the applier's latest changes: none of them has
        # a later ctime (see ``committed``).
        self._applied_through = 0
        self._has_work = asyncio.Event()
        # Set after a mark is applied: its group commit and ack go at once (a mark ends
        # a mirror, and the source says Idle only when it is acknowledged).
        self._ack_soon = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._applied_seq = 0
        self._acked_seq = 0
        self._skip_upto = 0
        self.tree: ImageTree | None = None
        self.index: ImageIndex | None = None
        self.applier: Applier | None = None
        self.replaced = False
        self.finished = asyncio.Event()
        self._recovered_seq = 0  # a recovery's complete mark, reported once it is committed
        # When this session opened, and the commit time of the sessions before it (None:
        # an index older than commit times): see ``committed``.
        self._opened = 0
        self._baseline: int | None = None
        self._resettle = False  # a commit's time is to be moved on once the stream is quiet

    def replace(self) -> None:
        """A new link for the same job arrived: end this one without draining and
        without discarding anything (the source resends what we did not acknowledge)."""
        self.replaced = True
        if self.applier is not None:
            self.applier.stop()
        self.link.abort()

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.finished.set()

    async def _run(self) -> None:
        await self._in_thread(self._open)
        receive = asyncio.create_task(self._receive())
        apply = asyncio.create_task(self._apply_loop())
        ack = asyncio.create_task(self._ack_loop())
        heartbeat = asyncio.create_task(self._heartbeat())
        tasks = [receive, apply, ack, heartbeat]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if receive in done and apply not in done and not self.replaced:
                # The source went away: every op that arrived whole is still applied
                # (a killed source's restarted mirror then skips it).
                await self._drain(apply)
            for task in done:
                task.result()
        finally:
            if self.applier is not None:
                self.applier.stop()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._in_thread(self._close)
            self._executor.shutdown(wait=False)

    async def _drain(self, apply: asyncio.Task[None]) -> None:
        deadline = self._loop.time() + 120
        while (self._pending or self._applying) and not apply.done() and self._loop.time() < deadline:
            self._has_work.set()
            await asyncio.sleep(0.02)

    def _in_thread(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        return self._loop.run_in_executor(self._executor, fn, *args)

    def _open(self) -> None:
        self.tree = ImageTree(Path(self.job.image_root))
        self.index = ImageIndex(self._index_path)
        if self.history is not None:
            self.recorder = self.history.recorder(self.job.image_name, self.job.job_id)
        self.applier = Applier(
            self.tree,
            self.index,
            self._emit,
            retry_limit=self._retry_limit,
            on_retrying=lambda retrying: setattr(self.job, "retrying", retrying),
            recorder=self.recorder,
        )
        self.applier.hold_written = True  # released by _ack_loop after each sync
        self._opened = settled_now()  # every change this session's applier makes is later
        self._baseline = self.index.settled(self.job.job_id)
        epoch, last = self.index.stream_position(self.job.job_id)
        # Ops a reconnecting source resends that were already applied are skipped.
        self._skip_upto = last if epoch == self._epoch else 0
        self._applied_seq = self._acked_seq = self._skip_upto

    def _close(self) -> None:
        if self.applier is not None:
            self.applier.abort_transfer()
            self.applier.close()
        if self.history is not None and self.recorder is not None:
            self.recorder.close()
            # The link is down: the range valid for recovery ends now.
            self.recorder.link_down()
            self.history.forget_recorder(self.recorder)
            self.history.commit()
        if self.index is not None:
            settled = settled_now()  # nothing is applied any more
            try:
                if self.tree is not None:
                    # What the position below promises must be on the disk first: a
                    # source never resends an op at or below it.
                    _sync_filesystems(self.tree.root, self._index_path)
            except OSError as exc:
                # The last acknowledged position stands; the source resends the rest.
                log.error("image of %s not synced at close: %s", self.job.job_id, exc)
            else:
                self.index.set_stream_position(self.job.job_id, self._epoch, self._applied_seq, settled)
            self.index.close()
        if self.tree is not None:
            self.tree.close()

    async def _receive(self) -> None:
        while True:
            msg, size = await self.link.recv_sized(PEER_TIMEOUT)
            kind = msg[0]
            if kind in m.OP_KINDS:
                if len(msg) < 2 or not isinstance(msg[1], int):
                    raise TwinvaultError(-1007, f"{kind} without a sequence number")
                if msg[1] <= self._skip_upto:
                    continue
                await self._room.wait()
                self._pending.append((msg, size))
                self._pending_bytes += size
                if self._pending_bytes > MAX_PENDING_BYTES:
                    self._room.clear()
                self._has_work.set()
            elif kind == m.MANIFEST_REQ:
                self._pending.append((msg, size))
                self._pending_bytes += size
                self._has_work.set()
            elif kind == m.STATUS:
                if isinstance(msg[1], dict):
                    self.job.last_status = msg[1]
                # Heartbeat answer: tells the source the link and this daemon are alive.
                await self.link.send([m.ACK, self._acked_seq])
                await self.link.flush()
            else:
                raise TwinvaultError(-1007, f"unexpected {kind!r} from a source")

    async def _heartbeat(self) -> None:
        """Tell the source we are alive even while its frames wait behind our buffers."""
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            await self.link.send([m.ACK, self._acked_seq])
            await self.link.flush()

    def _take_batch(self) -> list[list[Any]]:
        taken, size = 0, 0
        for _, frame_size in self._pending:
            taken += 1
            size += frame_size
            if taken >= BATCH_FRAMES or size >= BATCH_BYTES:
                break
        batch = [msg for msg, _ in self._pending[:taken]]
        del self._pending[:taken]
        self._pending_bytes = max(0, self._pending_bytes - size)
        if self._pending_bytes <= MAX_PENDING_BYTES:
            self._room.set()
        if self._pending:
            self._has_work.set()
        return batch

    async def _apply_loop(self) -> None:
        while True:
            await self._has_work.wait()
            self._has_work.clear()
            batch = self._take_batch()
            if not batch:
                continue
            self._applying = True
            try:
                replies = await self._in_thread(self._apply_batch, batch)
            finally:
                self._applying = False
            if any(msg[0] == m.MARK for msg in batch):
                self._ack_soon.set()
            for reply in replies:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.link.send(reply)
            if replies:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.link.flush()

    def _apply_batch(self, batch: list[list[Any]]) -> list[list[Any]]:
        assert self.applier is not None and self.tree is not None and self.index is not None
        self.job.target_status = "Processing"
        applied = self.job.ops_applied
        with self.applier.batch():
            replies = self._apply_in_batch(batch)
        if self.job.ops_applied != applied:  # the batch's end restored directory times too
            self._applied_through = settled_now()
        return replies

    def _apply_in_batch(self, batch: list[list[Any]]) -> list[list[Any]]:
        assert self.applier is not None
        replies: list[list[Any]] = []
        applied = self.job.ops_applied
        for msg in batch:
            if msg[0] == m.MANIFEST_REQ:
                for reply in replies:  # answers to earlier ops keep their order
                    self._send_from_thread(reply)
                replies = []
                self.applier.settle_times()  # the manifest reports the directories' times
                if self.job.ops_applied != applied:
                    self._applied_through = settled_now()
                self._send_manifest(msg)
                continue
            try:
                outcome = self.applier.apply(msg)
            except Stopped:
                break  # replaced or shutting down: the source resends what we did not ack
            if outcome is None:
                continue
            self._applied_seq = outcome.seq
            self.job.ops_applied += 1
            if msg[0] == m.MARK and len(msg) > 2 and msg[2] == m.MARK_RECOVERY_COMPLETE:
                self._recovered_seq = outcome.seq
            self.job.bytes_received += outcome.bytes_written
            answer = _reply_for(outcome)
            if answer is not None:
                replies.append(answer)
        return replies

    def _send_manifest(self, msg: list[Any]) -> None:
        """Stream the manifest batch by batch from the applier thread, one batch on the
        link while the walk makes the next: waiting for the one before holds the walk
        back to the link's pace instead of building it all in memory, and waiting for
        each before walking on left the disk idle while the link sent."""
        assert self.tree is not None and self.index is not None
        roots = [r for r in msg[2] if isinstance(r, bytes)]
        committed = self.committed()
        pending: list[list[Any]] | None = None
        sending: concurrent.futures.Future[None] | None = None
        batches = manifest_batches(self.tree, self.index, roots, checksum=bool(msg[3]), committed=committed)
        for entries in batches:
            if pending is not None:
                if sending is not None:
                    sending.result()
                sending = self._send_soon([m.MANIFEST, msg[1], pending, False])
            pending = entries
        if sending is not None:
            sending.result()
        self._send_from_thread([m.MANIFEST, msg[1], pending or [], True])

    def committed(self) -> Callable[[int], bool] | None:
        """Whether a manifest may trust a change of the image made at a ctime: made before
        the last commit of the sessions before this one (read when it opened), or made by
        this session's applier: at or after it opened, and before its own last commit or
        by the clock read after its latest batch. A change between the baseline and the
        opening is no op's of this session: what a killed repository left in the image
        without committing it. (Its commits' times alone would vouch for that too: a
        mirror's start mark is committed before the manifest is asked for.) A change
        after both is someone else's, until a later commit covers it."""
        assert self.index is not None
        latest = self.index.settled(self.job.job_id)
        baseline, opened = self._baseline, self._opened
        if baseline is None or latest is None:
            return None
        # The applier's changes not committed yet are still its own: a manifest right
        # after a change (a verify for one) must not report it.
        mine = max(latest - 1, self._applied_through)
        return lambda ctime_ns: ctime_ns < baseline or opened <= ctime_ns <= mine

    def _send_from_thread(self, message: list[Any]) -> None:
        self._send_soon(message).result()

    def _send_soon(self, message: list[Any]) -> concurrent.futures.Future[None]:
        async def send() -> None:
            await self.link.send(message)
            await self.link.flush()

        return asyncio.run_coroutine_threadsafe(send(), self._loop)

    async def _ack_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ack_soon.wait(), ACK_INTERVAL)
            self._ack_soon.clear()
            # Every change of the image made before this instant belongs to an op at or
            # below ``seq``; one made after it has a ctime at or after it.
            settled = settled_now()
            seq = self._applied_seq
            if seq <= self._acked_seq:
                if self._resettle and not self._applying and self.index is not None:
                    # Quiet since the last commit: move its time past the changes made in
                    # the clock tick it read, which a manifest would otherwise distrust.
                    self._resettle = False
                    await self._in_thread(self._commit, seq, settled)
                continue
            # Taken before the sync: the files it makes durable, released after it.
            written = self.applier.take_written() if self.applier is not None else []
            try:
                if self.history is not None:
                    # Chunks and journal records are durable before the image index says
                    # the ops are applied, and before anything is acknowledged
                    # (docs/history.md). Off the applier's thread: it goes on applying
                    # while the disk syncs.
                    await asyncio.to_thread(self._commit_history)
                await self._in_thread(self._commit, seq, settled)
                assert self.tree is not None
                # syncfs covers the image files and the index's WAL when they share a
                # filesystem; the index directory is synced separately when it does not.
                await asyncio.to_thread(_sync_filesystems, self.tree.root, self._index_path)
            except BaseException:
                for fd in written:
                    os.close(fd)
                raise
            await asyncio.to_thread(pagecache.release_written, written)
            self._acked_seq = seq
            self._resettle = True
            await self.link.send([m.ACK, seq])
            await self.link.flush()
            if self._recovered_seq and seq >= self._recovered_seq and self.job.kind == "recovery":
                self._recovered_seq = 0
                self._emit(ev.RECOVERY_RECEIVED, job=self.job.job_id, source=self.job.source_name,
                           ops=self.job.ops_applied, path=self.job.image_root)  # fmt: skip

    def _commit_history(self) -> None:
        assert self.history is not None
        if self.recorder is not None:
            self.recorder.wait_recorded()  # raises if the history of an applied op failed
        self.history.commit()

    def _commit(self, seq: int, settled: int) -> None:
        assert self.index is not None
        self.index.set_stream_position(self.job.job_id, self._epoch, seq, settled)
        self.index.commit()


_libc = ctypes.CDLL(None, use_errno=True)
# The clock the kernel stamps ctimes with (``current_time``): reading it, not the precise
# one, a change made after the read can never carry an earlier ctime (the coarse clock
# lags by up to a tick).
_CLOCK_REALTIME_COARSE = 5


def settled_now() -> int:
    """Now, as a ctime of a change made from now on would be at least."""
    return time.clock_gettime_ns(_CLOCK_REALTIME_COARSE)


def syncfs(fd: int) -> None:
    """syncfs(2): flush one filesystem (Python's os module has no binding)."""
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _sync_filesystems(image_root: Path, index_path: Path) -> None:
    # syncfs needs a real descriptor (an O_PATH one gives EBADF).
    image_fd = os.open(image_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    index_fd = os.open(index_path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        syncfs(image_fd)
        if os.fstat(index_fd).st_dev != os.fstat(image_fd).st_dev:
            syncfs(index_fd)
    finally:
        os.close(image_fd)
        os.close(index_fd)


def _committed_seq(index_path: Path, job_id: str, epoch: int) -> int:
    index = ImageIndex(index_path)
    try:
        committed_epoch, last = index.stream_position(job_id)
    finally:
        index.close()
    return last if committed_epoch == epoch else 0


def _reply_for(outcome: Outcome) -> list[Any] | None:
    if outcome.status == "need":
        return [m.NEED, outcome.seq, outcome.path]
    if outcome.status == "failed":
        return [m.APPLY_FAILED, outcome.seq, outcome.path, outcome.code, outcome.message]
    return None


def authenticate(job: ImageJob | None, token: object) -> ImageJob:
    if job is None or not isinstance(token, str) or not hmac.compare_digest(job.token, token):
        raise TwinvaultError(-1009, "unknown job or wrong job credential")
    return job


def negotiate_version(hello: dict[str, Any]) -> int:
    version = hello.get("version")
    if hello.get("proto") != m.PROTOCOL_NAME or not isinstance(version, int):
        raise TwinvaultError(-1007, "not a twinvault hello")
    if version > m.PROTOCOL_VERSION or version < m.MIN_SUPPORTED_VERSION:
        raise TwinvaultError(
            -157,
            f"source speaks protocol {version}, "
            f"this repository {m.MIN_SUPPORTED_VERSION}..{m.PROTOCOL_VERSION}",
        )
    return version


async def serve_peer(
    link: Link,
    *,
    find_job: Callable[[str], ImageJob | None],
    index_path_for: Callable[[ImageJob], Path],
    emit: Emit,
    retry_limit: int,
    history: History | None = None,
) -> None:
    """Handle one peer connection from a source until it ends; never raises."""
    job: ImageJob | None = None
    try:
        hello = await link.recv(15)
        if hello[0] != m.HELLO or len(hello) < 2 or not isinstance(hello[1], dict):
            raise TwinvaultError(-1007, "first frame is not a hello")
        info = hello[1]
        try:
            version = negotiate_version(info)
            job = authenticate(find_job(str(info.get("job", ""))), info.get("token"))
        except TwinvaultError as exc:
            emit(ev.PEER_REJECTED, peer=link.peer, reason=exc.message)
            await link.send([m.REFUSE, exc.code, exc.message])
            await link.flush()
            return
        old = job.session
        if old is not None:
            # The source is the authority on its own connection: a new hello means the
            # old link is dead (cut, or the source restarted). End it, and wait until it
            # has closed the image index, before this one opens it.
            old.replace()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(old.finished.wait(), 60)
        epoch = int(info.get("epoch", 0))
        if job.kind == "recovery":
            # A recovery target has no manifest walk to sweep what a killed writer left.
            await asyncio.to_thread(remove_temporaries, Path(job.image_root))
        # The last op this job's stream committed here: a sender that can regenerate its
        # stream (a recovery) resumes after it instead of sending it all again.
        last_seq = await asyncio.to_thread(_committed_seq, index_path_for(job), job.job_id, epoch)
        welcome = {"version": version, "image_root": job.image_root, "epoch": epoch, "last_seq": last_seq}
        await link.send([m.WELCOME, welcome])
        await link.flush()
        session = Session(
            job,
            link,
            index_path_for(job),
            emit,
            retry_limit,
            epoch,
            history if job.kind == "protection" else None,
        )
        job.connected = True
        job.peer = link.peer
        job.session = session
        job.target_status = "Processing"
        if job.kind == "recovery":
            emit(ev.RECOVERY_RECEIVING, job=job.job_id, source=job.source_name, address=link.peer,
                 path=job.image_root)  # fmt: skip
        await session.run()
    except TwinvaultError as exc:
        emit(ev.MALFORMED_FRAME, peer=link.peer, reason=exc.message)
        with contextlib.suppress(Exception):
            await link.send([m.REFUSE, exc.code, exc.message])
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
        log.info("peer %s: link ended (%s)", link.peer, exc)
    finally:
        if job is not None and job.session is not None and job.session.link is link:
            job.connected = False
            job.session = None
            job.target_status = "Idle"
        await link.close()
