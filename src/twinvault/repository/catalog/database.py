"""The catalog's database: one connection, its transactions, schema and image counters.

`CatalogDatabase` is the plumbing under `Catalog` (``catalog.py``, the temporal logic):
statements in the `?` style through a `Dialect`, one transaction per journal batch,
driver failures turned into CATALOG_UNAVAILABLE, the image name -> id cache, and the image
counters (`ImageInfo`) that every write adjusts in memory and writes once at commit.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, NoReturn, ParamSpec, TypeVar

from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.repository.catalog.dialect import DbConnection, Dialect, Row
from twinvault.repository.catalog.model import DEFAULT_CDP_DAYS
from twinvault.repository.catalog.schema import CONTENT_TABLES, SCHEMA_VERSION, schema_statements

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
D = TypeVar("D", bound="CatalogDatabase")

STATISTICS_FIRST = 2000  # versions written before the first refresh of the statistics


@dataclass(slots=True)
class _Counts:
    """Changes to one image's counters in the open transaction, written at commit."""

    versions: int = 0
    live_files: int = 0
    live_bytes: int = 0
    logical_bytes: int = 0

    def close(self, kind: str, size: int, dropped: bool) -> None:
        """A live version closes; `dropped`: it was zero-length and is deleted."""
        if kind == "file":
            self.live_files -= 1
            self.live_bytes -= size
            if dropped:
                self.logical_bytes -= size
        if dropped:
            self.versions -= 1

    def open(self, kind: str, size: int) -> None:
        self.versions += 1
        if kind == "file":
            self.live_files += 1
            self.live_bytes += size
            self.logical_bytes += size


