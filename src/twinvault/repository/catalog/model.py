"""What the catalog hands out: versions, snapshots, ranges, image summaries, and instants.

Plain frozen values, no database in sight, so point-in-time readers, `repo check` and the
API can hold them after the catalog is closed. Times are the repository's clock: integer
nanoseconds since the Unix epoch, UTC.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Final

# valid_to of an open (live) version and end of an open range. Stored as the largest
# int64 rather than NULL so "live" is one equality an index can serve and "valid at T"
# is one comparison (valid_to > T) with no NULL case; handed out as None.
LIVE: Final = 2**63 - 1

KINDS: Final = frozenset({"file", "dir", "symlink", "special"})
USER_REQUEST: Final = "User Request"
SCHEDULED: Final = "Scheduled"
SNAPSHOT_TYPES: Final = frozenset({USER_REQUEST, SCHEDULED})
OK: Final = "Ok"
FAILED: Final = "Failed"
SNAPSHOT_STATUSES: Final = frozenset({OK, FAILED})
# The guide's recommended continuous data protection window, for an image created
# without one (for example by a journal record that predates the setting).
DEFAULT_CDP_DAYS: Final = 7.0


@dataclass(frozen=True, slots=True)
class Version:
    """One state of one path, valid from `valid_from` (inclusive) to `valid_to` (exclusive).

    `valid_to` is None while the version is live. `content` is the packed chunk list of a
    file (`repository.chunklist`), the target of a symlink, else empty. `link` names the
    hard-link group: versions valid at one instant sharing it are one inode.
    """

    path: bytes
    valid_from: int
    valid_to: int | None
    kind: str
    meta: bytes
    content: bytes
    size: int
    link: bytes

    def valid_at(self, t: int) -> bool:
        return self.valid_from <= t and (self.valid_to is None or t < self.valid_to)


@dataclass(frozen=True, slots=True)
class Snapshot:
    image: str
    id: int
    time: int
    type: str  # USER_REQUEST | SCHEDULED
    status: str  # OK | FAILED; only an Ok snapshot pins versions and is a valid instant


@dataclass(frozen=True, slots=True)
class Range:
    """A period valid for recovery: every instant with start <= T < end (end None: open)."""

    start: int
    end: int | None

    def contains(self, t: int) -> bool:
        return self.start <= t and (self.end is None or t < self.end)


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """One image's settings and sizes, kept up to date by every write (O(1) to read).

    `versions` counts every kept version of any kind; `live_files`/`live_bytes` the live
    file versions and their sizes; `logical_bytes` the sizes of every kept file version,
    live or closed (what `repo stats` compares with the bytes the store holds).
    """

    name: str
    cdp_days: float
    versions: int
    live_files: int
    live_bytes: int
    logical_bytes: int


def format_instant(t: int) -> str:
    """An instant as ISO 8601 UTC with all nine digits of nanoseconds.

    datetime keeps microseconds only, so the fraction is written from the integer itself.
    """
    seconds, nanos = divmod(t, 1_000_000_000)
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z"
