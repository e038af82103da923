"""The mirror: compares the source tree with the repository's manifest.

One walk serves the initial mirror (empty manifest), the difference mirror (size,
time, mode and owner) and the checksum mirror (chunk digests read on both sides).
It decides; the reader sends. Bytes it finds equal are *skipped* (the seed's
"Mirror skipped"). Entries the repository has under the selection and the source
lacks are *orphans*.
"""

from __future__ import annotations

import contextlib
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
    if walk is None:
        walk = walk_selection(selection)
    plan = MirrorPlan()
    entries = view.entries
    # One iterator five times over: each path with its five fields, no slice per entry.
    fields = iter(walk.fields)
    rows = zip(walk.paths, *[fields] * SourceWalk.WIDTH, strict=True)
    for path, mode, uid, gid, size, mtime_ns in rows:
        _compare(path, entries.get(path), plan, checksum, mode, uid, gid, size, mtime_ns)
    ancestors = set(selection.ancestors())
    plan.ancestors_sent = [p for p in plan.to_send if p in ancestors]
    prefixes = tuple(r.rstrip("/") + "/" for r in selection.roots)
    for path in entries.keys() - set(walk.paths):
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


def _compare(
    path: str,
    remote: RemoteEntry | None,
    plan: MirrorPlan,
    checksum: bool,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime_ns: int,
) -> None:
    is_file = stat.S_ISREG(mode)
    if not is_file:
        size = 0
    else:
        plan.files_total += 1
        plan.bytes_total += size
    if remote is not None and _same(mode, uid, gid, size, mtime_ns, remote):
        if not checksum or not is_file or _same_content(path, remote):
            plan.skipped_bytes += size
            return
        plan.content_differs.append(path)
    plan.to_send.append(path)
    plan.bytes_to_send += size


def _same(mode: int, uid: int, gid: int, size: int, mtime_ns: int, remote: RemoteEntry) -> bool:
    kind = fsmeta.kind_of(mode)
    if kind != remote.kind or stat.S_IMODE(mode) != remote.mode:
        return False
    if uid != remote.uid or gid != remote.gid or mtime_ns != remote.mtime_ns:
        return False
    return remote.indexed and (kind != "file" or size == remote.size)


def _same_content(path: str, remote: RemoteEntry) -> bool:
    try:
        digests, _ = file_digests(path)
    except OSError:
        return False
    return digests == remote.digests
