"""An in-process protection pipeline for tests: the real source side (Selection,
RemoteView, Reader, OpStream, OpQueue) feeding the real repository side (Applier,
ImageTree, ImageIndex) with frames decoded exactly as the receiver decodes them.
Used by the round-trip and the applier-retry tests."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from twinvault.protocol import messages as m
from twinvault.protocol.frames import decode_body
from twinvault.repository.applier import Applier, Outcome
from twinvault.repository.history import History
from twinvault.repository.image_index import ImageIndex
from twinvault.repository.image_tree import TEMP_PREFIX, ImageTree
from twinvault.repository.manifest import manifest_batches
from twinvault.source.changeset import Dirty, Item
from twinvault.source.mirror import plan_mirror
from twinvault.source.opstream import OpStream
from twinvault.source.queue import OpQueue, QueueLimits
from twinvault.source.reader import Reader
from twinvault.source.remote_view import RemoteEntry, RemoteView
from twinvault.source.selection import Selection

MiB = 1 << 20


@dataclass
class Transfer:
    """What one batch of source work put on the wire and what the repository answered."""

    messages: list[list[Any]] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)

    def kinds(self) -> list[str]:
        return [msg[0] for msg in self.messages]

    def statuses(self) -> set[str]:
        return {o.status for o in self.outcomes}

    def data_bytes(self) -> int:
        """File bytes that travelled as SEG_DATA (new chunks)."""
        return sum(len(seg[2]) for seg in self.segments() if seg[0] == m.SEG_DATA)

    def segments(self) -> list[list[Any]]:
        out: list[list[Any]] = []
        for msg in self.messages:
            if msg[0] == m.FILE:
                out.extend(msg[5])
            elif msg[0] == m.FDATA:
                out.extend(msg[2])
        return out


class Protection:
    """One protection job's data path, source to image, in one process."""

    def __init__(
        self,
        tmp: Path,
        roots: list[str],
        excludes: Iterable[str] = (),
        *,
        image_root: Path | None = None,
        emit: Callable[..., Any] | None = None,
        retry_limit: int = 0,
        retry_delays: tuple[float, ...] = (0.05,),
        history: History | None = None,
    ) -> None:
        self.tmp = tmp
        self.history = history
        self.selection = Selection.build(roots, list(excludes))
        self.queue = OpQueue(tmp / "queue", QueueLimits(memory_max_bytes=8 * MiB, min_free_bytes=0))
        self.stream = OpStream(self.queue, epoch=1)
        self.marked_again: list[str] = []
        self.view = RemoteView()
        self.reader = Reader(self.selection, self.view, self.stream, self.marked_again.append)
        self.image_root = image_root or tmp / "image"
        self.events: list[tuple[int, dict[str, Any]]] = []
        self._emit = emit or self.record_event
        self._retry = (retry_limit, retry_delays)
        self._open_repository()

    def _open_repository(self) -> None:
        self.tree = ImageTree(self.image_root)
        self.index = ImageIndex(self.tmp / "image-index.db")
        limit, delays = self._retry
        recorder = None if self.history is None else self.history.recorder("image", "job")
        self.applier = Applier(
            self.tree, self.index, self._emit, retry_limit=limit, retry_delays=delays, recorder=recorder
        )

    def record_event(self, event_id: int, **fields: Any) -> None:
        self.events.append((event_id, fields))

    def close(self) -> None:
        recorder = self.applier.recorder
        if recorder is not None and self.history is not None:
            recorder.close()
            self.history.forget_recorder(recorder)
        self.applier.close()
        self.index.close()
        self.tree.close()

    def new_session(self) -> None:
        """A new connection on the repository: fresh tree, index and applier, as the receiver opens them."""
        self.close()
        self._open_repository()

    # -- the source side ---------------------------------------------------------------

    def mirror(self, *, checksum: bool = False) -> Transfer:
        plan = plan_mirror(self.selection, self.view, checksum=checksum)
        return self.send([Dirty(path, mirror=True) for path in plan.to_send])

    def send(self, items: Iterable[Item]) -> Transfer:
        """Read the items, then move every queued frame to the applier (and what gets marked again)."""
        for item in items:
            self.reader.process(item)
        result = self.transfer()
        for _ in range(5):
            if not self.marked_again:
                break
            again, self.marked_again[:] = list(self.marked_again), []
            for path in again:
                self.reader.process(Dirty(path))
            more = self.transfer()
            result.messages += more.messages
            result.outcomes += more.outcomes
        return result

    def replicate(self, *paths: str) -> Transfer:
        return self.send([Dirty(p) for p in paths])

    def replicate_answering_needs(self, *paths: str) -> Transfer:
        """Replicate, and resend whole what the repository answers "need" to, as the job does."""
        result = self.replicate(*paths)
        for _ in range(3):
            needed = [m.path_from_wire(o.path) for o in result.outcomes if o.status == "need"]
            if not needed:
                break
            for path in needed:
                self.view.needs_full(path)
            more = self.replicate(*needed)
            result.messages += more.messages
            result.outcomes = [o for o in result.outcomes if o.status != "need"] + more.outcomes
        return result

    def transfer(self) -> Transfer:
        result = Transfer()
        while (item := self.queue.take()) is not None:
            result.messages.append(decode_body(item.frame[4:]))
        with self.applier.batch():  # as the receiver applies what it received
            for message in result.messages:
                outcome = self.applier.apply(message)
                if outcome is not None:
                    result.outcomes.append(outcome)
        if self.history is not None:
            self.history.commit()  # the receiver's group commit
        self.index.commit()
        self.queue.acknowledge(self.stream.last_seq)
        return result

    def reconnect(self, *, checksum: bool = False) -> None:
        """A new connection: the view is rebuilt from the repository's manifest, as the job does."""
        view = RemoteView()
        roots = [m.wire_path(r) for r in self.selection.roots]
        for batch in manifest_batches(self.tree, self.index, roots, checksum=checksum):
            for e in batch:
                view.add(m.path_from_wire(e[0]), RemoteEntry(*e[1:9]))
        self.view = view
        self.reader = Reader(self.selection, view, self.stream, self.marked_again.append)

    # -- the repository side -----------------------------------------------------------

    def image_path(self, source_path: str) -> str:
        return str(self.image_root) + source_path

    def temporaries(self) -> list[str]:
        return [
            os.path.join(d, n)
            for d, dirs, files in os.walk(self.image_root)
            for n in dirs + files
            if n.startswith(TEMP_PREFIX)
        ]


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def overwrite(path: str, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def sparse_file(path: str, size: int, regions: list[tuple[int, int]], seed: int) -> None:
    """A file of `size` bytes with random data only in `regions` (offset, length); holes elsewhere."""
    rnd = blake3.blake3(seed.to_bytes(8, "little"))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.ftruncate(fd, size)
        for offset, length in regions:
            os.pwrite(fd, rnd.digest(length=length, seek=offset), offset)
    finally:
        os.close(fd)


def random_bytes(n: int, seed: int) -> bytes:
    return blake3.blake3(seed.to_bytes(8, "little")).digest(length=n)
