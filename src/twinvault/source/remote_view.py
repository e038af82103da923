"""The source's picture of what the repository holds for one job.

It is built from the repository's manifest when a connection starts and kept up to
date as ops are sent. It is only ever a hint: the repository checks every reference
against its own index and answers ``need`` when the hint was wrong, and the source
then resends that file in full.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twinvault.ops.errors import MALFORMED_FRAME, TwinvaultError
from twinvault.protocol.messages import path_from_wire


@dataclass(slots=True)
class RemoteEntry:
    kind: str
    size: int
    mtime_ns: int
    mode: int
    uid: int
    gid: int
    digests: bytes  # concatenated 32-byte chunk hashes; b"" when unknown
    # False: a file in the image that the repository's index does not know as it is
    # (a crash came between its op and the group commit): it must be sent again.
    indexed: bool = True


@dataclass(slots=True)
class RemoteView:
    entries: dict[str, RemoteEntry] = field(default_factory=dict)
    full_resend: set[str] = field(default_factory=set)
    # Files whose size and time agree but whose content does not (checksum mirror):
    # they must be sent even though only their metadata looks different.
    content_differs: set[str] = field(default_factory=set)
    _chunks: set[bytes] | None = field(default=None, repr=False)

    @property
    def known_chunks(self) -> set[bytes]:
        """The digests of the chunks of the files the view holds, made on first use: a
        mirror that finds nothing to send never needs them, and making them as the
        manifest arrived cost the event loop ~0.1 s per 50,000 files of a no-change mirror."""
        if self._chunks is None:
            self._chunks = set()
            # A copy taken in one step (the reader's thread asks; the event loop's may
            # drop an entry meanwhile, and a dict must not change while it is iterated).
            for entry in list(self.entries.values()):
                _add_digests(self._chunks, entry.digests)
        return self._chunks

    def add(self, path: str, entry: RemoteEntry) -> None:
        self.entries[path] = entry
        if self._chunks is not None:
            _add_digests(self._chunks, entry.digests)

    def add_many(self, entries: list[tuple[str, RemoteEntry]]) -> None:
        self.entries.update(entries)
        if self._chunks is not None:
            for _, entry in entries:
                _add_digests(self._chunks, entry.digests)

    def sent_file(self, path: str, entry: RemoteEntry) -> None:
        self.add(path, entry)
        self.full_resend.discard(path)
        self.content_differs.discard(path)

    def sent_other(self, path: str, entry: RemoteEntry) -> None:
        self.entries[path] = entry

    def deleted(self, path: str, *, is_dir: bool | None = None) -> None:
        entry = self.entries.pop(path, None)
        if is_dir is False or (entry is not None and entry.kind != "dir"):
            return  # nothing can be under it: skip the scan of every entry
        prefix = path + "/"
        for key in [k for k in list(self.entries) if k.startswith(prefix)]:  # list(): see known_chunks
            self.entries.pop(key, None)

    def renamed(self, old: str, new: str) -> None:
        self.deleted(new)
        entry = self.entries.get(old)
        if entry is not None and entry.kind != "dir":
            self.entries[new] = self.entries.pop(old)  # a file: no descendants to move
            return
        prefix = old + "/"
        moved = {k: v for k, v in list(self.entries.items()) if k == old or k.startswith(prefix)}
        for key, value in moved.items():
            self.entries.pop(key, None)
            self.entries[new + key[len(old) :]] = value

    def needs_full(self, path: str) -> None:
        """The repository could not use our references for this path: send it whole."""
        self.entries.pop(path, None)
        self.full_resend.add(path)


def manifest_entries(raw: list[Any]) -> list[tuple[str, RemoteEntry]]:
    """A manifest batch's entries ``[path, kind, size, mtime_ns, mode, uid, gid, digests,
    indexed]`` by path (a repository before the ``indexed`` field sends eight). A
    malformed batch is the peer's fault (-1007, MALFORMED_FRAME): the link ends and the
    job reconnects, as for any other malformed frame."""
    decode = path_from_wire
    try:
        return [
            (
                decode(e[0]),
                RemoteEntry(e[1], e[2], e[3], e[4], e[5], e[6], e[7], bool(e[8]) if len(e) > 8 else True),
            )
            for e in raw
        ]
    except (TypeError, IndexError, KeyError, ValueError) as exc:
        raise TwinvaultError(MALFORMED_FRAME, f"a manifest entry is malformed: {exc}") from exc


def _add_digests(chunks: set[bytes], digests: bytes) -> None:
    if len(digests) == 32:  # one chunk: most files of a tree of small files
        chunks.add(digests)
    elif digests:
        chunks.update(digests[i : i + 32] for i in range(0, len(digests), 32))
