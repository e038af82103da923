"""The index: which pack holds each blob, and where each pack is (SQLite, WAL, state dir).

Schema version 1:

    meta(key TEXT PRIMARY KEY, value TEXT)              schema_version, store_uuid,
                                                        complete ('1' once it lists every pack)
    packs(id INTEGER PRIMARY KEY, name TEXT UNIQUE,     name = the pack id (32 hex)
          state INTEGER, size INTEGER)                  state: 0 open, 1 sealed (local,
                                                        waiting for the backend),
                                                        2 stored (on the backend),
                                                        3 deleting (superseded by GC)
    blobs(store_id BLOB PRIMARY KEY, digest BLOB,       digest: the plain digest, NULL
          pack INTEGER, offset INTEGER, raw_len INTEGER, when it equals store_id
          stored_len INTEGER, flags INTEGER) WITHOUT ROWID
    blobs_pack ON blobs(pack)

The index is a cache over the packs, never the truth: every pack carries its own list of
blobs (the trailer, or its blob headers), so a missing or damaged index is rebuilt
(`recovery.rebuild_index`). Writes happen in `writing()` transactions on one connection
with `synchronous=NORMAL`: a kill -9 loses nothing committed, a power cut may lose the
last transactions, which recovery restores from the packs (the open pack is rescanned
from the last indexed blob, sealed and uploaded packs are re-read from their trailers).
The one transaction that must survive a power cut before the store acts on it, garbage
collection's, is `writing(durable=True)` (synchronous=FULL). Each reading thread has its
own connection, which WAL lets run beside the writer.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from twinvault.repository.chunkstore.pack import BLOB_HEADER, BlobEntry

SCHEMA_VERSION: Final = 1
OPEN: Final = 0
SEALED: Final = 1
STORED: Final = 2
DELETING: Final = 3

_SCHEMA: Final = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE packs(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, state INTEGER NOT NULL,
                   size INTEGER NOT NULL);
CREATE TABLE blobs(store_id BLOB PRIMARY KEY, digest BLOB, pack INTEGER NOT NULL,
                   offset INTEGER NOT NULL, raw_len INTEGER NOT NULL, stored_len INTEGER NOT NULL,
                   flags INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX blobs_pack ON blobs(pack);
"""
_BLOB_COLUMNS: Final = "store_id, digest, offset, raw_len, stored_len, flags"
_LOOKUP_BATCH: Final = 500  # store ids per query of `locate_many` (SQLite allows 32766 parameters)


class IndexDamaged(Exception):
    """The index file cannot be used: rebuild it from the packs."""


@dataclass(frozen=True, slots=True)
class PackRow:
    id: int
    name: str
    state: int
    size: int


def _entry(row: tuple[bytes, bytes | None, int, int, int, int]) -> BlobEntry:
    store_id, digest, offset, raw_len, stored_len, flags = row
    return BlobEntry(store_id, digest if digest is not None else store_id, offset, raw_len, stored_len, flags)


def _connect(path: Path, read_only: bool = False) -> sqlite3.Connection:
    if read_only:
        # mode=ro: this connection can never write the database (another process owns
        # it); WAL still lets it read beside that process's writer.
        uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
        return sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=30)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


