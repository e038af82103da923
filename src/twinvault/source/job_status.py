"""The Monitor page's view of a protection job on its source: statuses, percentages,
time remaining and the seed's statistics, computed from the job's live counters."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from twinvault.protocol.transmission import transmission_view

if TYPE_CHECKING:
    from twinvault.source.job import ProtectionJob


def job_status(job: ProtectionJob) -> dict[str, Any]:
    mirror = job.mirror
    # Progress counts what the repository acknowledged (holds durably), not what
    # merely left this host: a killed link loses what was only in flight.
    remaining = max(0, mirror.bytes_to_send - mirror.bytes_acked) if mirror.status == "Mirroring" else 0
    if mirror.status == "Mirroring" and mirror.bytes_to_send:
        percent = round(100.0 * min(mirror.bytes_acked, mirror.bytes_to_send) / mirror.bytes_to_send, 1)
    else:
        percent = 100.0 if mirror.complete else 0.0
    rate = job.throughput.rate()
    time_remaining = int(remaining / rate) if remaining and rate > 0 else 0
    if job.spec.stopped:
        status = "Stopped"
    elif not job.connected:
        status = "Communication Error" if job.transmit_status == "Error" else "Starting"
    elif mirror.status in ("Calculating", "Mirroring"):
        status = "Mirroring"
    else:
        status = "Protecting"
    health = "ok"
    if job.capture_error is not None and not job.spec.stopped:
        health = "error"  # replication is not happening
    elif job.failed_paths or (not job.connected and not job.spec.stopped):
        health = "error" if not job.connected else "warning"
    elif mirror.orphans and not job.spec.delete_orphans:
        health = "warning"
    total = job.bytes_sent_mirror + job.bytes_sent_replication
    total_compressed = job.bytes_sent_mirror_compressed + job.bytes_sent_replication_compressed
    return {
        "id": job.spec.job_id,
        "type": job.spec.job_type,
        "status": status,
        "health": health,
        "source": job.spec.source_name,
        "target": job.spec.repository_name,
        "image_location": job.spec.image_location,
        "selection": list(job.spec.roots),
        "excludes": list(job.spec.excludes),
        "percent_complete": percent,
        "time_remaining_s": time_remaining,
        "total_sent_bytes": total,
        "total_sent_compressed_bytes": total_compressed,
        "compression": job.spec.compression,
        "wire_bytes": job.wire_bytes_tx,
        "transmit_status": job.transmit_status,
        "target_status": job.target_status,
        "recovery_available": bool(mirror.complete and job.connected),
        "capture": job.capture_kind,
        "capture_error": job.capture_error,
        "mirror": {
            "status": mirror.status,
            "percent_complete": percent,
            "remaining_bytes": remaining,
            "skipped_bytes": mirror.skipped_bytes,
            "orphans": len(mirror.orphans),
            "orphan_paths": mirror.orphans[:100],
        },
        "replication": {
            # The seed's "Watchdog": no replication ops are coming from change capture.
            "status": "Watchdog" if job.capture_error is not None else job.replication_status,
            "bytes_sent": job.bytes_sent_replication,
            "bytes_sent_compressed": job.bytes_sent_replication_compressed,
            "bytes_queued": job.queue.replication_bytes_queued + job.queue.inflight_bytes,
            "disk_queue_bytes": job.queue.disk_bytes,
            "pending_paths": len(job.changes),
        },
        **transmission_view(job.bandwidth, job.spec),
        "failed_paths": job.failed_paths[-100:],
        "last_error": job.last_error,
        "chunks": {
            "bytes_read": job.reader.counters.bytes_read,
            "bytes_new": job.reader.counters.bytes_new,
            "bytes_deduplicated": job.reader.counters.bytes_deduplicated,
        },
    }


class Rate:
    """Bytes per second over the last ~10 seconds (time remaining estimates)."""

    def __init__(self) -> None:
        self._samples: list[tuple[float, int]] = []

    def add(self, n: int) -> None:
        now = time.monotonic()
        if self._samples and now - self._samples[-1][0] < 0.25:
            t, v = self._samples[-1]
            self._samples[-1] = (t, v + n)
        else:
            self._samples.append((now, n))
        while self._samples and now - self._samples[0][0] > 10:
            self._samples.pop(0)

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        span = self._samples[-1][0] - self._samples[0][0]
        return sum(v for _, v in self._samples) / span if span > 0 else 0.0
