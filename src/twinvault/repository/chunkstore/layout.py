"""Where the store's things live: the state dir on local disk and the names on the backend.

State dir (local disk, next to the daemon):

    config.json        the store's config (a cache of the backend's `config`)
    index.sqlite       the index (SQLite, WAL); rebuildable from the packs
    lock               flock'ed by the process that has the store open
    clean              present only between a clean close and the next open
    open/<id>.pack     the pack being filled (append-only)
    sealed/<id>.pack   sealed packs waiting for the backend
    outbox/<name>      saved objects waiting for the backend (name %-quoted)
    tmp/               temp files; emptied at every open

Backend: `config`, `packs/<id[:2]>/<id>`, `objects/<name>`. Pack ids are 32 lowercase
hex digits (16 random bytes).
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Final
from urllib.parse import quote, unquote

PACKS_PREFIX: Final = "packs/"
OBJECTS_PREFIX: Final = "objects/"
_PACK_ID = re.compile(r"[0-9a-f]{32}")


def new_pack_id() -> str:
    return secrets.token_hex(16)


def is_pack_id(text: str) -> bool:
    return _PACK_ID.fullmatch(text) is not None


def pack_key(pack: str) -> str:
    return f"{PACKS_PREFIX}{pack[:2]}/{pack}"


def pack_of_key(key: str) -> str | None:
    """The pack id a backend name holds, or None for anything else under `packs/`."""
    pack = key.rsplit("/", 1)[-1]
    return pack if key == pack_key(pack) and is_pack_id(pack) else None


def object_key(name: str) -> str:
    return OBJECTS_PREFIX + name


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "config.json"
        self.index = root / "index.sqlite"
        self.lock = root / "lock"
        self.clean = root / "clean"
        self.open = root / "open"
        self.sealed = root / "sealed"
        self.outbox = root / "outbox"
        self.tmp = root / "tmp"

    def make(self) -> None:
        for folder in (self.root, self.open, self.sealed, self.outbox, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)

    def open_pack(self, pack: str) -> Path:
        return self.open / f"{pack}.pack"

    def sealed_pack(self, pack: str) -> Path:
        return self.sealed / f"{pack}.pack"

    def outbox_file(self, name: str) -> Path:
        return self.outbox / quote(name, safe="")

    def packs_in(self, folder: Path) -> list[str]:
        return sorted(p.stem for p in folder.glob("*.pack") if is_pack_id(p.stem))

    def outbox_names(self) -> list[str]:
        return sorted(unquote(p.name) for p in self.outbox.iterdir() if p.is_file())
