"""The temporal catalog, method by method, on SQLite and on a real PostgreSQL.

Every test runs twice (the `catalog` fixture is parametrized): against an SQLite file and
against a fresh database of a private PostgreSQL server started by
``tests/helpers/postgres.py`` (skipped, saying why, when the binaries are missing).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.postgres import PostgresServer, postgres_server_fixture
from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.repository.catalog import (
    DEFAULT_CDP_DAYS,
    LIVE,
    SCHEDULED,
    USER_REQUEST,
    Catalog,
    ImageInfo,
    Range,
    Version,
    format_instant,
    open_catalog,
)
from twinvault.repository.catalog.catalog import PUT_BATCH
from twinvault.repository.catalog.database import STATISTICS_FIRST
from twinvault.repository.chunklist import HOLE_DIGEST, Piece, pack_chunks

IMG = "alpha-data"
S = 1_000_000_000  # one second in ns


postgres_server = postgres_server_fixture()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/catalog.db"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    c = open_catalog(catalog_url)
    try:
        yield c
    finally:
        c.close()


def put_file(
    c: Catalog,
    path: bytes,
    t: int,
    size: int = 1,
    content: bytes = b"",
    *,
    meta: bytes = b"m",
    link: bytes | None = None,
    image: str = IMG,
) -> None:
    c.put(image, path, t, "file", meta, content, size, link)


def put_dir(c: Catalog, path: bytes, t: int, image: str = IMG) -> None:
    c.put(image, path, t, "dir", b"d", b"", 0, None)


def paths_at(c: Catalog, t: int | None, prefix: bytes = b"", image: str = IMG) -> list[bytes]:
    return [v.path for v in c.versions_at(image, t, prefix)]


def chunks(*digests: bytes) -> bytes:
    return pack_chunks([Piece(d, 4096) for d in digests])


def digest(n: int) -> bytes:
    return n.to_bytes(32, "big")


def expect_error(code: int) -> pytest.RaisesExc[TwinvaultError]:
    return pytest.raises(TwinvaultError, check=lambda e: e.code == code)


# -- put and the versions it makes ----------------------------------------------------------


def test_put_closes_the_live_version_and_opens_a_new_one(catalog: Catalog) -> None:
    with catalog.transaction():
        put_file(catalog, b"/f", 10, size=3, meta=b"v1")
    with catalog.transaction():
        put_file(catalog, b"/f", 20, size=5, meta=b"v2")
    assert catalog.history(IMG, b"/f") == [
        Version(b"/f", 10, 20, "file", b"v1", b"", 3, b"/f@10"),
        Version(b"/f", 20, None, "file", b"v2", b"", 5, b"/f@20"),
    ]
    assert catalog.version_at(IMG, b"/f", None) == Version(b"/f", 20, None, "file", b"v2", b"", 5, b"/f@20")


def test_a_version_is_valid_from_its_start_inclusive_to_its_end_exclusive(catalog: Catalog) -> None:
    put_file(catalog, b"/f", 10, meta=b"v1")
    put_file(catalog, b"/f", 20, meta=b"v2")
    assert catalog.version_at(IMG, b"/f", 9) is None
    assert [catalog.version_at(IMG, b"/f", t).meta for t in (10, 19, 20, 10**18)] == [  # type: ignore[union-attr]
        b"v1",
        b"v1",
        b"v2",
        b"v2",
    ]
    assert paths_at(catalog, 9) == []
    assert [v.meta for v in catalog.versions_at(IMG, 19)] == [b"v1"]
    assert [v.meta for v in catalog.versions_at(IMG, 20)] == [b"v2"]


def test_two_puts_at_the_same_instant_leave_one_version(catalog: Catalog) -> None:
    with catalog.transaction():
        put_file(catalog, b"/f", 10, meta=b"old")
        put_file(catalog, b"/f", 20, size=7, meta=b"first")
        put_file(catalog, b"/f", 20, size=9, meta=b"second")
    # The version opened and closed at 20 was never visible at any instant: dropped.
    assert [(v.valid_from, v.valid_to, v.meta) for v in catalog.history(IMG, b"/f")] == [
        (10, 20, b"old"),
        (20, None, b"second"),
    ]
    assert catalog.images()[0] == ImageInfo(IMG, DEFAULT_CDP_DAYS, 2, 1, 9, 1 + 9)


def test_a_put_at_an_earlier_instant_than_the_live_version_is_refused(catalog: Catalog) -> None:
    put_file(catalog, b"/f", 20)
    with pytest.raises(ValueError, match="time went backwards"):
        put_file(catalog, b"/f", 10)
    assert [v.valid_from for v in catalog.history(IMG, b"/f")] == [20]


def test_an_unknown_kind_is_refused(catalog: Catalog) -> None:
    with pytest.raises(ValueError, match="kind"):
        catalog.put(IMG, b"/f", 1, "fifo", b"", b"", 0, None)


def test_every_kind_keeps_its_meta_content_and_size(catalog: Catalog) -> None:
    with catalog.transaction():
        put_dir(catalog, b"/d", 1)
        catalog.put(IMG, b"/d/l", 1, "symlink", b"meta-l", b"../target", 9, None)
        catalog.put(IMG, b"/d/p", 1, "special", b"meta-p", b"", 0, None)
        put_file(catalog, b"/d/f", 1, size=8192, content=chunks(digest(1), digest(2)))
    got = {v.path: (v.kind, v.meta, v.content, v.size) for v in catalog.versions_at(IMG, None)}
    assert got == {
        b"/d": ("dir", b"d", b"", 0),
        b"/d/f": ("file", b"m", chunks(digest(1), digest(2)), 8192),
        b"/d/l": ("symlink", b"meta-l", b"../target", 9),
        b"/d/p": ("special", b"meta-p", b"", 0),
    }


# -- hard-link groups ------------------------------------------------------------------------


def test_a_put_without_a_link_starts_its_own_group_named_path_at_instant(catalog: Catalog) -> None:
    put_file(catalog, b"/f", 123)
    assert catalog.link_group_of(IMG, b"/f") == b"/f@123"


def test_a_hard_link_shares_the_group_of_the_existing_name(catalog: Catalog) -> None:
    with catalog.transaction():
        put_file(catalog, b"/a", 10, content=chunks(digest(1)))
        group = catalog.link_group_of(IMG, b"/a")
        put_file(catalog, b"/b", 20, content=chunks(digest(1)), link=group)
    assert group == b"/a@10"
    at_20 = {v.path: v.link for v in catalog.versions_at(IMG, 20)}
    assert at_20 == {b"/a": b"/a@10", b"/b": b"/a@10"}
    # The group outlives the name that started it.
    catalog.delete_tree(IMG, b"/a", 30)
    assert catalog.link_group_of(IMG, b"/b") == b"/a@10"
    assert catalog.link_group_of(IMG, b"/a") is None
    assert catalog.link_group_of(IMG, b"/never") is None


# -- listing at an instant ---------------------------------------------------------------------


def test_versions_at_lists_by_path_bytes_and_a_prefix_is_that_path_and_its_descendants(
    catalog: Catalog,
) -> None:
    with catalog.transaction():
        for p in (b"/a", b"/a/x", b"/a/x/y", b"/ab", b"/a.b", b"/a-", b"/b"):
            put_dir(catalog, p, 1)
    assert paths_at(catalog, None) == [b"/a", b"/a-", b"/a.b", b"/a/x", b"/a/x/y", b"/ab", b"/b"]
    assert paths_at(catalog, None, b"/a") == [b"/a", b"/a/x", b"/a/x/y"]
    assert paths_at(catalog, 1, b"/a") == [b"/a", b"/a/x", b"/a/x/y"]
    assert paths_at(catalog, None, b"/a/x/y") == [b"/a/x/y"]
    assert paths_at(catalog, None, b"/nothing") == []
    assert paths_at(catalog, None, b"/") == paths_at(catalog, None)
    with pytest.raises(ValueError, match="trailing slash"):
        catalog.versions_at(IMG, None, b"/a/")


def test_versions_at_an_instant_picks_the_one_valid_version_of_each_path(catalog: Catalog) -> None:
    for t in range(1, 6):
        with catalog.transaction():
            for p in (b"/d/1", b"/d/2", b"/d/3"):
                put_file(catalog, p, t * 10, size=t, meta=b"%d" % t)
    catalog.delete_tree(IMG, b"/d/2", 55)
    for t in (10, 25, 44, 50, 54, 55, 60):
        expected = {p: min(t // 10, 5) for p in (b"/d/1", b"/d/2", b"/d/3")}
        if t >= 55:
            del expected[b"/d/2"]
        assert {v.path: v.size for v in catalog.versions_at(IMG, t)} == expected


def test_paths_that_are_not_utf8_are_kept_byte_for_byte(catalog: Catalog) -> None:
    odd = b"/caf\xe9/\xff\xfe\x80"
    with catalog.transaction():
        put_dir(catalog, b"/caf\xe9", 1)
        put_file(catalog, odd, 1)
        put_file(catalog, b"/caf\xe9\xff", 1)
    assert paths_at(catalog, None) == [b"/caf\xe9", b"/caf\xe9/\xff\xfe\x80", b"/caf\xe9\xff"]
    assert paths_at(catalog, 1, b"/caf\xe9") == [b"/caf\xe9", odd]
    catalog.rename_tree(IMG, b"/caf\xe9", b"/\x80\x81", 2)
    assert paths_at(catalog, None) == [b"/caf\xe9\xff", b"/\x80\x81", b"/\x80\x81/\xff\xfe\x80"]
    assert catalog.version_at(IMG, b"/\x80\x81/\xff\xfe\x80", None) is not None
    assert paths_at(catalog, 1, b"/caf\xe9") == [b"/caf\xe9", odd]


def test_reading_one_version_while_listing_works(catalog: Catalog) -> None:
    with catalog.transaction():
        for i in range(50):
            put_file(catalog, b"/f%03d" % i, 1, size=i)
    sizes = []
    for v in catalog.versions_at(IMG, None):
        again = catalog.version_at(IMG, v.path, 1)
        assert again == v
        sizes.append(v.size)
    assert sizes == list(range(50))


# -- delete ----------------------------------------------------------------------------------------


def test_delete_tree_closes_the_path_and_its_descendants_but_not_siblings_sharing_a_prefix(
    catalog: Catalog,
) -> None:
    with catalog.transaction():
        for p in (b"/a", b"/a/x", b"/a/x/y", b"/ab", b"/a.b"):
            put_dir(catalog, p, 1)
    assert catalog.delete_tree(IMG, b"/a", 5) == 3
    assert paths_at(catalog, None) == [b"/a.b", b"/ab"]
    assert paths_at(catalog, 4) == [b"/a", b"/a.b", b"/a/x", b"/a/x/y", b"/ab"]
    assert catalog.history(IMG, b"/a/x/y")[0].valid_to == 5
    assert catalog.delete_tree(IMG, b"/a", 6) == 0


def test_delete_then_recreate_at_the_same_instant(catalog: Catalog) -> None:
    with catalog.transaction():
        put_dir(catalog, b"/d", 1)
        put_file(catalog, b"/d/f", 1, meta=b"old")
    with catalog.transaction():
        catalog.delete_tree(IMG, b"/d", 7)
        put_dir(catalog, b"/d", 7)
        put_file(catalog, b"/d/f", 7, meta=b"new")
    assert [(v.valid_from, v.valid_to, v.meta) for v in catalog.history(IMG, b"/d/f")] == [
        (1, 7, b"old"),
        (7, None, b"new"),
    ]
    assert [v.meta for v in catalog.versions_at(IMG, 6, b"/d/f")] == [b"old"]
    assert [v.meta for v in catalog.versions_at(IMG, 7, b"/d/f")] == [b"new"]


def test_a_path_created_and_deleted_at_one_instant_leaves_nothing(catalog: Catalog) -> None:
    with catalog.transaction():
        put_dir(catalog, b"/tmp", 3)
        put_file(catalog, b"/tmp/x", 3, size=10)
        put_file(catalog, b"/keep", 3, size=1)
        assert catalog.delete_tree(IMG, b"/tmp", 3) == 2
    assert catalog.history(IMG, b"/tmp/x") == []
    assert paths_at(catalog, 3) == [b"/keep"]
    assert catalog.images()[0] == ImageInfo(IMG, DEFAULT_CDP_DAYS, 1, 1, 1, 1)


# -- rename ----------------------------------------------------------------------------------------


def test_rename_tree_reopens_the_live_versions_under_the_new_name(catalog: Catalog) -> None:
    with catalog.transaction():
        put_dir(catalog, b"/old", 1)
        put_file(catalog, b"/old/f", 1, size=4, content=chunks(digest(1)), meta=b"fm")
        put_file(catalog, b"/old/g", 2, size=5)
        put_file(catalog, b"/oldish", 1)
    assert catalog.rename_tree(IMG, b"/old", b"/new", 10) == 3
    assert paths_at(catalog, None) == [b"/new", b"/new/f", b"/new/g", b"/oldish"]
    moved = catalog.version_at(IMG, b"/new/f", None)
    assert moved == Version(b"/new/f", 10, None, "file", b"fm", chunks(digest(1)), 4, b"/old/f@1")
    # The past still has the old names.
    assert paths_at(catalog, 9) == [b"/old", b"/old/f", b"/old/g", b"/oldish"]
    assert catalog.history(IMG, b"/old/g")[-1].valid_to == 10


def test_rename_of_a_directory_onto_an_existing_tree_replaces_that_tree(catalog: Catalog) -> None:
    with catalog.transaction():
        for p in (b"/src", b"/src/a", b"/dst", b"/dst/a", b"/dst/b", b"/dst/b/c", b"/dstx"):
            put_file(catalog, p, 1, meta=p)
    catalog.rename_tree(IMG, b"/src", b"/dst", 5)
    assert {v.path: v.meta for v in catalog.versions_at(IMG, None)} == {
        b"/dst": b"/src",
        b"/dst/a": b"/src/a",
        b"/dstx": b"/dstx",
    }
    assert {v.path: v.meta for v in catalog.versions_at(IMG, 4, b"/dst")} == {
        p: p for p in (b"/dst", b"/dst/a", b"/dst/b", b"/dst/b/c")
    }
    assert catalog.images()[0].live_files == 3


def test_a_path_created_and_renamed_at_one_instant_exists_only_under_its_new_name(catalog: Catalog) -> None:
    with catalog.transaction():
        put_file(catalog, b"/tmp.123", 4, meta=b"content")
        catalog.rename_tree(IMG, b"/tmp.123", b"/file", 4)
    assert catalog.history(IMG, b"/tmp.123") == []
    assert [v.path for v in catalog.versions_at(IMG, 4)] == [b"/file"]
    assert catalog.images()[0].versions == 1


def test_rename_onto_itself_does_nothing_and_into_its_own_subtree_is_refused(catalog: Catalog) -> None:
    put_dir(catalog, b"/a", 1)
    assert catalog.rename_tree(IMG, b"/a", b"/a", 2) == 0
    assert catalog.history(IMG, b"/a")[0].valid_to is None
    with pytest.raises(ValueError, match="contains"):
        catalog.rename_tree(IMG, b"/a", b"/a/b", 3)
    with pytest.raises(ValueError, match="contains"):
        catalog.rename_tree(IMG, b"/a/b", b"/a", 3)


# -- images ------------------------------------------------------------------------------------------


def test_ensure_image_creates_with_the_default_window_and_updates_it(catalog: Catalog) -> None:
    catalog.ensure_image("b-image")
    catalog.ensure_image("a-image", 3.5)
    catalog.ensure_image("b-image", 0)
    catalog.ensure_image("a-image")  # None keeps the setting
    assert [(i.name, i.cdp_days) for i in catalog.images()] == [("a-image", 3.5), ("b-image", 0.0)]
    assert DEFAULT_CDP_DAYS == 7.0
    catalog.ensure_image("c-image")
    assert catalog.images()[2].cdp_days == 7.0
    with pytest.raises(ValueError):
        catalog.ensure_image("a-image", -1)


def test_images_count_versions_live_files_and_bytes(catalog: Catalog) -> None:
    with catalog.transaction():
        put_dir(catalog, b"/d", 1)
        put_file(catalog, b"/d/f", 1, size=100)
        put_file(catalog, b"/d/g", 1, size=10)
        put_file(catalog, b"/d/f", 2, size=300)
        catalog.put(IMG, b"/d/l", 2, "symlink", b"", b"f", 1, None)
        put_file(catalog, b"/x", 1, size=1000, image="other")
    assert catalog.images() == [
        ImageInfo(IMG, DEFAULT_CDP_DAYS, 5, 2, 310, 410),
        ImageInfo("other", DEFAULT_CDP_DAYS, 1, 1, 1000, 1000),
    ]
    catalog.rename_tree(IMG, b"/d", b"/e", 3)
    assert catalog.images()[0] == ImageInfo(IMG, DEFAULT_CDP_DAYS, 9, 2, 310, 720)
    catalog.delete_tree(IMG, b"/e", 4)
    assert catalog.images()[0] == ImageInfo(IMG, DEFAULT_CDP_DAYS, 9, 0, 0, 720)
    catalog.prune(IMG, 4)
    assert catalog.images()[0] == ImageInfo(IMG, DEFAULT_CDP_DAYS, 0, 0, 0, 0)


def test_images_are_independent(catalog: Catalog) -> None:
    with catalog.transaction():
        put_file(catalog, b"/f", 1, image="one", meta=b"1")
        put_file(catalog, b"/f", 1, image="two", meta=b"2")
        catalog.delete_tree("one", b"/f", 2)
    assert paths_at(catalog, None, image="one") == []
    assert [v.meta for v in catalog.versions_at("two", None)] == [b"2"]


def test_reading_an_unknown_image_is_image_not_found(catalog: Catalog) -> None:
    put_file(catalog, b"/f", 1)
    reads: list[Callable[[], object]] = [
        lambda: catalog.versions_at("nope", None),
        lambda: catalog.version_at("nope", b"/f", None),
        lambda: catalog.history("nope", b"/f"),
        lambda: catalog.link_group_of("nope", b"/f"),
        lambda: catalog.snapshots("nope"),
        lambda: catalog.snapshot("nope", 1),
        lambda: catalog.ranges("nope"),
        lambda: catalog.nearest_valid("nope", 1),
        lambda: catalog.check_instant("nope", 1),
        lambda: catalog.prune("nope", 1),
    ]
    for read in reads:
        with expect_error(errors.IMAGE_NOT_FOUND) as e:
            read()
        assert "nope" in str(e.value)


# -- transactions and the journal position ---------------------------------------------------------


def test_a_failed_transaction_leaves_nothing_behind(catalog: Catalog) -> None:
    with catalog.transaction():
        put_file(catalog, b"/f", 1, size=1)
        catalog.set_position(100)
    with pytest.raises(RuntimeError, match="boom"), catalog.transaction():
        put_file(catalog, b"/f", 2, size=2)
        put_file(catalog, b"/g", 2, size=2, image="new-image")
        catalog.delete_tree(IMG, b"/f", 3)
        catalog.add_snapshot(IMG, 3, USER_REQUEST)
        catalog.open_range(IMG, 3)
        catalog.set_position(200)
        raise RuntimeError("boom")
    assert catalog.position() == 100
    assert catalog.history(IMG, b"/f") == [Version(b"/f", 1, None, "file", b"m", b"", 1, b"/f@1")]
    assert catalog.images() == [ImageInfo(IMG, DEFAULT_CDP_DAYS, 1, 1, 1, 1)]
    assert catalog.snapshots(IMG) == [] and catalog.ranges(IMG) == []
    # The cache of image ids forgot the image the failed transaction created.
    put_file(catalog, b"/g", 4, image="new-image")
    assert paths_at(catalog, None, image="new-image") == [b"/g"]


def test_a_batch_larger_than_the_put_batch_with_repeated_paths_keeps_every_version(catalog: Catalog) -> None:
    n = PUT_BATCH * 2 + 37
    with catalog.transaction():
        for i in range(n):
            # Every path is put three times: two instants, the second one twice.
            put_file(catalog, b"/f%04d" % (i % 200), 10 + i // 200, size=i, meta=b"%d" % i)
        put_file(catalog, b"/f0000", 10 + (n - 1) // 200, size=1, meta=b"same instant")
        assert catalog.version_at(IMG, b"/f0000", None).meta == b"same instant"  # type: ignore[union-attr]
    for i in range(200):
        puts = [j for j in range(n) if j % 200 == i]
        expected = [(10 + j // 200, j) for j in puts]
        if i == 0:
            expected[-1] = (expected[-1][0], 1)
        assert [(v.valid_from, v.size) for v in catalog.history(IMG, b"/f%04d" % i)] == expected
    info = catalog.images()[0]
    assert (info.versions, info.live_files) == (n, 200)


def test_a_put_that_fails_when_the_batch_is_written_rolls_the_transaction_back(catalog: Catalog) -> None:
    put_file(catalog, b"/f", 20, meta=b"kept")
    with pytest.raises(ValueError, match="time went backwards"), catalog.transaction():
        put_file(catalog, b"/g", 21)
        put_file(catalog, b"/f", 10)  # held back: the error surfaces at the read below
        catalog.versions_at(IMG, None)
    assert paths_at(catalog, None) == [b"/f"]
    assert catalog.images()[0].versions == 1


def test_a_transaction_whose_write_failed_does_not_commit_even_if_the_error_was_caught(
    catalog: Catalog,
) -> None:
    with pytest.raises(RuntimeError, match="rolled back"), catalog.transaction():
        put_file(catalog, b"/a", 1)
        put_dir(catalog, b"/d", 1)
        with pytest.raises(ValueError):
            catalog.rename_tree(IMG, b"/d", b"/d/inside", 2)
    assert catalog.images() == []


def test_transactions_do_not_nest(catalog: Catalog) -> None:
    with catalog.transaction(), pytest.raises(RuntimeError, match="nest"), catalog.transaction():
        pass


def test_reads_inside_a_transaction_see_its_writes(catalog: Catalog) -> None:
    with catalog.transaction():
        put_file(catalog, b"/f", 1, size=5)
        assert catalog.images()[0].live_bytes == 5
        put_file(catalog, b"/g", 1, size=6)
        assert catalog.images()[0].live_bytes == 11
        assert paths_at(catalog, None) == [b"/f", b"/g"]
    assert catalog.images()[0].live_bytes == 11


def test_the_position_starts_at_zero_and_is_kept_across_reopening(catalog_url: str) -> None:
    with open_catalog(catalog_url) as c:
        assert c.position() == 0
        with c.transaction():
            put_file(c, b"/f", 1)
            c.set_position(12345 << 32)
    with open_catalog(catalog_url) as c:
        assert c.position() == 12345 << 32
        assert paths_at(c, None) == [b"/f"]
        assert c.images()[0].live_files == 1


def test_reset_empties_the_catalog_for_a_rebuild(catalog: Catalog) -> None:
    with catalog.transaction():
        put_file(catalog, b"/f", 1, content=chunks(digest(1)))
        catalog.add_snapshot(IMG, 1, SCHEDULED)
        catalog.open_range(IMG, 1)
        catalog.set_position(99)
    catalog.reset()
    assert catalog.images() == [] and catalog.position() == 0
    assert catalog.referenced_digests() == set()
    with expect_error(errors.IMAGE_NOT_FOUND):
        catalog.versions_at(IMG, None)
    put_file(catalog, b"/g", 2)
    assert paths_at(catalog, None) == [b"/g"]
    assert catalog.add_snapshot(IMG, 2, SCHEDULED).id == 1


# -- ranges valid for recovery ---------------------------------------------------------------------


def test_ranges_open_and_close_idempotently(catalog: Catalog) -> None:
    catalog.close_range(IMG, 5)  # nothing open: nothing to close
    catalog.open_range(IMG, 10)
    catalog.open_range(IMG, 15)  # already open
    assert catalog.ranges(IMG) == [Range(10, None)]
    catalog.close_range(IMG, 20)
    catalog.close_range(IMG, 25)  # already closed
    catalog.open_range(IMG, 30)
    assert catalog.ranges(IMG) == [Range(10, 20), Range(30, None)]


def test_a_range_reopened_at_the_instant_it_closed_goes_on(catalog: Catalog) -> None:
    catalog.open_range(IMG, 10)
    with catalog.transaction():
        catalog.close_range(IMG, 20)
        catalog.open_range(IMG, 20)
    assert catalog.ranges(IMG) == [Range(10, None)]


def test_a_range_closed_at_the_instant_it_opened_is_dropped(catalog: Catalog) -> None:
    catalog.open_range(IMG, 10)
    catalog.close_range(IMG, 10)
    assert catalog.ranges(IMG) == []


def test_an_instant_outside_every_range_names_the_nearest_valid_instants(catalog: Catalog) -> None:
    catalog.open_range(IMG, 10 * S)
    catalog.close_range(IMG, 20 * S)
    catalog.open_range(IMG, 30 * S)
    catalog.close_range(IMG, 40 * S)
    catalog.check_instant(IMG, 10 * S)
    catalog.check_instant(IMG, 20 * S - 1)
    assert catalog.nearest_valid(IMG, 15 * S) == (15 * S, 15 * S)
    assert catalog.nearest_valid(IMG, 25 * S) == (20 * S - 1, 30 * S)
    assert catalog.nearest_valid(IMG, 5 * S) == (None, 10 * S)
    assert catalog.nearest_valid(IMG, 40 * S) == (40 * S - 1, None)
    with expect_error(errors.INSTANT_NOT_VALID) as e:
        catalog.check_instant(IMG, 20 * S)  # the end is exclusive
    assert str(e.value) == (
        "error -1027: The instant is outside every range valid for recovery: "
        f"1970-01-01T00:00:20.000000000Z in image {IMG}; nearest valid instants: "
        "1970-01-01T00:00:19.999999999Z before, 1970-01-01T00:00:30.000000000Z after"
    )
    with expect_error(errors.INSTANT_NOT_VALID) as e:
        catalog.check_instant(IMG, 50 * S)
    assert e.value.detail.endswith("39.999999999Z before, none after")


def test_an_image_without_ranges_has_no_valid_instant(catalog: Catalog) -> None:
    put_file(catalog, b"/f", 1)
    assert catalog.nearest_valid(IMG, 5) == (None, None)
    with expect_error(errors.INSTANT_NOT_VALID) as e:
        catalog.check_instant(IMG, 5)
    assert "none before, none after" in e.value.detail


def test_the_instant_of_an_ok_snapshot_is_valid_outside_the_ranges(catalog: Catalog) -> None:
    catalog.add_snapshot(IMG, 50, USER_REQUEST)
    catalog.add_snapshot(IMG, 70, SCHEDULED, "Failed")
    catalog.check_instant(IMG, 50)
    assert catalog.nearest_valid(IMG, 60) == (50, None)
    assert catalog.nearest_valid(IMG, 40) == (None, 50)
    with expect_error(errors.INSTANT_NOT_VALID):
        catalog.check_instant(IMG, 70)


def test_instants_are_written_as_iso_8601_utc_with_nanoseconds() -> None:
    assert format_instant(0) == "1970-01-01T00:00:00.000000000Z"
    assert format_instant(1_778_312_125_123_456_789) == "2026-05-09T07:35:25.123456789Z"


# -- snapshots ----------------------------------------------------------------------------------------


def test_snapshots_are_numbered_per_image_and_found_by_id(catalog: Catalog) -> None:
    with catalog.transaction():
        a = catalog.add_snapshot(IMG, 10, USER_REQUEST)
        b = catalog.add_snapshot(IMG, 20, SCHEDULED, "Failed")
        c = catalog.add_snapshot("other", 20, SCHEDULED)
    assert (a.id, b.id, c.id) == (1, 2, 1)
    assert catalog.snapshots(IMG) == [a, b]
    assert catalog.snapshot(IMG, 2) == b
    assert b.status == "Failed" and b.type == "Scheduled" and b.time == 20 and b.image == IMG
    with expect_error(errors.SNAPSHOT_NOT_FOUND) as e:
        catalog.snapshot(IMG, 3)
    assert "3" in e.value.detail


def test_a_deleted_snapshot_no_longer_pins_its_versions(catalog: Catalog) -> None:
    put_file(catalog, b"/f", 10, meta=b"a", content=chunks(digest(1)))
    snap = catalog.add_snapshot(IMG, 15, USER_REQUEST)
    put_file(catalog, b"/f", 20, meta=b"b", content=chunks(digest(2)))
    catalog.delete_snapshot(IMG, snap.id)
    assert catalog.snapshots(IMG) == []
    assert catalog.prune(IMG, 30) == 1
    assert catalog.referenced_digests() == {digest(2)}
    with expect_error(errors.SNAPSHOT_NOT_FOUND):
        catalog.delete_snapshot(IMG, snap.id)
    assert catalog.add_snapshot(IMG, 40, USER_REQUEST).id == snap.id + 1  # ids are never reused


def test_a_snapshot_of_an_unknown_type_or_status_is_refused(catalog: Catalog) -> None:
    with pytest.raises(ValueError):
        catalog.add_snapshot(IMG, 1, "Nightly")
    with pytest.raises(ValueError):
        catalog.add_snapshot(IMG, 1, USER_REQUEST, "Maybe")


# -- prune ----------------------------------------------------------------------------------------------


def test_prune_deletes_closed_versions_before_the_horizon_and_keeps_live_ones(catalog: Catalog) -> None:
    for t in (10, 20, 30, 40):
        put_file(catalog, b"/f", t, meta=b"%d" % t)
    put_file(catalog, b"/old-live", 5)
    assert catalog.prune(IMG, 30) == 2  # [10,20) and [20,30); [30,40) ends after the horizon
    assert [(v.valid_from, v.valid_to) for v in catalog.history(IMG, b"/f")] == [(30, 40), (40, None)]
    assert paths_at(catalog, None) == [b"/f", b"/old-live"]
    assert catalog.prune(IMG, 30) == 0


def test_prune_keeps_the_versions_an_ok_snapshot_pins(catalog: Catalog) -> None:
    with catalog.transaction():
        put_dir(catalog, b"/d", 10)
        put_file(catalog, b"/d/f", 10, meta=b"a", content=chunks(digest(1)))
        put_file(catalog, b"/d/g", 10, meta=b"g")
    put_file(catalog, b"/d/f", 20, meta=b"b", content=chunks(digest(2)))
    pinned = catalog.add_snapshot(IMG, 25, USER_REQUEST)
    catalog.add_snapshot(IMG, 35, SCHEDULED, "Failed")  # a failed snapshot pins nothing
    put_file(catalog, b"/d/f", 30, meta=b"c", content=chunks(digest(3)))
    put_file(catalog, b"/d/f", 40, meta=b"d", content=chunks(digest(4)))
    catalog.delete_tree(IMG, b"/d", 50)
    before = list(catalog.versions_at(IMG, pinned.time))
    removed = catalog.prune(IMG, 60)
    assert list(catalog.versions_at(IMG, pinned.time)) == before
    assert [v.meta for v in before] == [b"d", b"b", b"g"]
    # Kept: the three versions valid at 25 (/d, /d/f "b", /d/g); gone: "a", "c", "d".
    assert removed == 3
    assert [v.meta for v in catalog.history(IMG, b"/d/f")] == [b"b"]
    assert catalog.referenced_digests() == {digest(2)}
    assert catalog.images()[0].versions == 3


def test_prune_at_a_horizon_on_a_snapshot_instant_keeps_that_instant(catalog: Catalog) -> None:
    put_file(catalog, b"/f", 10, meta=b"a")
    put_file(catalog, b"/f", 20, meta=b"b")
    catalog.add_snapshot(IMG, 19, USER_REQUEST)
    catalog.prune(IMG, 100)
    assert [v.meta for v in catalog.versions_at(IMG, 19)] == [b"a"]
    assert [v.meta for v in catalog.versions_at(IMG, 20)] == [b"b"]


def test_prune_drops_ranges_ended_before_the_horizon_and_trims_the_one_across_it(catalog: Catalog) -> None:
    for start, end in ((10, 20), (30, 40), (50, 60)):
        catalog.open_range(IMG, start)
        catalog.close_range(IMG, end)
    catalog.open_range(IMG, 70)
    catalog.prune(IMG, 35)
    assert catalog.ranges(IMG) == [Range(35, 40), Range(50, 60), Range(70, None)]
    catalog.prune(IMG, 60)
    assert catalog.ranges(IMG) == [Range(70, None)]
    catalog.prune(IMG, 80)
    assert catalog.ranges(IMG) == [Range(80, None)]


# -- what the chunk store and repo check ask --------------------------------------------------------------


def test_referenced_digests_are_those_of_every_kept_file_version_of_every_image(catalog: Catalog) -> None:
    with catalog.transaction():
        put_file(catalog, b"/f", 1, content=pack_chunks([Piece(digest(1), 10), Piece(HOLE_DIGEST, 99)]))
        put_file(catalog, b"/f", 2, content=chunks(digest(2), digest(1)))
        put_file(catalog, b"/g", 1, content=chunks(digest(3)), image="other")
        # A symlink's content is its target, whatever bytes it holds: not a chunk list.
        catalog.put(IMG, b"/l", 1, "symlink", b"", digest(9) + bytes(8), 40, None)
    assert catalog.referenced_digests() == {digest(1), digest(2), digest(3)}
    catalog.delete_tree(IMG, b"/f", 3)
    assert catalog.referenced_digests() == {digest(1), digest(2), digest(3)}  # closed, still kept
    catalog.prune(IMG, 3)
    assert catalog.referenced_digests() == {digest(3)}


def test_versions_referencing_names_the_image_and_every_damaged_version(catalog: Catalog) -> None:
    with catalog.transaction():
        put_file(catalog, b"/a", 1, content=chunks(digest(1), digest(2)))
        put_file(catalog, b"/a", 2, content=chunks(digest(3)))
        put_file(catalog, b"/b", 1, content=chunks(digest(2)))
        put_file(catalog, b"/c", 1, content=chunks(digest(2)), image="other")
        put_file(catalog, b"/d", 1, content=chunks(digest(4)))
    hits = [
        (image, v.path, v.valid_from, v.valid_to) for image, v in catalog.versions_referencing({digest(2)})
    ]
    assert hits == [(IMG, b"/a", 1, 2), (IMG, b"/b", 1, None), ("other", b"/c", 1, None)]
    only = [(image, v.path) for image, v in catalog.versions_referencing({digest(2)}, image="other")]
    assert only == [("other", b"/c")]
    assert list(catalog.versions_referencing({digest(7)})) == []


def test_a_healthy_catalog_passes_its_integrity_check(catalog: Catalog) -> None:
    put_file(catalog, b"/f", 1)
    assert catalog.integrity_ok()


# -- opening, failures ----------------------------------------------------------------------------------


def test_an_unusable_catalog_url_is_catalog_unavailable(tmp_path: Path) -> None:
    for url in (
        "mysql://host/db",
        "sqlite://relative.db",
        f"sqlite://{tmp_path}/missing-dir/catalog.db",
    ):
        with expect_error(errors.CATALOG_UNAVAILABLE) as e:
            open_catalog(url)
        assert url.split("://")[0] in str(e.value) or "missing-dir" in str(e.value)


def test_a_file_that_is_not_a_database_is_catalog_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    path.write_bytes(b"this is not an SQLite database, just text" * 200)
    with expect_error(errors.CATALOG_UNAVAILABLE) as e:
        open_catalog(f"sqlite://{path}")
    assert str(path) in e.value.detail


def test_a_damaged_sqlite_catalog_fails_its_integrity_check(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    with open_catalog(f"sqlite://{path}") as c, c.transaction():
        for i in range(3000):
            put_file(c, b"/dir/file-%05d" % i, 1, meta=bytes(100))
    with open(path, "r+b") as f:  # scribble over pages in the middle of the versions b-tree
        f.seek(40 * 4096)
        f.write(b"\xa5" * 8 * 4096)
    with open_catalog(f"sqlite://{path}") as c:  # the header page is intact: it opens
        assert not c.integrity_ok()


def test_a_catalog_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    open_catalog(f"sqlite://{path}").close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE catalog_settings SET value = 99 WHERE name = 'schema_version'")
    db.close()
    with expect_error(errors.CATALOG_UNAVAILABLE) as e:
        open_catalog(f"sqlite://{path}")
    assert "schema version 99" in e.value.detail


def test_an_unreachable_postgresql_is_catalog_unavailable_without_its_password(tmp_path: Path) -> None:
    url = f"postgresql://someone:s3cret@/db?host={tmp_path}&port=1&connect_timeout=2"
    with expect_error(errors.CATALOG_UNAVAILABLE) as e:
        open_catalog(url)
    assert "s3cret" not in str(e.value)
    assert "someone:***@" in str(e.value)
    with expect_error(errors.CATALOG_UNAVAILABLE) as e:
        open_catalog(f"postgresql:///db?host={tmp_path}&port=1&user=x&password=s3cret&connect_timeout=2")
    assert "s3cret" not in str(e.value)
    assert "password=***" in str(e.value)


def test_a_lost_postgresql_session_is_catalog_unavailable(postgres_server: PostgresServer) -> None:
    import psycopg

    url = postgres_server.create_database()
    with open_catalog(url) as c:
        put_file(c, b"/f", 1)
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with expect_error(errors.CATALOG_UNAVAILABLE):
            c.version_at(IMG, b"/f", None)
        with expect_error(errors.CATALOG_UNAVAILABLE), c.transaction():
            put_file(c, b"/g", 2)
        assert not c.integrity_ok()


def test_postgresql_statistics_are_refreshed_as_the_catalog_grows(postgres_server: PostgresServer) -> None:
    import psycopg

    url = postgres_server.create_database()
    with open_catalog(url) as c:
        for batch in range(10):
            with c.transaction():
                for i in range(STATISTICS_FIRST // 8):
                    put_file(c, b"/f%06d" % i, batch + 1)
        with psycopg.connect(url) as admin:
            row = admin.execute(
                "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'versions'"
            ).fetchone()
    assert row == (True,)


def test_live_is_the_largest_int64() -> None:
    assert LIVE == 2**63 - 1
