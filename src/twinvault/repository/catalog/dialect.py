"""The few ways SQLite and PostgreSQL differ, so the catalog's logic is written once.

`Catalog` speaks DB-API with `?` placeholders and portable SQL (``ON CONFLICT ... DO
UPDATE``, ``RETURNING``, ``NULLIF``, partial indexes: both engines have them); a dialect
supplies the rest: how to connect, the placeholder, blob and identity column types, blob
concatenation, how to stream a large result without holding it, how to begin a write
transaction, how to empty a table and how to check the database. `open_dialect` picks one
from the catalog URL.
"""

from __future__ import annotations

import abc
import itertools
import sqlite3
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Protocol, cast

from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError

Row = tuple[Any, ...]
# Rows fetched per round trip when a large result streams from PostgreSQL.
STREAM_ROWS = 2000


class DbCursor(Protocol):
    """The part of a DB-API cursor the catalog uses (sqlite3 and psycopg both fit)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, query: Any, params: Any = ..., /) -> Any: ...

    def executemany(self, query: Any, params_seq: Any, /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...

    def close(self) -> None: ...


class DbConnection(Protocol):
    def cursor(self) -> DbCursor: ...

    def close(self) -> None: ...


class Dialect(abc.ABC):
    """SQL and connection differences between the engines; one instance per catalog."""

    name: ClassVar[str]
    blob: ClassVar[str]  # column type of opaque bytes
    identity: ClassVar[str]  # an auto-numbered integer primary key column
    table_options: ClassVar[str] = ""  # after the versions table's closing parenthesis
    begin_sql: ClassVar[str] = "BEGIN"
    live_index_hint: ClassVar[str] = ""  # after "versions" where live versions are read

    def __init__(self, location: str) -> None:
        self.location = location  # for messages: never holds a password

    @abc.abstractmethod
    def connect(self) -> DbConnection: ...

    def sql(self, text: str) -> str:
        """The statement in the driver's placeholder style (the catalog writes `?`)."""
        return text

    def concat(self, left: str, right: str) -> str:
        """A blob expression: the bytes of `left` followed by those of `right`."""
        return f"{left} || {right}"

    def clear_sql(self, table: str) -> str:
        return f"DELETE FROM {table}"

    def stream(self, conn: DbConnection, sql: str, params: Sequence[Any]) -> Iterator[Row]:
        """Rows of a possibly huge result, fetched as they are consumed."""
        cur = conn.cursor()
        try:
            cur.execute(sql, params)
            yield from cur
        finally:
            cur.close()

    @abc.abstractmethod
    def integrity_ok(self, conn: DbConnection) -> bool: ...

    def refresh_statistics(self, conn: DbConnection) -> None:  # noqa: B027 (SQLite needs nothing)
        """Bring the query planner's view of the tables up to date (outside a transaction)."""

    @abc.abstractmethod
    def is_unavailable(self, exc: BaseException) -> bool:
        """The database cannot serve us (gone, locked, damaged, disk full) rather than the
        catalog asking something wrong: shown to users as CATALOG_UNAVAILABLE."""
        ...


class SqliteDialect(Dialect):
    name = "sqlite"
    blob = "BLOB"
    # A column declared exactly INTEGER PRIMARY KEY is the rowid: numbered for free;
    # AUTOINCREMENT so an id is never reused after a reset (a reader's cached id would
    # silently name another image).
    identity = "INTEGER PRIMARY KEY AUTOINCREMENT"
    # Versions are read by (image, path, valid_from) far more than by anything else:
    # clustering the table on that key makes "the image at T" one ordered scan with no
    # lookups, and a put one b-tree write plus the live index.
    table_options = " WITHOUT ROWID"
    live_index_hint = " INDEXED BY versions_live"
    # Take the write lock at BEGIN: a deferred transaction that later needs to write can
    # fail with SQLITE_BUSY (no waiting) if another connection wrote in between.
    begin_sql = "BEGIN IMMEDIATE"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path

    def connect(self) -> DbConnection:
        # isolation_level=None: the module never opens transactions by itself; the catalog
        # says BEGIN and COMMIT. check_same_thread=False: a catalog may be handed from one
        # thread to another (never used by two at once).
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit may be lost on power failure, never half applied; the
            # catalog is a view of the fsynced journal, and the journal position stored in
            # the same transaction makes the replay at start exact.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute("PRAGMA cache_size=-65536")  # 64 MiB of page cache
        except BaseException:
            conn.close()
            raise
        return cast(DbConnection, conn)

    # refresh_statistics: nothing. Every query the planner could get wrong names its
    # index (INDEXED BY) or has only one sensible plan; ANALYZE would only cost time.

    def concat(self, left: str, right: str) -> str:
        # SQLite's || yields TEXT even from blobs, and TEXT sorts before every BLOB: cast
        # back so a renamed path compares and orders like every other path. The bytes are
        # kept as they are (no UTF-8 check), and substr() of a blob counts bytes.
        return f"CAST({left} || {right} AS BLOB)"

    def integrity_ok(self, conn: DbConnection) -> bool:
        cur = conn.cursor()
        try:
            rows = cur.execute("PRAGMA quick_check").fetchall()
        finally:
            cur.close()
        return [tuple(r) for r in rows] == [("ok",)]

    def is_unavailable(self, exc: BaseException) -> bool:
        # OperationalError: locked, I/O error, disk full, cannot open. A bare
        # DatabaseError: "file is not a database", "database disk image is malformed".
        # IntegrityError and ProgrammingError are the catalog's own bugs: not masked.
        return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


