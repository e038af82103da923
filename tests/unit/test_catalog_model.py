"""The catalog against a model: random histories of puts, hard links, deletes, renames,
snapshots, ranges and prunes (hypothesis stateful testing).

The model is the definition of the catalog in a few lines of Python: a list of versions
per image, closed and opened exactly as ``docs/catalog.md`` says. After random steps the
catalog must agree with it at random instants (snapshot instants after a prune among
them), in its live listing, under random prefixes, in each path's history, its image
counters, its ranges and nearest valid instants, and the chunks it references.
Timestamps never decrease and are often equal, so same-instant cases come up a lot.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tests.helpers.postgres import PostgresServer, postgres_server_fixture
from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.repository.catalog import DEFAULT_CDP_DAYS, Catalog, ImageInfo, Range, Version, open_catalog
from twinvault.repository.chunklist import HOLE_DIGEST, Piece, chunk_digests, pack_chunks

IMAGES = ("img", "other")
NAMES = (b"a", b"ab", b"a.b", b"\xff")  # b"/a" vs b"/ab" vs b"/a.b": prefix traps
DIGESTS = [bytes([i]) * 32 for i in range(1, 13)]
KINDS = ("file", "file", "dir", "symlink", "special")

images = st.sampled_from([IMAGES[0], *IMAGES])  # mostly one image: more ops meet
# Each write moves the clock by one of these: often not at all (one instant, several ops).
steps = st.sampled_from([0, 0, 0, 1, 2, 7])
ALL_PATHS = [b"/" + a for a in NAMES] + [b"/" + a + b"/" + b for a in NAMES for b in NAMES]
paths = st.sampled_from(ALL_PATHS)
contents = st.lists(st.sampled_from([*DIGESTS, HOLE_DIGEST]), max_size=3).map(
    lambda ds: pack_chunks([Piece(d, 100) for d in ds])
)


Op = tuple[Any, ...]  # (kind, dt, image, *arguments): what `CatalogMachine.apply` takes
ops = st.one_of(
    st.tuples(st.just("put"), steps, images, paths, st.sampled_from(KINDS), contents, st.binary(max_size=2)),
    st.tuples(st.just("put"), steps, images, paths, st.just("file"), contents, st.binary(max_size=2)),
    st.tuples(st.just("link"), steps, images, paths, paths),
    st.tuples(st.just("delete"), steps, images, paths),
    st.tuples(st.just("rename"), steps, images, paths, paths),
    st.tuples(st.just("snapshot"), steps, images, st.sampled_from(["Ok", "Ok", "Failed"])),
    st.tuples(st.just("range"), steps, images, st.booleans()),
)


def visible(v: Version, t: int | None) -> bool:
    """Valid at `t`; live when `t` is None."""
    return v.valid_to is None if t is None else v.valid_at(t)


def within(path: bytes, tree: bytes) -> bool:
    return path == tree or path.startswith(tree + b"/")


class Model:
    """The catalog's meaning, as plainly as it can be written."""

    def __init__(self) -> None:
        self.versions: dict[str, list[Version]] = {}
        self.snapshots: dict[str, list[tuple[int, int, str]]] = {}  # id, time, status
        self.ranges: dict[str, list[list[Any]]] = {}  # [start, end or None]

    def touch(self, image: str) -> None:
        self.versions.setdefault(image, [])
        self.snapshots.setdefault(image, [])
        self.ranges.setdefault(image, [])

    def live(self, image: str, path: bytes) -> Version | None:
        found = [v for v in self.versions.get(image, []) if v.path == path and v.valid_to is None]
        assert len(found) <= 1
        return found[0] if found else None

    def close(self, image: str, v: Version, t: int) -> None:
        versions = self.versions[image]
        if v.valid_from == t:  # never visible at any instant
            versions.remove(v)
        else:
            versions[versions.index(v)] = replace(v, valid_to=t)

    def put(self, image: str, v: Version) -> None:
        self.touch(image)
        old = self.live(image, v.path)
        if old is not None:
            self.close(image, old, v.valid_from)
        self.versions[image].append(v)

    def delete(self, image: str, path: bytes, t: int) -> None:
        self.touch(image)
        for v in [v for v in self.versions[image] if v.valid_to is None and within(v.path, path)]:
            self.close(image, v, t)

    def rename(self, image: str, old: bytes, new: bytes, t: int) -> None:
        self.delete(image, new, t)
        moving = [v for v in self.versions[image] if v.valid_to is None and within(v.path, old)]
        for v in moving:
            self.versions[image].append(replace(v, path=new + v.path[len(old) :], valid_from=t))
        self.delete(image, old, t)

    def at(self, image: str, t: int | None, prefix: bytes = b"") -> list[Version]:
        found = [v for v in self.versions[image] if visible(v, t) and (not prefix or within(v.path, prefix))]
        return sorted(found, key=lambda v: v.path)

    def pinned(self, image: str, v: Version) -> bool:
        return any(status == "Ok" and v.valid_at(time) for _, time, status in self.snapshots[image])

    def prune(self, image: str, horizon: int) -> int:
        doomed = [
            v
            for v in self.versions[image]
            if v.valid_to is not None and v.valid_to <= horizon and not self.pinned(image, v)
        ]
        for v in doomed:
            self.versions[image].remove(v)
        kept = []
        for r in self.ranges[image]:
            start, end = r
            assert start is not None
            if end is not None and end <= horizon:
                continue
            kept.append([max(start, horizon), end])
        self.ranges[image] = kept
        return len(doomed)

    def open_range(self, image: str, t: int) -> None:
        self.touch(image)
        ranges = self.ranges[image]
        if any(end is None for _, end in ranges):
            return
        if ranges and ranges[-1][1] == t:
            ranges[-1][1] = None
        else:
            ranges.append([t, None])

    def close_range(self, image: str, t: int) -> None:
        self.touch(image)
        ranges = self.ranges[image]
        if ranges and ranges[-1][1] is None:
            if ranges[-1][0] == t:
                ranges.pop()
            else:
                ranges[-1][1] = t

    def valid_instants(self, image: str, t: int) -> tuple[int | None, int | None]:
        ok_times = [time for _, time, status in self.snapshots[image] if status == "Ok"]
        ranges = [Range(start, end) for start, end in self.ranges[image]]
        if t in ok_times or any(r.contains(t) for r in ranges):
            return (t, t)
        befores = [r.end - 1 for r in ranges if r.end is not None and r.end <= t] + [
            x for x in ok_times if x < t
        ]
        afters = [r.start for r in ranges if r.start > t] + [x for x in ok_times if x > t]
        return (max(befores, default=None), min(afters, default=None))

    def info(self, image: str) -> ImageInfo:
        vs = self.versions[image]
        files = [v for v in vs if v.kind == "file"]
        live = [v for v in files if v.valid_to is None]
        return ImageInfo(
            image, DEFAULT_CDP_DAYS, len(vs), len(live), sum(v.size for v in live), sum(v.size for v in files)
        )

    def digests(self) -> set[bytes]:
        return {
            d
            for vs in self.versions.values()
            for v in vs
            if v.kind == "file"
            for d in chunk_digests(v.content)
        }


