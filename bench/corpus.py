"""Benchmark corpora: many small files, one big file, and an in-place change to it.

Contents come from os.urandom and are never reused between files or blocks: the data is
incompressible and holds no duplicate chunks, so neither compression nor deduplication
can flatter twinvault against the reference tool.  The seed fixes the layout (how many
files, which sizes, which directories), not the bytes.
"""

from __future__ import annotations

import os
import random

_BATCH = 64 << 20  # draw random bytes in big batches: one getrandom per 64 MiB, not per file
_FILES_PER_DIR = 500  # directories of ~500 files, a common real-world fan-out
_BIG_BLOCK = 64 << 20


def make_small_files(
    root: str, count: int = 50_000, min_kib: int = 1, max_kib: int = 64, seed: int = 1
) -> int:
    """Write `count` random files of min_kib..max_kib KiB under `root`; return total bytes.

    Files go to root/d0000/f000000 ... with ~500 files per directory.
    """
    rng = random.Random(seed)
    sizes = [rng.randint(min_kib * 1024, max_kib * 1024) for _ in range(count)]
    pool = b""
    pos = 0
    total = 0
    for i, size in enumerate(sizes):
        if i % _FILES_PER_DIR == 0:
            directory = os.path.join(root, f"d{i // _FILES_PER_DIR:04d}")
            os.makedirs(directory, exist_ok=True)
        if pos + size > len(pool):
            pool = os.urandom(max(_BATCH, size))
            pos = 0
        fd = os.open(os.path.join(directory, f"f{i:06d}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, memoryview(pool)[pos : pos + size])
        finally:
            os.close(fd)
        pos += size
        total += size
    return total


def make_big_file(path: str, size: int = 2 << 30) -> None:
    """Write `size` random bytes to `path` in 64 MiB blocks."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        written = 0
        while written < size:
            block = os.urandom(min(_BIG_BLOCK, size - written))
            view = memoryview(block)
            while view:  # os.write may be short on big buffers
                n = os.write(fd, view)
                view = view[n:]
            written += len(block)
    finally:
        os.close(fd)


def change_middle(path: str, nbytes: int = 1 << 20) -> int:
    """Overwrite `nbytes` random bytes in the middle of `path`, keeping its size.

    Returns the offset written, so a benchmark can say where the change was.  The offset
    is deliberately not block-aligned: real edits are not, and a delta tool must cope.
    """
    size = os.path.getsize(path)
    nbytes = min(nbytes, size)
    offset = size // 2 - nbytes // 2
    fd = os.open(path, os.O_WRONLY)
    try:
        data = os.urandom(nbytes)
        done = 0
        while done < nbytes:
            done += os.pwrite(fd, data[done:], offset + done)
    finally:
        os.close(fd)
    return offset
