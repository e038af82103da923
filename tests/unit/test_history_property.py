"""Property: any instant of history reconstructs the tree exactly as it was then.

A hypothesis state machine changes a real source tree at random (write, overwrite in
place, truncate, delete, rename, chmod, hard link), replicates each change through the
real pipeline (reader -> applier -> history: chunk store, journal, catalog), notes
instants with the model of the tree at that moment, and at random steps restores an
earlier instant (or live data) through the point-in-time op stream and the applier,
comparing it with the model.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.helpers.roundtrip import Protection
from twinvault.pit.restore import restore
from twinvault.repository.catalog import open_catalog
from twinvault.repository.chunkstore import ChunkStore
from twinvault.repository.chunkstore.local import LocalBackend
from twinvault.repository.history import History
from twinvault.repository.journal import Journal

NAMES = ["a", "b", "c.bin", "d/e", "d/f", "d/g/h"]
Model = dict[str, tuple[bytes, int]]  # relative path -> (content, permission bits)


def open_test_history(root: Path) -> History:
    (root / "backend").mkdir(parents=True)
    store = ChunkStore.open_or_create(root / "state", LocalBackend(root / "backend"))
    journal = Journal(root / "journal")
    catalog = open_catalog(f"sqlite:///{root / 'catalog.sqlite'}")
    history = History(store, journal, catalog, lambda *a, **k: None)
    history.ensure_image("image", 1.0)
    return history


def read_tree(root: Path) -> Model:
    found: Model = {}
    if not root.exists():
        return found
    for path in root.rglob("*"):
        st_ = path.lstat()
        if stat.S_ISREG(st_.st_mode):
            found[str(path.relative_to(root))] = (path.read_bytes(), stat.S_IMODE(st_.st_mode))
    return found


class HistoryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="tv-history-"))
        self.src = self.tmp / "src"
        self.src.mkdir()
        self.history = open_test_history(self.tmp / "repo")
        self.protection = Protection(self.tmp / "p", [str(self.src)], history=self.history)
        self.instants: list[tuple[int, Model]] = []
        self.restores = 0

    @initialize()
    def first_mirror(self) -> None:
        self.protection.mirror()
        self.note_instant()

    def _path(self, name: str) -> Path:
        return self.src / name

    def _replicate(self, *names: str) -> None:
        self.protection.replicate_answering_needs(*[str(self._path(n)) for n in names])

    def _clear_way(self, name: str) -> bool:
        """Make the parents of ``name`` directories; False if a file is in the way."""
        parent = self._path(name).parent
        for p in [parent, *parent.parents]:
            if p == self.src:
                break
            if p.exists() and not p.is_dir():
                return False
        parent.mkdir(parents=True, exist_ok=True)
        return not self._path(name).is_dir()

    @rule(name=st.sampled_from(NAMES), data=st.binary(max_size=300_000))
    def write(self, name: str, data: bytes) -> None:
        if self._clear_way(name):
            self._path(name).write_bytes(data)
            self._replicate(name)

    @rule(
        name=st.sampled_from(NAMES), offset=st.integers(0, 200_000), data=st.binary(min_size=1, max_size=5000)
    )
    def overwrite_in_place(self, name: str, offset: int, data: bytes) -> None:
        path = self._path(name)
        if path.is_file() and not path.is_symlink():
            with open(path, "r+b") as f:
                f.seek(min(offset, path.stat().st_size))
                f.write(data)
            self._replicate(name)

    @rule(name=st.sampled_from(NAMES), size=st.integers(0, 100_000))
    def truncate(self, name: str, size: int) -> None:
        path = self._path(name)
        if path.is_file():
            os.truncate(path, size)
            self._replicate(name)

    @rule(name=st.sampled_from(NAMES))
    def delete(self, name: str) -> None:
        path = self._path(name)
        if path.is_file():
            path.unlink()
            self._replicate(name)

    @rule(old=st.sampled_from(NAMES), new=st.sampled_from(NAMES))
    def rename(self, old: str, new: str) -> None:
        if old != new and self._path(old).is_file() and self._clear_way(new):
            os.replace(self._path(old), self._path(new))
            self._replicate(old, new)

    @rule(name=st.sampled_from(NAMES), mode=st.sampled_from([0o600, 0o640, 0o644, 0o755]))
    def chmod(self, name: str, mode: int) -> None:
        if self._path(name).is_file():
            os.chmod(self._path(name), mode)
            self._replicate(name)

    @rule()
    def note_instant(self) -> None:
        t = self.history.now()
        self.instants.append((t, read_tree(self.src)))

    @precondition(lambda self: bool(self.instants))
    @rule(pick=st.integers(0, 10_000), live=st.booleans())
    def reconstruct(self, pick: int, live: bool) -> None:
        t, expected = (None, read_tree(self.src)) if live else self.instants[pick % len(self.instants)]
        self.restores += 1
        target = self.tmp / f"restore-{self.restores}"
        report = restore(self.history.catalog, self.history.store, "image", t, [], target)
        assert report.failed == []
        got = read_tree(Path(str(target) + str(self.src)))
        assert got == expected, f"at {t}: {sorted(got)} != {sorted(expected)}"
        shutil.rmtree(target)

    @invariant()
    def image_equals_source(self) -> None:
        assert read_tree(Path(self.protection.image_path(str(self.src)))) == read_tree(self.src)

    def teardown(self) -> None:
        self.protection.close()
        self.history.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


HistoryMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_history_reconstructs_every_instant = HistoryMachine.TestCase
