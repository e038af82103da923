"""The repository's temporal catalog: versions of every path by time, snapshots, ranges.

``docs/catalog.md`` is the schema and its invariants; ``docs/history.md`` how the catalog
is built from the journal and what reads it.
"""

from twinvault.repository.catalog.catalog import Catalog, open_catalog
from twinvault.repository.catalog.model import (
    DEFAULT_CDP_DAYS,
    FAILED,
    KINDS,
    LIVE,
    OK,
    SCHEDULED,
    USER_REQUEST,
    ImageInfo,
    Range,
    Snapshot,
    Version,
    format_instant,
)

__all__ = [
    "DEFAULT_CDP_DAYS",
    "FAILED",
    "KINDS",
    "LIVE",
    "OK",
    "SCHEDULED",
    "USER_REQUEST",
    "Catalog",
    "ImageInfo",
    "Range",
    "Snapshot",
    "Version",
    "format_instant",
    "open_catalog",
]
