"""The catalog's tree reads for mounts: a directory's children at an instant, whether
anything lies under a path, and hard-link counts -- on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.postgres import PostgresServer, postgres_server_fixture
from twinvault.repository.catalog import Catalog, open_catalog
from twinvault.repository.catalog.catalog import _CHILDREN_FIRST

IMG = "alpha-data"

postgres_server = postgres_server_fixture()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Catalog]:
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path}/catalog.db"
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.create_database()
    c = open_catalog(url)
    try:
        yield c
    finally:
        c.close()


def put(c: Catalog, path: bytes, t: int, kind: str = "file", link: bytes | None = None) -> None:
    content = b"c" * 40 if kind == "file" else b""
    c.put(IMG, path, t, kind, b"m", content, 40 if kind == "file" else 0, link)


def names(c: Catalog, t: int | None, path: bytes) -> list[tuple[bytes, str | None]]:
    return [(name, v and v.kind) for name, v in c.children_at(IMG, t, path)]


def test_children_are_the_direct_entries_valid_at_the_instant(catalog: Catalog) -> None:
    put(catalog, b"/srv/data", 10, "dir")
    put(catalog, b"/srv/data/a", 10, "dir")
    put(catalog, b"/srv/data/a/deep.txt", 10)
    put(catalog, b"/srv/data/a.txt", 10)  # sorts between a and a/...
    put(catalog, b"/srv/data/a!", 10)
    put(catalog, b"/srv/data/b.txt", 10)
    put(catalog, b"/srv/data/later.txt", 20)
    catalog.delete_tree(IMG, b"/srv/data/b.txt", 30)
    put(catalog, b"/srv/database", 10)  # a sibling whose name starts like the directory's

    assert names(catalog, 15, b"/srv/data") == [
        (b"a", "dir"),
        (b"a!", "file"),
        (b"a.txt", "file"),
        (b"b.txt", "file"),
    ]
    assert names(catalog, 25, b"/srv/data") == [
        (b"a", "dir"),
        (b"a!", "file"),
        (b"a.txt", "file"),
        (b"b.txt", "file"),
        (b"later.txt", "file"),
    ]
    assert [n for n, _ in names(catalog, None, b"/srv/data")] == [b"a", b"a!", b"a.txt", b"later.txt"]
    assert names(catalog, 15, b"/srv/data/a") == [(b"deep.txt", "file")]
    assert names(catalog, 5, b"/srv/data") == []
    assert names(catalog, 15, b"/srv/data/a.txt") == []


def test_parents_of_the_selection_are_implied_by_what_lies_under_them(catalog: Catalog) -> None:
    put(catalog, b"/srv/data", 10, "dir")
    put(catalog, b"/srv/data/x", 10)
    put(catalog, b"/home/u/notes", 10)
    assert names(catalog, 15, b"/") == [(b"home", None), (b"srv", None)]
    assert names(catalog, 15, b"/srv") == [(b"data", "dir")]
    assert names(catalog, 5, b"/") == []
    assert catalog.has_descendants_at(IMG, 15, b"/srv")
    assert catalog.has_descendants_at(IMG, 15, b"/")
    assert catalog.has_descendants_at(IMG, None, b"/home/u")
    assert not catalog.has_descendants_at(IMG, 5, b"/srv")
    assert not catalog.has_descendants_at(IMG, 15, b"/srv/data/x")
    assert not catalog.has_descendants_at(IMG, 15, b"/sr")  # "/srv" only starts with "/sr"


def test_listing_without_contents_leaves_chunk_lists_out(catalog: Catalog) -> None:
    put(catalog, b"/d", 10, "dir")
    put(catalog, b"/d/f", 10)
    catalog.put(IMG, b"/d/l", 10, "symlink", b"m", b"target", 6, None)
    full = dict(catalog.children_at(IMG, 15, b"/d"))
    bare = dict(catalog.children_at(IMG, 15, b"/d", content=False))
    assert full[b"f"] is not None and full[b"f"].content == b"c" * 40
    assert bare[b"f"] is not None and bare[b"f"].content == b"" and bare[b"f"].size == 40
    assert bare[b"l"] is not None and bare[b"l"].content == b"target"


def test_a_large_directory_is_listed_whole_across_batches(catalog: Catalog) -> None:
    count = _CHILDREN_FIRST * 5 + 3
    with catalog.transaction():
        put(catalog, b"/big", 1, "dir")
        for i in range(count):
            put(catalog, b"/big/f%05d" % i, 1)
            if i % 50 == 0:
                put(catalog, b"/big/f%05d.d" % i, 1, "dir")
                put(catalog, b"/big/f%05d.d/inner" % i, 1)
    listed = names(catalog, 2, b"/big")
    assert len(listed) == count + len(range(0, count, 50))
    assert listed[:3] == [(b"f00000", "file"), (b"f00000.d", "dir"), (b"f00001", "file")]


def test_link_counts_are_the_names_of_each_shared_group_at_the_instant(catalog: Catalog) -> None:
    put(catalog, b"/a", 10)
    put(catalog, b"/b", 10)
    link = catalog.link_group_of(IMG, b"/a")
    assert link is not None
    put(catalog, b"/a2", 20, link=link)
    put(catalog, b"/a3", 30, link=link)
    assert catalog.link_counts_at(IMG, 15) == {}
    assert catalog.link_counts_at(IMG, 25) == {link: 2}
    assert catalog.link_counts_at(IMG, None) == {link: 3}
    catalog.delete_tree(IMG, b"/a", 40)
    assert catalog.link_counts_at(IMG, None) == {link: 2}


_NAMES = st.sampled_from([b"a", b"a.b", b"a!", b"ab", b"b", b"\x01", b"z"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.lists(_NAMES, min_size=1, max_size=3), st.integers(1, 4)), max_size=25))
def test_children_agree_with_a_filter_of_every_version(
    catalog: Catalog, entries: list[tuple[list[bytes], int]]
) -> None:
    image = f"prop-{abs(hash(tuple((tuple(p), t) for p, t in entries)))}"
    with catalog.transaction():
        catalog.ensure_image(image)
        for parts, t in sorted(entries, key=lambda e: e[1]):
            catalog.put(image, b"/" + b"/".join(parts), t, "file", b"m", b"", 0, None)
    for t in (1, 2, 3, 4, None):
        every = [v.path for v in catalog.versions_at(image, t)]
        for directory in (b"/", b"/a", b"/a/a.b", b"/ab"):
            prefix = b"/" if directory == b"/" else directory + b"/"
            under = [p[len(prefix) :] for p in every if p.startswith(prefix) and p != directory]
            expected = sorted({rel.split(b"/")[0] for rel in under})
            direct = {rel for rel in under if b"/" not in rel}
            got = catalog.children_at(image, t, directory)
            assert sorted(n for n, _ in got) == expected
            assert {n for n, v in got if v is not None} == direct
