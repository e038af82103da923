"""A backend on a local (or mounted) filesystem: one file per name under a root folder.

Durability: `save` writes a temp file in `<root>/.tmp`, fsyncs it, renames it into place
and fsyncs the directory (and any directory it had to create), so after a crash a name
holds the old content or the new, never a mix. `adopt` renames a local file into place
when it is on the same filesystem, else copies it the same way as `save`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path

from twinvault.repository.chunkstore.backend import BackendUnavailable, check_name

_TMP = ".tmp"
_STALE_TMP_SECONDS = 3600  # older temp files are a crash's leftovers, not a save in flight


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Temp file in `tmp_dir` (same filesystem), fsync, rename over `path`, fsync its dir."""
    tmp = tmp_dir / f"{path.name}.{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


class LocalBackend:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.name = f"local:{self.root}"
        self._tmp = self.root / _TMP
        with contextlib.suppress(OSError):  # an unreachable root is reported by the first call
            self._tmp.mkdir(parents=True, exist_ok=True)
            now = time.time()
            for entry in os.scandir(self._tmp):
                if now - entry.stat().st_mtime > _STALE_TMP_SECONDS:
                    os.unlink(entry.path)

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    def local_path(self, name: str) -> Path:
        return self._path(name)

    def _reachable(self) -> None:
        # A missing root is an unmounted disk, not an empty store: never answer "no such name".
        if not self.root.is_dir():
            raise BackendUnavailable(f"{self.root} is not a directory (not mounted?)")

    def _parent(self, path: Path) -> None:
        self._reachable()
        missing: list[Path] = []
        folder = path.parent
        while not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):  # each new folder's entry is made durable in its parent
            with contextlib.suppress(FileExistsError):
                folder.mkdir()
            fsync_dir(folder.parent)
        self._tmp.mkdir(exist_ok=True)

    def save(self, name: str, data: bytes) -> None:
        path = self._path(name)
        self._parent(path)
        write_durably(path, data, self._tmp)

    def adopt(self, name: str, path: Path) -> None:
        target = self._path(name)
        self._parent(target)
        if os.stat(path).st_dev == os.stat(target.parent).st_dev:
            os.replace(path, target)
            fsync_dir(target.parent)
        else:
            write_durably(target, path.read_bytes(), self._tmp)

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(name)
        try:
            with open(path, "rb") as f:
                if offset:
                    f.seek(offset)
                return f.read() if length is None else f.read(length)
        except FileNotFoundError:
            self._reachable()
            raise

    def list(self, prefix: str) -> list[tuple[str, int]]:
        self._reachable()
        # Walk only the folder the prefix names (packs/ab/ → that folder), not the whole root.
        folder, _, _ = prefix.rpartition("/")
        base = self.root / folder if folder else self.root
        out: list[tuple[str, int]] = []
        for dirpath, dirnames, filenames in os.walk(base):
            rel_dir = os.path.relpath(dirpath, self.root)
            if rel_dir == _TMP or rel_dir.startswith(_TMP + "/"):
                dirnames.clear()
                continue
            if rel_dir == ".":
                dirnames[:] = [d for d in dirnames if d != _TMP]
            for filename in filenames:
                rel = filename if rel_dir == "." else f"{rel_dir}/{filename}"
                if rel.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):  # removed while we walked
                        out.append((rel, os.stat(os.path.join(dirpath, filename)).st_size))
        return out

    def remove(self, name: str) -> None:
        self._reachable()
        with contextlib.suppress(FileNotFoundError):
            self._path(name).unlink()

    def exists(self, name: str) -> bool:
        self._reachable()
        return self._path(name).is_file()
