"""The temporal catalog: every version of every path of every image, by time.

An index over the journal (``docs/history.md``): the history recorder applies each group
commit's records in one transaction that also stores the journal position reached; point
in time readers, ``repo check``, prune and stats read it. It knows paths (bytes), times
(int ns) and opaque blobs; the only format it looks into is the chunk list
(``repository.chunklist``), to name the chunks a version references. Schema and
invariants: ``docs/catalog.md``. The SQL is written once; `Dialect` holds the differences
between SQLite (the embedded default) and PostgreSQL.

Invariants every public method keeps:
- at most one live version per (image, path) (a unique partial index checks it);
- no version with valid_from >= valid_to: a version closed at the instant it opened was
  never visible at any instant and is deleted (or overwritten by the put that closed it);
- the image counters (`ImageInfo`) equal what a scan of the versions would give.

A Catalog is one connection: use it from one thread at a time.
"""

from __future__ import annotations

from collections.abc import Container, Iterator
from typing import Any, Final

from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.repository.catalog.database import CatalogDatabase, read, write
from twinvault.repository.catalog.dialect import DbConnection, Dialect, open_dialect
from twinvault.repository.catalog.model import (
    KINDS,
    LIVE,
    OK,
    SNAPSHOT_STATUSES,
    SNAPSHOT_TYPES,
    ImageInfo,
    Range,
    Snapshot,
    Version,
    format_instant,
)
from twinvault.repository.chunklist import chunk_digests

# Puts held back before they are written together: the repository's batch size.
PUT_BATCH: Final = 256

_COLUMNS: Final = f"path, valid_from, NULLIF(valid_to, {LIVE}), kind, meta, content, size, link"
# The same without file contents (a chunk list is 40 bytes per chunk): for listings.
_LISTING_COLUMNS: Final = _COLUMNS.replace("content", "CASE WHEN kind = 'file' THEN ? ELSE content END")
# Rows per query of a children listing: small first (most directories are small, and a
# batch that runs into a subdirectory's descendants is cut short), doubling up to the cap.
_CHILDREN_FIRST: Final = 64
_CHILDREN_MAX: Final = 4096
# A path and its descendants (parameters from `_subtree`): one range scan of the index,
# from the path itself to just before path + "0" ("0" follows "/"), minus the siblings in
# between whose names merely start with the path's name (b"/ab" for b"/a").
_SUBTREE: Final = "path >= ? AND path < ? AND (path = ? OR path >= ?)"
# An Ok snapshot at s.time pins a version valid at s.time.
_UNPINNED: Final = (
    "NOT EXISTS (SELECT 1 FROM snapshots s WHERE s.image_id = versions.image_id"
    f" AND s.status = '{OK}' AND s.time >= versions.valid_from AND s.time < versions.valid_to)"
)
_FILE_BYTES: Final = "CAST(COALESCE(SUM(CASE WHEN kind = 'file' THEN size ELSE 0 END), 0) AS BIGINT)"