class PostgresDialect(Dialect):
    name = "postgresql"
    blob = "BYTEA"
    identity = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"

    def __init__(self, conninfo: str) -> None:
        super().__init__(_redact(conninfo))
        self.conninfo = conninfo
        self._cursor_names = itertools.count(1)
        self._sql: dict[str, str] = {}

    def connect(self) -> DbConnection:
        try:
            import psycopg
        except ImportError as e:
            raise TwinvaultError(
                errors.CATALOG_UNAVAILABLE, "psycopg is not installed (pip install 'twinvault[postgres]')"
            ) from e
        # autocommit: reads outside a write transaction take no transaction at all (a
        # reader left idle must not hold one open); writes say BEGIN and COMMIT.
        return cast(DbConnection, psycopg.connect(self.conninfo, autocommit=True))

    def sql(self, text: str) -> str:
        converted = self._sql.get(text)
        if converted is None:
            # Catalog statements carry no literal ? or %, so a plain replace is exact.
            converted = self._sql[text] = text.replace("?", "%s")
        return converted

    def clear_sql(self, table: str) -> str:
        return f"TRUNCATE {table}"

    def stream(self, conn: DbConnection, sql: str, params: Sequence[Any]) -> Iterator[Row]:
        # A server-side cursor fetches STREAM_ROWS at a time instead of the whole result.
        # WITH HOLD lets it live outside a transaction: the result is one consistent
        # snapshot, the connection stays free for other statements while it is read, and
        # no transaction is left open if the reader stops half way.
        pg = cast(Any, conn)
        with pg.cursor(name=f"twinvault_stream_{next(self._cursor_names)}", withhold=True) as cur:
            cur.itersize = STREAM_ROWS
            cur.execute(sql, params)
            yield from cur

    def refresh_statistics(self, conn: DbConnection) -> None:
        # ANALYZE samples a bounded number of rows: milliseconds whatever the table size.
        cur = conn.cursor()
        try:
            cur.execute("ANALYZE versions")
        finally:
            cur.close()

    def integrity_ok(self, conn: DbConnection) -> bool:
        # PostgreSQL checks its own pages; what can be wrong from here is a database that
        # is not (or no longer) a catalog. One cheap query that touches every table.
        cur = conn.cursor()
        try:
            cur.execute(
                "SELECT (SELECT count(*) FROM catalog_settings WHERE name = 'schema_version'),"
                " (SELECT count(*) FROM (SELECT 1 FROM versions LIMIT 1) v),"
                " (SELECT count(*) FROM (SELECT 1 FROM images LIMIT 1) i),"
                " (SELECT count(*) FROM (SELECT 1 FROM snapshots LIMIT 1) s),"
                " (SELECT count(*) FROM (SELECT 1 FROM ranges LIMIT 1) r)"
            )
            row = cur.fetchone()
        finally:
            cur.close()
        return row is not None and row[0] == 1

    def is_unavailable(self, exc: BaseException) -> bool:
        import psycopg

        # OperationalError: the server is gone, refuses us, or is shutting down;
        # InterfaceError: our side of the connection is closed or broken.
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def open_dialect(url: str) -> Dialect:
    """The dialect of a catalog URL: ``sqlite:///abs/path.db`` or ``postgresql://...``."""
    if url.startswith("sqlite://"):
        path = url[len("sqlite://") :]
        if not path.startswith("/"):
            raise TwinvaultError(errors.CATALOG_UNAVAILABLE, f"SQLite catalog path must be absolute: {url!r}")
        return SqliteDialect(path)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDialect(url)
    raise TwinvaultError(
        errors.CATALOG_UNAVAILABLE,
        f"unknown catalog URL {_redact(url)!r} (expected sqlite:///path or postgresql://...)",
    )


def _redact(url: str) -> str:
    """The URL without its password (in the user part or as a parameter), for messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        password = parts.password
    except ValueError:
        return "<unparsable catalog URL>"
    netloc = parts.netloc
    if password is not None:
        netloc = netloc.replace(f":{password}@", ":***@", 1)
    if any(key == "password" for key, _ in query):
        query = [(key, "***" if key == "password" else value) for key, value in query]
        return urllib.parse.urlunsplit(
            parts._replace(netloc=netloc, query=urllib.parse.urlencode(query, safe="/*"))
        )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
