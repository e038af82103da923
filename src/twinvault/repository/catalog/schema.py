"""The catalog's tables and indexes (``docs/catalog.md``), written once for every dialect.

Version 1. A database holding another version is refused (CATALOG_UNAVAILABLE): the
catalog is a view of the journal, so the cure is a fresh database and a rebuild, never an
in-place guess.
"""

from __future__ import annotations

from typing import Final

from twinvault.repository.catalog.dialect import Dialect
from twinvault.repository.catalog.model import LIVE

SCHEMA_VERSION: Final = 1


def schema_statements(d: Dialect) -> list[str]:
    """CREATE statements, each safe to run again on a catalog that has it."""
    return [
        # name -> integer: schema_version, position (the journal position applied).
        """CREATE TABLE IF NOT EXISTS catalog_settings (
            name TEXT PRIMARY KEY,
            value BIGINT NOT NULL)""",
        # The counters are kept by every write in the same transaction, so images() is
        # O(images), not a scan of every version.
        f"""CREATE TABLE IF NOT EXISTS images (
            id {d.identity},
            name TEXT NOT NULL UNIQUE,
            cdp_days DOUBLE PRECISION NOT NULL,
            versions BIGINT NOT NULL DEFAULT 0,
            live_files BIGINT NOT NULL DEFAULT 0,
            live_bytes BIGINT NOT NULL DEFAULT 0,
            logical_bytes BIGINT NOT NULL DEFAULT 0,
            next_snapshot BIGINT NOT NULL DEFAULT 1)""",
        # valid_to = LIVE while open. The key orders an image's versions by path, then
        # time: "the image at T" and "a path's history" are range scans of it.
        f"""CREATE TABLE IF NOT EXISTS versions (
            image_id BIGINT NOT NULL,
            path {d.blob} NOT NULL,
            valid_from BIGINT NOT NULL,
            valid_to BIGINT NOT NULL,
            kind TEXT NOT NULL,
            meta {d.blob} NOT NULL,
            content {d.blob} NOT NULL,
            size BIGINT NOT NULL,
            link {d.blob} NOT NULL,
            PRIMARY KEY (image_id, path, valid_from)){d.table_options}""",
        # Live versions only: what every put, delete and rename looks up, and the live
        # listing. Unique: at most one live version per path, enforced by the database.
        # Partial, so closing a version removes an entry instead of moving it.
        f"""CREATE UNIQUE INDEX IF NOT EXISTS versions_live
            ON versions (image_id, path) WHERE valid_to = {LIVE}""",
        """CREATE TABLE IF NOT EXISTS snapshots (
            image_id BIGINT NOT NULL,
            id BIGINT NOT NULL,
            time BIGINT NOT NULL,
            type TEXT NOT NULL,
            status TEXT NOT NULL,
            PRIMARY KEY (image_id, id))""",
        # Prune asks "does an Ok snapshot fall inside this version?" per candidate.
        "CREATE INDEX IF NOT EXISTS snapshots_time ON snapshots (image_id, time)",
        # end_t = LIVE while open; start_t <= T < end_t is valid for recovery.
        """CREATE TABLE IF NOT EXISTS ranges (
            image_id BIGINT NOT NULL,
            start_t BIGINT NOT NULL,
            end_t BIGINT NOT NULL,
            PRIMARY KEY (image_id, start_t))""",
    ]


# What reset empties (catalog_settings keeps the schema version).
CONTENT_TABLES: Final = ("versions", "snapshots", "ranges", "images")
