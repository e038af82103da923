"""A received batch is applied as one: whole small files written as unnamed files and
linked under their names in stream order, history recorded on the recorder's thread.

The ops come from the real reader through the in-process data path (`tests.helpers.roundtrip`,
which applies what it transfers as one batch, as the receiver does); the image is compared
with the source by the one tree comparator.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers.roundtrip import Protection, random_bytes, write
from tests.helpers.tree import assert_trees_equal
from tests.unit.test_history_property import open_test_history
from twinvault.ops.errors import CHUNK_CORRUPT, TwinvaultError
from twinvault.repository.chunkstore.codec import digest_of
from twinvault.repository.history import History

pytestmark = pytest.mark.timeout(120)


def _temporaries(root: str) -> list[str]:
    return [
        os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files if ".twinvault-tmp" in n
    ]


def _tree(root: Path, files: int) -> str:
    src = root / "source"
    for d in range(3):
        (src / f"d{d}").mkdir(parents=True)
    for i in range(files):
        write(str(src / f"d{i % 3}" / f"f{i:03d}"), random_bytes(100 + 997 * i, seed=i))
    os.chmod(src / "d0" / "f000", 0o4750)
    os.truncate(src / "d1" / "f001", 60_000)  # a trailing hole
    return str(src)


def test_whole_files_of_a_batch_are_linked_under_their_names(tmp_path: Path) -> None:
    src = _tree(tmp_path, 60)
    p = Protection(tmp_path / "repo", [src], history=open_test_history(tmp_path / "history"))
    transfer = p.mirror()
    assert transfer.kinds().count("file") >= 55  # whole small files, one op each
    assert_trees_equal(src, p.image_path(src))
    assert _temporaries(p.image_path(src)) == []
    # Changed files replace existing names (linked under a temporary name, then renamed).
    for i in range(0, 60, 7):
        write(os.path.join(src, f"d{i % 3}", f"f{i:03d}"), random_bytes(3000, seed=100 + i))
    p.replicate(*[os.path.join(src, f"d{i % 3}", f"f{i:03d}") for i in range(0, 60, 7)])
    assert_trees_equal(src, p.image_path(src))
    assert _temporaries(p.image_path(src)) == []
    p.close()


def test_file_replaced_by_a_directory_in_one_batch(tmp_path: Path) -> None:
    src = _tree(tmp_path, 6)
    p = Protection(tmp_path / "repo", [src])
    p.mirror()
    target = os.path.join(src, "d0", "f000")
    os.unlink(target)
    os.mkdir(target)
    write(os.path.join(target, "inner"), random_bytes(5000, seed=9))
    write(os.path.join(src, "d2", "f002"), random_bytes(4000, seed=10))
    parent = os.path.dirname(target)  # its times changed too (capture reports it)
    p.replicate(target, os.path.join(target, "inner"), os.path.join(src, "d2", "f002"), parent)
    assert_trees_equal(src, p.image_path(src))
    shutil.rmtree(target)
    p.replicate(target, parent)
    assert_trees_equal(src, p.image_path(src))
    p.close()


def test_a_chunk_that_does_not_hash_to_its_digest_stops_the_recorder(tmp_path: Path) -> None:
    history: History = open_test_history(tmp_path / "history")
    recorder = history.recorder("image", "job")
    good = b"good chunk" * 100
    recorder.chunk(digest_of(good), good)
    recorder.wait_recorded()
    recorder.chunk(digest_of(good + b"!"), good)  # the data is not what the digest names
    with pytest.raises(TwinvaultError) as raised:
        recorder.wait_recorded()  # the receiver then ends the session without acknowledging
    assert raised.value.code == CHUNK_CORRUPT
    with pytest.raises(TwinvaultError):
        recorder.chunk(digest_of(good), good)  # the applier's next op fails too
    history.commit()  # other sessions still commit
    recorder.close()
    history.forget_recorder(recorder)
    history.close()
