"""The mirror sends what differs from the repository's copy, and only that.

`plan_mirror` walks a real source tree (the suite's rich tree) against a `RemoteView`: an
empty one (the initial mirror), or one built from the tree's own metadata and chunk digests,
which is what the repository's manifest describes after a faithful mirror.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.helpers.tree import make_rich_tree
from twinvault.fsmeta import kind_of
from twinvault.source.chunker import file_digests
from twinvault.source.mirror import plan_mirror
from twinvault.source.remote_view import RemoteEntry, RemoteView
from twinvault.source.selection import Selection, is_within

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the rich tree needs root")


def entry_of(path: str) -> RemoteEntry:
    """What the repository's manifest says about `path` after a faithful copy."""
    st = os.lstat(path)
    kind = kind_of(st.st_mode)
    digests = file_digests(path)[0] if kind == "file" else b""
    size = st.st_size if kind == "file" else 0
    return RemoteEntry(kind, size, st.st_mtime_ns, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, digests)


def tree_paths(root: str) -> list[str]:
    out = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        out.extend(os.path.join(dirpath, name) for name in dirnames + filenames)
    return out


def view_of(selection: Selection) -> RemoteView:
    view = RemoteView()
    for path in selection.ancestors():
        view.add(path, entry_of(path))
    for root in selection.roots:
        for path in tree_paths(root):
            view.add(path, entry_of(path))
    return view


def inside(plan_paths: list[str], root: str) -> list[str]:
    """The planned paths inside the selection (ancestors like /tmp change under other tests)."""
    return [p for p in plan_paths if is_within(p, root)]


@pytest.fixture
def src_tree(tmp_path: Path) -> str:
    root = str(tmp_path / "src")
    make_rich_tree(root, seed=11)
    return root


def file_total(root: str) -> tuple[int, int]:
    files = [p for p in tree_paths(root) if stat.S_ISREG(os.lstat(p).st_mode)]
    return len(files), sum(os.lstat(p).st_size for p in files)


def test_initial_mirror_sends_everything_parents_before_children(src_tree: str) -> None:
    selection = Selection.build([src_tree], [])
    plan = plan_mirror(selection, RemoteView())

    ancestors = selection.ancestors()
    assert plan.to_send[: len(ancestors)] == ancestors, "the image needs the roots' ancestors first"
    assert sorted(inside(plan.to_send, src_tree)) == sorted(tree_paths(src_tree))
    assert len(plan.to_send) == len(set(plan.to_send)), "a path planned twice"
    position = {path: i for i, path in enumerate(plan.to_send)}
    for path in plan.to_send[1:]:
        parent = os.path.dirname(path)
        assert position[parent] < position[path], f"{path} is planned before its directory"

    files, size = file_total(src_tree)
    assert (plan.files_total, plan.bytes_total) == (files, size)
    assert plan.bytes_to_send == size
    assert plan.skipped_bytes == 0
    assert plan.orphans == []


def test_difference_mirror_of_an_unchanged_tree_sends_nothing_and_skips_every_byte(src_tree: str) -> None:
    selection = Selection.build([src_tree], [])
    plan = plan_mirror(selection, view_of(selection))
    assert inside(plan.to_send, src_tree) == []
    assert plan.bytes_to_send == 0
    _, size = file_total(src_tree)
    assert plan.bytes_total == size and plan.skipped_bytes == size
    assert plan.orphans == []


def _append_a_byte(path: str) -> None:
    with open(path, "ab") as f:
        f.write(b"!")


def _touch_mtime(path: str) -> None:
    st = os.lstat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1), follow_symlinks=False)


def _chmod(path: str) -> None:
    os.chmod(path, 0o600 if stat.S_IMODE(os.lstat(path).st_mode) != 0o600 else 0o644)


def _chown(path: str) -> None:
    st = os.lstat(path)
    os.lchown(path, st.st_uid + 1, st.st_gid)


def _chgrp(path: str) -> None:
    st = os.lstat(path)
    os.lchown(path, st.st_uid, st.st_gid + 1)


