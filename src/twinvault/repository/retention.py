"""Retention: versions older than an image's continuous-data-protection window go.

Runs on the repository, by the repository's clock (ARCHITECTURE: a source can only
add). A prune is journalled like any other change (``prune`` record with its horizon)
so a catalog rebuilt from the journal prunes the same versions; snapshots pin the
versions valid at their instant. An instant a mount serves is held (`History.hold`): its
image's horizon stops at that instant while the mount lives, so nothing valid at it goes
(the horizon recorded is the one applied, so a rebuild still prunes identically; the
next prune after the mount ends catches up). Unreferenced chunks are then collected by
the store.
"""

from __future__ import annotations

from dataclasses import dataclass

from twinvault.ops import events as ev
from twinvault.repository.history import PRUNE, History
from twinvault.timefmt import iso_from_ns

_NS_PER_DAY = 86_400 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class PruneReport:
    versions: int
    chunks: int
    bytes: int
    images: int

    def to_json(self) -> dict[str, int]:
        return {"versions": self.versions, "chunks": self.chunks, "bytes": self.bytes, "images": self.images}


def prune(history: History, now_ns: int | None = None) -> PruneReport:
    now = history.now() if now_ns is None else now_ns
    before = {info.name: info.versions for info in history.catalog.images()}
    horizons: list[int] = []
    with history.lock:  # holds are taken under this lock too: none slips between
        for info in history.catalog.images():
            horizon = now - int(info.cdp_days * _NS_PER_DAY)
            held = history.held_since(info.name)
            if held is not None and held < horizon:
                horizon = held  # versions valid at `held` have valid_to > held: kept
            horizons.append(horizon)
            history.record(PRUNE, info.name, horizon)
    history.commit()
    after = {info.name: info.versions for info in history.catalog.images()}
    removed = sum(before[name] - after.get(name, 0) for name in before)
    chunks, nbytes = history.collect_garbage()
    report = PruneReport(removed, chunks, nbytes, len(before))
    if horizons:
        history.emit(
            ev.PRUNE_COMPLETED,
            versions=removed,
            chunks=chunks,
            bytes=nbytes,
            horizon=iso_from_ns(min(horizons)),
        )
    return report
