"""A protection job on its source: capture, mirror, read, queue, send; and its status.

Lifecycle (the seed's): connect -> difference mirror (Calculating, Mirroring) ->
replication (Replicating) with the mirror Idle. Any disconnect -> the source keeps
capturing and queueing, reconnects with backoff (events 4009/4010) and runs a
difference mirror, because capture is a hint and the mirror is the truth. A queue
that fills up auto-disconnects (4007/4008) and drops its content: the next mirror
finds everything it held.

Threads: the event loop runs capture, the session and timers; one reader thread turns
the change set into ops (file I/O, chunking, hashing never run on the loop); the link's
own thread takes queued frames (``_take_frames``) and does the TLS and socket work.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twinvault.clock import Clock
from twinvault.compression import compressor_for
from twinvault.durable import write_private
from twinvault.memory import release_free_memory
from twinvault.ops import events as ev
from twinvault.ops.errors import TwinvaultError
from twinvault.protocol import messages as m
from twinvault.protocol.bandwidth import BandwidthKeeper, BandwidthSchedule
from twinvault.protocol.connection import open_peer_link
from twinvault.protocol.link import Link
from twinvault.protocol.transmission import Receiver
from twinvault.source.capture import CaptureUnavailable, Change, ChangeCapture, ChangeKind, open_capture
from twinvault.source.changeset import Barrier, ChangeSet
from twinvault.source.job_status import Rate, job_status
from twinvault.source.mirror import MirrorPlan, PlanBuilder, SourceWalk, plan_mirror, walk_selection
from twinvault.source.opstream import OpStream
from twinvault.source.queue import OpQueue, QueuedFrame, QueueExhausted, QueueLimits
from twinvault.source.reader import Reader
from twinvault.source.remote_view import RemoteView, manifest_entries
from twinvault.source.selection import Selection

log = logging.getLogger(__name__)

Emit = Callable[..., Any]
RECONNECT_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
# The repository answers every status frame (sent at least every STATUS_INTERVAL);
# this long without any frame from it means the link is dead.
STATUS_INTERVAL = 2.0
READ_AHEAD_BYTES = 8 * 1024 * 1024
LINK_TIMEOUT = 10.0
RELEASE_AFTER = 2.0  # seconds from a mirror's end to handing its memory back
CAPTURE_RETRY_S = 60.0  # change capture that failed is started again this often
MIRROR_MARK = m.MARK_MIRROR_COMPLETE


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What the console asked for; persisted as the job's file on the source."""

    job_id: str
    source_name: str
    repository_name: str
    repository_address: str
    repository_peer_port: int
    repository_fingerprint: str
    token: str
    roots: tuple[str, ...]
    excludes: tuple[str, ...] = ()
    image_location: str = ""
    delete_orphans: bool = False
    stopped: bool = False
    job_type: str = "Data Protection"
    compression: str = "none"  # none | minimum | medium | maximum (twinvault.compression)
    bandwidth: dict[str, Any] = field(default_factory=dict)  # a BandwidthSchedule's JSON
    route: str = ""  # the repository's address to send to ("": repository_address)
    bind_address: str = ""  # the local address to send from ("": the system's choice)

    @property
    def peer_address(self) -> str:
        """Where the link goes: the route when one is chosen."""
        return self.route or self.repository_address

    @property
    def receiver(self) -> Receiver:
        return Receiver(
            self.repository_address,
            self.repository_peer_port,
            self.repository_name,
            self.repository_fingerprint,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(raw: dict[str, Any]) -> JobSpec:
        raw = dict(raw)
        raw["roots"] = tuple(raw["roots"])
        raw["excludes"] = tuple(raw.get("excludes", ()))
        return JobSpec(**raw)


@dataclass(slots=True)
class MirrorState:
    status: str = "Idle"  # Calculating | Mirroring | Idle | Paused | Stopped
    bytes_to_send: int = 0
    bytes_sent: int = 0
    skipped_bytes: int = 0
    orphans: list[str] = field(default_factory=list)
    started: float = 0.0
    complete: bool = False  # the last mirror finished and was acknowledged
    mark_seq: int = 0
    bytes_acked: int = 0  # mirror bytes the repository holds durably
    # (seq, mirror bytes sent up to it): turns acknowledgements into progress
    checkpoints: deque[tuple[int, int]] = field(default_factory=deque)


class ProtectionJob:
    def __init__(
        self,
        spec: JobSpec,
        queue_dir: Path,
        queue_limits: QueueLimits,
        emit: Emit,
        *,
        capture_method: str = "auto",
        shutdown_command: str = "",
        clock: Clock | None = None,
    ) -> None:
        self.spec = spec
        self.selection = Selection(spec.roots, spec.excludes)
        self._emit = emit
        self._capture_method = capture_method
        self._shutdown_command = shutdown_command
        self.changes = ChangeSet()
        self._loop = asyncio.get_running_loop()
        self.queue = OpQueue(queue_dir / spec.job_id, queue_limits, notify=self._notify_sender)
        self._stream_file = queue_dir / spec.job_id / "stream.json"
        self.stream = self._restore_stream()
        self.view = RemoteView()
        self.reader = Reader(self.selection, self.view, self.stream, self._mark_again, self._on_mark)
        self.reader.wait_for_room = self._wait_for_room
        self.reader.compression = compressor_for(spec.compression)
        self.mirror = MirrorState()
        self.replication_status = "Pending"
        self.transmit_status = "Stopped"
        self.target_status = "Unknown"
        self.connected = False
        self.capture_kind = ""
        self.capture_error: str | None = None  # why change capture is not running, if it failed
        self.last_error: dict[str, Any] | None = None
        self.failed_paths: list[str] = []
        self.bytes_sent_mirror = 0
        self.bytes_sent_replication = 0
        # The same bytes as they went on the wire, compressed (the seed's "sent compressed").
        self.bytes_sent_mirror_compressed = 0
        self.bytes_sent_replication_compressed = 0
        self.wire_bytes_tx = 0
        self._discarding = False
        # job set moved the link (route, bind address): the next session continues the
        # stream instead of running a difference mirror (see _session)
        self._handover = False
        self._remirror = asyncio.Event()
        self._checksum_next = False
        self._verify_waiters: list[asyncio.Future[MirrorPlan]] = []
        self._manifest_waiter: asyncio.Future[RemoteView] | None = None
        self._manifest_view = RemoteView()
        self._planning: PlanBuilder | None = None  # the running difference mirror's plan
        # Set once change capture is on (or failed to start): no mirror walks before it,
        # or a file the walk passed before its directory was watched could change unseen
        # until the next mirror (inotify places its watches on a walk of its own).
        self._capture_settled = asyncio.Event()
        self._stopping = threading.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._reader_thread: threading.Thread | None = None
        self._link: Link | None = None
        self.throughput = Rate()
        self._sent_seq = 0
        self._link_tasks: tuple[asyncio.Task[None], ...] = ()
        self.bandwidth = BandwidthKeeper(
            BandwidthSchedule.from_json(spec.bandwidth), clock or Clock(), emit, self._fields
        )

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        self._stopping.clear()
        self._capture_settled.clear()
        self.capture_error = None
        self.bandwidth.start()
        self._reader_thread = threading.Thread(
            target=self._reader_loop, name=f"reader-{self.spec.job_id}", daemon=True
        )
        self._reader_thread.start()
        self._tasks = [
            asyncio.create_task(self._capture_loop(), name="capture"),
            asyncio.create_task(self._connection_loop(), name="connection"),
        ]

    async def stop(self) -> None:
        self._stopping.set()
        self.changes.wake()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        await self.bandwidth.stop()
        if self._reader_thread is not None:
            await asyncio.to_thread(self._reader_thread.join, 10)
        self.reader.close()
        # Clean shutdown: what the repository has not acknowledged waits on disk.
        await asyncio.to_thread(self._save_stream)
        self.mirror.status = "Stopped"
        self.replication_status = "Stopped"
        self.capture_error = None  # nothing is expected of capture while stopped
        self.transmit_status = "Stopped"
        self.connected = False

    def _restore_stream(self) -> OpStream:
        """Continue the saved op stream of a clean shutdown, or start a new epoch."""
        try:
            saved = json.loads(self._stream_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            saved = None
        self._stream_file.unlink(missing_ok=True)
        if saved is not None and self.queue.load_saved():
            return OpStream(self.queue, epoch=int(saved["epoch"]), next_seq=int(saved["next_seq"]))
        return OpStream(self.queue, epoch=secrets.randbits(62))

    def _save_stream(self) -> None:
        if self.queue.save() is not None:
            write_private(
                self._stream_file,
                json.dumps({"epoch": self.stream.epoch, "next_seq": self.stream.last_seq + 1}).encode(),
            )

    def _fields(self) -> dict[str, Any]:
        """The fields the seed's connection events name."""
        return {
            "target": self.spec.repository_name,
            "address": self.spec.peer_address,
            "replication_set": ",".join(self.spec.roots),
            "job": self.spec.job_id,
        }

    def _notify_sender(self) -> None:
        link = self._link
        if link is not None:
            link.wake()

    # -- capture -----------------------------------------------------------------

    async def _capture_loop(self) -> None:
        """Run change capture; when it cannot start or stops working, say so (4097, the
        replication status "Watchdog") and try again every CAPTURE_RETRY_S. Mirrors go on
        meanwhile; once capture is back, a difference mirror finds what changed unseen."""
        first = True
        while True:
            try:
                capture = await self._start_capture(first=first)
            except Exception as exc:  # any cause: reported, then retried
                self._capture_failed(exc)
                self._capture_settled.set()  # the mirror goes on without it
                first = False
                await asyncio.sleep(CAPTURE_RETRY_S)
                continue
            self.capture_kind = capture.method
            first = False
            if self.capture_error is not None:
                self.capture_error = None
                self._emit(ev.CAPTURE_RESTORED, method=capture.method)
                self._remirror.set()
            self._capture_settled.set()
            try:
                while True:
                    for change in await capture.get_batch(1.0):
                        self._on_change(change)
            except Exception as exc:  # any cause: reported, then retried
                self._capture_failed(exc)
            finally:
                capture.close()
            await asyncio.sleep(CAPTURE_RETRY_S)

    def _capture_failed(self, exc: BaseException) -> None:
        """Report a failure of change capture once, until capture runs again."""
        reason = str(exc) or type(exc).__name__
        log.error("change capture of job %s: %s", self.spec.job_id, reason)
        if self.capture_error is None:
            self._emit(ev.CHANGE_CAPTURE_FAILED, reason=reason, **self._fields())
        self.capture_error = reason
        self.capture_kind = ""

    async def _start_capture(self, *, first: bool) -> ChangeCapture:
        """Started capture of the configured method, or inotify when "auto" finds fanotify
        unavailable (reported on the ``first`` attempt only, not on every retry)."""
        roots = list(self.selection.roots)
        try:
            capture = await _started(open_capture(roots, self._capture_method))
            reason = "fanotify is not available here"  # "auto" chose inotify without trying
        except CaptureUnavailable as exc:
            if self._capture_method != "auto":
                raise
            capture, reason = await _started(open_capture(roots, "inotify")), str(exc)
        if first and capture.method == "inotify" and self._capture_method == "auto":
            self._emit(ev.CAPTURE_FELL_BACK_TO_INOTIFY, reason=reason)
        return capture

    async def _walk_when_captured(self) -> SourceWalk:
        """A mirror's walk of the selection, begun once change capture is on: whatever
        changes after the walk passed a file is replicated, whatever changed before is
        what the walk saw."""
        await self._capture_settled.wait()
        return await asyncio.to_thread(walk_selection, self.selection)

    def _on_change(self, change: Change) -> None:
        if change.kind is ChangeKind.OVERFLOW:
            self._emit(ev.CAPTURE_LOST_EVENTS, reason="event queue overflow")
            self._remirror.set()
            return
        if change.kind is ChangeKind.RENAMED:
            # A rename always re-keys what is queued below it: getting that wrong loses
            # data, and renames are rare next to the deletes the is_dir hint speeds up.
            self.changes.barrier(Barrier("rename", change.path, change.new_path))
            self.changes.mark(change.new_path)
            self._mark_parent(change.path)
            self._mark_parent(change.new_path)
            return
        if change.kind is ChangeKind.DELETED:
            self.changes.barrier(Barrier("delete", change.path, is_dir=change.is_dir))
            self._mark_parent(change.path)
            return
        if self.selection.excluded(change.path):
            return
        self.changes.mark(change.path)
        self._mark_parent(change.path)

    def _mark_parent(self, path: str) -> None:
        parent = os.path.dirname(path)
        if self.selection.contains(parent):
            self.changes.mark(parent)

    def _mark_again(self, path: str) -> None:
        self.changes.mark(path)

    # -- reader thread ------------------------------------------------------------

    def _queue_full(self) -> bool:
        return self.connected and self.queue.memory_bytes > min(
            self.queue.limits.memory_max_bytes // 2, READ_AHEAD_BYTES
        )

    def _wait_for_room(self) -> None:
        """Between the frames of one large file: while the link drains the queue, wait
        instead of spilling the file to the disk queue (a 2 GiB file read faster than it
        travels was written to the source's disk and read back once more). Unconnected,
        the queue is the only place the frames can go: it spills, as designed."""
        while self._queue_full() and not self._stopping.is_set():
            time.sleep(0.002)

    def _reader_loop(self) -> None:
        while not self._stopping.is_set():
            # Back-pressure while connected: coalescing in the change set beats queueing
            # stale versions, and a mirror must not pile its bytes up in memory. A few
            # sender batches ahead keep the link busy; more only costs memory.
            if self._queue_full():
                time.sleep(0.005)
                continue
            items = self.changes.take(256, 0.2)
            if len(items) > 1 and not self._discarding:
                self.reader.prefetch(items)
            for item in items:
                if self._discarding:
                    continue  # the queue overflowed: the next difference mirror re-finds it
                try:
                    self.reader.process(item)
                except QueueExhausted as exc:
                    self._discarding = True
                    self._loop.call_soon_threadsafe(self._auto_disconnect, str(exc))
                except TwinvaultError as exc:
                    log.error("reader: %s", exc)
                except OSError as exc:
                    log.warning("reader: %s", exc)

    def _on_mark(self, name: str, seq: int) -> None:
        if name == MIRROR_MARK:
            self.mirror.mark_seq = seq

    def _auto_disconnect(self, reason: str) -> None:
        self._emit(
            ev.AUTO_DISCONNECT,
            **self._fields(),
            reason=reason,
        )
        self.queue.clear()
        self.changes.clear()
        if self._link is not None:
            self._link.abort()
        self._emit(
            ev.AUTO_DISCONNECT_SUCCEEDED,
            **self._fields(),
        )

    # -- connection ------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        attempt = 0
        was_connected = False
        prewalk: asyncio.Task[SourceWalk] | None = None
        try:
            while not self._stopping.is_set():
                # The first attempt after a start or a disconnect walks the selection while
                # it connects: the difference mirror that follows needs the walk, and on a
                # large tree the walk is most of its time. Retries walk in the mirror.
                prewalk = asyncio.create_task(self._walk_when_captured()) if attempt == 0 else None
                try:
                    link = await self._connect()
                except (TimeoutError, OSError, TwinvaultError, asyncio.IncompleteReadError) as exc:
                    _drop(prewalk)
                    self._connect_failed(exc, attempt)
                    await asyncio.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
                    attempt += 1
                    continue
                if was_connected or attempt:
                    self._emit(ev.AUTO_RECONNECT_SUCCEEDED, **self._fields())
                attempt = 0
                was_connected = True
                self._emit(ev.CONNECTED, **self._fields())
                try:
                    await self._session(link, prewalk)
                except (OSError, TwinvaultError, asyncio.IncompleteReadError, ConnectionError) as exc:
                    log.info("link to %s ended: %s", self.spec.repository_address, exc)
                    if isinstance(exc, TwinvaultError):
                        self.last_error = exc.to_json()["error"]
                finally:
                    await self._session_ended(link)
                if not self._stopping.is_set():
                    self._emit(ev.AUTO_RECONNECTING, **self._fields())
                    if not self._handover:
                        await asyncio.sleep(RECONNECT_DELAYS[0])
        finally:
            _drop(prewalk)  # the job stopped while connecting

    def _connect_failed(self, exc: BaseException, attempt: int) -> None:
        self.transmit_status = "Error"
        self.target_status = "Unknown"
        if isinstance(exc, TwinvaultError):
            self.last_error = exc.to_json()["error"]
            if exc.code in (-157,):
                self._emit(ev.PEER_REJECTED, peer=self.spec.repository_address, reason=exc.message)
        if attempt == 0:
            self._emit(ev.AUTO_RECONNECTING, **self._fields())

    async def _session_ended(self, link: Link) -> None:
        self._link = None
        self.bandwidth.attach(None)
        self.connected = False
        self.transmit_status = "Error" if not self._stopping.is_set() else "Stopped"
        self.replication_status = "Pending"
        handover = self._handover and not self._stopping.is_set()
        if self.mirror.status in ("Calculating", "Mirroring") and not handover:
            self.mirror.status = "Stopped"
        self.mirror.complete = self.mirror.complete and handover
        await link.close()
        self._emit(ev.DISCONNECTED, **self._fields())

    async def _connect(self) -> Link:
        link, _ = await open_peer_link(
            self.spec.peer_address,
            self.spec.repository_peer_port,
            server_hostname=self.spec.repository_name or None,
            fingerprint=self.spec.repository_fingerprint,
            hello={
                "job": self.spec.job_id,
                "token": self.spec.token,
                "source": self.spec.source_name,
                "epoch": self.stream.epoch,
            },
            bind=self.spec.bind_address,
        )
        return link

    async def _session(self, link: Link, prewalk: asyncio.Task[SourceWalk] | None = None) -> None:
        self._link = link
        self.connected = True
        # A handover (job set moved the link) with nothing dropped needs no mirror: the
        # queue still holds every op the repository did not acknowledge (rewound below,
        # resent, and skipped there when already applied, by epoch and sequence number).
        handover = self._handover and not self._discarding and self.mirror.status != "Calculating"
        if handover or self._discarding:
            # Changes dropped while the walk ran may be missing from it, and from the
            # queue: the mirror walks again, after this point.
            _drop(prewalk)
            prewalk = None
        self._handover = False
        self._discarding = False
        self.transmit_status = "Transmitting"
        self.target_status = "Processing"
        self.last_error = None
        self.queue.rewind()
        self.bandwidth.attach(link)  # before the first frame: the limit holds from the start
        link.set_feed(self._take_frames)
        receiver = asyncio.create_task(self._receive(link))
        sender = asyncio.create_task(self._send_status(link))
        self._link_tasks = (receiver, sender)
        remirror: asyncio.Task[Any] | None = None
        try:
            if handover:
                if self.mirror.complete:
                    # The link's end closed the repository's range valid for recovery;
                    # the stream is whole again from here, so say so in stream order.
                    self.changes.barrier(Barrier("mark", MIRROR_MARK))
                # else: the mirror's own completion mark is still queued and ends it.
            else:
                checksum = self._checksum_next
                self._checksum_next = False
                await self._run_mirror(link, checksum=checksum, walking=prewalk)
                prewalk = None
            while True:
                remirror = asyncio.create_task(self._remirror.wait())
                done, _ = await asyncio.wait(
                    {receiver, sender, remirror}, return_when=asyncio.FIRST_COMPLETED
                )
                if remirror in done:
                    self._remirror.clear()
                    await self._mirror_finished()
                    checksum = self._checksum_next
                    self._checksum_next = False
                    await self._run_mirror(link, checksum=checksum)
                    continue
                for task in done:
                    task.result()  # raises the reason the link ended
                return
        finally:
            _drop(prewalk)
            # Cancelled too when the session itself is (job stop): a pending wait left
            # behind is destroyed with the loop's complaint in the log.
            for task in (receiver, sender, *([remirror] if remirror is not None else [])):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _run_mirror(
        self, link: Link, *, checksum: bool, walking: asyncio.Task[SourceWalk] | None = None
    ) -> None:
        """``walking``: a walk begun while connecting (``_walk_when_captured``), else one
        begins here. Either sees every change made before it passed a file; capture has
        every change after."""
        self.mirror = MirrorState(status="Calculating", started=time.time())
        self.replication_status = "Replicating"
        # The repository's range valid for recovery ends here, in stream order.
        self.changes.barrier(Barrier("mark", m.MARK_MIRROR_START))
        self._emit(
            ev.MIRROR_STARTED,
            **self._fields(),
        )
        if walking is None:
            walking = asyncio.create_task(self._walk_when_captured())
        try:
            await self._sent_through(self.stream.last_seq)
            # The source's walk runs while the repository walks its image and streams it; a
            # difference mirror compares each manifest batch as it comes once the walk is
            # done. A checksum mirror reads files to compare: it is planned afterwards.
            planning = None if checksum else PlanBuilder(self.selection)
            if planning is not None:
                walking.add_done_callback(functools.partial(_walked, planning))
            self._planning = planning
            view = await self._request_manifest(link, checksum)
            walk = await walking
        finally:
            _drop(walking)  # the link ended first: nobody waits for the walk
            self._planning = None
        self.view = view
        self.reader.view = view
        if planning is None:
            plan = await asyncio.to_thread(plan_mirror, self.selection, view, checksum=checksum, walk=walk)
        else:
            if planning.walk is None:
                planning.walked(walk)
            plan = planning.finish(view)
        for waiter in self._verify_waiters:
            if not waiter.done():
                waiter.set_result(plan)
        self._verify_waiters = []
        # The walk is not an instant: a path created after the walk passed its directory,
        # and already sent by replication, looks like an orphan. Such a path exists now.
        plan.orphans = [o for o in plan.orphans if not os.path.lexists(o)]
        self.mirror.bytes_to_send = plan.bytes_to_send
        self.mirror.skipped_bytes = plan.skipped_bytes
        self.mirror.orphans = plan.orphans
        self.mirror.status = "Mirroring"
        if plan.orphans:
            action = "deleting" if self.spec.delete_orphans else "reported, not deleted"
            self._emit(ev.ORPHANS_FOUND, job=self.spec.job_id, count=len(plan.orphans), action=action)
            if self.spec.delete_orphans:
                # Marked, not deleted outright: the reader deletes what is still missing
                # when it gets there, and sends what came back in the meantime.
                self.changes.mark_many(plan.orphans, mirror=True)
        view.content_differs.update(plan.content_differs)
        self.changes.mark_many(plan.to_send, mirror=True)
        self.changes.barrier(Barrier("mark", MIRROR_MARK))

    async def _mirror_finished(self) -> None:
        """Wait until the running mirror is acknowledged. A mirror asked for meanwhile (lost
        capture events: other writers on the filesystem can overflow the queue during a
        large mirror) then compares against a whole image, instead of restarting on a
        half-built one and resending the files still on their way."""
        while not self.mirror.complete:
            if any(t.done() for t in self._link_tasks):
                raise ConnectionError("the link to the repository ended")
            await asyncio.sleep(0.1)

    async def _sent_through(self, seq: int) -> None:
        """Wait until every op up to ``seq`` is on the link. The repository answers a
        manifest request in stream order, so the manifest then includes those ops'
        effects (a queued delete is not mistaken for an orphan)."""
        while self._sent_seq < seq and not self.queue.empty():
            if any(t.done() for t in self._link_tasks):
                raise ConnectionError("the link to the repository ended")
            await asyncio.sleep(0.01)

    async def _request_manifest(self, link: Link, checksum: bool) -> RemoteView:
        """The repository's manifest as a RemoteView, built batch by batch as it arrives
        (a list of every entry first would double the memory a large image needs)."""
        self._manifest_waiter = self._loop.create_future()
        self._manifest_view = RemoteView()
        roots = [m.wire_path(r) for r in self.selection.roots]
        await link.send([m.MANIFEST_REQ, 1, roots, checksum])
        await link.flush()
        view: RemoteView = await self._while_linked(self._manifest_waiter)
        return view

    async def _while_linked(self, waiter: asyncio.Future[Any]) -> Any:
        """Await ``waiter`` unless the link ends first (then raise why it ended), so a
        link lost while calculating never leaves the job waiting forever."""
        watched = {t for t in self._link_tasks if not t.done()}
        done, _ = await asyncio.wait({waiter, *watched}, return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            return waiter.result()
        waiter.cancel()
        for task in done:
            task.result()
        raise ConnectionError("the link to the repository ended")

    async def _receive(self, link: Link) -> None:
        while True:
            try:
                msg = await link.recv(LINK_TIMEOUT)
            except TimeoutError:
                raise ConnectionError(f"no answer from the repository for {LINK_TIMEOUT:.0f} s") from None
            kind = msg[0]
            if kind == m.ACK:
                seq = int(msg[1])
                self.queue.acknowledge(seq)
                self._mirror_acked(seq)
                if self.mirror.mark_seq and seq >= self.mirror.mark_seq and not self.mirror.complete:
                    self.mirror.complete = True
                    self.mirror.status = "Idle"
                    self.mirror.bytes_sent = self.mirror.bytes_acked = self.mirror.bytes_to_send
                    self._emit(ev.MIRROR_COMPLETED, **self._fields(), detail="")
                    # A mirror's plan and queue are gone now: give their memory back, a
                    # moment later: the full collection holds the event loop for ~0.1 s
                    # after a large mirror, which is not to delay the status saying so.
                    self._loop.call_later(RELEASE_AFTER, release_free_memory)
            elif kind == m.MANIFEST:
                view = self._manifest_view
                entries = manifest_entries(msg[2])
                view.add_many(entries)
                if self._planning is not None:
                    self._planning.remote(entries)
                if msg[3] and self._manifest_waiter is not None and not self._manifest_waiter.done():
                    self._manifest_waiter.set_result(view)
                    self._manifest_view = RemoteView()
            elif kind == m.NEED:
                path = m.path_from_wire(msg[2])
                self.view.needs_full(path)
                self.changes.mark(path)
            elif kind == m.APPLY_FAILED:
                path = m.path_from_wire(msg[2])
                # The repository discarded it: its copy is not what we sent.
                self.view.needs_full(path)
                self.failed_paths.append(path)
                self.last_error = {"code": int(msg[3]), "message": f"{path}: {msg[4]}"}
            elif kind == m.SHUTDOWN_SOURCE:
                await self._shutdown_requested(msg[1] if len(msg) > 1 and isinstance(msg[1], dict) else {})
            else:
                raise TwinvaultError(-1007, f"unexpected {kind!r} from the repository")

    async def _shutdown_requested(self, request: dict[str, Any]) -> None:
        """A recovery of this image asks the source to shut down (recover --shutdown-source):
        only this host's own configured command runs, never anything the peer sends."""
        recovery = str(request.get("job", "?"))
        if not self._shutdown_command:
            self._emit(ev.SOURCE_SHUTDOWN_REQUESTED, source=self.spec.source_name, job=recovery,
                       action="refused: no shutdown_command is configured on this host")  # fmt: skip
            return
        self._emit(ev.SOURCE_SHUTDOWN_REQUESTED, source=self.spec.source_name, job=recovery,
                   action=f"running {self._shutdown_command!r}")  # fmt: skip
        await asyncio.create_subprocess_exec("/bin/sh", "-c", self._shutdown_command, start_new_session=True)

    def _take_frames(self, budget: int) -> list[bytes]:
        """The link's feed, called on its thread: the next frames of the queue, about
        ``budget`` bytes (many small frames then go out in one write), counted as sent."""
        items = self.queue.take_many(budget)
        for item in items:
            self._count_sent(item)
        return [item.frame for item in items]

    async def _send_status(self, link: Link) -> None:
        """The job's status, also the heartbeat the repository answers with an ack."""
        while True:
            await link.send([m.STATUS, self.status()])
            await asyncio.sleep(STATUS_INTERVAL)

    def _count_sent(self, item: QueuedFrame) -> None:
        self._sent_seq = item.seq
        self.wire_bytes_tx += len(item.frame)
        if item.replication:
            self.bytes_sent_replication += item.payload
            self.bytes_sent_replication_compressed += item.payload_on_wire
        else:
            self.bytes_sent_mirror += item.payload
            self.bytes_sent_mirror_compressed += item.payload_on_wire
            self.mirror.bytes_sent += item.payload
            if item.payload:
                self.mirror.checkpoints.append((item.seq, self.mirror.bytes_sent))
        self.throughput.add(item.payload)

    def _mirror_acked(self, seq: int) -> None:
        checkpoints = self.mirror.checkpoints
        while checkpoints and checkpoints[0][0] <= seq:
            self.mirror.bytes_acked = checkpoints.popleft()[1]

    # -- console requests -------------------------------------------------------------

    def change_options(self, spec: JobSpec) -> None:
        """``job set``: the same job with changed transmission options, on a running job.
        A new limit or schedule holds from now on the link as it is; a new route or bind
        address ends the link, and the job reconnects through it at once and carries on
        where it was, without a mirror."""
        rerouted = (spec.route, spec.bind_address) != (self.spec.route, self.spec.bind_address)
        self.spec = spec
        # What the reader reads from now on is compressed at the new level (no remirror,
        # no new link); frames already queued go as they were made: the receiver takes both.
        self.reader.compression = compressor_for(spec.compression)
        self.bandwidth.replace(BandwidthSchedule.from_json(spec.bandwidth))
        if rerouted and self._link is not None:
            self._handover = True
            self._link.abort()

    async def verify(self, *, checksum: bool, remirror: bool) -> MirrorPlan:
        """Compare source and image now; with ``remirror`` send what differs."""
        if not self.connected or self._link is None:
            raise TwinvaultError(-107, f"job {self.spec.job_id} is not connected to its repository")
        if self._manifest_waiter is not None and not self._manifest_waiter.done():
            raise TwinvaultError(-108, "the job is calculating a mirror; verify when it is done")
        self._emit(
            ev.VERIFY_STARTED,
            **self._fields(),
        )
        view = await self._request_manifest(self._link, checksum)
        plan = await asyncio.to_thread(plan_mirror, self.selection, view, checksum=checksum)
        if remirror and (plan.to_send or plan.orphans):
            self._checksum_next = checksum
            self._remirror.set()
        self._emit(
            ev.VERIFY_COMPLETED,
            **self._fields(),
        )
        if plan.differences:
            self._emit(ev.IMAGE_MISMATCH, job=self.spec.job_id, count=len(plan.differences))
        return plan

    def status(self) -> dict[str, Any]:
        return job_status(self)


async def _started(capture: ChangeCapture) -> ChangeCapture:
    """``capture`` started, or closed (no descriptor left behind by a failed start)."""
    try:
        await capture.start()
    except BaseException:
        capture.close()
        raise
    return capture


def _drop(task: asyncio.Task[Any] | None) -> None:
    """Cancel a walk nobody will use (its thread, once running, ends on its own); the
    failure of one that ended is of no interest either."""
    if task is None:
        return
    if task.done():
        if not task.cancelled():
            task.exception()
    else:
        task.cancel()


def _walked(planning: PlanBuilder, walking: asyncio.Future[SourceWalk]) -> None:
    """The walk of a difference mirror ended: compare what of the manifest came before it."""
    if not walking.cancelled() and walking.exception() is None:
        planning.walked(walking.result())