@pytest.mark.parametrize(
    ("change", "rel"),
    [
        pytest.param(_append_a_byte, "docs/random-1.bin", id="size"),
        pytest.param(_touch_mtime, "docs/random-1.bin", id="file-mtime"),
        pytest.param(_touch_mtime, "nested/a", id="directory-mtime"),
        pytest.param(_touch_mtime, "links/abs", id="symlink-mtime"),
        pytest.param(_chmod, "modes/private.txt", id="mode"),
        pytest.param(_chmod, "special/fifo", id="fifo-mode"),
        pytest.param(_chown, "owner/theirs.txt", id="owner"),
        pytest.param(_chgrp, "xattr.txt", id="group"),
    ],
)
def test_difference_mirror_sends_exactly_the_entry_that_changed(src_tree: str, change, rel: str) -> None:  # type: ignore[no-untyped-def]
    selection = Selection.build([src_tree], [])
    view = view_of(selection)
    path = os.path.join(src_tree, rel)
    change(path)
    plan = plan_mirror(selection, view)
    assert inside(plan.to_send, src_tree) == [path]
    assert inside(plan.differences, src_tree) == [path]
    size = os.lstat(path).st_size if stat.S_ISREG(os.lstat(path).st_mode) else 0
    assert plan.bytes_to_send == size


