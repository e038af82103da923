"""The mirror: compares the source tree with the repository's manifest.

One walk serves the initial mirror (empty manifest), the difference mirror (size,
time, mode and owner) and the checksum mirror (chunk digests read on both sides).
It decides; the reader sends. Bytes it finds equal are *skipped* (the seed's
"Mirror skipped"). Entries the repository has under the selection and the source
lacks are *orphans*.
"""

from __future__ import annotations

import os
import stat
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


def plan_mirror(selection: Selection, view: RemoteView, *, checksum: bool = False) -> MirrorPlan:
    plan = MirrorPlan()
    seen: set[str] = set()
    for ancestor in selection.ancestors():
        _compare(ancestor, view, plan, seen, checksum=False)
    plan.ancestors_sent = list(plan.to_send)
    for root in selection.roots:
        _walk(root, selection, view, plan, seen, checksum)
    prefixes = tuple(r.rstrip("/") + "/" for r in selection.roots)
    for path in view.entries:
        if path in seen:
            continue
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


def warm_tree(selection: Selection) -> int:
    """Stat every entry of the selection and keep nothing: run while the repository
    walks its image, it brings the source's inodes into the cache so that the plan that
    follows walks warm. The two walks then overlap instead of running one after the
    other, at no memory cost. Returns the number of entries seen."""
    seen = 0
    stack = [r for r in selection.roots if os.path.isdir(r)]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    seen += 1
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        else:
                            entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
        except OSError:
            continue
    return seen


def _walk(
    root: str, selection: Selection, view: RemoteView, plan: MirrorPlan, seen: set[str], checksum: bool
) -> None:
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return
    _compare(root, view, plan, seen, checksum, st)
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
            _compare(path, view, plan, seen, checksum, est)
            if stat.S_ISDIR(est.st_mode):
                subdirs.append(path)
        stack.extend(reversed(subdirs))


def _compare(
    path: str,
    view: RemoteView,
    plan: MirrorPlan,
    seen: set[str],
    checksum: bool,
    st: os.stat_result | None = None,
) -> None:
    if st is None:
        try:
            st = os.lstat(path)
        except OSError:
            return
    seen.add(path)
    remote = view.entries.get(path)
    is_file = stat.S_ISREG(st.st_mode)
    size = st.st_size if is_file else 0
    if is_file:
        plan.files_total += 1
        plan.bytes_total += size
    if remote is not None and _same(st, remote):
        if not checksum or not is_file or _same_content(path, remote):
            plan.skipped_bytes += size
            return
        plan.content_differs.append(path)
    plan.to_send.append(path)
    plan.bytes_to_send += size


def _same(st: os.stat_result, remote: RemoteEntry) -> bool:
    kind = fsmeta.kind_of(st.st_mode)
    if kind != remote.kind or stat.S_IMODE(st.st_mode) != remote.mode:
        return False
    if st.st_uid != remote.uid or st.st_gid != remote.gid:
        return False
    if kind == "dir":
        return st.st_mtime_ns == remote.mtime_ns
    return st.st_mtime_ns == remote.mtime_ns and (kind != "file" or st.st_size == remote.size)


def _same_content(path: str, remote: RemoteEntry) -> bool:
    try:
        digests, _ = file_digests(path)
    except OSError:
        return False
    return digests == remote.digests
