"""What a mount does under the kernel's requests, without FUSE: the instant's tree of
inodes from a real catalog, and reads by offset from chunk lists through the cache."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import blake3
import pytest

from twinvault.daemon.mount_service import check_fuse
from twinvault.fsmeta import Meta
from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.pit.chunk_cache import AHEAD_MAX, ChunkCache, OpenFile
from twinvault.pit.instant_tree import ROOT_INODE, InstantTree
from twinvault.repository.catalog import Catalog, open_catalog
from twinvault.repository.chunklist import HOLE_DIGEST, Piece, pack_chunks
from twinvault.repository.chunkstore import ChunkStore
from twinvault.repository.chunkstore.fetch import Span, _Buffers
from twinvault.repository.chunkstore.local import LocalBackend
from twinvault.repository.history import pack_meta

IMG = "alpha"


class CountingSource:
    """Chunks from a dict; records every digest asked for. `bad` digests fail."""

    def __init__(self, chunks: dict[bytes, bytes], bad: Iterable[bytes] = ()) -> None:
        self.chunks = chunks
        self.bad = set(bad)
        self.asked: list[bytes] = []
        self.lock = threading.Lock()

    def get_spans(self, digests: Sequence[bytes]) -> Iterator[tuple[bytes, Span]]:
        with self.lock:
            self.asked.extend(digests)
        if self.bad & set(digests):
            raise TwinvaultError(errors.CHUNK_CORRUPT, "a bad chunk in the batch")
        for d in digests:
            yield d, Span(self.chunks[d], None, 0)

    def advise(self, digests: Sequence[bytes]) -> None:
        pass


def make_file(
    sizes: Sequence[int], holes: Iterable[int] = ()
) -> tuple[list[Piece], dict[bytes, bytes], bytes]:
    rng = random.Random(len(sizes))
    pieces, chunks, whole = [], {}, []
    for i, size in enumerate(sizes):
        if i in set(holes):
            pieces.append(Piece(HOLE_DIGEST, size))
            whole.append(bytes(size))
            continue
        data = rng.randbytes(size)
        digest = blake3.blake3(data).digest()
        chunks[digest] = data
        pieces.append(Piece(digest, size))
        whole.append(data)
    return pieces, chunks, b"".join(whole)


def read(file: OpenFile, cache: ChunkCache, offset: int, size: int) -> bytes:
    """What `PointInTimeFs.read` does, synchronously."""
    needed, ahead = file.plan(offset, size)
    for future in cache.request(needed):
        future.result()
    data = file.assemble(offset, size, cache)
    assert data is not None
    for future in cache.request(ahead):  # the fs does not wait; the tests do, to count
        future.result()
    return data


def test_a_read_fetches_only_the_chunks_under_it_and_holes_read_as_zeros() -> None:
    sizes = [64 << 10] * 80  # 5 MiB
    pieces, chunks, whole = make_file(sizes, holes=[48])
    source = CountingSource(chunks)
    cache = ChunkCache(source)
    file = OpenFile(b"/f", pieces)
    assert file.size == len(whole)
    at = 48 * (64 << 10) - 1000  # the end of chunk 47, and the hole after it
    assert read(file, cache, at, 2000) == whole[at : at + 2000]  # far from the start: a jump
    assert source.asked == [pieces[47].digest]
    assert read(file, cache, 10 << 10, 10) == whole[10 << 10 : (10 << 10) + 10]  # another jump
    assert source.asked == [pieces[47].digest, pieces[0].digest]
    assert read(file, cache, len(whole) - 5, 100) == whole[-5:]  # cut at the end of the file
    assert read(file, cache, len(whole), 100) == b""
    small, small_chunks, small_whole = make_file([1000, 5000, 3000], holes=[1])
    tiny = OpenFile(b"/s", small)
    assert read(tiny, ChunkCache(CountingSource(small_chunks)), 0, 9000) == small_whole
    cache.close()


def test_sequential_reads_are_served_ahead_of_the_reader() -> None:
    pieces, chunks, whole = make_file([64 << 10] * 600)  # 37.5 MiB
    source = CountingSource(chunks)
    cache = ChunkCache(source)
    file = OpenFile(b"/f", pieces)
    out = [read(file, cache, offset, 128 << 10) for offset in range(0, len(whole), 128 << 10)]
    assert b"".join(out) == whole
    assert len(source.asked) == len(pieces)  # every chunk fetched exactly once
    # Half way, the chunks ahead of the reader were requested before it got there.
    file = OpenFile(b"/g", pieces)
    cache2 = ChunkCache(CountingSource(chunks))
    for offset in range(0, 8 << 20, 128 << 10):
        read(file, cache2, offset, 128 << 10)
    assert file._window == AHEAD_MAX
    # At least half a window (8 MiB) past the reader has been requested.
    assert file._ahead >= file.span(8 << 20, AHEAD_MAX // 2)[1]
    cache.close()
    cache2.close()


def test_a_damaged_chunk_fails_only_the_reads_that_need_it() -> None:
    pieces, chunks, whole = make_file([4000] * 8)
    bad = pieces[5].digest
    cache = ChunkCache(CountingSource(chunks, bad=[bad]))
    file = OpenFile(b"/f", pieces)
    # One request covering good and bad chunks: the good ones still arrive.
    for future in cache.request(pieces):
        future.result()
    assert read(file, cache, 0, 4000 * 5) == whole[: 4000 * 5]
    assert read(file, cache, 4000 * 6, 8000) == whole[4000 * 6 :]
    with pytest.raises(TwinvaultError) as exc:
        read(file, cache, 4000 * 5, 10)
    assert exc.value.code == errors.CHUNK_CORRUPT
    cache.close()


def test_the_cache_stays_within_its_bytes() -> None:
    pieces, chunks, whole = make_file([10_000] * 50)
    cache = ChunkCache(CountingSource(chunks), capacity=100_000)
    file = OpenFile(b"/f", pieces, cache.ahead_max)
    out = [read(file, cache, offset, 20_000) for offset in range(0, len(whole), 20_000)]
    assert b"".join(out) == whole
    assert cache._bytes <= 100_000
    cache.close()


# --- the tree of inodes at an instant ----------------------------------------------------


def meta(kind: str, mode: int = 0o644, size: int = 0, target: str = "") -> bytes:
    return pack_meta(Meta(kind, mode, 1000, 1000, 5, 5, size, 0, target, (("user.k", b"v"),)))


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    c = open_catalog(f"sqlite://{tmp_path}/catalog.db")
    with c.transaction():
        c.put(IMG, b"/srv/data", 10, "dir", meta("dir", 0o750), b"", 0, None)
        c.put(
            IMG, b"/srv/data/a", 10, "file", meta("file", size=3), pack_chunks([Piece(b"a" * 32, 3)]), 3, None
        )
        c.put(IMG, b"/srv/data/l", 10, "symlink", meta("symlink", target="a"), b"a", 1, None)
        c.put(IMG, b"/srv/data/sub", 10, "dir", meta("dir"), b"", 0, None)
    link = c.link_group_of(IMG, b"/srv/data/a")
    c.put(
        IMG, b"/srv/data/sub/b", 20, "file", meta("file", size=3), pack_chunks([Piece(b"a" * 32, 3)]), 3, link
    )
    try:
        yield c
    finally:
        c.close()


def test_parents_of_the_selection_are_synthetic_root_owned_directories(catalog: Catalog) -> None:
    tree = InstantTree(catalog, IMG, 15)
    root = tree.entry(ROOT_INODE)
    assert root is not None and root.synthetic and root.meta.mode == 0o755 and root.meta.uid == 0
    assert [name for name, _ in tree.children(ROOT_INODE)] == [b"srv"]
    srv = tree.lookup(ROOT_INODE, b"srv")
    assert srv is not None and srv.synthetic and srv.kind == "dir" and srv.meta.mtime_ns == 15
    data = tree.lookup(srv.inode, b"data")
    assert data is not None and not data.synthetic and data.meta.mode == 0o750
    assert tree.lookup(ROOT_INODE, b"home") is None
    assert tree.lookup(data.inode, b"..") is None


def test_inodes_are_stable_and_hard_links_share_one(catalog: Catalog) -> None:
    before = InstantTree(catalog, IMG, 15)
    after = InstantTree(catalog, IMG, 25)
    for tree, nlink in ((before, 1), (after, 2)):
        srv = tree.lookup(ROOT_INODE, b"srv")
        assert srv is not None
        data = tree.lookup(srv.inode, b"data")
        assert data is not None
        a = tree.lookup(data.inode, b"a")
        assert a is not None and a.nlink == nlink
        assert tree.lookup(data.inode, b"a") == a  # the same inode at every look-up
        listed = dict(tree.children(data.inode))
        assert listed[b"a"] == a and listed[b"l"].meta.symlink_target == "a"
        sub = listed[b"sub"]
        names = dict(tree.children(sub.inode))
        if nlink == 2:
            assert names[b"b"].inode == a.inode
            assert tree.chunk_list(names[b"b"]) == [Piece(b"a" * 32, 3)]
        else:
            assert names == {}


def test_without_a_fuse_device_a_mount_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(TwinvaultError) as exc:
        check_fuse(tmp_path / "no-fuse")
    assert exc.value.code == errors.FUSE_UNAVAILABLE
    assert str(tmp_path / "no-fuse") in exc.value.message and "fuse3" in exc.value.message
    assert check_fuse().endswith("fusermount3")  # this machine has FUSE


# --- reads from a real store: segments, buffers, damage ----------------------------------


def store_file(tmp_path: Path, size: int) -> tuple[Path, LocalBackend, list[Piece], bytes]:
    """A file of random chunks (16-112 KiB, stored as they are) in a real store."""
    state, backend = tmp_path / "state", LocalBackend(tmp_path / "backend")
    owner = ChunkStore.create(state, backend)
    rng = random.Random(size)
    pieces, whole = [], []
    while sum(p.length for p in pieces) < size:
        data = rng.randbytes(rng.randint(16 << 10, 112 << 10))
        digest = blake3.blake3(data).digest()
        owner.put(digest, data)
        pieces.append(Piece(digest, len(data)))
        whole.append(data)
    owner.commit()
    owner.close()
    return state, backend, pieces, b"".join(whole)


def test_a_read_inside_one_segment_is_a_slice_of_it_and_stays_valid_after_eviction(tmp_path: Path) -> None:
    state, backend, pieces, whole = store_file(tmp_path, 48 << 20)
    with ChunkStore.open_reader(state, backend) as reader:
        # A cache of 16 MiB: chunks leave it, and their buffers are reused, during the pass.
        cache = ChunkCache(reader, capacity=16 << 20)
        file = OpenFile(b"/f", pieces, cache.ahead_max)
        replies = [read(file, cache, offset, 1 << 20) for offset in range(0, len(whole), 1 << 20)]
        # Every reply held until the end is still exactly its bytes (no buffer was reused
        # under a view), and most were answered as one slice of a segment, not joined.
        assert b"".join(replies) == whole
        assert sum(isinstance(r, memoryview) for r in replies) >= len(replies) // 2
        assert all(r.readonly for r in replies if isinstance(r, memoryview))
        del replies
        again = OpenFile(b"/f", pieces, cache.ahead_max)
        assert read(again, cache, 5 << 20, 3 << 20) == whole[5 << 20 : 8 << 20]
        cache.close()


def test_a_chunk_damaged_on_disk_fails_the_reads_that_need_it(tmp_path: Path) -> None:
    state, backend, pieces, whole = store_file(tmp_path, 3 << 20)
    bad = 7
    bad_start = sum(p.length for p in pieces[:bad])
    wanted = whole[bad_start : bad_start + pieces[bad].length]
    holding = [p for p in tmp_path.rglob("*") if p.is_file() and wanted in p.read_bytes()]
    assert len(holding) == 1, holding
    raw = bytearray(holding[0].read_bytes())
    raw[raw.find(wanted) + 1000] ^= 0xFF  # one byte flipped in the chunk's payload
    holding[0].write_bytes(raw)
    with ChunkStore.open_reader(state, backend) as reader:
        cache = ChunkCache(reader)
        file = OpenFile(b"/f", pieces, cache.ahead_max)
        with pytest.raises(TwinvaultError) as exc:
            read(file, cache, 0, len(whole))  # the whole file: one batch, one segment
        assert exc.value.code == errors.CHUNK_CORRUPT
        assert read(file, cache, 0, bad_start) == whole[:bad_start]
        after = bad_start + pieces[bad].length
        assert read(file, cache, after, len(whole)) == whole[after:]
        with pytest.raises(TwinvaultError):
            read(file, cache, bad_start + 5, 10)
        cache.close()


def test_a_segment_buffer_is_reused_only_when_no_view_of_it_is_left() -> None:
    buffers = _Buffers()
    first = buffers.take(1000)
    part = first[10:20]
    del first
    second = buffers.take(1000)
    assert second.obj is not part.obj  # a slice of the first is alive
    del part
    third = buffers.take(900)
    assert third.obj is not second.obj and len(third) == 900
    reused = third.obj
    del third
    assert buffers.take(1000).obj is reused
