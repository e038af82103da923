"""The mirror: compares the source tree with the repository's manifest.

One walk serves the initial mirror (empty manifest), the difference mirror (size,
time, mode and owner) and the checksum mirror (chunk digests read on both sides).
It decides; the reader sends. Bytes it finds equal are *skipped* (the seed's
"Mirror skipped"). Entries the repository has under the selection and the source
lacks are *orphans*.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import stat
from array import array
from dataclasses import dataclass, field

from twinvault import fsmeta
from twinvault.source.chunker import file_digests
from twinvault.source.remote_view import RemoteEntry, RemoteView
from twinvault.source.selection import Selection


@dataclass(slots=True)
class MirrorPlan:
    to_send: list[str] = field(default_factory=list)
    bytes_to_send: int = 0
    files_total: int = 0
    bytes_total: int = 0
    skipped_bytes: int = 0
    orphans: list[str] = field(default_factory=list)

    # Directories above the selection the mirror refreshes: their times drift with
    # everything else in them and capture does not follow them, so they are no difference.
    ancestors_sent: list[str] = field(default_factory=list)

    @property
    def differences(self) -> list[str]:
        """What a verify reports: every path in the selection the mirror would send."""
        outside = set(self.ancestors_sent)
        return [p for p in self.to_send if p not in outside]

    content_differs: list[str] = field(default_factory=list)  # same size and time, other bytes


class SourceWalk:
    """What one walk of the selection found: each entry's path and the lstat fields the
    comparison needs, kept compact (five integers in one array, not a stat object),
    because a difference mirror takes the walk while the manifest is still arriving."""

    __slots__ = ("fields", "paths")
    WIDTH = 5  # st_mode, st_uid, st_gid, st_size, st_mtime_ns

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.fields = array("q")

    def add(self, path: str, st: os.stat_result) -> None:
        self.paths.append(path)
        self.fields.extend((st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns))


def walk_selection(selection: Selection) -> SourceWalk:
    """Walk the selection (and the ancestors of its roots) in the plan's order: each
    directory's entries by name, then its subdirectories. Run while the repository
    walks its image, so the two walks overlap; the plan then only compares."""
    walk = SourceWalk()
    for ancestor in selection.ancestors():
        with contextlib.suppress(OSError):
            walk.add(ancestor, os.lstat(ancestor))
    for root in selection.roots:
        _walk(root, selection, walk)
    return walk


def plan_mirror(
    selection: Selection, view: RemoteView, *, checksum: bool = False, walk: SourceWalk | None = None
) -> MirrorPlan:
    """Compare ``walk`` (a walk of the selection, taken now when not given) with ``view``."""
    planning = PlanBuilder(selection, checksum=checksum)
    planning.walked(walk if walk is not None else walk_selection(selection), view)
    return planning.finish(view)


class PlanBuilder:
    """A plan made while the manifest arrives. A difference mirror's walk of the source
    usually ends before the repository's walk of its image: from then on each manifest
    batch is compared as it comes (`remote`), so the plan is all but made when the last
    one arrives, instead of a pass over every entry starting only then (~0.1 s per 50,000
    entries of a no-change mirror)."""

    def __init__(self, selection: Selection, *, checksum: bool = False) -> None:
        self.selection = selection
        self.checksum = checksum  # compares contents: reads files (not on an event loop)
        self.walk: SourceWalk | None = None
        self.plan = MirrorPlan()
        self._rows: dict[str, int] = {}
        self._send = bytearray()  # per walk row: 1 until found the same in the manifest
        self._waiting: list[tuple[str, RemoteEntry]] = []  # entries that came before the walk

    def remote(self, entries: list[tuple[str, RemoteEntry]]) -> None:
        """Entries of the manifest, as they arrive."""
        if self.walk is None:
            self._waiting.extend(entries)
            return
        rows, match = self._rows, self._match
        for path, entry in entries:
            row = rows.get(path)
            if row is not None:
                match(row, path, entry)

    def walked(self, walk: SourceWalk, view: RemoteView | None = None) -> None:
        """The walk is done: compare what came before it (or, given ``view``, all of it,
        row by row in walk order)."""
        self.walk = walk
        paths, fields, width = walk.paths, walk.fields, SourceWalk.WIDTH
        self._rows = {path: row for row, path in enumerate(paths)}
        self._send = bytearray(b"\x01") * len(paths)
        plan = self.plan
        for mode, size in zip(fields[0::width], fields[3::width], strict=True):
            if stat.S_ISREG(mode):
                plan.files_total += 1
                plan.bytes_total += size
        if view is not None:
            entries = view.entries
            for row, path in enumerate(paths):
                entry = entries.get(path)
                if entry is not None:
                    self._match(row, path, entry)
        waiting, self._waiting = self._waiting, []
        self.remote(waiting)

    def _match(self, row: int, path: str, remote: RemoteEntry) -> None:
        # One call per entry of the manifest (50,000 for a no-change mirror of 50,000
        # files), on the event loop: the cheapest, most often differing fields first.
        assert self.walk is not None
        at = row * SourceWalk.WIDTH
        mode, uid, gid, size, mtime_ns = self.walk.fields[at : at + SourceWalk.WIDTH]
        if (
            mtime_ns != remote.mtime_ns
            or not remote.indexed
            or uid != remote.uid
            or gid != remote.gid
            or stat.S_IMODE(mode) != remote.mode
        ):
            return
        if stat.S_ISREG(mode):
            if remote.kind != "file" or size != remote.size:
                return
            if self.checksum and not _same_content(path, remote):
                self.plan.content_differs.append(path)
                return
            self.plan.skipped_bytes += size
        elif fsmeta.kind_of(mode) != remote.kind:
            return
        self._send[row] = 0

    def finish(self, view: RemoteView) -> MirrorPlan:
        """The plan, once the whole manifest is in ``view`` and the walk is done."""
        assert self.walk is not None
        selection, plan, walk = self.selection, self.plan, self.walk
        plan.to_send = list(itertools.compress(walk.paths, self._send))
        plan.bytes_to_send = plan.bytes_total - plan.skipped_bytes
        ancestors = set(selection.ancestors())
        plan.ancestors_sent = [p for p in plan.to_send if p in ancestors]
        prefixes = tuple(r.rstrip("/") + "/" for r in selection.roots)
        for path in view.entries.keys() - self._rows.keys():
            inside = path in selection.roots or path.startswith(prefixes)
            if inside and not selection.excluded(path):
                plan.orphans.append(path)
        # Deleting a directory deletes what is under it: report the topmost orphans only.
        # Sorting by components puts a directory right before its descendants ("gone",
        # "gone/a", "gone-2"), which plain string order does not ("-" sorts before "/").
        plan.orphans.sort(key=lambda p: p.split("/"))
        top: list[str] = []
        for path in plan.orphans:
            if not top or not path.startswith(top[-1].rstrip("/") + "/"):
                top.append(path)
        plan.orphans = top
        return plan


def _walk(root: str, selection: Selection, walk: SourceWalk) -> None:
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return
    walk.add(root, st)
    if not stat.S_ISDIR(st.st_mode):
        return
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue  # vanished or unreadable; change capture or the next mirror catches up
        subdirs = []
        for entry in entries:
            path = entry.path
            if selection.excluded(path):
                continue
            try:
                est = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            walk.add(path, est)
            if stat.S_ISDIR(est.st_mode):
                subdirs.append(path)
        stack.extend(reversed(subdirs))


def _same_content(path: str, remote: RemoteEntry) -> bool:
    try:
        digests, _ = file_digests(path)
    except OSError:
        return False
    return digests == remote.digests
