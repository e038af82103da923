"""The op stream of one job on the source: numbering, encoding and queueing ops.

Everything that leaves the source for the repository passes here, from the reader's
thread, in order: the sequence number is assigned and the frame encoded under one
lock, so queue order is sequence order.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from twinvault.protocol.frames import encode_frame
from twinvault.source.queue import OpQueue, QueuedFrame


@dataclass(slots=True)
class StreamCounters:
    mirror_bytes: int = 0  # payload bytes of mirror ops queued
    replication_bytes: int = 0  # payload bytes of replication ops queued
    ops: int = 0


class OpStream:
    def __init__(self, queue: OpQueue, epoch: int, next_seq: int = 1) -> None:
        self.queue = queue
        self.epoch = epoch
        self._next_seq = next_seq
        self._lock = threading.Lock()
        self.counters = StreamCounters()

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    def emit_mark(self, name: str) -> int:
        return self.emit("mark", [name], replication=True)

    def emit(
        self, kind: str, fields: list[Any], *, replication: bool, payload: int = 0, wire_payload: int = -1
    ) -> int:
        """Queue one op frame; ``payload`` is the file bytes it carries, ``wire_payload``
        the same bytes as they travel, compressed or not (-1: as many), for statistics."""
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            frame = encode_frame([kind, seq, *fields])
            self.queue.append(QueuedFrame(seq, frame, replication, payload, wire_payload))
            self.counters.ops += 1
            if replication:
                self.counters.replication_bytes += payload
            else:
                self.counters.mirror_bytes += payload
            return seq