def test_an_entry_that_changed_kind_is_sent(src_tree: str) -> None:
    selection = Selection.build([src_tree], [])
    view = view_of(selection)
    path = os.path.join(src_tree, "docs", "random-2.bin")
    st = os.lstat(path)
    os.unlink(path)
    os.mkdir(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.chmod(path, stat.S_IMODE(st.st_mode))
    plan = plan_mirror(selection, view)
    assert set(inside(plan.to_send, src_tree)) == {path, os.path.dirname(path)}


def test_orphans_are_reported_as_their_topmost_paths_only(src_tree: str) -> None:
    selection = Selection.build([src_tree], [])
    view = view_of(selection)
    outside = os.path.join(os.path.dirname(src_tree), "elsewhere", "x")
    view.add(outside, RemoteEntry("file", 1, 1, 0o644, 0, 0, b""))  # not this selection's
    shutil.rmtree(os.path.join(src_tree, "nested"))
    os.unlink(os.path.join(src_tree, "docs", "random-0.bin"))
    plan = plan_mirror(selection, view)
    assert plan.orphans == [os.path.join(src_tree, "docs", "random-0.bin"), os.path.join(src_tree, "nested")]


def test_an_orphan_directory_hides_its_children_even_beside_a_similarly_named_orphan(src_tree: str) -> None:
    selection = Selection.build([src_tree], [])
    view = view_of(selection)
    for rel, kind in (
        ("gone", "dir"),
        ("gone/a", "file"),
        ("gone/b", "dir"),
        ("gone/b/c", "file"),
        ("gone-2", "file"),
    ):
        view.add(os.path.join(src_tree, rel), RemoteEntry(kind, 0, 1, 0o755, 0, 0, b""))
    plan = plan_mirror(selection, view)
    assert plan.orphans == [os.path.join(src_tree, "gone"), os.path.join(src_tree, "gone-2")]


def test_excluded_entries_are_neither_sent_nor_walked_nor_orphans(src_tree: str) -> None:
    selection = Selection.build([src_tree], ["*.bin", "nested", os.path.join(src_tree, "links", "abs")])
    plan = plan_mirror(selection, RemoteView())
    sent = inside(plan.to_send, src_tree)
    assert not [p for p in sent if p.endswith(".bin")]
    assert not [p for p in sent if is_within(p, os.path.join(src_tree, "nested"))]
    assert os.path.join(src_tree, "links", "abs") not in sent
    assert os.path.join(src_tree, "links", "rel") in sent

    # The image still holds entries that are excluded now; the source deleted them since.
    view = view_of(Selection.build([src_tree], []))
    for key in [k for k in view.entries if k.startswith(os.path.join(src_tree, "nested") + "/")]:
        del view.entries[key]  # (what lies under an excluded directory: see the next test)
    os.unlink(os.path.join(src_tree, "docs", "random-0.bin"))
    os.unlink(os.path.join(src_tree, "links", "abs"))
    assert plan_mirror(selection, view).orphans == []


def test_the_contents_of_an_excluded_directory_in_the_image_are_not_orphans(src_tree: str) -> None:
    view = view_of(Selection.build([src_tree], []))  # mirrored before "nested" was excluded
    selection = Selection.build([src_tree], ["nested"])
    assert plan_mirror(selection, view).orphans == []


def test_checksum_mirror_finds_a_change_that_kept_size_and_time(src_tree: str) -> None:
    selection = Selection.build([src_tree], [])
    view = view_of(selection)
    path = os.path.join(src_tree, "docs", "random-3.bin")
    st = os.lstat(path)
    with open(path, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    assert inside(plan_mirror(selection, view).to_send, src_tree) == []
    plan = plan_mirror(selection, view, checksum=True)
    assert inside(plan.to_send, src_tree) == [path]
    assert plan.skipped_bytes == plan.bytes_total - st.st_size


def test_checksum_mirror_of_an_unchanged_tree_sends_nothing(src_tree: str) -> None:
    selection = Selection.build([src_tree], [])
    plan = plan_mirror(selection, view_of(selection), checksum=True)
    assert inside(plan.to_send, src_tree) == []
    assert plan.skipped_bytes == plan.bytes_total


@pytest.mark.parametrize("walk_ends_after", [0, 1, 3, 99])
def test_a_plan_made_as_the_manifest_arrives_equals_the_plan_made_at_once(
    src_tree: str, walk_ends_after: int
) -> None:
    """The job compares manifest batches as they come once its walk is done (PlanBuilder);
    wherever the walk ends among the batches, the plan is the one made in one go."""
    from twinvault.source.mirror import PlanBuilder, walk_selection

    selection = Selection.build([src_tree], [])
    view = view_of(selection)
    changed = sorted(p for p in tree_paths(src_tree) if stat.S_ISREG(os.lstat(p).st_mode))[:3]
    for path in changed:
        os.utime(path, ns=(1, 1))
    orphan = os.path.join(src_tree, "gone-from-the-source")
    view.add(orphan, RemoteEntry("file", 1, 1, 0o644, 0, 0, b""))
    walk = walk_selection(selection)
    whole = plan_mirror(selection, view, walk=walk)

    planning = PlanBuilder(selection)
    arriving = RemoteView()
    entries = list(view.entries.items())
    batches = [entries[i : i + 7] for i in range(0, len(entries), 7)]
    for i, batch in enumerate(batches):
        if i == walk_ends_after:
            planning.walked(walk)
        for path, entry in batch:
            arriving.add(path, entry)
        planning.remote(batch)
    if planning.walk is None:
        planning.walked(walk)
    made = planning.finish(arriving)

    assert made.to_send == whole.to_send and set(changed) <= set(made.to_send)
    assert made.orphans == whole.orphans == [orphan]
    assert (made.files_total, made.bytes_total, made.skipped_bytes, made.bytes_to_send) == (
        whole.files_total, whole.bytes_total, whole.skipped_bytes, whole.bytes_to_send,
    )  # fmt: skip
    assert made.skipped_bytes > 0


def test_a_malformed_manifest_batch_is_the_peers_fault() -> None:
    """Entries too short, of the wrong shape or not a list: a TwinvaultError with the
    malformed-frame code, which ends the link (the job reconnects), not a crash of the
    job's connection loop."""
    from twinvault.ops.errors import MALFORMED_FRAME, TwinvaultError
    from twinvault.source.remote_view import manifest_entries

    good = [b"/a", "file", 3, 7, 0o644, 0, 0, b"", True]
    assert manifest_entries([good])[0][0] == "/a"
    assert manifest_entries([good[:8]])[0][1].indexed  # a repository before ``indexed``
    for bad in ([[b"/a", "file"]], [7], [None], [[3, "file", 3, 7, 0o644, 0, 0, b"", True]]):
        with pytest.raises(TwinvaultError) as caught:
            manifest_entries(bad)  # type: ignore[arg-type]
        assert caught.value.code == MALFORMED_FRAME
