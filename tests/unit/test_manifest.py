"""The repository's manifest walk: truth from the image, crash leftovers cleaned quietly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from twinvault.repository.image_index import ImageIndex
from twinvault.repository.image_tree import TEMP_PREFIX, ImageTree
from twinvault.repository.manifest import manifest_batches


def test_stale_temporaries_are_removed_without_touching_directory_times(tmp_path: Path) -> None:
    image = tmp_path / "image"
    d = image / "srv" / "data"
    d.mkdir(parents=True)
    (d / "kept.txt").write_text("kept")
    (d / f"{TEMP_PREFIX}crashed.1").write_bytes(b"half a file")
    os.utime(d, ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    tree = ImageTree(image)
    index = ImageIndex(tmp_path / "index.sqlite")
    try:
        entries = [
            e for batch in manifest_batches(tree, index, [b"/srv/data"], checksum=False) for e in batch
        ]
    finally:
        index.close()
        tree.close()
    assert sorted(os.listdir(d)) == ["kept.txt"]
    assert d.stat().st_mtime_ns == 1_600_000_000_123_456_789
    by_path = {e[0]: e for e in entries}
    assert by_path[b"/srv/data"][3] == 1_600_000_000_123_456_789
    assert b"/srv/data/kept.txt" in by_path
    assert not any(TEMP_PREFIX.encode() in p for p in by_path)


def test_what_changed_since_the_last_commit_or_is_not_indexed_is_flagged(tmp_path: Path) -> None:
    image = tmp_path / "image"
    d = image / "data"
    d.mkdir(parents=True)
    (d / "indexed.txt").write_text("in the index")
    (d / "unindexed.txt").write_text("linked, never committed")
    os.symlink("indexed.txt", d / "link")
    st = (d / "indexed.txt").stat()
    tree = ImageTree(image)
    index = ImageIndex(tmp_path / "index.sqlite")
    try:
        index.record_file(b"/data/indexed.txt", st.st_size, st.st_mtime_ns, [])

        def flags(settled_ns: int | None) -> dict[bytes, bool]:
            committed = None if settled_ns is None else (lambda ctime_ns: ctime_ns < settled_ns)
            batches = manifest_batches(tree, index, [b"/data"], checksum=False, committed=committed)
            return {e[0]: e[8] for batch in batches for e in batch}

        after_all = os.stat(d).st_ctime_ns + 10**9  # a commit after every change
        assert flags(after_all) == {
            b"/": True, b"/data": True, b"/data/indexed.txt": True, b"/data/link": True,
            b"/data/unindexed.txt": False,
        }  # fmt: skip
        assert not any(flags(0).values())  # a new job: nothing committed yet
        assert flags(None)[b"/data/link"] and not flags(None)[b"/data/unindexed.txt"]  # time unknown
        index.set_stream_position("job", 1, 7, after_all)
        assert index.settled("job") == after_all
        assert index.settled("other") == 0
    finally:
        index.close()
        tree.close()


def test_the_walk_reads_ahead_in_order_and_stops_with_its_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image is read on a thread ahead of the entries made (`_ImageWalk`), in slices
    of a directory's entries: the entries come in the walk's order (a directory's
    entries before its subdirectories' ones), and a manifest abandoned half way (the
    link ended) stops that thread."""
    import threading

    from twinvault.repository import manifest

    monkeypatch.setattr(manifest, "BATCH", 7)
    monkeypatch.setattr(manifest, "READ_AHEAD_SLICES", 2)
    monkeypatch.setattr(manifest, "READ_AHEAD_SLICE", 3)  # directories of 6 entries: in slices
    image = tmp_path / "image"
    for d in range(12):
        (image / "data" / f"d{d:02d}" / "sub").mkdir(parents=True)
        for f in range(5):
            (image / "data" / f"d{d:02d}" / f"f{f}").write_bytes(b"x" * f)
            (image / "data" / f"d{d:02d}" / "sub" / f"g{f}").write_bytes(b"y")
    tree = ImageTree(image)
    index = ImageIndex(tmp_path / "index.sqlite")
    try:
        every = [e[0] for b in manifest_batches(tree, index, [b"/data"], checksum=False) for e in b]
        paths = every[every.index(b"/data") :]  # the root's ancestors come first
        expected = [b"/data"] + [
            os.fsencode("/" + os.path.relpath(os.path.join(dirpath, name), image))
            for dirpath, dirs, files in os.walk(image / "data")
            for name in dirs + files
        ]
        assert sorted(paths) == sorted(expected) and len(paths) == len(set(paths))
        for path in paths[1:]:  # every entry comes after its directory's
            assert paths.index(os.path.dirname(path)) < paths.index(path)
        batches = manifest_batches(tree, index, [b"/data"], checksum=False)
        next(batches)
        batches.close()
        assert not [t for t in threading.enumerate() if t.name == "manifest-walk"]
    finally:
        index.close()
        tree.close()


def test_a_batch_is_bounded_by_its_digests_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Big files carry many chunk digests: a manifest frame is cut by their bytes as well
    as by its count of entries, so an image of large files cannot make a frame larger
    than a peer accepts (every entry still comes, once)."""
    from twinvault.repository import manifest
    from twinvault.repository.image_index import ChunkPiece

    monkeypatch.setattr(manifest, "BATCH_BYTES", 100)  # three digests and a bit
    image = tmp_path / "image"
    d = image / "data"
    d.mkdir(parents=True)
    tree = ImageTree(image)
    index = ImageIndex(tmp_path / "index.sqlite")
    try:
        for f in range(10):
            path = d / f"big{f}"
            path.write_bytes(b"z" * 2048)
            st = path.stat()
            pieces = [ChunkPiece(bytes([f, c]) * 16, c * 1024, 1024) for c in range(2)]
            index.record_file(f"/data/big{f}".encode(), st.st_size, st.st_mtime_ns, pieces)
        batches = list(manifest_batches(tree, index, [b"/data"], checksum=False))
    finally:
        index.close()
        tree.close()
    files = [e for b in batches for e in b if e[0].startswith(b"/data/big")]
    assert sorted(e[0] for e in files) == sorted(f"/data/big{f}".encode() for f in range(10))
    assert all(len(e[7]) == 64 for e in files)  # two digests each, from the index
    assert max(sum(len(e[7]) for e in b) for b in batches) <= 128  # the bound, plus one entry
    assert len(batches) >= 5
