"""Content-defined chunking of one open file: FastCDC cuts, BLAKE3 names.

The one place where file bytes become chunks, used by the reader (to send) and by
the checksum mirror (to compare). Files are read with ``pread`` in windows, never
mmapped: a file truncated under a mapping would kill the daemon with SIGBUS.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import blake3
from pyfastcdc.cy import FastCDC

from twinvault import fsmeta, pagecache

AVERAGE_CHUNK = 64 * 1024
SMALL_FILE = 64 * 1024  # at or below this a file is one chunk, read in one call
WINDOW = 16 * 1024 * 1024
_CDC = FastCDC(avg_size=AVERAGE_CHUNK)

# A piece is (digest, data) for a chunk or (None, hole_length) for a sparse hole.
Piece = tuple[bytes, memoryview] | tuple[None, int]


def might_be_sparse(st: os.stat_result) -> bool:
    """Fewer blocks allocated than the size needs: the file may have holes."""
    return st.st_blocks * 512 < st.st_size


def iter_pieces(fd: int, size: int, *, sparse: bool = False, drop_behind: bool = False) -> Iterator[Piece]:
    """The file's chunks and holes in order. With ``drop_behind`` the pages read leave
    the page cache as soon as they are cut (``pagecache``: for a file that was not
    cached before this read)."""
    if size <= SMALL_FILE and not sparse:
        data = os.pread(fd, size, 0) if size else b""
        if drop_behind:
            pagecache.drop(fd, 0, 0)
        if data:
            yield blake3.blake3(data).digest(), memoryview(data)
        return
    position = 0
    for start, length in fsmeta.data_extents(fd, size):
        if start > position:
            yield None, start - position
        yield from _extent_chunks(fd, start, length, drop_behind)
        position = start + length
    if position < size:
        yield None, size - position


def _extent_chunks(fd: int, start: int, length: int, drop_behind: bool) -> Iterator[Piece]:
    # The last chunk of a window is cut by the window, not by content, so the next
    # window starts where that chunk began and cuts it again. Reading those bytes twice
    # (at most a maximum chunk per window, from the page cache) beats joining them to
    # the next window, which would copy every byte once more.
    offset, end = start, start + length
    while offset < end:
        # The disk reads the next window while this one is cut and hashed.
        ahead = offset + WINDOW
        if ahead < end:
            os.posix_fadvise(fd, ahead, min(WINDOW, end - ahead), os.POSIX_FADV_WILLNEED)
        block = os.pread(fd, min(WINDOW, end - offset), offset)
        if not block:
            return
        at_end = offset + len(block) >= end or len(block) < min(WINDOW, end - offset)
        view = memoryview(block)
        chunks = list(_CDC.cut_buf(view))
        if not at_end and len(chunks) > 1:
            chunks.pop()
        for chunk in chunks:
            piece = view[chunk.offset : chunk.offset + chunk.length]
            yield blake3.blake3(piece).digest(), piece
        done = offset
        offset += chunks[-1].offset + chunks[-1].length
        if drop_behind:
            # Up to where the next window starts: the bytes it reads again stay cached.
            pagecache.drop(fd, done, offset - done)
        if at_end:
            return


def file_digests(path: str) -> tuple[bytes, int]:
    """The concatenated chunk digests of a file and the bytes read (checksum mirror)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        size = st.st_size
        out: list[bytes] = []
        read = 0
        cold = size > 0 and not pagecache.first_page_cached(fd, st.st_dev)
        for digest, data in iter_pieces(fd, size, sparse=might_be_sparse(st), drop_behind=cold):
            if digest is not None:
                out.append(digest)
                read += len(data)  # type: ignore[arg-type]
        return b"".join(out), read
    finally:
        os.close(fd)
