"""Source and repository agree byte for byte: the op stream from reader to applier, in process.

Each test wires the real parts of both sides without a network: on the source a
`Selection`, a `RemoteView` and a `Reader` writing through an `OpStream` into an `OpQueue`;
on the repository an `Applier` over an `ImageTree` and an `ImageIndex`. Frames taken from
the queue are decoded exactly as the receiver decodes them (`decode_body(frame[4:])`) and
applied in order. The image keeps source paths under its root (`image root + /abs/path`),
so "the image equals the source" is `compare_trees(root, image_root + root)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest

from tests.helpers.roundtrip import Protection, overwrite, random_bytes, sparse_file, write
from tests.helpers.tree import assert_trees_equal, compare_trees, make_rich_tree
from tests.unit.test_history_property import open_test_history
from twinvault import fsmeta
from twinvault.compression import compressor_for
from twinvault.ops.errors import INVALID_PARAMETER, TwinvaultError
from twinvault.protocol import messages as m
from twinvault.protocol.frames import decode_body
from twinvault.repository.applier import Outcome
from twinvault.source.changeset import Barrier, Dirty
from twinvault.source.mirror import plan_mirror
from twinvault.source.selection import is_within

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="owners, devices and trusted.* xattrs need root")

MiB = 1 << 20


@pytest.fixture
def src(tmp_path: Path) -> str:
    root = tmp_path / "source" / "data"
    root.mkdir(parents=True)
    return str(root)


@pytest.fixture
def job(tmp_path: Path, src: str) -> Iterator[Protection]:
    protection = Protection(tmp_path / "job", [src])
    yield protection
    protection.close()


def make_source(root: str) -> None:
    """The rich tree plus what a reader must stream: big files, holes, links across directories."""
    make_rich_tree(root, seed=5)
    big = os.path.join(root, "big")
    os.mkdir(big)
    write(os.path.join(big, "random-9m.bin"), random_bytes(9 * MiB, 1))  # several fdata frames
    sparse_file(os.path.join(big, "leading-hole.img"), 3 * MiB, [(2 * MiB, 300 * 1024)], seed=2)
    sparse_file(os.path.join(big, "holes.img"), 6 * MiB, [(0, 100_000), (3 * MiB + 5, 70_000)], seed=3)
    sparse_file(os.path.join(big, "all-hole.img"), 2 * MiB, [], seed=4)
    os.link(os.path.join(root, "docs", "random-0.bin"), os.path.join(big, "link-to-random-0.bin"))
    os.link(os.path.join(big, "holes.img"), os.path.join(root, "nested", "a", "holes-link.img"))
    # Creating entries moved the directories' times; settle them like the rich tree does.
    for d in (big, os.path.join(root, "nested", "a"), os.path.join(root, "docs"), root):
        os.utime(d, ns=(1_650_000_000_000_000_007, 1_650_000_000_000_000_003))


# --- mirror ---------------------------------------------------------------------------------


def test_initial_mirror_makes_the_image_equal_the_source(job: Protection, src: str) -> None:
    make_source(src)
    result = job.mirror()
    assert result.statuses() == {"ok"}
    assert job.events == []
    assert_trees_equal(src, job.image_path(src))
    assert job.temporaries() == []
    kinds = result.kinds()
    assert kinds.count(m.LINK) == 3, "each second name of an inode travels as a link"
    assert kinds.count(m.FDATA) >= 3, "a 9 MiB file streams in several frames"
    assert any(seg[0] == m.SEG_HOLE for seg in result.segments())


def test_a_mirror_of_an_unchanged_image_sends_nothing(job: Protection, src: str) -> None:
    make_source(src)
    job.mirror()
    job.reconnect()
    plan = plan_mirror(job.selection, job.view)
    assert [p for p in plan.to_send if is_within(p, src)] == []
    assert plan.skipped_bytes == plan.bytes_total
    assert plan.orphans == []
    job.reconnect(checksum=True)
    assert [p for p in plan_mirror(job.selection, job.view, checksum=True).to_send if is_within(p, src)] == []


def test_an_excluded_path_never_reaches_the_image(tmp_path: Path, src: str) -> None:
    make_rich_tree(src, seed=6)
    job = Protection(tmp_path / "job", [src], excludes=["*.bin", "special"])
    try:
        job.mirror()
        assert_trees_equal(src, job.image_path(src), ignore=["*.bin", "special"])
        excluded = [os.path.join(src, "special")] + [
            os.path.join(src, "docs", name)
            for name in os.listdir(os.path.join(src, "docs"))
            if name.endswith(".bin")
        ]
        assert len(excluded) == 5
        assert [p for p in excluded if os.path.lexists(job.image_path(p))] == []
        result = job.replicate(os.path.join(src, "docs", "random-1.bin"), "/etc/hostname")
        assert result.messages == [], "excluded and unselected paths are not read"
    finally:
        job.close()


def test_a_change_inside_an_excluded_directory_is_not_replicated(tmp_path: Path, src: str) -> None:
    make_rich_tree(src, seed=6)
    job = Protection(tmp_path / "job", [src], excludes=["nested"])
    try:
        job.mirror()
        deep = os.path.join(src, "nested", "a", "b", "c", "deep.txt")
        write(deep, b"changed")
        assert job.replicate(deep).messages == []
    finally:
        job.close()


# --- replication of changes -------------------------------------------------------------------


def test_a_1_mib_change_in_a_20_mib_file_sends_about_1_mib(job: Protection, src: str) -> None:
    path = os.path.join(src, "disk.img")
    write(path, random_bytes(20 * MiB, 7))
    first = job.mirror()
    assert first.data_bytes() == 20 * MiB

    overwrite(path, 10 * MiB + 12345, random_bytes(MiB, 8))
    second = job.replicate(path)
    assert second.statuses() == {"ok"}
    assert second.data_bytes() < 2 * MiB, "unchanged chunks must travel as runs, not data"
    assert any(seg[0] == m.SEG_RUN for seg in second.segments())
    assert job.stream.counters.replication_bytes == second.data_bytes()
    assert_trees_equal(src, job.image_path(src))


def test_after_a_reconnect_a_changed_file_still_reuses_the_image_copy(job: Protection, src: str) -> None:
    path = os.path.join(src, "disk.img")
    write(path, random_bytes(20 * MiB, 9))
    job.mirror()
    job.reconnect()  # the view now comes from the repository's manifest and index
    overwrite(path, 3 * MiB, random_bytes(MiB, 10))
    result = job.mirror()
    assert result.statuses() == {"ok"}
    assert result.data_bytes() < 2 * MiB
    assert_trees_equal(src, job.image_path(src))


def test_files_that_grew_shrank_got_holes_or_changed_kind_are_replicated_exactly(
    job: Protection, src: str
) -> None:
    make_source(src)
    job.mirror()
    big = os.path.join(src, "big")
    with open(os.path.join(big, "random-9m.bin"), "ab") as f:
        f.write(random_bytes(300_000, 11))  # grew
    os.truncate(os.path.join(src, "sparse.img"), 3 * MiB)  # shrank, keeping holes
    fd = os.open(os.path.join(big, "leading-hole.img"), os.O_WRONLY)
    try:
        os.pwrite(fd, random_bytes(70_000, 12), 100_000)  # data inside the leading hole
    finally:
        os.close(fd)
    overwrite(os.path.join(src, "docs", "random-3.bin"), 10, b"changed in the middle")
    os.truncate(os.path.join(big, "random-9m.bin"), 9 * MiB + 5)  # grew, then shrank
    file_to_dir = os.path.join(src, "docs", "random-2.bin")
    os.unlink(file_to_dir)
    os.mkdir(file_to_dir)
    write(os.path.join(file_to_dir, "inside.txt"), b"was a file")
    dir_to_file = os.path.join(src, "nested", "a", "b")
    shutil.rmtree(dir_to_file)
    write(dir_to_file, b"was a directory")

    result = job.replicate(
        os.path.join(big, "random-9m.bin"),
        os.path.join(src, "sparse.img"),
        os.path.join(big, "leading-hole.img"),
        os.path.join(src, "docs", "random-3.bin"),
        file_to_dir,
        os.path.join(file_to_dir, "inside.txt"),
        os.path.join(src, "docs"),
        dir_to_file,
        os.path.join(src, "nested", "a"),
    )
    assert result.statuses() == {"ok"}
    assert_trees_equal(src, job.image_path(src))
    assert job.temporaries() == []


def test_a_file_only_touched_travels_as_runs_of_the_image_copy(job: Protection, src: str) -> None:
    make_source(src)
    job.mirror()
    small = os.path.join(src, "nested", "a", "b", "c", "deep.txt")
    big = os.path.join(src, "big", "random-9m.bin")
    for path in (small, big):
        os.utime(path, ns=(1_700_000_000_000_000_001, 1_700_000_000_000_000_001))
    result = job.replicate(small, big)
    assert result.kinds() == [m.FILE, m.FBEGIN, m.FDATA, m.FEND]
    assert result.data_bytes() == 0
    assert {seg[0] for seg in result.segments()} == {m.SEG_RUN}
    assert result.statuses() == {"ok"}
    assert_trees_equal(src, job.image_path(src))


def test_a_chmod_sends_one_meta_op_and_no_content(job: Protection, src: str) -> None:
    make_source(src)
    job.mirror()
    path = os.path.join(src, "big", "random-9m.bin")
    os.chmod(path, 0o600)
    result = job.replicate(path)
    assert result.kinds() == [m.META]
    assert result.messages[0][2] == m.wire_path(path)
    assert fsmeta.Meta.from_wire(result.messages[0][3]).mode == 0o600
    assert result.statuses() == {"ok"}
    assert_trees_equal(src, job.image_path(src))


def test_a_renamed_directory_is_renamed_in_the_image_without_resending_content(
    job: Protection, src: str
) -> None:
    make_source(src)
    job.mirror()
    old, new = os.path.join(src, "big"), os.path.join(src, "bigger")
    os.rename(old, new)
    result = job.send([Barrier("rename", old, new), Dirty(src)])
    assert result.kinds() == [m.RENAME, m.MKDIR]
    assert result.statuses() == {"ok"}
    assert_trees_equal(src, job.image_path(src))

    # The image index followed the rename: a change under the new name still reuses runs.
    path = os.path.join(new, "random-9m.bin")
    overwrite(path, 4 * MiB, random_bytes(MiB // 2, 13))
    again = job.replicate(path)
    assert again.statuses() == {"ok"}
    assert again.data_bytes() < MiB + MiB // 2
    assert_trees_equal(src, job.image_path(src))


def test_a_directory_renamed_out_of_the_selection_is_deleted_from_the_image(
    job: Protection, src: str, tmp_path: Path
) -> None:
    make_rich_tree(src, seed=8)
    job.mirror()
    old, new = os.path.join(src, "docs"), str(tmp_path / "source" / "docs-moved-out")
    os.rename(old, new)
    result = job.send([Barrier("rename", old, new), Dirty(src)])
    assert result.kinds() == [m.DELETE, m.MKDIR]
    assert_trees_equal(src, job.image_path(src))
    assert not os.path.lexists(job.image_path(new))


def test_deleted_files_and_trees_are_deleted_from_the_image(job: Protection, src: str) -> None:
    make_source(src)
    job.mirror()
    shutil.rmtree(os.path.join(src, "big"))
    gone_file = os.path.join(src, "docs", "random-1.bin")
    os.unlink(gone_file)
    result = job.send(
        [
            Barrier("delete", os.path.join(src, "big")),
            Dirty(gone_file),  # capture saw it vanish: the reader finds nothing and deletes
            Dirty(os.path.join(src, "docs")),
            Dirty(src),
            # The inode of big/holes.img lost a name: the other name is still a file.
            Dirty(os.path.join(src, "nested", "a", "holes-link.img")),
            Dirty(os.path.join(src, "docs", "random-0.bin")),
        ]
    )
    assert result.kinds()[:2] == [m.DELETE, m.DELETE]
    assert result.statuses() == {"ok"}
    assert_trees_equal(src, job.image_path(src))


def test_replication_frames_resent_after_a_reconnect_leave_the_image_unchanged(
    job: Protection, src: str
) -> None:
    make_rich_tree(src, seed=9)
    os.unlink(os.path.join(src, "links", "hard-2"))  # see the resent-link test for links
    job.mirror()
    changed = [os.path.join(src, "docs", f"random-{i}.bin") for i in range(4)]
    for i, path in enumerate(changed):
        write(path, random_bytes(100_000 + i, 20 + i))
    for path in changed:
        job.reader.process(Dirty(path))
    taken = []
    while (item := job.queue.take()) is not None:
        taken.append(item.seq)
        job.applier.apply(decode_body(item.frame[4:]))
    # Applied, but the repository crashed before its group commit: nothing was acknowledged
    # and its stream position does not cover these ops, so the source resends all of them.
    job.queue.rewind()
    resent = job.transfer()
    assert [msg[1] for msg in resent.messages] == taken
    assert resent.statuses() == {"ok"}
    assert_trees_equal(src, job.image_path(src))
    assert job.temporaries() == []


def test_a_resent_link_op_leaves_no_temporary_file(job: Protection, src: str) -> None:
    write(os.path.join(src, "one"), b"shared inode")
    os.link(os.path.join(src, "one"), os.path.join(src, "two"))
    result = job.mirror()
    link_op = next(msg for msg in result.messages if msg[0] == m.LINK)
    assert job.applier.apply(link_op) == Outcome(link_op[1], "ok", link_op[2])  # resent after a reconnect
    assert job.temporaries() == []
    assert_trees_equal(src, job.image_path(src))


def test_a_change_to_a_hard_linked_file_reaches_every_name_in_the_image(job: Protection, src: str) -> None:
    make_rich_tree(src, seed=10)
    job.mirror()
    path = os.path.join(src, "links", "hard-1")
    overwrite(path, 100, b"new bytes in a file with two names")
    result = job.replicate(path)
    assert result.data_bytes() > 0, "the new bytes never left the source"
    assert_trees_equal(src, job.image_path(src))


def test_a_small_sparse_file_keeps_its_holes(job: Protection, src: str) -> None:
    sparse_file(os.path.join(src, "small-sparse.img"), 60 * 1024, [(8192, 100)], seed=30)
    os.utime(src, ns=(1_650_000_000_000_000_000, 1_650_000_000_000_000_000))
    job.mirror()
    assert_trees_equal(src, job.image_path(src))


# --- the repository checks what the source claims ---------------------------------------------


def test_a_reference_to_a_chunk_the_repository_lacks_is_answered_need(job: Protection, src: str) -> None:
    make_rich_tree(src, seed=12)
    job.mirror()
    path = os.path.join(src, "docs", "copy.bin")
    data = random_bytes(40_000, 31)
    write(path, data)
    job.view.known_chunks.add(blake3.blake3(data).digest())  # a wrong hint: nobody sent it
    result = job.replicate(path)
    assert result.segments() == [[m.SEG_REF, blake3.blake3(data).digest(), len(data)]]
    assert [o.status for o in result.outcomes] == ["need"]
    assert result.outcomes[0].path == m.wire_path(path)
    assert not os.path.lexists(job.image_path(path))
    assert job.temporaries() == []

    job.view.needs_full(path)  # what the source does with a need: resend the file whole
    again = job.replicate(path, os.path.dirname(path))  # (the directory too: see the need-times test)
    assert again.statuses() == {"ok"}
    assert again.data_bytes() == len(data)
    assert_trees_equal(src, job.image_path(src))


def test_runs_against_an_image_file_changed_behind_the_index_are_answered_need(
    job: Protection, src: str
) -> None:
    path = os.path.join(src, "disk.img")
    write(path, random_bytes(2 * MiB, 40))
    job.mirror()
    os.utime(job.image_path(path), ns=(1, 1))  # someone touched the image: the index no longer vouches
    overwrite(path, MiB, b"x" * 1000)
    result = job.replicate(path)
    assert any(seg[0] == m.SEG_RUN for seg in result.segments())
    assert [o.status for o in result.outcomes] == ["need"]
    job.view.needs_full(path)
    again = job.replicate(path, src)  # (the directory too: see the need-times test)
    assert again.statuses() == {"ok"}
    assert_trees_equal(src, job.image_path(src))


def test_a_need_leaves_the_image_directory_times_as_they_were(job: Protection, src: str) -> None:
    make_rich_tree(src, seed=13)
    job.mirror()
    path = os.path.join(src, "docs", "random-0.bin")
    data = random_bytes(30_000, 41)
    write(path, data)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    job.view.known_chunks.add(blake3.blake3(data).digest())
    assert [o.status for o in job.replicate(path).outcomes] == ["need"]
    job.view.needs_full(path)
    assert job.replicate(path).statuses() == {"ok"}
    assert_trees_equal(src, job.image_path(src))


def test_a_meta_op_for_a_file_whose_image_directory_vanished_is_answered_need(
    job: Protection, src: str
) -> None:
    make_rich_tree(src, seed=14)
    job.mirror()
    shutil.rmtree(job.image_path(os.path.join(src, "nested", "a")))  # someone pruned the image by hand
    job.new_session()
    path = os.path.join(src, "nested", "a", "b", "c", "deep.txt")
    os.chmod(path, 0o604)
    result = job.replicate(path)
    assert result.kinds() == [m.META]
    assert [o.status for o in result.outcomes] == ["need"]
    assert job.events == [], "a wrong hint is not a write failure"


# --- a hostile source cannot write outside the image ------------------------------------------

HOSTILE_PATHS = [b"/../etc/x", b"/a/../../x", b"relative", b"/a/./b", b"/a/\0/b", b""]


def hostile_ops(path: bytes, meta: list[Any], existing: bytes) -> list[list[Any]]:
    digest = blake3.blake3(b"evil").digest()
    return [
        [m.MKDIR, 1, path, meta],
        [m.FILE, 2, path, 4, b"", [[m.SEG_DATA, digest, b"evil"]], meta],
        [m.FBEGIN, 3, path, 4, b""],
        [m.SYMLINK, 4, path, meta],
        [m.SPECIAL, 5, path, meta],
        [m.META, 6, path, meta],
        [m.DELETE, 7, path],
        [m.LINK, 8, path, existing],
        [m.LINK, 9, existing + b"-2", path],
        [m.RENAME, 10, existing, path],
        [m.RENAME, 11, path, existing + b"-3"],
    ]


def snapshot_outside(top: str, image_root: str) -> dict[str, tuple[int, int, int]]:
    """Every entry under `top` outside the image, with what a write would change."""
    out = {}
    for d, dirs, files in os.walk(top):
        dirs[:] = [x for x in dirs if os.path.join(d, x) != image_root]
        for name in dirs + files:
            st = os.lstat(os.path.join(d, name))
            out[os.path.join(d, name)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("path", HOSTILE_PATHS, ids=lambda p: repr(p))
def test_a_path_that_could_escape_the_image_is_refused(
    job: Protection, src: str, tmp_path: Path, path: bytes
) -> None:
    victim = os.path.join(src, "victim")
    write(victim, b"mine")
    job.mirror()
    meta = dataclasses.replace(fsmeta.read_meta(victim), kind="fifo", size=0).to_wire()
    before = snapshot_outside(str(tmp_path), str(job.image_root))
    image_before = compare_trees(src, job.image_path(src))
    for op in hostile_ops(path, meta, m.wire_path(victim)):
        # The op is refused (and answered "failed"); the stream goes on.
        outcome = job.applier.apply(op)
        assert outcome is not None and outcome.status == "failed", f"{op[0]} with {path!r}"
        assert outcome.code == INVALID_PARAMETER, f"{op[0]} with {path!r}"
        job.applier.abort_transfer()
    assert snapshot_outside(str(tmp_path), str(job.image_root)) == before
    assert compare_trees(src, job.image_path(src)) == image_before == []
    assert not os.path.lexists("/etc/x") and not os.path.lexists(str(tmp_path / "job" / "x"))


def test_a_symlink_in_the_image_cannot_redirect_writes_outside(
    job: Protection, src: str, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"not yours")
    os.symlink(str(outside), os.path.join(src, "d"))  # a legitimate symlink, replicated as one
    write(os.path.join(src, "plain"), b"plain")
    job.mirror()
    assert os.readlink(job.image_path(os.path.join(src, "d"))) == str(outside)
    before = snapshot_outside(str(outside), "")

    d = m.wire_path(os.path.join(src, "d"))
    meta = fsmeta.read_meta(os.path.join(src, "plain")).to_wire()
    digest = blake3.blake3(b"plain").digest()
    job.applier.retry_limit = 0  # whatever fails must fail at once
    hostile = [
        [m.META, 1, d + b"/victim", meta],
        [m.LINK, 2, m.wire_path(os.path.join(src, "stolen")), d + b"/victim"],
        [m.DELETE, 3, d + b"/victim"],
        [m.RENAME, 4, d + b"/victim", m.wire_path(os.path.join(src, "moved"))],
        [m.FILE, 5, d + b"/file", 5, b"", [[m.SEG_DATA, digest, b"plain"]], meta],
        [m.MKDIR, 6, d + b"/sub/dir", fsmeta.read_meta(src).to_wire()],
    ]
    for op in hostile:
        with contextlib.suppress(TwinvaultError):  # refusing is fine too; writing outside is not
            job.applier.apply(op)
        job.applier.abort_transfer()
        assert snapshot_outside(str(outside), "") == before, f"{op[0]} wrote through the symlink"
    assert (outside / "victim").read_bytes() == b"not yours"
    assert not (outside / "file").exists() and not (outside / "sub").exists()
    # The writes that did happen landed inside the image, where the source's tree said.
    image_d = job.image_path(os.path.join(src, "d"))
    assert os.path.isdir(image_d) and not os.path.islink(image_d)
    with open(os.path.join(image_d, "file"), "rb") as f:
        assert f.read() == b"plain"


def test_a_change_read_after_its_directory_was_renamed_is_read_again_under_the_new_name(
    job: Protection, src: str
) -> None:
    # Capture queued a change under d/, then d was renamed; the reader gets the change
    # first (the path is gone by then) and the rename's barrier after it.
    os.makedirs(os.path.join(src, "d"))
    write(os.path.join(src, "d", "old.txt"), b"old")
    job.mirror()
    os.makedirs(os.path.join(src, "d", "new", "deeper"))
    write(os.path.join(src, "d", "new", "deeper", "file"), random_bytes(5000, 3))
    write(os.path.join(src, "d", "old.txt"), b"changed")
    os.rename(os.path.join(src, "d"), os.path.join(src, "e"))
    job.send(
        [
            Dirty(os.path.join(src, "d", "new")),
            Dirty(os.path.join(src, "d", "old.txt")),
            Barrier("rename", os.path.join(src, "d"), os.path.join(src, "e")),
            Dirty(src),  # the rename's directory events, as capture reports them
            Dirty(os.path.join(src, "e")),
        ]
    )
    assert_trees_equal(src, job.image_path(src))


# --- compression ----------------------------------------------------------------------------


def test_compressed_chunks_are_applied_and_stored_as_they_came(tmp_path: Path, src: str) -> None:
    """At minimum, text chunks travel as zstd frames and random ones as they are; the image
    equals the source, and the repository's chunk store keeps each arriving frame byte for
    byte (never decompressed and compressed again)."""
    make_source(src)
    stdlib = Path(os.__file__).parent
    texts = sorted(p for p in stdlib.glob("*.py") if p.stat().st_size > 20_000)[:20]
    os.mkdir(os.path.join(src, "text"))
    for path in texts:
        shutil.copyfile(path, os.path.join(src, "text", path.name))
    # A second copy travels as references to chunks whose frames may still be queued on
    # the recorder's thread (Debian's own stdlib has such shared chunks): the frames must
    # still be what the store keeps.
    shutil.copyfile(texts[0], os.path.join(src, "text", "copy-" + texts[0].name))
    history = open_test_history(tmp_path / "history")
    job = Protection(tmp_path / "job", [src], history=history)
    job.reader.compression = compressor_for("minimum")
    try:
        result = job.mirror()
        assert result.statuses() == {"ok"}
        assert_trees_equal(src, job.image_path(src))
        packed = [seg for seg in result.segments() if seg[0] == m.SEG_ZDATA]
        plain = [seg for seg in result.segments() if seg[0] == m.SEG_DATA]
        assert len(packed) >= len(texts), "every text file travels compressed"
        assert sum(len(seg[2]) for seg in packed) < 0.5 * sum(seg[3] for seg in packed)
        assert sum(len(seg[2]) for seg in plain) >= 9 * MiB, "random data goes as it is"
        history.commit()
        kept = {d: f for d, _, f in history.store.get_frames([seg[1] for seg in packed])}
        assert all(kept[seg[1]] == seg[2] for seg in packed)
    finally:
        job.close()
        history.close()