class Index:
    def __init__(
        self, path: Path, store_uuid: bytes, *, integrity_check: bool = False, read_only: bool = False
    ) -> None:
        """Open (or create) the index at `path`; IndexDamaged if it is unusable or another store's.

        `read_only`: for a reader in another process (`reader.StoreReader`): nothing is
        created or written, and an index without tables is IndexDamaged.
        """
        self.path = path
        self.read_only = read_only
        self.complete = False
        self._lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        try:
            self._db = _connect(path, read_only)
        except sqlite3.DatabaseError as exc:
            raise IndexDamaged(str(exc)) from exc
        try:
            self._prepare(store_uuid, integrity_check)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise IndexDamaged(str(exc)) from exc
        except IndexDamaged:
            self._db.close()
            raise

    def _prepare(self, store_uuid: bytes, integrity_check: bool) -> None:
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables and self.read_only:
            raise IndexDamaged("no index tables (the store was never opened)")
        if not tables:
            self._db.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
            self._db.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [("schema_version", str(SCHEMA_VERSION)), ("store_uuid", store_uuid.hex())],
            )
            self.complete = False
            return
        if integrity_check:
            result = self._db.execute("PRAGMA quick_check").fetchone()
            if result is None or result[0] != "ok":
                raise IndexDamaged(f"quick_check: {result[0] if result else 'no answer'}")
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise IndexDamaged(f"schema version {meta.get('schema_version')}")
        if meta.get("store_uuid") != store_uuid.hex():
            raise IndexDamaged("the index belongs to another store")
        self._db.execute("SELECT count(*) FROM packs").fetchone()
        # A rebuild that was cut short must start over, not pass for a whole index.
        self.complete = meta.get("complete") == "1"

    def mark_complete(self) -> None:
        """Record that the index lists every pack (after create, or a finished rebuild)."""
        with self.writing(durable=True):
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('complete', '1')")
        self.complete = True

    def _reader(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = _connect(self.path, self.read_only)
            with self._readers_lock:
                self._readers.append(db)
        return db

    # --- reads (any thread) --------------------------------------------------------------

    def locate(self, store_id: bytes) -> tuple[str, BlobEntry] | None:
        row = (
            self._reader()
            .execute(
                f"SELECT p.name, {_BLOB_COLUMNS} FROM blobs b JOIN packs p ON p.id = b.pack"
                " WHERE b.store_id = ?",
                (store_id,),
            )
            .fetchone()
        )
        return None if row is None else (row[0], _entry(row[1:]))

    def locate_many(self, store_ids: list[bytes]) -> dict[bytes, tuple[str, BlobEntry]]:
        """`locate` of many blobs in a few queries (a read of many chunks would otherwise
        spend a third of its time on one look-up each); the unknown ones are left out."""
        found: dict[bytes, tuple[str, BlobEntry]] = {}
        db = self._reader()
        for at in range(0, len(store_ids), _LOOKUP_BATCH):
            part = store_ids[at : at + _LOOKUP_BATCH]
            rows = db.execute(
                f"SELECT p.name, {_BLOB_COLUMNS} FROM blobs b JOIN packs p ON p.id = b.pack"
                f" WHERE b.store_id IN ({','.join('?' * len(part))})",
                part,
            )
            for row in rows:
                found[row[1]] = (row[0], _entry(row[1:]))
        return found

    def contains_many(self, store_ids: list[bytes]) -> set[bytes]:
        """The store ids of `store_ids` the index holds, in a few queries (a put of many
        chunks would otherwise spend a query on each)."""
        found: set[bytes] = set()
        db = self._reader()
        for at in range(0, len(store_ids), _LOOKUP_BATCH):
            part = store_ids[at : at + _LOOKUP_BATCH]
            rows = db.execute(
                f"SELECT store_id FROM blobs WHERE store_id IN ({','.join('?' * len(part))})", part
            )
            found.update(row[0] for row in rows)
        return found

    def contains(self, store_id: bytes) -> bool:
        return (
            self._reader().execute("SELECT 1 FROM blobs WHERE store_id = ?", (store_id,)).fetchone()
            is not None
        )

    def pack(self, name: str) -> PackRow | None:
        row = (
            self._reader()
            .execute("SELECT id, name, state, size FROM packs WHERE name = ?", (name,))
            .fetchone()
        )
        return None if row is None else PackRow(*row)

    def packs(self, *states: int) -> list[PackRow]:
        sql = "SELECT id, name, state, size FROM packs"
        if states:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
        return [PackRow(*r) for r in self._reader().execute(sql + " ORDER BY id", states)]

    def blobs_in(self, pack_id: int) -> list[BlobEntry]:
        rows = self._reader().execute(
            f"SELECT {_BLOB_COLUMNS} FROM blobs WHERE pack = ? ORDER BY offset", (pack_id,)
        )
        return [_entry(r) for r in rows]

    def iter_blobs(self) -> Iterator[tuple[int, BlobEntry]]:
        """Every (pack id, blob), pack by pack."""
        cursor = self._reader().execute(f"SELECT pack, {_BLOB_COLUMNS} FROM blobs ORDER BY pack, offset")
        while rows := cursor.fetchmany(4096):
            for r in rows:
                yield r[0], _entry(r[1:])

    def totals(self) -> tuple[int, int]:
        """(blob count, sum of raw lengths)."""
        count, raw = (
            self._reader().execute("SELECT count(*), coalesce(sum(raw_len), 0) FROM blobs").fetchone()
        )
        return int(count), int(raw)

    # --- writes ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self, *, durable: bool = False) -> Iterator[IndexWriter]:
        """One transaction, committed when the block ends without error; `durable`: synced
        to disk (synchronous=FULL) before the block returns, else only safe from a kill."""
        if self.read_only:
            raise RuntimeError(f"index {self.path} is open read-only")
        with self._lock:
            if durable:
                self._db.execute("PRAGMA synchronous=FULL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield IndexWriter(self._db)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if durable:
                    self._db.execute("PRAGMA synchronous=NORMAL")

    def close(self) -> None:
        with self._readers_lock:
            for db in self._readers:
                db.close()
            self._readers.clear()
        with self._lock:
            self._db.close()


class IndexWriter:
    """The writes of one `Index.writing()` transaction (reads here see its own writes)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def pack(self, name: str) -> PackRow | None:
        row = self._db.execute("SELECT id, name, state, size FROM packs WHERE name = ?", (name,)).fetchone()
        return None if row is None else PackRow(*row)

    def add_pack(self, name: str, state: int, size: int) -> int:
        """The pack's row id, adding the row if it is new (an existing row keeps its state)."""
        row = self.pack(name)
        if row is not None:
            return row.id
        cursor = self._db.execute(
            "INSERT INTO packs(name, state, size) VALUES (?, ?, ?)", (name, state, size)
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def set_pack(self, name: str, state: int, size: int | None = None) -> None:
        if size is None:
            self._db.execute("UPDATE packs SET state = ? WHERE name = ?", (state, name))
        else:
            self._db.execute("UPDATE packs SET state = ?, size = ? WHERE name = ?", (state, size, name))

    def delete_pack(self, name: str) -> None:
        row = self.pack(name)
        if row is not None:
            self._db.execute("DELETE FROM blobs WHERE pack = ?", (row.id,))
            self._db.execute("DELETE FROM packs WHERE id = ?", (row.id,))

    def add_blobs(self, pack_id: int, entries: Iterable[BlobEntry], *, replace: bool = False) -> None:
        """Index blobs of a pack; a store id already indexed keeps its place unless `replace`."""
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        self._db.executemany(
            f"{verb} INTO blobs(store_id, digest, pack, offset, raw_len, stored_len, flags)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    e.store_id,
                    None if e.digest == e.store_id else e.digest,
                    pack_id,
                    e.offset,
                    e.raw_len,
                    e.stored_len,
                    e.flags,
                )
                for e in entries
            ],
        )

    def missing(self, store_ids: Iterable[bytes]) -> list[bytes]:
        """Those of `store_ids` the index does not hold."""
        out = []
        for sid in store_ids:
            if self._db.execute("SELECT 1 FROM blobs WHERE store_id = ?", (sid,)).fetchone() is None:
                out.append(sid)
        return out

    def move_blob(self, store_id: bytes, old_pack: int, new_pack: int, offset: int) -> None:
        self._db.execute(
            "UPDATE blobs SET pack = ?, offset = ? WHERE store_id = ? AND pack = ?",
            (new_pack, offset, store_id, old_pack),
        )

    def delete_blob(self, store_id: bytes, pack_id: int) -> int:
        return self._db.execute(
            "DELETE FROM blobs WHERE store_id = ? AND pack = ?", (store_id, pack_id)
        ).rowcount

    def committed_end(self, pack_id: int) -> int:
        """Where the last indexed blob of a pack ends (0 if it has none)."""
        row = self._db.execute(
            "SELECT max(offset + ? + stored_len) FROM blobs WHERE pack = ?", (BLOB_HEADER.size, pack_id)
        ).fetchone()
        return int(row[0] or 0)
