"""A Data Recovery job: the repository sends a point in time to a recovery server.

The roles of protection turn around: the repository is the sender and the recovery
server the receiver, over the same peer protocol (TLS, pinned certificate, a credential
the recovery server issued for this job) into the same receiver and applier, writing
into the job's target path instead of an image. The ops are the point's op stream
(``pit.opstream``): deterministic for one point, so after a cut link or a restarted
recovery server the job resumes after the last op the receiver committed (its
``welcome`` says which) instead of starting over.

Neighbours: ``daemon.host`` owns the jobs, ``pit.opstream`` makes the ops,
``repository.receiver`` is the other end.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from twinvault.clock import Clock
from twinvault.compression_levels import NONE
from twinvault.ops import events as ev
from twinvault.ops.errors import TwinvaultError
from twinvault.pit.opstream import PointInTimeStream, payload_of, versions_for
from twinvault.protocol import messages as m
from twinvault.protocol.bandwidth import BandwidthKeeper, BandwidthSchedule
from twinvault.protocol.connection import open_peer_link
from twinvault.protocol.frames import encode_frame
from twinvault.protocol.link import Link
from twinvault.protocol.transmission import Receiver, transmission_view
from twinvault.repository.catalog import Version, open_catalog
from twinvault.repository.chunkstore import ChunkStore
from twinvault.threads import iterate_in_thread

log = logging.getLogger(__name__)

Emit = Callable[..., Any]
RECOVERY_COMPLETE_MARK = m.MARK_RECOVERY_COMPLETE
MAX_UNACKED_BYTES = 64 << 20  # sent but not yet acknowledged: the receiver commits as it goes
RECONNECT_DELAY_S = 2.0


@dataclass(frozen=True, slots=True)
class RecoverySpec:
    job_id: str
    image: str
    point: int | None  # ns since the epoch; None = live data
    point_label: str
    includes: tuple[str, ...]
    excludes: tuple[str, ...]
    target_name: str
    target_address: str
    target_peer_port: int
    target_fingerprint: str
    token: str
    target_path: str
    epoch: int
    total_files: int = 0
    total_bytes: int = 0
    created: float = 0.0
    shutdown_source: bool = False
    compression: str = NONE  # none | minimum | medium | maximum (twinvault.compression)
    bandwidth: dict[str, Any] = field(default_factory=dict)  # a BandwidthSchedule's JSON
    route: str = ""  # the recovery server's address to send to ("": target_address)
    bind_address: str = ""  # this repository's address to send from ("": the system's choice)

    @property
    def peer_address(self) -> str:
        return self.route or self.target_address

    @property
    def receiver(self) -> Receiver:
        return Receiver(self.target_address, self.target_peer_port, self.target_name, self.target_fingerprint)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(raw: dict[str, Any]) -> RecoverySpec:
        raw = dict(raw)
        raw["includes"] = tuple(raw.get("includes", ()))
        raw["excludes"] = tuple(raw.get("excludes", ()))
        return RecoverySpec(**raw)


@dataclass(slots=True)
class RecoveryProgress:
    status: str = "Calculating"  # Calculating | Mirroring | Idle (done) | Communication Error | Stopped
    bytes_sent: int = 0  # frames on the wire
    payload_sent: int = 0  # file bytes sent
    payload_sent_compressed: int = 0  # the same bytes as they travelled
    bytes_acked: int = 0
    acked_seq: int = 0
    sent_seq: int = 0
    last_error: str | None = None
    finished: float | None = None
    failed_paths: list[str] = field(default_factory=list)


def excluded(path: bytes, excludes: tuple[str, ...]) -> bool:
    text = path.decode("utf-8", "surrogateescape")
    name = text.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(text, g) or fnmatch.fnmatchcase(name, g) for g in excludes)


class RecoveryJob:
    def __init__(
        self,
        spec: RecoverySpec,
        store: ChunkStore,
        catalog_url: str,
        emit: Emit,
        source_name: str,
        on_finished: Callable[[RecoveryJob], None] = lambda job: None,
        clock: Clock | None = None,
    ) -> None:
        self.spec = spec
        self._store = store
        self._catalog_url = catalog_url
        self._emit = emit
        self._source_name = source_name  # this repository, as the recovery server sees it
        self._on_finished = on_finished
        self.progress = RecoveryProgress()
        self._task: asyncio.Task[None] | None = None
        self._acked = asyncio.Event()
        self._sizes: dict[int, int] = {}  # seq -> bytes of its frames, until acknowledged
        self._link_version = 0  # the protocol version the recovery server welcomed
        self._link: Link | None = None
        self.bandwidth = BandwidthKeeper(
            BandwidthSchedule.from_json(spec.bandwidth), clock or Clock(), emit, self._fields
        )

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self.bandwidth.start()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await self.bandwidth.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.progress.status != "Idle":
            self.progress.status = "Stopped"

    @property
    def done(self) -> bool:
        return self.progress.finished is not None

    async def _run(self) -> None:
        while not self.done:
            try:
                link, resume_after = await self._connect()
            except (OSError, TimeoutError, TwinvaultError) as exc:
                self.progress.status = "Communication Error"
                self.progress.last_error = str(exc)
                await asyncio.sleep(RECONNECT_DELAY_S)
                continue
            self._link = link
            self.bandwidth.attach(link)
            try:
                await self._send_point(link, resume_after)
            except (
                OSError,
                TimeoutError,
                asyncio.IncompleteReadError,
                ConnectionError,
                TwinvaultError,
            ) as exc:
                self.progress.status = "Communication Error"
                self.progress.last_error = str(exc)
                self._emit(ev.AUTO_RECONNECTING, **self._fields())
                await asyncio.sleep(RECONNECT_DELAY_S)
            finally:
                self._link = None
                self.bandwidth.attach(None)
                await link.close()
        await self.bandwidth.stop()
        self._on_finished(self)

    def _fields(self) -> dict[str, Any]:
        return {
            "target": self.spec.target_name,
            "address": self.spec.peer_address,
            "replication_set": self.spec.image,
            "job": self.spec.job_id,
        }

    # -- the link --------------------------------------------------------------------------

    async def _connect(self) -> tuple[Link, int]:
        link, welcome = await open_peer_link(
            self.spec.peer_address,
            self.spec.target_peer_port,
            server_hostname=self.spec.target_name or None,
            fingerprint=self.spec.target_fingerprint,
            hello={"job": self.spec.job_id, "token": self.spec.token, "source": self._source_name,
                   "epoch": self.spec.epoch},
            bind=self.spec.bind_address,
        )  # fmt: skip
        self._link_version = int(welcome.get("version") or 1)
        self._emit(ev.CONNECTED, **self._fields())
        return link, int(welcome.get("last_seq") or 0)

    async def _send_point(self, link: Link, resume_after: int) -> None:
        self.progress.status = "Mirroring"
        self.progress.acked_seq = resume_after
        self._sizes.clear()
        receiver = asyncio.create_task(self._receive(link))
        # Chunks are read, checked and framed in a thread of their own, several ops ahead
        # of the link, so reading overlaps sending.
        frames = iterate_in_thread(_blocking_frames(self._ops(resume_after)), ahead=32)
        try:
            async for seq, frame, payload, wire_payload in frames:
                while sum(self._sizes.values()) > MAX_UNACKED_BYTES and not receiver.done():
                    await self._ack_or_end(receiver, timeout=5)
                if receiver.done():
                    receiver.result()
                    raise ConnectionError("the recovery server closed the link")
                await link.send_raw(frame)
                self._sizes[seq] = self._sizes.get(seq, 0) + len(frame)
                self.progress.bytes_sent += len(frame)
                self.progress.payload_sent += payload
                self.progress.payload_sent_compressed += wire_payload
                self.progress.sent_seq = seq
            final = self.progress.sent_seq + 1
            await link.send([m.MARK, final, RECOVERY_COMPLETE_MARK])
            await link.flush()
            while self.progress.acked_seq < final:
                await self._ack_or_end(receiver, timeout=30)
                if receiver.done():
                    receiver.result()
                    raise ConnectionError("the recovery server closed the link")
            self.progress.status = "Idle"
            self.progress.finished = time.time()
            self._emit(
                ev.MIRROR_COMPLETED, **self._fields(), detail=f"{self.spec.total_files} files recovered"
            )
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await receiver
            await frames.aclose()  # stops the reading thread; its catalog closes there

    async def _ack_or_end(self, receiver: asyncio.Task[None], *, timeout: float) -> None:
        """Wait for the next acknowledgement, the end of the link or `timeout`; the waiter
        is cancelled on the way out, not left pending behind (destroyed later with the
        loop's complaint in the log)."""
        self._acked.clear()
        acked = asyncio.ensure_future(self._acked.wait())
        try:
            await asyncio.wait({receiver, acked}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            acked.cancel()

    async def _receive(self, link: Link) -> None:
        while True:
            msg = await link.recv(60)
            kind = msg[0]
            if kind == m.ACK:
                seq = int(msg[1])
                if seq > self.progress.acked_seq:
                    self.progress.acked_seq = seq
                for done in [s for s in self._sizes if s <= seq]:
                    self.progress.bytes_acked += self._sizes.pop(done)
                self._acked.set()
            elif kind == m.APPLY_FAILED:
                self.progress.failed_paths.append(m.path_from_wire(msg[2]))
            elif kind == m.NEED:
                # The point's stream sends whole files only; a "need" means the receiver
                # lost a file it had acknowledged. Start over from there on the next link.
                raise ConnectionError(f"the recovery server needs {m.path_from_wire(msg[2])} again")

    def _ops(self, resume_after: int) -> Iterator[list[Any]]:
        catalog = open_catalog(self._catalog_url)
        try:
            includes = [p.encode("utf-8", "surrogateescape") for p in self.spec.includes]
            versions: Iterator[Version] = versions_for(catalog, self.spec.image, self.spec.point, includes)
            if self.spec.excludes:
                versions = (v for v in versions if not excluded(v.path, self.spec.excludes))
            yield from PointInTimeStream(
                self._store, versions, skip_through=resume_after, compressed=self._compressed
            )
        finally:
            catalog.close()

    def change_options(self, spec: RecoverySpec) -> None:
        """``job set`` on a running recovery: a new limit holds at once; a new route ends
        the link and the job resumes through it after the last op the target committed."""
        rerouted = (spec.route, spec.bind_address) != (self.spec.route, self.spec.bind_address)
        self.spec = spec
        self.bandwidth.replace(BandwidthSchedule.from_json(spec.bandwidth))
        if rerouted and self._link is not None:
            self._link.abort()

    def _compressed(self) -> bool:
        """Chunks go compressed when the job asks for it and the receiver reads them."""
        return self.spec.compression != NONE and self._link_version >= m.COMPRESSED_SEGMENTS_SINCE

    # -- the monitor's view ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        p = self.progress
        total = max(self.spec.total_bytes, 1)
        # Frames carry a little more than file bytes: bound the estimate at 100 % until done.
        percent = 100.0 if self.done else min(99.9, 100.0 * p.bytes_acked / total)
        return {
            "id": self.spec.job_id,
            "type": "Data Recovery",
            "status": "Recovered" if self.done else p.status,
            "source": self._source_name,
            "target": self.spec.target_name,
            "image": self.spec.image,
            "point": self.spec.point_label,
            "target_path": self.spec.target_path,
            "percent_complete": round(percent, 1),
            "time_remaining_s": 0,
            "health": "error" if p.status == "Communication Error" else "ok",
            "total_sent_bytes": p.payload_sent,
            "total_sent_compressed_bytes": p.payload_sent_compressed,
            "wire_bytes": p.bytes_sent,
            "compression": self.spec.compression,
            "transmit_status": "Idle" if self.done else "Transmitting",
            "target_status": "Idle" if self.done else "Processing",
            "recovery_available": self.done,
            "mirror": {
                "status": "Idle" if self.done else p.status,
                "percent_complete": round(percent, 1),
                "remaining_bytes": max(0, self.spec.total_bytes - p.bytes_acked) if not self.done else 0,
                "skipped_bytes": 0,
            },
            "replication": {
                "status": "Stopped",
                "bytes_sent": 0,
                "bytes_sent_compressed": 0,
                "bytes_queued": 0,
            },
            **transmission_view(self.bandwidth, self.spec),
            "failed_paths": p.failed_paths[:100],
            "last_error": p.last_error,
        }


def _blocking_frames(ops: Iterator[list[Any]]) -> Generator[tuple[int, bytes, int, int], None, None]:
    """Encode ops in the worker thread that reads their chunks: (seq, frame, file bytes,
    the same bytes as they travel)."""
    for op in ops:
        yield int(op[1]), encode_frame(op), *payload_of(op)
