"""The change set coalesces marked paths and keeps renames, deletes and marks in their place.

A `ChangeSet` is what change capture and the mirror feed and the reader drains; these tests
mark paths the way capture would and read back exactly what the reader would be given.
"""

from __future__ import annotations

import threading
import time

from twinvault.source.changeset import Barrier, ChangeSet, Dirty, Item


def take_all(changes: ChangeSet) -> list[Item]:
    return changes.take(limit=1000, timeout=0)


def test_a_path_marked_twice_is_read_once_at_its_latest_place() -> None:
    changes = ChangeSet()
    changes.mark("/s/a")
    changes.mark("/s/b")
    changes.mark("/s/a")
    assert len(changes) == 2
    assert take_all(changes) == [Dirty("/s/b"), Dirty("/s/a")]
    assert len(changes) == 0


def test_take_returns_at_most_limit_items_in_order() -> None:
    changes = ChangeSet()
    for name in "abcde":
        changes.mark(f"/s/{name}")
    assert changes.take(limit=2, timeout=0) == [Dirty("/s/a"), Dirty("/s/b")]
    assert changes.take(limit=10, timeout=0) == [Dirty("/s/c"), Dirty("/s/d"), Dirty("/s/e")]


def test_take_waits_for_the_first_change() -> None:
    changes = ChangeSet()
    threading.Timer(0.1, changes.mark, ["/s/late"]).start()
    started = time.monotonic()
    assert changes.take(limit=10, timeout=5) == [Dirty("/s/late")]
    assert time.monotonic() - started < 4


def test_rename_moves_pending_children_behind_the_barrier_under_the_new_name() -> None:
    changes = ChangeSet()
    changes.mark("/s/before")
    changes.mark("/s/d/file")
    changes.mark("/s/dx/file")  # a sibling whose name starts like the renamed directory
    changes.mark("/s/d/sub/deep", mirror=True)
    changes.mark("/s/d")
    changes.barrier(Barrier("rename", "/s/d", "/s/e"))
    changes.mark("/s/after")
    assert take_all(changes) == [
        Dirty("/s/before"),
        Dirty("/s/dx/file"),
        Barrier("rename", "/s/d", "/s/e"),
        Dirty("/s/e/file"),
        Dirty("/s/e/sub/deep", mirror=True),
        Dirty("/s/e"),
        Dirty("/s/after"),
    ]


def test_rename_onto_a_pending_path_sends_that_path_once_after_the_barrier() -> None:
    changes = ChangeSet()
    changes.mark("/s/new")
    changes.mark("/s/old")
    changes.barrier(Barrier("rename", "/s/old", "/s/new"))
    assert take_all(changes) == [Barrier("rename", "/s/old", "/s/new"), Dirty("/s/new")]


def test_delete_drops_pending_children_of_the_deleted_tree() -> None:
    changes = ChangeSet()
    changes.mark("/s/keep")
    changes.mark("/s/gone/a")
    changes.mark("/s/gone")
    changes.mark("/s/gone/b/c")
    changes.mark("/s/gone2")  # not inside /s/gone
    changes.barrier(Barrier("delete", "/s/gone"))
    assert take_all(changes) == [Dirty("/s/keep"), Dirty("/s/gone2"), Barrier("delete", "/s/gone")]


def test_a_path_marked_after_a_barrier_is_read_after_it() -> None:
    changes = ChangeSet()
    changes.mark("/s/d/f")
    changes.barrier(Barrier("delete", "/s/d"))
    changes.mark("/s/d/f")  # recreated after the delete
    assert take_all(changes) == [Barrier("delete", "/s/d"), Dirty("/s/d/f")]


def test_a_mark_barrier_keeps_its_place_and_drops_nothing() -> None:
    changes = ChangeSet()
    changes.mark("/s/a")
    changes.mark("/mirror-done/x")  # named like the mark: a mark is not a path
    changes.barrier(Barrier("mark", "/mirror-done"))
    changes.mark("/s/b")
    changes.barrier(Barrier("mark", "/mirror-done"))  # two marks of one name are two barriers
    assert take_all(changes) == [
        Dirty("/s/a"),
        Dirty("/mirror-done/x"),
        Barrier("mark", "/mirror-done"),
        Dirty("/s/b"),
        Barrier("mark", "/mirror-done"),
    ]


def test_a_replication_change_stays_one_when_a_mirror_marks_it_again() -> None:
    changes = ChangeSet()
    changes.mark("/s/a")
    changes.mark("/s/a", mirror=True)
    changes.mark_many(["/s/b"], mirror=False)
    changes.mark_many(["/s/b"], mirror=True)
    assert take_all(changes) == [Dirty("/s/a", mirror=False), Dirty("/s/b", mirror=False)]


def test_a_mirror_change_becomes_replication_when_capture_marks_it() -> None:
    changes = ChangeSet()
    changes.mark("/s/a", mirror=True)
    changes.mark("/s/b", mirror=True)
    changes.mark("/s/a")
    changes.mark("/s/b", mirror=True)
    assert take_all(changes) == [Dirty("/s/a", mirror=False), Dirty("/s/b", mirror=True)]


def test_mark_many_keeps_the_place_of_paths_already_waiting() -> None:
    changes = ChangeSet()
    changes.mark("/s/b")
    changes.mark_many(["/s/a", "/s/b", "/s/c"], mirror=True)
    assert take_all(changes) == [Dirty("/s/b"), Dirty("/s/a", mirror=True), Dirty("/s/c", mirror=True)]


def test_clear_forgets_everything() -> None:
    changes = ChangeSet()
    changes.mark("/s/a")
    changes.barrier(Barrier("mark", "m"))
    changes.clear()
    assert take_all(changes) == []
