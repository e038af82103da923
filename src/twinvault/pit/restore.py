"""``restore``: the image at a point in time, written into a local directory.

The point's op stream (``pit.opstream``) goes through the applier, the same code that
writes the repository's live image: every file lands atomically (temp + rename) with
its metadata, and every path is resolved one component at a time without following
symlinks, so a hostile image (``..``, symlinked parents) cannot write outside ``target``.
Restored paths keep the image's shape: ``/srv/a.txt`` lands at ``target/srv/a.txt``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.pit.opstream import PointInTimeStream, StreamTotals, versions_for
from twinvault.protocol import messages as m
from twinvault.repository.applier import Applier
from twinvault.repository.catalog import Catalog
from twinvault.repository.chunkstore import ChunkStore
from twinvault.repository.image_index import ImageIndex
from twinvault.repository.image_tree import ImageTree
from twinvault.timefmt import iso_from_ns, ns_from_iso

_REPLACING = frozenset({m.FILE, m.FBEGIN, m.SYMLINK, m.SPECIAL, m.LINK})


@dataclass(slots=True)
class RestoreReport:
    totals: StreamTotals
    failed: list[dict[str, Any]] = field(default_factory=list)


def resolve_point(
    catalog: Catalog, image: str, *, live: bool, snapshot: int | None, at: str | None
) -> int | None:
    """The instant to reconstruct: None for live data, a snapshot's time, or a checked instant."""
    if image not in {info.name for info in catalog.images()}:
        raise TwinvaultError(errors.IMAGE_NOT_FOUND, image)
    if live:
        return None
    if snapshot is not None:
        return catalog.snapshot(image, snapshot).time
    if at is None:
        raise TwinvaultError(errors.INVALID_ARGUMENT, "one of --live, --snapshot or --at is required")
    t = ns_from_iso(at)
    before, after = catalog.nearest_valid(image, t)
    if before != t:
        raise TwinvaultError(
            errors.INSTANT_NOT_VALID,
            f"{at} in image {image}; nearest valid instants: "
            f"{'none' if before is None else iso_from_ns(before)} before, "
            f"{'none' if after is None else iso_from_ns(after, round_up=True)} after "
            "(twinvault points lists the ranges)",
        )
    return t


class RestoreTarget:
    """The applier writing into a local directory: where a point in time's ops land."""

    def __init__(self, target: Path, emit: Any = lambda *a, **k: None) -> None:
        target.mkdir(parents=True, exist_ok=True)
        self._scratch = tempfile.TemporaryDirectory(prefix="twinvault-restore-")
        self._tree = ImageTree(target)
        self._index = ImageIndex(Path(self._scratch.name) / "index.sqlite")
        self._applier = Applier(self._tree, self._index, emit, retry_limit=0)
        self.failed: list[dict[str, Any]] = []
        self.last_seq = 0  # the last op applied whole (a file counts at its end)
        self._root = target
        self.replaced = 0  # entries that were already in the target and are now replaced
        self.replaced_paths: list[str] = []

    def apply(self, op: list[Any]) -> None:
        if op[0] in _REPLACING and op[1] > self.last_seq:
            self._note_replaced(op[2])
        outcome = self._applier.apply(op)
        if outcome is None:
            return
        self.last_seq = outcome.seq
        if outcome.status not in ("ok", "skipped"):
            self.failed.append(
                {"path": outcome.path.decode("utf-8", "surrogateescape"), "error": outcome.message}
            )

    def _note_replaced(self, path: bytes) -> None:
        """Say what a restore overwrites: an entry of the point already in the target."""
        if not path.startswith(b"/") or b"/../" in path + b"/":
            return  # refused by the applier anyway
        if os.path.lexists(os.fsencode(self._root) + path):
            self.replaced += 1
            if len(self.replaced_paths) < 1000:
                self.replaced_paths.append(path.decode("utf-8", "surrogateescape"))

    def close(self) -> None:
        self._applier.abort_transfer()
        self._applier.close()  # its threads
        self._index.close()
        self._tree.close()
        self._scratch.cleanup()


def restore(
    catalog: Catalog,
    store: ChunkStore,
    image: str,
    t: int | None,
    includes: Iterable[bytes],
    target: Path,
    emit: Any = lambda *a, **k: None,
) -> RestoreReport:
    """Restore in this process (the repository's own disk, or tests)."""
    stream = PointInTimeStream(store, versions_for(catalog, image, t, includes))
    report = RestoreReport(stream.totals)
    writer = RestoreTarget(target, emit)
    try:
        for op in stream:
            writer.apply(op)
    finally:
        writer.close()
    report.failed = writer.failed + [
        {"path": path.decode("utf-8", "surrogateescape"), "error": message}
        for path, message in stream.totals.damaged
    ]
    return report
