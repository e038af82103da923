"""A read-only view of a chunk store another process holds open: it reads whatever the
owner committed, wherever the pack is, takes no lock and never writes."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import blake3
import pytest

from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.repository.chunkstore import ChunkStore, RetryPolicy
from twinvault.repository.chunkstore.local import LocalBackend

FAST_RETRY = RetryPolicy(first_delay=0.01, max_delay=0.05, give_up_after=0.3)
PASSPHRASE = "reader test passphrase"


def chunk(i: int) -> tuple[bytes, bytes]:
    data = random.Random(i).randbytes(40_000)
    return blake3.blake3(data).digest(), data


def fingerprint(state: Path) -> dict[str, tuple[int, str]]:
    """Every file of the state dir with its mtime and content hash, but for the WAL's
    shared-memory index (``-shm``), where every SQLite reader marks what it reads."""
    out = {}
    for path in sorted(state.rglob("*")):
        if path.is_file() and not path.name.endswith("-shm"):
            out[str(path.relative_to(state))] = (
                path.stat().st_mtime_ns,
                hashlib.sha256(path.read_bytes()).hexdigest(),
            )
    return out


@pytest.fixture
def owner(tmp_path: Path) -> ChunkStore:
    return ChunkStore.create(
        tmp_path / "state", LocalBackend(tmp_path / "backend"), pack_size=256 << 10, retry=FAST_RETRY
    )


def test_reader_sees_committed_chunks_in_open_sealed_and_uploaded_packs(
    owner: ChunkStore, tmp_path: Path
) -> None:
    uploaded = [chunk(i) for i in range(12)]  # more than one pack: sealed, then uploaded
    for d, data in uploaded:
        owner.put(d, data)
    owner.commit()
    assert owner.flush_uploads(10)
    opened = [chunk(100 + i) for i in range(2)]  # still in the open pack
    for d, data in opened:
        owner.put(d, data)
    owner.commit()
    reader = ChunkStore.open_reader(tmp_path / "state", LocalBackend(tmp_path / "backend"))
    try:
        for d, data in uploaded + opened:
            assert reader.get(d) == data
        wanted = [d for d, _ in uploaded + opened]
        assert dict(reader.get_many(wanted + wanted[:3])) == dict(uploaded + opened)
        with pytest.raises(TwinvaultError) as exc:
            reader.get(bytes(32))
        assert exc.value.code == errors.CHUNK_MISSING
    finally:
        reader.close()
        owner.close()


def test_reader_takes_no_lock_and_never_writes(owner: ChunkStore, tmp_path: Path) -> None:
    d, data = chunk(1)
    owner.put(d, data)
    owner.commit()
    before = fingerprint(tmp_path / "state")
    # Another process, while the owner holds the state dir's lock.
    script = (
        "import sys; from pathlib import Path\n"
        "from twinvault.repository.chunkstore import ChunkStore\n"
        "from twinvault.repository.chunkstore.local import LocalBackend\n"
        "r = ChunkStore.open_reader(Path(sys.argv[1]), LocalBackend(Path(sys.argv[2])))\n"
        "sys.stdout.buffer.write(r.get(bytes.fromhex(sys.argv[3]))); r.close()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "state"), str(tmp_path / "backend"), d.hex()],
        capture_output=True,
        check=True,
    )
    assert out.stdout == data
    assert fingerprint(tmp_path / "state") == before
    owner.close()


def test_reader_unlocks_an_encrypted_store_and_refuses_a_wrong_key(tmp_path: Path) -> None:
    state, backend = tmp_path / "state", LocalBackend(tmp_path / "backend")
    owner = ChunkStore.create(state, backend, passphrase=PASSPHRASE, retry=FAST_RETRY)
    d, data = chunk(7)
    owner.put(d, data)
    owner.commit()
    try:
        with ChunkStore.open_reader(state, backend, passphrase=PASSPHRASE) as reader:
            assert reader.get(d) == data
        for wrong, code in (
            ({"passphrase": "nope"}, errors.STORE_WRONG_KEY),
            ({}, errors.STORE_KEY_REQUIRED),
        ):
            with pytest.raises(TwinvaultError) as exc:
                ChunkStore.open_reader(state, backend, **wrong)
            assert exc.value.code == code
    finally:
        owner.close()


def test_reader_of_a_place_without_a_store_says_so(tmp_path: Path) -> None:
    os.makedirs(tmp_path / "backend")
    with pytest.raises(TwinvaultError) as exc:
        ChunkStore.open_reader(tmp_path / "state", LocalBackend(tmp_path / "backend"), retry=FAST_RETRY)
    assert exc.value.code == errors.PATH_NOT_FOUND
    assert not (tmp_path / "state").exists()


def test_reader_follows_a_chunk_that_garbage_collection_moved(owner: ChunkStore, tmp_path: Path) -> None:
    kept = [chunk(i) for i in range(3)]
    dropped = [chunk(50 + i) for i in range(9)]
    for d, data in kept + dropped:
        owner.put(d, data)
    owner.commit()
    assert owner.flush_uploads(10)
    reader = ChunkStore.open_reader(tmp_path / "state", LocalBackend(tmp_path / "backend"))
    try:
        assert reader.get(kept[0][0]) == kept[0][1]
        report = owner.collect_garbage({d for d, _ in kept})
        assert report.chunks_removed == len(dropped)
        for d, data in kept:
            assert reader.get(d) == data
    finally:
        reader.close()
        owner.close()


def test_views_of_a_large_run_are_mapped_from_the_pack_wherever_it_is(tmp_path: Path) -> None:
    state, backend = tmp_path / "state", LocalBackend(tmp_path / "backend")
    owner = ChunkStore.create(state, backend, retry=FAST_RETRY)  # 16 MiB packs: one pack
    chunks = [chunk(200 + i) for i in range(40)]  # 1.6 MB: one run, mapped, not copied
    for d, data in chunks:
        owner.put(d, data)
    owner.commit()
    reader = ChunkStore.open_reader(state, backend)
    try:
        for where in ("open pack", "backend"):
            views = dict(reader.get_views([d for d, _ in chunks]))
            assert all(isinstance(v, memoryview) for v in views.values()), where
            assert {d: bytes(v) for d, v in views.items()} == dict(chunks), where
            assert dict(reader.get_many([d for d, _ in chunks[:3]])) == dict(chunks[:3])
            del views
            owner.seal()
            assert owner.flush_uploads(10)
            assert not list((state / "open").glob("*.pack")) and not list((state / "sealed").glob("*.pack"))
    finally:
        reader.close()
        owner.close()
