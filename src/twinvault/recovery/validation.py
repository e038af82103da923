"""The recovery server's checks before a Data Recovery job starts (the guide's
validation report): errors block the job, warnings do not."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twinvault.ops import errors
from twinvault.source.selection import is_within

# Room beyond the data: directories, metadata and the applier's temporary file.
SPACE_MARGIN_BYTES = 64 << 20


@dataclass(slots=True)
class ValidationReport:
    errors: list[tuple[int, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    free_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "errors": [
                {"code": code, "message": f"{errors.describe(code)}: {detail}"}
                for code, detail in self.errors
            ],
            "warnings": self.warnings,
            "free_bytes": self.free_bytes,
        }


def validate_target(target_path: str, bytes_needed: int, image_roots: list[str]) -> ValidationReport:
    report = ValidationReport()
    if not os.path.isabs(target_path):
        report.errors.append((errors.INVALID_ARGUMENT, f"the target path must be absolute: {target_path}"))
        return report
    target = os.path.normpath(target_path)
    for root in image_roots:
        if is_within(target, root) or is_within(root, target):
            report.errors.append(
                (
                    errors.SELECTION_OVERLAPS_IMAGE,
                    f"{target} would recover onto this repository's image {root}",
                )
            )
    try:
        Path(target).mkdir(parents=True, exist_ok=True)
        probe = Path(target) / f".twinvault-tmp.probe-{secrets.token_hex(4)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        report.errors.append((errors.REPOSITORY_PATH_NOT_WRITABLE, f"{target}: {exc.strerror}"))
        return report
    st = os.statvfs(target)
    report.free_bytes = st.f_bavail * st.f_frsize
    if report.free_bytes < bytes_needed + SPACE_MARGIN_BYTES:
        report.errors.append(
            (
                errors.TARGET_DISK_FULL,
                f"{target} has {report.free_bytes} bytes free; the recovery needs {bytes_needed} "
                f"plus {SPACE_MARGIN_BYTES} of room",
            )
        )
    existing = [n for n in os.listdir(target) if not n.startswith(".twinvault-tmp.")]
    if existing:
        shown = ", ".join(sorted(existing)[:5]) + (" ..." if len(existing) > 5 else "")
        report.warnings.append(
            f"{target} is not empty ({len(existing)} entries: {shown}); recovered files replace files of "
            "the same name, other files are left as they are"
        )
    return report