def _subtree(path: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """Parameters of `_SUBTREE` for `path` and everything under it."""
    if path == b"/":
        return (b"/", b"0", b"/", b"/")
    if not path or path.endswith(b"/"):
        raise ValueError(f"not a catalog path (empty or trailing slash): {path!r}")
    return (path, path + b"0", path, path + b"/")


def _below(path: bytes) -> tuple[bytes, bytes]:
    """(low, high): the strict descendants of `path` are exactly the paths p with
    low <= p < high ("0" is the byte after "/")."""
    _subtree(path)  # checks the path
    if path == b"/":
        return (b"/\x00", b"0")  # b"/\x00": the smallest path after b"/" itself
    return (path + b"/", path + b"0")


def _within(path: bytes, tree: bytes) -> bool:
    """`path` is `tree` or one of its descendants."""
    return path == tree or tree == b"/" or path.startswith(tree + b"/")


def open_catalog(url: str) -> Catalog:
    """Open (creating it if needed) the catalog at ``sqlite:///abs/path.db`` or at a
    ``postgresql://`` conninfo; CATALOG_UNAVAILABLE if it cannot be opened or is not a
    catalog of this schema version."""
    dialect = open_dialect(url)
    try:
        conn = dialect.connect()
    except TwinvaultError:
        raise
    except Exception as e:
        raise TwinvaultError(errors.CATALOG_UNAVAILABLE, f"{dialect.location}: {e}") from e
    try:
        return Catalog(dialect, conn)
    except BaseException:
        conn.close()
        raise


class Catalog(CatalogDatabase):
    """Temporal versions, snapshots and ranges of every image of one repository."""

    def __init__(self, dialect: Dialect, conn: DbConnection) -> None:
        # Live versions, read through their partial index: without statistics SQLite
        # would rather scan the primary key, every closed version of the subtree included.
        self._live = f"versions{dialect.live_index_hint}"
        # Puts held back, written together by `_settle` (see `put`).
        self._puts: list[tuple[int, bytes, int, str, bytes, bytes, int, bytes]] = []
        self._put_keys: set[tuple[int, bytes]] = set()
        super().__init__(dialect, conn)  # last: it opens the schema's transaction
        sql = dialect.sql
        self._sql_close_version = sql(
            "UPDATE versions SET valid_to = ? WHERE image_id = ? AND path = ? AND valid_from = ?"
        )
        # The conflict is the live version that opened at this put's instant (it would be
        # zero-length): the new version takes its place.
        self._sql_open = sql(
            "INSERT INTO versions (image_id, path, valid_from, valid_to, kind, meta, content, size, link)"
            f" VALUES (?, ?, ?, {LIVE}, ?, ?, ?, ?, ?)"
            " ON CONFLICT (image_id, path, valid_from) DO UPDATE SET valid_to = excluded.valid_to,"
            " kind = excluded.kind, meta = excluded.meta, content = excluded.content,"
            " size = excluded.size, link = excluded.link"
        )

    # -- writes --------------------------------------------------------------------------

    @write
    def ensure_image(self, image: str, cdp_days: float | None = None) -> None:
        """Create the image if it is new; set its CDP window when `cdp_days` is given."""
        self._writable_image_id(image)
        if cdp_days is not None:
            if cdp_days < 0:
                raise ValueError(f"cdp_days must be >= 0, not {cdp_days}")
            self._run("UPDATE images SET cdp_days = ? WHERE name = ?", (float(cdp_days), image))

    @write
    def put(
        self,
        image: str,
        path: bytes,
        t: int,
        kind: str,
        meta: bytes,
        content: bytes,
        size: int,
        link: bytes | None,
    ) -> None:
        """Close the live version at `path` (if any) at `t`; open a new one from `t`.

        `link` None starts the version's own hard-link group, ``path@t``. Puts are held
        back and written PUT_BATCH at a time (three statements for the lot instead of two
        per put); any other call of the catalog writes them first, so no read misses one,
        and a put's own errors (time going backwards) may surface at that later call.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown version kind {kind!r}")
        image_id = self._image_ids.get(image)
        if image_id is None:
            image_id = self._writable_image_id(image)
        key = (image_id, path)
        if key in self._put_keys:
            self._flush()  # the second put of a path closes the first: keep them in order
        if link is None:
            link = b"%s@%d" % (path, t)
        self._puts.append((image_id, path, t, kind, meta, content, size, link))
        self._put_keys.add(key)
        self._unsettled = True
        if len(self._puts) >= PUT_BATCH:
            self._flush()

    def _settle(self) -> None:
        """Write the held-back puts: per image, find their live versions in one query,
        close them, open the new versions."""
        self._unsettled = False
        puts, self._puts = self._puts, []
        self._put_keys.clear()
        by_image: dict[int, list[tuple[int, bytes, int, str, bytes, bytes, int, bytes]]] = {}
        for p in puts:
            by_image.setdefault(p[0], []).append(p)
        cur = self._cur
        for image_id, group in by_image.items():
            marks = ", ".join("?" * len(group))
            cur.execute(
                self._d.sql(
                    f"SELECT path, valid_from, kind, size FROM {self._live}"
                    f" WHERE image_id = ? AND valid_to = {LIVE} AND path IN ({marks})"
                ),
                (image_id, *(p[1] for p in group)),
            )
            live = {bytes(row[0]): row[1:] for row in cur.fetchall()}
            counts = self._counts_of(image_id)
            closes = []
            for _, path, t, kind, _, _, size, _ in group:
                old = live.get(path)
                if old is not None:
                    valid_from, old_kind, old_size = old
                    if valid_from > t:
                        raise ValueError(
                            f"time went backwards at {path!r}: live since {valid_from}, put at {t}"
                        )
                    counts.close(old_kind, old_size, dropped=valid_from == t)
                    if valid_from < t:  # else the new version overwrites it (the upsert)
                        closes.append((t, image_id, path, valid_from))
                counts.open(kind, size)
            if closes:
                cur.executemany(self._sql_close_version, closes)
            cur.executemany(self._sql_open, group)

    def _discard(self) -> None:
        self._unsettled = False
        self._puts.clear()
        self._put_keys.clear()

    @write
    def delete_tree(self, image: str, path: bytes, t: int) -> int:
        """Close the live versions of `path` and of its descendants at `t`; how many."""
        image_id = self._writable_image_id(image)
        return self._close_tree(image_id, path, t)

    def _close_tree(self, image_id: int, path: bytes, t: int) -> int:
        bounds = _subtree(path)
        closed = self._all(
            f"UPDATE {self._live} SET valid_to = ? WHERE image_id = ? AND valid_to = {LIVE} AND {_SUBTREE}"
            " RETURNING valid_from, kind, size",
            (t, image_id, *bounds),
        )
        counts = self._counts_of(image_id)
        dropped = False
        for valid_from, kind, size in closed:
            if valid_from > t:
                raise ValueError(
                    f"time went backwards under {path!r}: live since {valid_from}, closed at {t}"
                )
            counts.close(kind, size, dropped=valid_from == t)
            dropped = dropped or valid_from == t
        if dropped:
            self._run(
                f"DELETE FROM versions WHERE image_id = ? AND valid_from = ? AND valid_to = ? AND {_SUBTREE}",
                (image_id, t, t, *bounds),
            )
        return len(closed)

    @write
    def rename_tree(self, image: str, old: bytes, new: bytes, t: int) -> int:
        """Rename `old` (and its descendants) to `new` at `t`; how many versions moved.

        The live versions at and under `new` close (rename replaces its target); those at
        and under `old` close and reopen under `new` with the same kind, meta, content,
        size and link group.
        """
        image_id = self._writable_image_id(image)
        if old == new:
            return 0  # rename(2) of a name onto itself does nothing
        if _within(new, old) or _within(old, new):
            raise ValueError(f"cannot rename {old!r} to {new!r}: one contains the other")
        self._close_tree(image_id, new, t)
        moved = self._all(
            "INSERT INTO versions (image_id, path, valid_from, valid_to, kind, meta, content, size, link)"
            f" SELECT image_id, {self._d.concat('?', 'substr(path, ?)')}, ?, {LIVE},"
            " kind, meta, content, size, link"
            f" FROM {self._live} WHERE image_id = ? AND valid_to = {LIVE} AND {_SUBTREE}"
            " RETURNING kind, size",
            (new, len(old) + 1, t, image_id, *_subtree(old)),
        )
        counts = self._counts_of(image_id)
        for kind, size in moved:
            counts.open(kind, size)
        self._close_tree(image_id, old, t)
        return len(moved)

    @write
    def open_range(self, image: str, t: int) -> None:
        """A range valid for recovery starts at `t` (nothing if one is open)."""
        image_id = self._writable_image_id(image)
        if self._one(f"SELECT 1 FROM ranges WHERE image_id = ? AND end_t = {LIVE}", (image_id,)):
            return
        # A range that closed at this very instant simply goes on.
        if not self._run(f"UPDATE ranges SET end_t = {LIVE} WHERE image_id = ? AND end_t = ?", (image_id, t)):
            self._run(f"INSERT INTO ranges (image_id, start_t, end_t) VALUES (?, ?, {LIVE})", (image_id, t))

    @write
    def close_range(self, image: str, t: int) -> None:
        """The open range ends at `t`, exclusive (nothing if none is open)."""
        image_id = self._writable_image_id(image)
        row = self._one(f"SELECT start_t FROM ranges WHERE image_id = ? AND end_t = {LIVE}", (image_id,))
        if row is None:
            return
        if row[0] >= t:  # opened at this instant: it never held a valid instant
            self._run("DELETE FROM ranges WHERE image_id = ? AND start_t = ?", (image_id, row[0]))
        else:
            self._run("UPDATE ranges SET end_t = ? WHERE image_id = ? AND start_t = ?", (t, image_id, row[0]))

    @write
    def add_snapshot(self, image: str, t: int, type: str, status: str = OK) -> Snapshot:
        """Label instant `t` of the image; O(1). Ids count from 1 per image, never reused."""
        if type not in SNAPSHOT_TYPES:
            raise ValueError(f"unknown snapshot type {type!r}")
        if status not in SNAPSHOT_STATUSES:
            raise ValueError(f"unknown snapshot status {status!r}")
        image_id = self._writable_image_id(image)
        row = self._one(
            "UPDATE images SET next_snapshot = next_snapshot + 1 WHERE id = ? RETURNING next_snapshot - 1",
            (image_id,),
        )
        assert row is not None
        snapshot_id = int(row[0])
        self._run(
            "INSERT INTO snapshots (image_id, id, time, type, status) VALUES (?, ?, ?, ?, ?)",
            (image_id, snapshot_id, t, type, status),
        )
        return Snapshot(image, snapshot_id, t, type, status)

    @write
    def delete_snapshot(self, image: str, id: int) -> None:
        """Unpin a snapshot: its versions go at the next prune unless still in the window."""
        image_id = self._writable_image_id(image)
        row = self._one("SELECT id FROM snapshots WHERE image_id = ? AND id = ?", (image_id, id))
        if row is None:
            raise TwinvaultError(errors.SNAPSHOT_NOT_FOUND, f"snapshot {id} of image {image}")
        self._run("DELETE FROM snapshots WHERE image_id = ? AND id = ?", (image_id, id))

    # -- reads ---------------------------------------------------------------------------

    @read
    def images(self) -> list[ImageInfo]:
        if self._in_tx:
            self._write_counts()  # so a read inside the transaction sees its own writes
        rows = self._all(
            "SELECT name, cdp_days, versions, live_files, live_bytes, logical_bytes FROM images ORDER BY name"
        )
        return [ImageInfo(*row) for row in rows]

    @read
    def versions_at(self, image: str, t: int | None, prefix: bytes = b"") -> Iterator[Version]:
        """The versions valid at `t` (None: live), ordered by path (bytewise); `prefix`
        limits them to that path and its descendants (b"": the whole image).

        Streams: memory stays flat whatever the image size. Do not write through this
        catalog while iterating.
        """
        image_id = self._image_id(image)
        params: list[Any] = [image_id]
        if t is None:
            table, where = self._live, f"valid_to = {LIVE}"
        else:
            # One ordered scan of the image's versions (the primary key), no sort.
            table, where = "versions", "valid_from <= ? AND valid_to > ?"
            params += (t, t)
        if prefix:
            where += f" AND {_SUBTREE}"
            params += _subtree(prefix)
        rows = self._stream(
            f"SELECT {_COLUMNS} FROM {table} WHERE image_id = ? AND {where} ORDER BY path", params
        )
        return (Version(*row) for row in rows)

    @read
    def version_at(self, image: str, path: bytes, t: int | None) -> Version | None:
        image_id = self._image_id(image)
        if t is None:
            row = self._one(
                f"SELECT {_COLUMNS} FROM {self._live} WHERE image_id = ? AND path = ? AND valid_to = {LIVE}",
                (image_id, path),
            )
        else:
            row = self._one(
                f"SELECT {_COLUMNS} FROM versions WHERE image_id = ? AND path = ?"
                " AND valid_from <= ? AND valid_to > ?",
                (image_id, path, t, t),
            )
        return Version(*row) if row else None

    def _valid_at(self, t: int | None) -> tuple[str, str, tuple[int, ...]]:
        """(table, condition, parameters) selecting the versions valid at `t` (None: live)."""
        if t is None:
            return self._live, f"valid_to = {LIVE}", ()
        return "versions", "valid_from <= ? AND valid_to > ?", (t, t)

    @read
    def children_at(
        self, image: str, t: int | None, path: bytes, *, content: bool = True
    ) -> list[tuple[bytes, Version | None]]:
        """The entries of directory `path` at `t` (None: live), as (name, version), in
        path order. A name whose own version is not valid at `t` but under which something
        is (a parent of the selection that was never protected itself) comes with None.
        `content=False` hands b"" as every file's content (listings need no chunk lists).

        A skip scan of the primary key: the rows of the children themselves are read, and
        each child directory's descendants cost one more query that jumps past them, so a
        listing does not read the subtree below it.
        """
        image_id = self._image_id(image)
        low, high = _below(path)
        prefix = low if path != b"/" else b"/"
        table, when, at = self._valid_at(t)
        columns, blank = (_COLUMNS, ()) if content else (_LISTING_COLUMNS, (b"",))
        sql = (
            f"SELECT {columns} FROM {table} WHERE image_id = ? AND path >= ? AND path < ? AND {when}"
            " ORDER BY path LIMIT ?"
        )
        found: dict[bytes, Version | None] = {}
        limit = _CHILDREN_FIRST
        while True:
            rows = self._all(sql, (*blank, image_id, low, high, *at, limit))
            jumped = False
            for row in rows:
                name = bytes(row[0])[len(prefix) :]
                slash = name.find(b"/")
                if slash < 0:
                    found[name] = Version(*row)
                    low = bytes(row[0]) + b"\x00"  # the smallest path after this one
                    continue
                child = name[:slash]
                found.setdefault(child, None)
                low = prefix + child + b"0"  # past every descendant of the child
                jumped = True
                break
            if not jumped:
                if len(rows) < limit:
                    return list(found.items())
                limit = min(limit * 2, _CHILDREN_MAX)

    @read
    def has_descendants_at(self, image: str, t: int | None, path: bytes) -> bool:
        """Some version under `path` is valid at `t` (None: live)."""
        image_id = self._image_id(image)
        table, when, at = self._valid_at(t)
        return bool(
            self._one(
                f"SELECT 1 FROM {table} WHERE image_id = ? AND path >= ? AND path < ? AND {when} LIMIT 1",
                (image_id, *_below(path), *at),
            )
        )

    @read
    def link_counts_at(self, image: str, t: int | None) -> dict[bytes, int]:
        """The hard-link groups with more than one name at `t` (None: live) and how many
        names each has: a file's link count. One scan of the image's versions."""
        image_id = self._image_id(image)
        table, when, at = self._valid_at(t)
        rows = self._all(
            f"SELECT link, COUNT(*) FROM {table} WHERE image_id = ? AND kind = 'file' AND {when}"
            " GROUP BY link HAVING COUNT(*) > 1",
            (image_id, *at),
        )
        return {bytes(link): int(count) for link, count in rows}

    @read
    def link_group_of(self, image: str, path: bytes) -> bytes | None:
        """The hard-link group of the live version at `path` (None: nothing live there)."""
        image_id = self._image_id(image)
        row = self._one(
            f"SELECT link FROM {self._live} WHERE image_id = ? AND path = ? AND valid_to = {LIVE}",
            (image_id, path),
        )
        return bytes(row[0]) if row else None

    @read
    def history(self, image: str, path: bytes) -> list[Version]:
        """Every kept version of `path`, oldest first."""
        image_id = self._image_id(image)
        rows = self._all(
            f"SELECT {_COLUMNS} FROM versions WHERE image_id = ? AND path = ? ORDER BY valid_from",
            (image_id, path),
        )
        return [Version(*row) for row in rows]

    @read
    def snapshots(self, image: str) -> list[Snapshot]:
        image_id = self._image_id(image)
        rows = self._all(
            "SELECT id, time, type, status FROM snapshots WHERE image_id = ? ORDER BY id", (image_id,)
        )
        return [Snapshot(image, *row) for row in rows]

    @read
    def snapshot(self, image: str, id: int) -> Snapshot:
        image_id = self._image_id(image)
        row = self._one(
            "SELECT id, time, type, status FROM snapshots WHERE image_id = ? AND id = ?", (image_id, id)
        )
        if row is None:
            raise TwinvaultError(errors.SNAPSHOT_NOT_FOUND, f"snapshot {id} of image {image}")
        return Snapshot(image, *row)

    @read
    def ranges(self, image: str) -> list[Range]:
        """The ranges valid for recovery, oldest first; the last may be open (end None)."""
        image_id = self._image_id(image)
        rows = self._all(
            f"SELECT start_t, NULLIF(end_t, {LIVE}) FROM ranges WHERE image_id = ? ORDER BY start_t",
            (image_id,),
        )
        return [Range(*row) for row in rows]

    @read
    def is_valid(self, image: str, t: int) -> bool:
        """`t` can be rebuilt: it lies in a range, or it is the instant of an Ok snapshot
        (whose versions stay pinned after prune has trimmed the ranges around it)."""
        image_id = self._image_id(image)
        return bool(
            self._one(
                f"SELECT 1 FROM ranges WHERE image_id = ? AND start_t <= ? AND end_t > ?"
                f" UNION ALL SELECT 1 FROM snapshots WHERE image_id = ? AND time = ? AND status = '{OK}'",
                (image_id, t, t, image_id, t),
            )
        )

    @read
    def nearest_valid(self, image: str, t: int) -> tuple[int | None, int | None]:
        """The nearest valid instants at or before and at or after `t` (both `t` if it is
        valid; None where there is none)."""
        if self.is_valid(image, t):
            return (t, t)
        image_id = self._image_id(image)
        row = self._one(
            "SELECT (SELECT MAX(end_t) - 1 FROM ranges WHERE image_id = ? AND end_t <= ?),"
            f" (SELECT MAX(time) FROM snapshots WHERE image_id = ? AND status = '{OK}' AND time < ?),"
            " (SELECT MIN(start_t) FROM ranges WHERE image_id = ? AND start_t > ?),"
            f" (SELECT MIN(time) FROM snapshots WHERE image_id = ? AND status = '{OK}' AND time > ?)",
            (image_id, t) * 4,
        )
        assert row is not None
        befores = [x for x in row[:2] if x is not None]
        afters = [x for x in row[2:] if x is not None]
        return (max(befores) if befores else None, min(afters) if afters else None)

    @read
    def check_instant(self, image: str, t: int) -> None:
        """INSTANT_NOT_VALID, naming the nearest valid instants, unless `t` can be rebuilt."""
        before, after = self.nearest_valid(image, t)
        if before == t:
            return
        raise TwinvaultError(
            errors.INSTANT_NOT_VALID,
            f"{format_instant(t)} in image {image}; nearest valid instants: "
            f"{'none' if before is None else format_instant(before)} before, "
            f"{'none' if after is None else format_instant(after)} after",
        )

    # -- retention and integrity ---------------------------------------------------------

    @write
    def prune(self, image: str, horizon: int) -> int:
        """Delete the versions closed at or before `horizon` that no Ok snapshot pins
        (valid_from <= s.time < valid_to); drop the ranges that ended by `horizon` and start
        the one running through it at `horizon`. Returns the versions deleted."""
        image_id = self._image_id(image)
        where = f"image_id = ? AND valid_to <= ? AND {_UNPINNED}"
        row = self._one(f"SELECT COUNT(*), {_FILE_BYTES} FROM versions WHERE {where}", (image_id, horizon))
        assert row is not None
        count, file_bytes = int(row[0]), int(row[1])
        if count:
            self._run(f"DELETE FROM versions WHERE {where}", (image_id, horizon))
            counts = self._counts_of(image_id)
            counts.versions -= count
            counts.logical_bytes -= file_bytes
        self._run("DELETE FROM ranges WHERE image_id = ? AND end_t <= ?", (image_id, horizon))
        self._run(
            "UPDATE ranges SET start_t = ? WHERE image_id = ? AND start_t < ? AND end_t > ?",
            (horizon, image_id, horizon, horizon),
        )
        return count

    @read
    def referenced_digests(self) -> set[bytes]:
        """Every chunk digest a kept file version of any image references (no holes)."""
        digests: set[bytes] = set()
        for (content,) in self._stream("SELECT content FROM versions WHERE kind = 'file'", ()):
            digests.update(chunk_digests(content))
        return digests

    @read
    def versions_referencing(
        self, digests: Container[bytes], image: str | None = None
    ) -> Iterator[tuple[str, Version]]:
        """(image, version) of every kept file version that references one of `digests`,
        image by image, then by path and time: what a damaged chunk damages."""
        names = [image] if image is not None else [info.name for info in self.images()]
        ids = [(name, self._image_id(name)) for name in names]
        return self._referencing(digests, ids)

    def _referencing(
        self, digests: Container[bytes], ids: list[tuple[str, int]]
    ) -> Iterator[tuple[str, Version]]:
        hit = digests.__contains__
        for name, image_id in ids:
            rows = self._stream(
                f"SELECT {_COLUMNS} FROM versions WHERE image_id = ? AND kind = 'file'"
                " ORDER BY path, valid_from",
                (image_id,),
            )
            for row in rows:
                if any(map(hit, chunk_digests(row[5]))):
                    yield name, Version(*row)