def write(method: Callable[Concatenate[D, P], R]) -> Callable[Concatenate[D, P], R]:
    """A write: joins the open transaction, or is one transaction by itself."""

    @functools.wraps(method)
    def wrapper(self: D, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if not self._in_tx:
            with self.transaction():
                return wrapper(self, *args, **kwargs)
        try:
            return method(self, *args, **kwargs)
        except Exception as e:
            # It may have done part of its work: the transaction must not commit.
            self._doomed = True
            self._raise_translated(e)

    return wrapper


def read(method: Callable[Concatenate[D, P], R]) -> Callable[Concatenate[D, P], R]:
    """A read: database failures become CATALOG_UNAVAILABLE."""

    @functools.wraps(method)
    def wrapper(self: D, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except Exception as e:
            self._raise_translated(e)

    return wrapper


class CatalogDatabase:
    """One catalog database connection; `Catalog` adds what the rows mean."""

    def __init__(self, dialect: Dialect, conn: DbConnection) -> None:
        self._d = dialect
        self._conn = conn
        self._cur = conn.cursor()
        self._in_tx = False
        self._closed = False
        self._image_ids: dict[str, int] = {}
        self._counts: dict[int, _Counts] = {}
        # A subclass holds writes back to send them together (`_settle`); every statement
        # sends them first, so nothing ever reads around them.
        self._unsettled = False
        self._doomed = False  # a write failed inside the open transaction
        # Versions written since the planner's statistics were refreshed, and how many
        # more trigger the next refresh (see `_keep_statistics`).
        self._written = 0
        self._next_statistics = STATISTICS_FIRST
        self._init_schema()

    @property
    def location(self) -> str:
        """Where the catalog lives (a path or a conninfo without its password)."""
        return self._d.location

    @property
    def dialect(self) -> str:
        return self._d.name

    # -- plumbing ------------------------------------------------------------------------

    def _raise_translated(self, e: Exception) -> NoReturn:
        """Raise `e`, as CATALOG_UNAVAILABLE if the database failed us."""
        if isinstance(e, TwinvaultError) or not self._d.is_unavailable(e):
            raise e
        raise TwinvaultError(errors.CATALOG_UNAVAILABLE, f"{self._d.location}: {e}") from e

    def _settle(self) -> None:
        """Send the writes held back (none here; `Catalog` holds puts back)."""
        self._unsettled = False

    def _discard(self) -> None:
        """Forget the writes held back: the transaction is being rolled back."""
        self._unsettled = False

    def _flush(self) -> None:
        """`_settle`; a failure dooms the open transaction (held-back writes are lost)."""
        try:
            self._settle()
        except BaseException:
            self._doomed = True
            raise

    def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute a statement; its row count."""
        if self._unsettled:
            self._flush()
        self._cur.execute(self._d.sql(sql), params)
        return self._cur.rowcount

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        if self._unsettled:
            self._flush()
        self._cur.execute(self._d.sql(sql), params)
        rows = self._cur.fetchall()
        return tuple(rows[0]) if rows else None

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        if self._unsettled:
            self._flush()
        self._cur.execute(self._d.sql(sql), params)
        return [tuple(r) for r in self._cur.fetchall()]

    def _stream(self, sql: str, params: Sequence[Any]) -> Iterator[Row]:
        """Rows of a large result as they are consumed, failures translated."""
        if self._unsettled:
            self._flush()
        return self._rows(sql, params)

    def _rows(self, sql: str, params: Sequence[Any]) -> Iterator[Row]:
        try:
            yield from self._d.stream(self._conn, self._d.sql(sql), params)
        except Exception as e:
            self._raise_translated(e)

    def _init_schema(self) -> None:
        with self.transaction():
            for statement in schema_statements(self._d):
                self._run(statement)
            self._run(
                "INSERT INTO catalog_settings (name, value) VALUES ('schema_version', ?)"
                " ON CONFLICT (name) DO NOTHING",
                (SCHEMA_VERSION,),
            )
            row = self._one("SELECT value FROM catalog_settings WHERE name = 'schema_version'")
            if row is None or row[0] != SCHEMA_VERSION:
                raise TwinvaultError(
                    errors.CATALOG_UNAVAILABLE,
                    f"{self._d.location}: schema version {row and row[0]}, this twinvault reads "
                    f"{SCHEMA_VERSION} (move it aside; the catalog is rebuilt from the journal)",
                )

    def _image_id(self, image: str) -> int:
        """The id of an existing image; IMAGE_NOT_FOUND otherwise."""
        image_id = self._image_ids.get(image)
        if image_id is None:
            row = self._one("SELECT id FROM images WHERE name = ?", (image,))
            if row is None:
                raise TwinvaultError(errors.IMAGE_NOT_FOUND, image)
            image_id = self._image_ids[image] = int(row[0])
        return image_id

    def _writable_image_id(self, image: str) -> int:
        """The id of an image, created with the default settings if it is new: a journal
        record is applied whatever came before it."""
        image_id = self._image_ids.get(image)
        if image_id is None:
            if not image:
                raise ValueError("an image needs a name")
            self._run(
                "INSERT INTO images (name, cdp_days) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                (image, DEFAULT_CDP_DAYS),
            )
            image_id = self._image_id(image)
        return image_id

    def _counts_of(self, image_id: int) -> _Counts:
        counts = self._counts.get(image_id)
        if counts is None:
            counts = self._counts[image_id] = _Counts()
        return counts

    def _write_counts(self) -> None:
        if self._unsettled:
            self._flush()  # it changes the counts
        for image_id, c in self._counts.items():
            self._written += max(c.versions, 0)
            self._run(
                "UPDATE images SET versions = versions + ?, live_files = live_files + ?,"
                " live_bytes = live_bytes + ?, logical_bytes = logical_bytes + ? WHERE id = ?",
                (c.versions, c.live_files, c.live_bytes, c.logical_bytes, image_id),
            )
        self._counts.clear()

    def _keep_statistics(self) -> None:
        """Refresh the planner's statistics when the versions have grown a fifth since the
        last refresh (and at STATISTICS_FIRST versions): a fresh PostgreSQL table has none
        until autovacuum comes by, and without them the planner scans every live version
        of the image for each batch of puts. Geometric steps keep the total cost small."""
        if self._written < self._next_statistics:
            return
        self._written = 0
        try:
            self._d.refresh_statistics(self._conn)
            row = self._one("SELECT COALESCE(SUM(versions), 0) FROM images")
        except Exception as e:
            # The commit stands; only the planner's statistics are stale. A database that
            # is really gone fails the next call with CATALOG_UNAVAILABLE.
            log.warning("catalog %s: refreshing planner statistics failed: %s", self._d.location, e)
            return
        self._next_statistics = max(STATISTICS_FIRST, int(row[0]) // 5 if row else 0)

    # -- transactions --------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic transaction: every write inside commits together or not at all.

        Transactions do not nest. A write called outside one is a transaction by itself.
        """
        if self._in_tx:
            raise RuntimeError("catalog transactions do not nest")
        if self._closed:
            raise RuntimeError("catalog is closed")
        try:
            self._run(self._d.begin_sql)
        except Exception as e:
            self._raise_translated(e)
        self._in_tx = True
        self._doomed = False
        try:
            yield
            if self._doomed:
                raise RuntimeError("a catalog write failed inside this transaction: rolled back")
            self._write_counts()
            self._run("COMMIT")
        except BaseException as e:
            self._abandon()
            if isinstance(e, Exception):
                self._raise_translated(e)
            raise
        finally:
            self._in_tx = False
        self._keep_statistics()

    def _abandon(self) -> None:
        """Roll back; forget what the transaction cached."""
        self._discard()
        self._counts.clear()
        self._image_ids.clear()  # it may hold an image created by this transaction
        try:
            self._run("ROLLBACK")
        except Exception as e:
            # The engine may have rolled back already (SQLite does on some I/O errors)
            # or the connection is gone; the error that brought us here is the one raised.
            log.debug("catalog rollback failed: %s", e)

    # -- the journal position, reset, integrity --------------------------------------------

    @write
    def set_position(self, position: int) -> None:
        """The journal position the catalog has applied; set in the records' transaction."""
        self._run(
            "INSERT INTO catalog_settings (name, value) VALUES ('position', ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (position,),
        )

    @read
    def position(self) -> int:
        row = self._one("SELECT value FROM catalog_settings WHERE name = 'position'")
        return int(row[0]) if row else 0

    @write
    def reset(self) -> None:
        """Drop every image, version, snapshot and range and the position: an empty catalog
        for a rebuild from the journal. Other open catalogs of this database must reopen."""
        for table in CONTENT_TABLES:
            self._run(self._d.clear_sql(table))
        self._run("DELETE FROM catalog_settings WHERE name = 'position'")
        self._image_ids.clear()
        self._counts.clear()

    def integrity_ok(self) -> bool:
        """The database answers and its structure is sound (SQLite: PRAGMA quick_check)."""
        try:
            return self._d.integrity_ok(self._conn)
        except Exception as e:
            log.warning("catalog %s failed its integrity check: %s", self._d.location, e)
            return False

    def close(self) -> None:
        """Close the connection; an open transaction is rolled back. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._cur.close()
        finally:
            self._conn.close()

    def __enter__(self: D) -> D:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
