"""Integrity and accounting of the repository's history: ``repo check`` and ``repo stats``.

``check`` asks the chunk store about every chunk a version references (with
``read_data``, every chunk is read back, decrypted, decompressed and hashed) and names
the damage the way a user needs it: which files, in which image, valid from when to
when. ``stats`` adds up what the versions hold (logical) against what the packs take
(stored).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twinvault.ops import events as ev
from twinvault.repository.history import History
from twinvault.timefmt import iso_from_ns

DAMAGE_LISTED = 1000  # a report names at most this many versions; the count is exact


@dataclass(slots=True)
class CheckResult:
    read_data: bool
    checked_chunks: int
    missing_chunks: int
    corrupt_chunks: int
    damaged_versions: int = 0
    damaged: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing_chunks or self.corrupt_chunks or self.damaged_versions or self.problems)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "read_data": self.read_data,
            "checked_chunks": self.checked_chunks,
            "missing_chunks": self.missing_chunks,
            "corrupt_chunks": self.corrupt_chunks,
            "damaged_versions": self.damaged_versions,
            "damaged": self.damaged,
            "problems": self.problems,
        }


def check(history: History, *, image: str | None = None, read_data: bool = False) -> CheckResult:
    with history.lock:
        history.commit()
        digests = history.catalog.referenced_digests()
    report = history.store.check(read_data=read_data, digests=digests)
    bad = report.missing | report.corrupt
    result = CheckResult(read_data, report.checked_chunks, len(report.missing), len(report.corrupt))
    result.problems = list(report.problems[:DAMAGE_LISTED])
    if bad:
        with history.lock:  # the catalog is one connection, shared with the writers
            damaged = list(history.catalog.versions_referencing(bad, image))
        for image_name, version in damaged:
            result.damaged_versions += 1
            if len(result.damaged) < DAMAGE_LISTED:
                result.damaged.append(
                    {
                        "image": image_name,
                        "path": version.path.decode("utf-8", "surrogateescape"),
                        "valid_from": iso_from_ns(version.valid_from),
                        "valid_to": None if version.valid_to is None else iso_from_ns(version.valid_to),
                        "live": version.valid_to is None,
                    }
                )
    if not result.ok:
        history.emit(
            ev.CHECK_FOUND_DAMAGE,
            summary=f"{result.missing_chunks} missing and {result.corrupt_chunks} corrupt chunks, "
            f"{result.damaged_versions} file versions affected",
        )
    return result


def stats(history: History) -> dict[str, Any]:
    store = history.store.stats()
    images = history.catalog.images()
    logical = sum(info.logical_bytes for info in images)
    return {
        "images": len(images),
        "versions": sum(info.versions for info in images),
        "live_files": sum(info.live_files for info in images),
        "live_bytes": sum(info.live_bytes for info in images),
        "logical_bytes": logical,
        "unique_bytes": store.raw_bytes,
        "stored_bytes": store.stored_bytes,
        "chunks": store.chunks,
        "packs": store.packs,
        "pending_uploads": store.pending_uploads,
        # logical / unique: what deduplication saves; unique / stored: what compression saves.
        "dedup_ratio": round(logical / store.raw_bytes, 3) if store.raw_bytes else 1.0,
        "compression_ratio": round(store.raw_bytes / store.stored_bytes, 3) if store.stored_bytes else 1.0,
        "total_ratio": round(logical / store.stored_bytes, 3) if store.stored_bytes else 1.0,
    }
