"""The change set: paths waiting to be read, coalesced, in the order they changed.

Change capture and the mirror both feed it; the reader drains it. A path marked
twice is read once (its newest state). Renames and deletes of whole trees are
*barriers*: they keep their place in the order, and paths marked under the old name
move behind the barrier under the new name, so the repository sees the rename
before any content for the new name.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from twinvault.source.selection import is_within


@dataclass(frozen=True, slots=True)
class Dirty:
    path: str
    mirror: bool = False  # queued by a mirror (bytes count as mirror bytes)


@dataclass(frozen=True, slots=True)
class Barrier:
    kind: Literal["rename", "delete", "mark"]
    path: str  # for "mark": the mark's name
    new_path: str = ""
    # False when capture says a deleted path was not a directory: nothing can be queued
    # below it, so the barrier need not look (a large rm -rf would otherwise cost O(n^2)).
    # Were the hint wrong, the entries below would still be read and found gone.
    is_dir: bool = True


Item = Dirty | Barrier
_barrier_ids = itertools.count()


class ChangeSet:
    def __init__(self) -> None:
        # A path maps to its mirror flag (a bool, not a Dirty: 200,000 queued paths of
        # a mirror would otherwise cost an object each); a barrier maps to itself.
        self._items: OrderedDict[object, bool | Barrier] = OrderedDict()
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)

    def __len__(self) -> int:
        return len(self._items)

    def mark(self, path: str, *, mirror: bool = False) -> None:
        with self._lock:
            old = self._items.pop(path, None)
            # A path already waiting as a replication change stays one.
            self._items[path] = mirror and (old is None or old is True)
            self._wakeup.notify()

    def mark_many(self, paths: list[str], *, mirror: bool) -> None:
        with self._lock:
            for path in paths:
                if path not in self._items:
                    self._items[path] = mirror
            self._wakeup.notify()

    def barrier(self, barrier: Barrier) -> None:
        with self._lock:
            moved: list[Dirty] = []
            if barrier.kind == "mark":
                keys: list[object] = []
            elif not barrier.is_dir:
                keys = [barrier.path] if barrier.path in self._items else []
            else:
                keys = list(self._items)
            for key in [k for k in keys if isinstance(k, str) and is_within(k, barrier.path)]:
                flag = self._items.pop(key)
                if barrier.kind == "rename" and isinstance(flag, bool):
                    moved.append(Dirty(barrier.new_path + key[len(barrier.path) :], flag))
            self._items[("barrier", next(_barrier_ids))] = barrier
            for item in moved:
                self._items.pop(item.path, None)
                self._items[item.path] = item.mirror
            self._wakeup.notify()

    def take(self, limit: int, timeout: float) -> list[Item]:
        """Up to ``limit`` items in order; waits up to ``timeout`` s for the first one."""
        with self._lock:
            if not self._items:
                self._wakeup.wait(timeout)
            out: list[Item] = []
            while self._items and len(out) < limit:
                key, value = self._items.popitem(last=False)
                out.append(Dirty(key, value) if isinstance(value, bool) else value)  # type: ignore[arg-type]
            return out

    def wake(self) -> None:
        with self._lock:
            self._wakeup.notify_all()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
