"""A point in time sent over the management API: the op stream as frames, in batches.

``twinvault restore`` runs on the console's machine: the repository sends the ops of the
chosen point (``pit.opstream``) in the peer protocol's frame format (``docs/wire.md``),
framed by a ``point`` header (what will come, for the progress bar) and an ``end``
trailer (files left out because a chunk was damaged). The console applies them with the
applier, as the repository would (``pit.restore.RestoreTarget``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Final

from twinvault.pit.opstream import PointInTimeStream, versions_for
from twinvault.protocol.frames import encode_frame
from twinvault.repository.catalog import Catalog
from twinvault.repository.chunkstore import ChunkStore
from twinvault.timefmt import iso_from_ns

POINT: Final = "point"  # ["point", {"point", "files", "bytes", "skip_through"}]
END: Final = "end"  # ["end", {"files", "directories", "links", "bytes", "damaged": [[path, error]]}]
BATCH_BYTES: Final = 1 << 20


def summarize(catalog: Catalog, image: str, t: int | None, includes: Iterable[bytes]) -> dict[str, int]:
    """What a restore of this point writes: files (one per hard-link group) and their bytes."""
    groups: set[bytes] = set()
    files = size = 0
    for version in versions_for(catalog, image, t, includes):
        if version.kind == "file" and version.link not in groups:
            groups.add(version.link)
            files += 1
            size += version.size
    return {"files": files, "bytes": size}


def frame_batches(
    catalog: Catalog,
    store: ChunkStore,
    image: str,
    t: int | None,
    includes: list[bytes],
    skip_through: int = 0,
) -> Iterator[bytes]:
    """Blocking: the whole stream as byte batches of about ``BATCH_BYTES``."""
    point = "live" if t is None else iso_from_ns(t)
    header = {**summarize(catalog, image, t, includes), "point": point, "skip_through": skip_through}
    yield encode_frame([POINT, header])
    stream = PointInTimeStream(store, versions_for(catalog, image, t, includes), skip_through=skip_through)
    batch: list[bytes] = []
    size = 0
    for op in stream:
        frame = encode_frame(op)
        batch.append(frame)
        size += len(frame)
        if size >= BATCH_BYTES:
            yield b"".join(batch)
            batch, size = [], 0
    totals = stream.totals
    trailer: dict[str, Any] = {
        "files": totals.files,
        "directories": totals.directories,
        "links": totals.links,
        "bytes": totals.file_bytes,
        "damaged": [[p, message] for p, message in totals.damaged],
    }
    batch.append(encode_frame([END, trailer]))
    yield b"".join(batch)
