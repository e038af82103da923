"""What a protection job protects: its roots and exclude globs.

Paths are absolute strings (undecodable bytes kept with surrogateescape, as
``os.fsdecode`` gives them). Excludes are shell globs matched against the full path
and against the entry's name, like rsync's ``--exclude`` for the common cases.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass

from twinvault.ops.errors import (
    INVALID_PARAMETER,
    SELECTION_PATH_MISSING,
    SELECTION_PATH_UNREADABLE,
    TwinvaultError,
)


@dataclass(frozen=True, slots=True)
class Selection:
    roots: tuple[str, ...]
    excludes: tuple[str, ...] = ()

    @staticmethod
    def build(paths: list[str], excludes: list[str]) -> Selection:
        roots: list[str] = []
        for raw in paths:
            if not raw.startswith("/"):
                raise TwinvaultError(INVALID_PARAMETER, f"selection path must be absolute: {raw}")
            roots.append(os.path.normpath(raw))
        # A root inside another root is redundant and would mirror its files twice.
        unique = sorted(set(roots))
        kept = [r for r in unique if not any(r != o and is_within(r, o) for o in unique)]
        return Selection(tuple(kept), tuple(excludes))

    def check_readable(self) -> None:
        for root in self.roots:
            if not os.path.lexists(root):
                raise TwinvaultError(SELECTION_PATH_MISSING, root)
            if not os.access(root, os.R_OK) or (os.path.isdir(root) and not os.access(root, os.X_OK)):
                raise TwinvaultError(SELECTION_PATH_UNREADABLE, root)
            try:
                if os.path.isdir(root):
                    os.listdir(root)
            except OSError as exc:
                raise TwinvaultError(SELECTION_PATH_UNREADABLE, f"{root}: {exc.strerror}") from exc

    def contains(self, path: str) -> bool:
        return any(is_within(path, root) for root in self.roots) and not self.excluded(path)

    def excluded(self, path: str) -> bool:
        """Whether ``path`` or one of its ancestors below its root matches an exclude."""
        if not self.excludes:
            return False
        root = next((r for r in self.roots if is_within(path, r)), "")
        current = path
        while True:
            name = current.rsplit("/", 1)[-1]
            if any(fnmatch.fnmatchcase(current, g) or fnmatch.fnmatchcase(name, g) for g in self.excludes):
                return True
            if not root or current == root or current in ("/", ""):
                return False
            current = current.rsplit("/", 1)[0] or "/"

    def ancestors(self) -> list[str]:
        """Directories above the roots, which the image needs (with their metadata)."""
        seen: set[str] = set()
        out: list[str] = []
        for root in self.roots:
            parent = os.path.dirname(root)
            chain = []
            while parent not in seen:
                chain.append(parent)
                seen.add(parent)
                if parent == "/":
                    break
                parent = os.path.dirname(parent)
            out.extend(reversed(chain))
        return out


def is_within(path: str, root: str) -> bool:
    return path == root or root == "/" or path.startswith(root + "/")