class CatalogMachine(RuleBasedStateMachine):
    """Drives a fresh catalog (from `open_fresh`) and the model side by side."""

    open_fresh: Callable[[], Catalog]

    def __init__(self) -> None:
        super().__init__()
        self.catalog = self.open_fresh()
        self.model = Model()
        self.now = 1

    def teardown(self) -> None:
        self.catalog.close()

    def known(self, image: str) -> bool:
        return image in self.model.versions

    # -- writes: one op a transaction, or a journal batch of them in one -------------------

    def apply(self, op: Op, *, alone: bool) -> None:
        """Apply one op to the catalog and the model; `alone`: in its own transaction
        (then refusals are checked too; inside a batch they would undo the batch)."""
        kind, dt, image, *args = op
        self.now += dt
        getattr(self, f"apply_{kind}")(image, *args, alone=alone)

    def apply_put(
        self, image: str, path: bytes, kind: str, content: bytes, meta: bytes, *, alone: bool
    ) -> None:
        if kind != "file":
            content = b"target" if kind == "symlink" else b""
        size = len(content) * 10
        self.catalog.put(image, path, self.now, kind, meta, content, size, None)
        link = b"%s@%d" % (path, self.now)
        self.model.put(image, Version(path, self.now, None, kind, meta, content, size, link))

    def apply_link(self, image: str, path: bytes, existing: bytes, *, alone: bool) -> None:
        """What the history recorder does for a link op: the new name joins the group."""
        if not self.known(image):
            return
        target = self.model.live(image, existing)
        group = self.catalog.link_group_of(image, existing)
        assert group == (target.link if target else None)
        if target is None or path == existing:
            return
        self.catalog.put(image, path, self.now, target.kind, target.meta, target.content, target.size, group)
        self.model.put(image, replace(target, path=path, valid_from=self.now))

    def apply_delete(self, image: str, path: bytes, *, alone: bool) -> None:
        closed = self.catalog.delete_tree(image, path, self.now)
        self.model.touch(image)
        assert closed == sum(
            1 for v in self.model.versions[image] if v.valid_to is None and within(v.path, path)
        )
        self.model.delete(image, path, self.now)

    def apply_rename(self, image: str, old: bytes, new: bytes, *, alone: bool) -> None:
        if old != new and (within(new, old) or within(old, new)):
            if alone:
                with pytest.raises(ValueError):
                    self.catalog.rename_tree(image, old, new, self.now)
            return
        moved = self.catalog.rename_tree(image, old, new, self.now)
        self.model.touch(image)
        if old == new:
            assert moved == 0
            return
        assert moved == sum(
            1 for v in self.model.versions[image] if v.valid_to is None and within(v.path, old)
        )
        self.model.rename(image, old, new, self.now)

    def apply_snapshot(self, image: str, status: str, *, alone: bool) -> None:
        snap = self.catalog.add_snapshot(image, self.now, "Scheduled", status)
        self.model.touch(image)
        assert snap.id == len(self.model.snapshots[image]) + 1
        self.model.snapshots[image].append((snap.id, self.now, status))

    def apply_range(self, image: str, opening: bool, *, alone: bool) -> None:
        if opening:
            self.catalog.open_range(image, self.now)
            self.model.open_range(image, self.now)
        else:
            self.catalog.close_range(image, self.now)
            self.model.close_range(image, self.now)

    @rule(op=ops)
    def one_op(self, op: Op) -> None:
        self.apply(op, alone=True)

    @rule(batch=st.lists(ops, min_size=1, max_size=12))
    def journal_batch(self, batch: list[Op]) -> None:
        with self.catalog.transaction():
            for op in batch:
                self.apply(op, alone=False)

    @rule(dt=steps, image=images, back=st.integers(0, 30))
    def prune(self, dt: int, image: str, back: int) -> None:
        self.now += dt
        horizon = max(0, self.now - back)
        if not self.known(image):
            with pytest.raises(TwinvaultError) as e:
                self.catalog.prune(image, horizon)
            assert e.value.code == errors.IMAGE_NOT_FOUND
            return
        assert self.catalog.prune(image, horizon) == self.model.prune(image, horizon)

    @rule(image=images, path=paths)
    def failed_batch(self, image: str, path: bytes) -> None:
        """A batch that fails half way changes nothing."""
        with pytest.raises(KeyError), self.catalog.transaction():
            self.catalog.put(image, path, self.now, "file", b"doomed", b"", 1, None)
            self.catalog.delete_tree(image, b"/a", self.now)
            self.catalog.add_snapshot(image, self.now, "User Request")
            raise KeyError("the journal batch could not be read")

    # -- checks ----------------------------------------------------------------------------

    @rule(image=images, prefix=st.one_of(st.just(b""), paths), data=st.data())
    def check_at_an_instant(self, image: str, prefix: bytes, data: st.DataObject) -> None:
        if not self.known(image):
            return
        t = data.draw(st.one_of(st.none(), st.integers(0, self.now + 1)), label="t")
        assert list(self.catalog.versions_at(image, t, prefix)) == self.model.at(image, t, prefix)
        if prefix:
            one = self.catalog.version_at(image, prefix, t)
            assert ([one] if one else []) == [v for v in self.model.at(image, t) if v.path == prefix]
        if t is not None:
            assert self.catalog.nearest_valid(image, t) == self.model.valid_instants(image, t)

    @rule(image=images)
    def check_every_history(self, image: str) -> None:
        if not self.known(image):
            return
        for path in ALL_PATHS:
            expected = [v for v in self.model.versions[image] if v.path == path]
            assert self.catalog.history(image, path) == sorted(expected, key=lambda v: v.valid_from)

    @rule()
    def check_referenced_digests(self) -> None:
        assert self.catalog.referenced_digests() == self.model.digests()

    @invariant()
    def live_listing_counters_ranges_and_snapshots_agree(self) -> None:
        assert self.catalog.images() == [self.model.info(image) for image in sorted(self.model.versions)]
        for image in self.model.versions:
            assert list(self.catalog.versions_at(image, None)) == self.model.at(image, None)
            assert self.catalog.ranges(image) == [Range(s, e) for s, e in self.model.ranges[image]]
            assert [(s.id, s.time, s.status) for s in self.catalog.snapshots(image)] == self.model.snapshots[
                image
            ]
            # What a prune must never take: the instants Ok snapshots pin.
            for _, time, status in self.model.snapshots[image]:
                if status == "Ok":
                    assert list(self.catalog.versions_at(image, time)) == self.model.at(image, time)


def run_machine(open_fresh: Callable[[], Catalog], max_examples: int, steps: int) -> None:
    machine = type("Machine", (CatalogMachine,), {"open_fresh": staticmethod(open_fresh)})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=max_examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_the_sqlite_catalog_behaves_like_the_model() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(10**9))

        def open_fresh() -> Catalog:
            return open_catalog(f"sqlite://{tmp}/catalog-{next(counter)}.db")

        run_machine(open_fresh, max_examples=int(os.environ.get("TV_CATALOG_EXAMPLES", "400")), steps=60)


postgres_server = postgres_server_fixture()


def test_the_postgresql_catalog_behaves_like_the_model(postgres_server: PostgresServer) -> None:
    run_machine(lambda: open_catalog(postgres_server.create_database("model")), max_examples=25, steps=40)
