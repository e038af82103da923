"""The compression levels a job can name, without zstandard: the console offers them,
and importing the codec (``twinvault.compression``) would add a tenth to its cold start.

Levels are the seed's names (none / minimum / medium / maximum); the zstd level behind
each was chosen by measurement (``bench/bench_compression.py``, table in ``docs/wire.md``).
"""

from __future__ import annotations

from typing import Final

from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError

# Level name -> zstd level (None: not compressed). Measured on a mixed corpus.
LEVELS: Final[dict[str, int | None]] = {"none": None, "minimum": 1, "medium": 3, "maximum": 9}
NONE: Final = "none"


def checked_level(name: object) -> str:
    """The level name, or COMPRESSION_NOT_SUPPORTED (-153) for anything else."""
    if not isinstance(name, str) or name not in LEVELS:
        raise TwinvaultError(
            errors.COMPRESSION_NOT_SUPPORTED,
            f"compression {name!r}: choose one of {', '.join(LEVELS)}",
        )
    return name
