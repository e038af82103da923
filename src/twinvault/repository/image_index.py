"""The repository's index of its live images: which chunks make up each image file.

It lets the repository tell a source which chunks it already holds (so only new
chunks travel) and find a chunk's bytes in the image to rebuild a changed file.
The index is a cache over the image, never the truth: an entry counts only while
its ``size`` and ``mtime_ns`` match the file on disk, so a crash between writing a
file and committing the index costs a resend, never a wrong byte.

SQLite in WAL mode; one connection, used by the applier's thread only. The schema is
documented in ``docs/formats.md`` (``image index``, version 1).
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

SCHEMA_VERSION = 1
HASH_BYTES = 32
_PIECE = struct.Struct("<32sQI")  # hash, offset, length: one chunk of a file


@dataclass(frozen=True, slots=True)
class ChunkPiece:
    digest: bytes
    offset: int
    length: int


def pack_pieces(pieces: Iterable[ChunkPiece]) -> bytes:
    return b"".join(_PIECE.pack(p.digest, p.offset, p.length) for p in pieces)


def unpack_pieces(blob: bytes) -> list[ChunkPiece]:
    return [ChunkPiece(d, o, n) for d, o, n in _PIECE.iter_unpack(blob)]


def digests_of(blob: bytes) -> bytes:
    """The concatenated chunk hashes of a packed piece list (what a manifest carries)."""
    size = _PIECE.size
    if len(blob) == size:  # one chunk: most files of a tree of small files
        return blob[:HASH_BYTES]
    return b"".join(blob[i : i + HASH_BYTES] for i in range(0, len(blob), size))


# (path, size, mtime_ns, pieces): a row of ``files`` as ``files_under`` returns it.
IndexedRow = tuple[bytes, int, int, bytes]


class IndexedFile(NamedTuple):
    # A tuple, not a dataclass: a manifest builds one per file of the image.
    size: int
    mtime_ns: int
    pieces_blob: bytes


class ImageIndex:
    def __init__(self, db_path: Path) -> None:
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit is durable once the WAL is synced; the receiver's group commit
        # calls syncfs on this filesystem before it acknowledges anything.
        self._db.execute("PRAGMA synchronous=NORMAL")
        # Two sessions of one image (two jobs of one source) write in turn.
        self._db.execute("PRAGMA busy_timeout=60000")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
            CREATE TABLE IF NOT EXISTS files(
                path BLOB PRIMARY KEY, size INTEGER, mtime_ns INTEGER, pieces BLOB) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS chunk_locations(
                digest BLOB PRIMARY KEY, path BLOB, offset INTEGER, length INTEGER) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS streams(
                job TEXT PRIMARY KEY, epoch INTEGER, last_seq INTEGER);
            """
        )
        self._db.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES('schema_version', ?)", (str(SCHEMA_VERSION),)
        )
        self._in_tx = False
        # Rows of recorded files not yet written: written together (two statements for a
        # run of files rather than two per file) before anything reads or changes the index.
        self._files: list[tuple[bytes, int, int, bytes]] = []
        self._locations: list[tuple[bytes, bytes, int, int]] = []

    def close(self) -> None:
        self.commit()
        self._db.close()

    def _begin(self) -> None:
        if self._files:
            self._write_files()
        if not self._in_tx:
            self._db.execute("BEGIN")
            self._in_tx = True

    def _write_files(self) -> None:
        files, self._files = self._files, []
        locations, self._locations = self._locations, []
        if not self._in_tx:
            self._db.execute("BEGIN")
            self._in_tx = True
        self._db.executemany(
            "INSERT OR REPLACE INTO files(path, size, mtime_ns, pieces) VALUES(?,?,?,?)", files
        )
        self._db.executemany(
            "INSERT OR REPLACE INTO chunk_locations(digest, path, offset, length) VALUES(?,?,?,?)",
            locations,
        )

    def _read(self) -> sqlite3.Connection:
        """The connection, with every recorded row written (reads see them)."""
        if self._files:
            self._write_files()
        return self._db

    def commit(self) -> None:
        if self._files:
            self._write_files()
        if self._in_tx:
            self._db.execute("COMMIT")
            self._in_tx = False

    # -- files -------------------------------------------------------------------

    def record_file(self, path: bytes, size: int, mtime_ns: int, pieces: list[ChunkPiece]) -> None:
        self._files.append((path, size, mtime_ns, pack_pieces(pieces)))
        self._locations.extend((p.digest, path, p.offset, p.length) for p in pieces)

    def update_mtime(self, path: bytes, mtime_ns: int) -> None:
        self._begin()
        self._db.execute("UPDATE files SET mtime_ns=? WHERE path=?", (mtime_ns, path))

    def forget(self, path: bytes) -> None:
        """Forget a path and everything under it (delete of a file or a tree)."""
        self._begin()
        self._db.execute(
            "DELETE FROM files WHERE path=? OR (path >= ? AND path < ?)",
            (path, path + b"/", path + b"0"),
        )

    def move(self, old: bytes, new: bytes) -> None:
        """Re-key a renamed path and its descendants; chunk locations follow lazily."""
        self._begin()
        self.forget(new)
        rows = self._db.execute(
            "SELECT path, size, mtime_ns, pieces FROM files WHERE path=? OR (path >= ? AND path < ?)",
            (old, old + b"/", old + b"0"),
        ).fetchall()
        self.forget(old)
        for path, size, mtime_ns, pieces in rows:
            moved = new + path[len(old) :]
            self._db.execute(
                "INSERT OR REPLACE INTO files(path, size, mtime_ns, pieces) VALUES(?,?,?,?)",
                (moved, size, mtime_ns, pieces),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO chunk_locations(digest, path, offset, length) VALUES(?,?,?,?)",
                [(p.digest, moved, p.offset, p.length) for p in unpack_pieces(pieces)],
            )

    def file(self, path: bytes) -> IndexedFile | None:
        row = (
            self._read().execute("SELECT size, mtime_ns, pieces FROM files WHERE path=?", (path,)).fetchone()
        )
        return IndexedFile(row[0], row[1], row[2]) if row else None

    def files_under(self, prefix: bytes) -> dict[bytes, IndexedRow]:
        """Every file at or under ``prefix``, by path: the rows as SQLite gives them (a
        manifest loads one per file of the image; a named tuple each cost it ~0.15 s
        per 50,000 files)."""
        rows = self._read().execute(
            "SELECT path, size, mtime_ns, pieces FROM files WHERE path=? OR (path >= ? AND path < ?)",
            (prefix, prefix.rstrip(b"/") + b"/", prefix.rstrip(b"/") + b"0"),
        )
        return {r[0]: r for r in rows}

    def location(self, digest: bytes) -> tuple[bytes, int, int] | None:
        row = (
            self._read()
            .execute("SELECT path, offset, length FROM chunk_locations WHERE digest=?", (digest,))
            .fetchone()
        )
        return (row[0], row[1], row[2]) if row else None

    # -- streams: where each job's op stream stands ------------------------------

    def stream_position(self, job: str) -> tuple[int, int]:
        row = self._read().execute("SELECT epoch, last_seq FROM streams WHERE job=?", (job,)).fetchone()
        return (row[0], row[1]) if row else (0, 0)

    def set_stream_position(self, job: str, epoch: int, last_seq: int, settled_ns: int | None = None) -> None:
        """``settled_ns``: every change of the image made before this wall-clock time is
        committed with this position (in the image, this index and the history)."""
        self._begin()
        self._db.execute(
            "INSERT OR REPLACE INTO streams(job, epoch, last_seq) VALUES(?,?,?)", (job, epoch, last_seq)
        )
        if settled_ns is not None:
            self._db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", (f"settled:{job}", str(settled_ns))
            )

    def settled(self, job: str) -> int | None:
        """The ``settled_ns`` of the job's last commit: an entry of the image changed
        since (its ctime says so) may have reached the image but not the history. None
        when unknown (an index older than the field): then nothing can be told apart."""
        row = self._read().execute("SELECT value FROM meta WHERE key=?", (f"settled:{job}",)).fetchone()
        if row is not None:
            return int(row[0])
        return 0 if self.stream_position(job) == (0, 0) else None

    def forget_stream(self, job: str) -> None:
        self._begin()
        self._db.execute("DELETE FROM streams WHERE job=?", (job,))
        self._db.execute("DELETE FROM meta WHERE key=?", (f"settled:{job}",))
