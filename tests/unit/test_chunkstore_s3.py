"""The chunk store on a real S3 endpoint (SeaweedFS): round trips, an outage, collection.

One SeaweedFS serves the module (a fresh bucket per test); the outage test runs its own,
because it stops and restarts it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.s3 import SeaweedFS, seaweedfs
from tests.unit.test_chunkstore import assert_readable, digest, put_all, random_chunk, text_chunk
from twinvault.ops import errors
from twinvault.ops import events as ev
from twinvault.ops.errors import TwinvaultError
from twinvault.repository.chunkstore import ChunkStore, RetryPolicy

pytest.importorskip("boto3")

OUTAGE_RETRY = RetryPolicy(first_delay=0.05, max_delay=0.3, give_up_after=1.0)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


def bucket() -> str:
    return f"tv-{uuid.uuid4().hex[:12]}"


def s3_keys(server: SeaweedFS, name: str, prefix: str) -> list[str]:
    listing = server.client().list_objects_v2(Bucket=name, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


@pytest.mark.parametrize("passphrase", [None, "s3 secret"], ids=["plain", "encrypted"])
def test_chunks_round_trip_through_s3_and_a_lost_state_dir(
    s3: SeaweedFS, tmp_path: Path, passphrase: str | None
) -> None:
    name = bucket()
    chunks = [random_chunk(i, 48 << 10) for i in range(24)] + [text_chunk(i) for i in range(24)]
    with ChunkStore.create(
        tmp_path / "state", s3.backend(name, "repo/one"), passphrase=passphrase, pack_size=512 << 10
    ) as store:
        digests = put_all(store, chunks)
        store.commit()
        assert_readable(store, chunks)
        store.close()
    with ChunkStore.open(tmp_path / "state", s3.backend(name, "repo/one"), passphrase=passphrase) as store:
        assert store.flush_uploads(20)
    packs = [k for k in s3_keys(s3, name, "repo/one/") if "/packs/" in k]
    assert len(packs) >= 2 and "repo/one/config" in s3_keys(s3, name, "repo/one/")
    # The state dir is gone (a new disk): the index is rebuilt from the packs' trailers.
    events: list[tuple[int, dict[str, object]]] = []
    with ChunkStore.open(
        tmp_path / "new-state",
        s3.backend(name, "repo/one"),
        passphrase=passphrase,
        on_event=lambda i, f: events.append((i, f)),
    ) as store:
        assert [i for i, _ in events] == [ev.STORE_RECOVERED_AFTER_CRASH]
        assert "rebuilt from" in str(events[0][1]["detail"])
        got = dict(store.get_many(list(reversed(digests))))  # ranged GETs, a few per pack
        assert all(got[digest(c)] == c for c in chunks)
        assert store.check(read_data=True, digests=digests).ok


def test_s3_gc_removes_packs_from_the_bucket(s3: SeaweedFS, tmp_path: Path) -> None:
    name = bucket()
    chunks = [random_chunk(i, 32 << 10) for i in range(40)]
    with ChunkStore.create(tmp_path / "state", s3.backend(name, ""), pack_size=256 << 10) as store:
        digests = put_all(store, chunks)
        store.commit()
        keep = set(digests[30:])
        report = store.collect_garbage(keep)
        assert report.packs_removed >= 3
        assert_readable(store, chunks[30:])
        left = [k for k in s3_keys(s3, name, "packs/")]
        assert len(left) == store.stats().packs
        assert store.check(read_data=True, digests=keep).ok


def test_s3_outage_keeps_commits_local_and_uploads_after_it(tmp_path: Path) -> None:
    events: list[tuple[int, dict[str, Any]]] = []
    name = bucket()
    with seaweedfs(tmp_path / "seaweedfs") as server:
        store = ChunkStore.create(
            tmp_path / "state",
            server.backend(name, "p"),
            pack_size=128 << 10,
            retry=OUTAGE_RETRY,
            on_event=lambda i, f: events.append((i, f)),
        )
        try:
            before = [random_chunk(i, 32 << 10) for i in range(8)]
            put_all(store, before)
            store.commit()
            assert store.flush_uploads(20)
            assert store.stats().pending_uploads == 0

            server.stop(kill=True)  # the object store dies
            during = [random_chunk(i, 32 << 10) for i in range(100, 140)]
            slowest = 0.0
            for n, c in enumerate(during):
                store.put(digest(c), c)
                if n % 4 == 3:
                    t = time.monotonic()
                    store.commit()
                    slowest = max(slowest, time.monotonic() - t)
            assert slowest < 0.5, f"commit waited {slowest:.2f} s for the dead backend"
            assert_readable(store, during)  # still local
            deadline = time.monotonic() + 10
            while ev.STORE_BACKEND_FAILING not in [i for i, _ in events] and time.monotonic() < deadline:
                time.sleep(0.05)
            failing = [f for i, f in events if i == ev.STORE_BACKEND_FAILING]
            assert len(failing) == 1, "one event for the outage, not one per retry"
            assert failing[0]["backend"] == f"s3://{name}/p/" and failing[0]["reason"]
            assert store.stats().pending_uploads >= 5
            t = time.monotonic()
            with pytest.raises(TwinvaultError) as exc:
                store.get(digest(before[0]))  # only on the dead backend
            assert exc.value.code == errors.STORE_UNREACHABLE
            assert time.monotonic() - t < OUTAGE_RETRY.give_up_after + 3

            server.start()
            store.seal()
            assert store.flush_uploads(30)
            ids = [i for i, _ in events]
            assert ids.count(ev.STORE_BACKEND_RECOVERED) == 1
            assert ids.index(ev.STORE_BACKEND_FAILING) < ids.index(ev.STORE_BACKEND_RECOVERED)
            assert store.stats().pending_uploads == 0
            assert list((tmp_path / "state" / "sealed").iterdir()) == []
            assert_readable(store, before + during)
        finally:
            store.close()
        with ChunkStore.open(tmp_path / "fresh-state", server.backend(name, "p")) as reopened:
            assert_readable(reopened, before + during)
