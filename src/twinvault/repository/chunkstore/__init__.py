"""The chunk store: packs of compressed (optionally encrypted) chunks on a backend.

`ChunkStore` is the one entry point; backends are `local.LocalBackend` and `s3.S3Backend`
(imported on demand: boto3 is an optional dependency). See `docs/chunkstore.md`.
"""

from twinvault.repository.chunkstore.backend import Backend, BackendUnavailable
from twinvault.repository.chunkstore.check import CheckReport
from twinvault.repository.chunkstore.garbage import GcReport
from twinvault.repository.chunkstore.reader import StoreReader
from twinvault.repository.chunkstore.retry import RetryPolicy
from twinvault.repository.chunkstore.store import ChunkStore, StoreStats

__all__ = [
    "Backend",
    "BackendUnavailable",
    "CheckReport",
    "ChunkStore",
    "GcReport",
    "RetryPolicy",
    "StoreReader",
    "StoreStats",
]
