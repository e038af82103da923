"""The chunk store keeps every chunk it acknowledged, finds damage, and collects garbage safely.

Every test drives a real `ChunkStore` over a real `LocalBackend` folder and a real state
dir; crashes are simulated by copying the state dir and backend while the store is quiet
(the disk image a kill -9 would leave), then damaging the copy the way a crash or bit rot
would. Kills of a real process are in `tests/system/test_chunkstore_crash.py`; S3 in
`test_chunkstore_s3.py`.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import pytest
import zstandard

from twinvault.ops import errors
from twinvault.ops import events as ev
from twinvault.ops.errors import TwinvaultError
from twinvault.repository.chunkstore import ChunkStore, RetryPolicy
from twinvault.repository.chunkstore.keys import write_key_file
from twinvault.repository.chunkstore.local import LocalBackend
from twinvault.repository.chunkstore.pack import BLOB_HEADER, FLAG_COMPRESSED, FLAG_ENCRYPTED

FAST_RETRY = RetryPolicy(first_delay=0.01, max_delay=0.05, give_up_after=0.3)


def random_chunk(i: int, size: int = 64 << 10) -> bytes:
    return random.Random(i).randbytes(size)


def text_chunk(i: int, size: int = 64 << 10) -> bytes:
    words = [b"pack", b"blob", b"chunk", b"store", b"index", b"trailer", b"footer", b"%d" % i]
    rng = random.Random(-i - 1)
    out = b" ".join(rng.choice(words) for _ in range(size // 4))
    return out[:size]


def digest(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


@dataclass
class Place:
    """A store's two homes: the state dir (local disk) and the backend folder."""

    root: Path
    events: list[tuple[int, dict[str, object]]] = field(default_factory=list)

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def backend_dir(self) -> Path:
        return self.root / "backend"

    def backend(self) -> LocalBackend:
        return LocalBackend(self.backend_dir)

    def on_event(self, event_id: int, fields: dict[str, object]) -> None:
        self.events.append((event_id, fields))

    def create(self, **kw: Any) -> ChunkStore:
        kw.setdefault("pack_size", 256 << 10)
        return ChunkStore.create(self.state, self.backend(), on_event=self.on_event, retry=FAST_RETRY, **kw)

    def open(self, **kw: Any) -> ChunkStore:
        return ChunkStore.open(self.state, self.backend(), on_event=self.on_event, retry=FAST_RETRY, **kw)

    def crash_image(self, name: str) -> Place:
        """A copy of both homes as they are now: what a kill -9 at this instant leaves."""
        copy = Place(self.root.parent / name)
        shutil.copytree(self.root, copy.root, symlinks=True)
        (copy.state / "lock").unlink()
        return copy

    def recovered(self) -> list[str]:
        return [str(f["detail"]) for i, f in self.events if i == ev.STORE_RECOVERED_AFTER_CRASH]

    def packs(self, where: str) -> list[Path]:
        if where == "backend":
            return sorted((self.backend_dir / "packs").glob("*/*"))
        return sorted((self.state / where).glob("*.pack"))


@pytest.fixture
def place(tmp_path: Path) -> Place:
    return Place(tmp_path / "store")


@pytest.fixture
def store(place: Place) -> Iterator[ChunkStore]:
    s = place.create()
    yield s
    s.close()


def put_all(store: ChunkStore, chunks: list[bytes]) -> list[bytes]:
    digests = [digest(c) for c in chunks]
    for d, c in zip(digests, chunks, strict=True):
        store.put(d, c)
    return digests


def assert_readable(store: ChunkStore, chunks: list[bytes]) -> None:
    for c in chunks:
        assert store.get(digest(c)) == c


def error_code(exc: pytest.ExceptionInfo[TwinvaultError]) -> int:
    return exc.value.code


# --- storing and reading --------------------------------------------------------------------


def test_chunks_round_trip_and_survive_a_reopen(place: Place) -> None:
    chunks = [random_chunk(i) for i in range(20)] + [text_chunk(i) for i in range(20)] + [b"", b"x"]
    with place.create() as s:
        put_all(s, chunks)
        assert_readable(s, chunks)  # before commit: read from the open pack
        s.commit()
        assert_readable(s, chunks)
    with place.open() as s:
        assert_readable(s, chunks)
        assert s.stats().chunks == len(chunks)
        assert s.stats().raw_bytes == sum(len(c) for c in chunks)
    assert place.recovered() == [], "a clean close needs no repair"


def test_put_twice_stores_once(store: ChunkStore) -> None:
    data = random_chunk(1)
    assert store.put(digest(data), data) is True
    assert store.put(digest(data), data) is False
    store.commit()
    assert store.put(digest(data), data) is False
    stats = store.stats()
    assert stats.chunks == 1
    assert stats.stored_bytes < 2 * len(data)


def test_incompressible_chunk_is_stored_raw_and_text_compressed(store: ChunkStore) -> None:
    noise, text = random_chunk(2), text_chunk(2)
    put_all(store, [noise, text])
    store.commit()
    noise_at = store.index.locate(digest(noise))
    text_at = store.index.locate(digest(text))
    assert noise_at is not None and text_at is not None
    assert noise_at[1].flags & FLAG_COMPRESSED == 0 and noise_at[1].stored_len == len(noise)
    assert text_at[1].flags & FLAG_COMPRESSED and text_at[1].stored_len < len(text) // 2
    assert_readable(store, [noise, text])


def test_put_compressed_keeps_the_wire_frame_as_it_is(store: ChunkStore) -> None:
    data = text_chunk(3)
    # A frame without its content size, as a streaming sender may produce it.
    frame = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(data)
    assert store.put_compressed(digest(data), len(data), frame) is True
    assert store.put(digest(data), data) is False
    store.commit()
    pack, entry = store.index.locate(digest(data)) or ("", None)
    assert entry is not None and entry.stored_len == len(frame)
    stored = store._fetch._read(pack, entry.payload_offset, entry.stored_len)
    assert stored == frame, "the frame must be stored byte for byte, not recompressed"
    assert store.get(digest(data)) == data


@pytest.mark.parametrize("passphrase", [None, "sealed"])
def test_get_frames_hands_out_stored_frames_for_a_sender_to_pass_on(
    place: Place, passphrase: str | None
) -> None:
    """A recovery puts a chunk the store holds compressed on the wire as its stored frame
    (decrypted); a chunk stored plain comes without one. Both come verified."""
    text, noise, wired = text_chunk(7), random_chunk(8), text_chunk(9)
    frame = zstandard.ZstdCompressor(level=1).compress(wired)
    with place.create(passphrase=passphrase) as s:
        s.put(digest(text), text)
        s.put(digest(noise), noise)
        s.put_compressed(digest(wired), len(wired), frame, plain=wired)
        s.commit()
        got = {d: (plain, f) for d, plain, f in s.get_frames([digest(text), digest(noise), digest(wired)])}
    assert got[digest(noise)] == (noise, None), "incompressible: stored plain, sent plain"
    plain, stored = got[digest(text)]
    assert plain == text and stored is not None and len(stored) < len(text) // 2
    assert zstandard.ZstdDecompressor().decompress(stored) == text
    assert got[digest(wired)] == (wired, frame), "an arriving frame is kept and handed out byte for byte"


def test_put_compressed_refuses_a_plain_text_that_is_not_the_chunk(store: ChunkStore) -> None:
    data = text_chunk(5)
    frame = zstandard.ZstdCompressor().compress(data)
    with pytest.raises(TwinvaultError) as exc:
        store.put_compressed(digest(data), len(data), frame, plain=text_chunk(6))
    assert error_code(exc) == errors.CHUNK_CORRUPT
    assert store.stats().chunks == 0


def test_put_refuses_data_that_does_not_hash_to_its_digest(store: ChunkStore) -> None:
    data = random_chunk(4)
    with pytest.raises(TwinvaultError) as exc:
        store.put(digest(b"something else"), data)
    assert error_code(exc) == errors.CHUNK_CORRUPT
    frame = zstandard.ZstdCompressor().compress(data)
    with pytest.raises(TwinvaultError) as exc:
        store.put_compressed(digest(data), len(data) + 1, frame)
    assert error_code(exc) == errors.CHUNK_CORRUPT
    assert store.stats().chunks == 0


def test_unknown_chunk_is_missing(store: ChunkStore) -> None:
    with pytest.raises(TwinvaultError) as exc:
        store.get(digest(b"never stored"))
    assert error_code(exc) == errors.CHUNK_MISSING
    assert store.has(digest(b"never stored")) is False


def test_get_many_returns_each_chunk_once_reading_ranges(store: ChunkStore) -> None:
    chunks = [random_chunk(i, 8 << 10) for i in range(60)]
    digests = put_all(store, chunks)
    store.commit()
    store.flush_uploads(5)
    wanted = list(reversed(digests)) + digests[:5]
    got = list(store.get_many(wanted))
    assert sorted(d for d, _ in got) == sorted(digests)
    assert all(digest(data) == d for d, data in got)
    with pytest.raises(TwinvaultError) as exc:
        list(store.get_many([digests[0], digest(b"nope")]))
    assert error_code(exc) == errors.CHUNK_MISSING


def test_commit_appends_to_one_pack_until_it_is_full(place: Place) -> None:
    with place.create(pack_size=4 << 20) as s:
        for i in range(100):
            data = random_chunk(i, 4096)
            s.put(digest(data), data)
            s.commit()
        assert len(place.packs("open")) == 1
        assert place.packs("sealed") + place.packs("backend") == []
        # A full pack is sealed and handed to the backend; the next one starts.
        for i in range(100, 1200):
            data = random_chunk(i, 4096)
            s.put(digest(data), data)
        s.commit()
        assert s.flush_uploads(5)
        assert len(place.packs("backend")) == 1 and len(place.packs("open")) == 1


def test_concurrent_puts_and_gets_from_threads(store: ChunkStore) -> None:
    chunks = [random_chunk(i, 16 << 10) if i % 2 else text_chunk(i, 16 << 10) for i in range(400)]
    failures: list[BaseException] = []

    def writer(part: list[bytes]) -> None:
        try:
            for n, c in enumerate(part):
                store.put(digest(c), c)
                if n % 10 == 0:
                    store.commit()
                # Read back something another thread may have put a moment ago.
                other = chunks[(n * 7) % len(chunks)]
                if store.has(digest(other)):
                    assert store.get(digest(other)) == other
            store.commit()
        except BaseException as exc:
            failures.append(exc)

    # Overlapping shares: the same chunks raced by several threads must be stored once.
    threads = [threading.Thread(target=writer, args=(chunks[i * 80 : i * 80 + 160],)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert_readable(store, chunks)
    assert store.stats().chunks == len(chunks)


def test_saved_objects_round_trip_and_are_listed(place: Place) -> None:
    with place.create(passphrase="objects") as s:
        s.save_object("journal/0001", b"first segment " * 100)
        s.save_object("journal/0002", b"second")
        s.save_object("journal/0002", b"second, rewritten")
        s.save_object("other/x", b"x")
        assert s.load_object("journal/0002") == b"second, rewritten"
        assert s.flush_uploads(5)
        assert s.list_objects("journal/") == ["journal/0001", "journal/0002"]
        s.remove_object("journal/0001")
        assert s.list_objects("journal/") == ["journal/0002"]
        with pytest.raises(FileNotFoundError):
            s.load_object("journal/0001")
    stored = (place.backend_dir / "objects" / "journal" / "0002").read_bytes()
    assert b"second" not in stored, "objects of an encrypted store are encrypted"
    with place.open(passphrase="objects") as s:
        assert s.load_object("journal/0002") == b"second, rewritten"


# --- encryption -----------------------------------------------------------------------------


def test_encrypted_store_hides_digests_and_data(place: Place) -> None:
    chunks = [text_chunk(i) for i in range(10)]
    with place.create(passphrase="correct horse") as s:
        digests = put_all(s, chunks)
        s.commit()
        for d in digests:
            assert s.index.locate(d) is None, "the index is keyed by store ids, not digests"
            found = s.index.locate(s.codec.store_id(d))
            assert found is not None and found[1].flags & FLAG_ENCRYPTED and found[1].digest == d
        s.close()
    with place.open(passphrase="correct horse") as s:
        assert s.flush_uploads(5)
    on_disk = b"".join(p.read_bytes() for p in place.packs("backend"))
    assert on_disk
    for d, c in zip(digests, chunks, strict=True):
        assert d not in on_disk, "a plain digest leaked into a pack"
        assert c[:64] not in on_disk, "plain data leaked into a pack"
    with place.open(passphrase="correct horse") as s:
        assert_readable(s, chunks)


def test_wrong_or_missing_passphrase_is_refused(place: Place) -> None:
    place.create(passphrase="right").close()
    with pytest.raises(TwinvaultError) as exc:
        place.open(passphrase="wrong")
    assert error_code(exc) == errors.STORE_WRONG_KEY
    with pytest.raises(TwinvaultError) as exc:
        place.open()
    assert error_code(exc) == errors.STORE_KEY_REQUIRED
    place.open(passphrase="right").close()


def test_key_file_store_refuses_another_key_file_and_none(place: Place, tmp_path: Path) -> None:
    key, other = tmp_path / "store.key", tmp_path / "other.key"
    write_key_file(key)
    write_key_file(other)
    data = random_chunk(5)
    with place.create(key_file=key) as s:
        s.put(digest(data), data)
    with pytest.raises(TwinvaultError) as exc:
        place.open(key_file=other)
    assert error_code(exc) == errors.STORE_WRONG_KEY
    with pytest.raises(TwinvaultError) as exc:
        place.open()
    assert error_code(exc) == errors.STORE_KEY_REQUIRED
    with place.open(key_file=key) as s:
        assert s.get(digest(data)) == data


def test_create_refuses_an_existing_store_and_open_a_newer_format(place: Place) -> None:
    place.create().close()
    with pytest.raises(TwinvaultError) as exc:
        ChunkStore.create(place.root / "another-state", place.backend())
    assert error_code(exc) == errors.STORE_EXISTS
    config = place.state / "config.json"
    config.write_text(config.read_text().replace('"version": 1', '"version": 99'))
    with pytest.raises(TwinvaultError) as exc:
        place.open()
    assert error_code(exc) == errors.STORE_FORMAT_UNSUPPORTED


def test_a_second_process_cannot_open_the_same_state_dir(store: ChunkStore, place: Place) -> None:
    with pytest.raises(TwinvaultError) as exc:
        place.open()
    assert error_code(exc) == errors.REPOSITORY_PATH_NOT_WRITABLE


# --- crashes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(lambda blob: blob[:20], id="half-a-header"),
        pytest.param(lambda blob: blob[: BLOB_HEADER.size + 100], id="header-and-part-of-payload"),
        pytest.param(lambda blob: b"\0" * 8192, id="zeros-from-a-delayed-allocation"),
    ],
)
def test_torn_open_pack_is_cut_and_sealed_at_open(place: Place, tail: Any) -> None:
    committed = [random_chunk(i) for i in range(3)]
    unacknowledged = random_chunk(100)
    with place.create(pack_size=16 << 20) as s:
        put_all(s, committed)
        s.commit()
        s.put(digest(unacknowledged), unacknowledged)  # never committed...
        assert s.get(digest(unacknowledged)) == unacknowledged  # ... but read: in the file
        crash = place.crash_image("crash")
    (open_pack,) = crash.packs("open")
    # The torn write of one more blob: what the kernel had of it when the power went.
    torn = open_pack.read_bytes()
    blob = torn[-(BLOB_HEADER.size + len(unacknowledged)) :]
    with open(open_pack, "ab") as f:
        f.write(tail(blob))
    with crash.open() as s:
        assert_readable(s, committed)
        # Written in full before the crash and intact: kept, though never acknowledged.
        assert s.get(digest(unacknowledged)) == unacknowledged
        assert s.flush_uploads(5)
        assert crash.packs("open") == []
        report = s.check(read_data=True)
        assert report.ok, report.problems
    (detail,) = crash.recovered()
    assert "torn bytes cut" in detail and "1 written after the last commit kept" in detail


def test_index_deleted_or_damaged_is_rebuilt_from_the_packs(place: Place) -> None:
    chunks = [random_chunk(i, 32 << 10) for i in range(30)] + [text_chunk(i) for i in range(30)]
    with place.create(passphrase="rebuild") as s:
        digests = put_all(s, chunks[:40])
        s.commit()
        s.flush_uploads(5)
        put_all(s, chunks[40:])  # in the open pack at close: sealed locally, then uploaded
        s.commit()
        s.save_object("journal/1", b"j")
    for f in place.state.glob("index.sqlite*"):
        f.unlink()
    with place.open(passphrase="rebuild") as s:
        assert_readable(s, chunks)
        assert s.stats().chunks == len(chunks)
        # The plain digests came back from the encrypted trailers: collection still works.
        report = s.collect_garbage(set(digests[:10]))
        assert report.chunks_removed > 0
        assert_readable(s, chunks[:10])
    assert any("index missing: rebuilt from" in d for d in place.recovered())
    place.events.clear()
    (place.state / "index.sqlite").write_bytes(b"this is not a database" * 1000)
    with place.open(passphrase="rebuild") as s:
        assert_readable(s, chunks[:10])
    assert any("index damaged" in d for d in place.recovered())


def test_rebuild_scans_a_pack_whose_trailer_is_cut_off(place: Place) -> None:
    chunks = [random_chunk(i, 16 << 10) for i in range(12)]
    with place.create(passphrase="scan") as s:
        put_all(s, chunks)
        s.seal()
        assert s.flush_uploads(5)
    (path,) = place.packs("backend")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30])  # footer and the end of the trailer gone
    for f in place.state.glob("index.sqlite*"):
        f.unlink()
    (place.state / "tmp" / "left-by-a-crash").write_bytes(b"partial")
    with place.open(passphrase="scan") as s:
        assert_readable(s, chunks)  # found by walking the blob headers
        assert s.stats().chunks == len(chunks)
    assert list((place.state / "tmp").iterdir()) == []
    assert any("temporary files removed: 1" in d for d in place.recovered())


def test_corrupt_byte_is_found_by_check_and_refused_by_get(place: Place) -> None:
    chunks = [random_chunk(i, 16 << 10) for i in range(8)]
    with place.create() as s:
        digests = put_all(s, chunks)
    with place.open() as s:
        assert s.flush_uploads(5)
        pack, entry = s.index.locate(digests[3]) or ("", None)
        assert entry is not None
        path = place.backend_dir / "packs" / pack[:2] / pack
        with open(path, "r+b") as f:
            f.seek(entry.payload_offset + 1000)
            byte = f.read(1)
            f.seek(entry.payload_offset + 1000)
            f.write(bytes([byte[0] ^ 0x40]))
        assert s.check().ok, "without read_data the damage is invisible"
        report = s.check(read_data=True, digests=digests)
        assert report.corrupt == {digests[3]} and report.missing == set()
        assert report.checked_chunks == len(chunks)
        assert any(digests[3].hex() in p for p in report.problems)
        with pytest.raises(TwinvaultError) as exc:
            s.get(digests[3])
        assert error_code(exc) == errors.CHUNK_CORRUPT
        assert_readable(s, chunks[:3] + chunks[4:])


def test_truncated_pack_keeps_chunks_before_the_cut(place: Place) -> None:
    chunks = [random_chunk(i, 16 << 10) for i in range(10)]
    with place.create() as s:
        digests = put_all(s, chunks)
    with place.open() as s:
        assert s.flush_uploads(5)  # the pack sealed at close goes out now
        (path,) = place.packs("backend")
        entries = {d: (s.index.locate(d) or ("", None))[1] for d in digests}
        cut_at = entries[digests[6]].offset + 100  # type: ignore[union-attr]
        os.truncate(path, cut_at)
        assert_readable(s, chunks[:6])
        with pytest.raises(TwinvaultError) as exc:
            s.get(digests[7])
        assert error_code(exc) == errors.CHUNK_MISSING
        report = s.check(digests=[*digests, digest(b"never stored")])
        assert report.missing == set(digests[6:]) | {digest(b"never stored")}
        assert any("shorter than its index says: 4 chunks" in p for p in report.problems)


def test_store_with_an_unmounted_local_backend_keeps_committing(place: Place) -> None:
    first, later = random_chunk(1), random_chunk(2)
    with place.create(pack_size=64 << 10) as s:
        put_all(s, [first])
        s.commit()
        assert s.flush_uploads(5)
        hidden = place.backend_dir.with_name("hidden")
        place.backend_dir.rename(hidden)  # the disk went away
        put_all(s, [later])
        s.commit()
        with pytest.raises(TwinvaultError) as exc:
            s.get(digest(first))
        assert error_code(exc) == errors.STORE_UNREACHABLE
        assert s.get(digest(later)) == later, "a chunk still local reads while the backend is away"
        assert s.stats().pending_uploads >= 1
        hidden.rename(place.backend_dir)
        assert s.flush_uploads(10)
        assert_readable(s, [first, later])
    ids = [i for i, _ in place.events]
    assert ev.STORE_BACKEND_FAILING in ids and ev.STORE_BACKEND_RECOVERED in ids
    assert ids.index(ev.STORE_BACKEND_FAILING) < ids.index(ev.STORE_BACKEND_RECOVERED)


# --- garbage collection ----------------------------------------------------------------------


def test_gc_removes_unreferenced_and_keeps_referenced(place: Place) -> None:
    chunks = [random_chunk(i, 16 << 10) for i in range(120)]
    with place.create(pack_size=128 << 10) as s:
        digests = put_all(s, chunks)
        s.commit()
        before = s.stats()
        # Pack-sized runs: the first packs lose everything, the others most or little.
        keep = set(digests[40:48]) | set(digests[60:120:3]) | set(digests[112:])
        report = s.collect_garbage(keep)
        after = s.stats()
        assert report.packs_removed > 0 and report.packs_written > 0
        assert report.chunks_removed >= 120 - len(keep) - 8  # dead blobs in kept packs may stay
        assert after.stored_bytes < before.stored_bytes and report.bytes_removed > 0
        assert_readable(s, [c for d, c in zip(digests, chunks, strict=True) if d in keep])
        for d in digests[:40]:
            with pytest.raises(TwinvaultError):
                s.get(d)
        assert s.check(read_data=True, digests=keep).ok
    with place.open() as s:
        assert_readable(s, [c for d, c in zip(digests, chunks, strict=True) if d in keep])
    assert place.recovered() == []


def test_chunk_deduplicated_during_gc_survives_it(place: Place) -> None:
    chunks = [random_chunk(i, 16 << 10) for i in range(20)]
    with place.create(pack_size=64 << 10) as s:
        digests = put_all(s, chunks)
        s.commit()
        s.begin_collection()
        referenced = set(digests[:5])  # the catalog's view, computed now
        # A new file arrives that shares chunk 10: put finds it stored and returns False.
        assert s.put(digests[10], chunks[10]) is False
        steps: list[str] = []

        def during(step: str) -> None:
            steps.append(step)
            if step == "planned":  # and chunk 11 while the collection runs
                s.put(digests[11], chunks[11])
                s.commit()

        s.collect_garbage(referenced, on_progress=during)
        assert "planned" in steps and "indexed" in steps
        assert_readable(s, chunks[:5] + chunks[10:12])


def test_interrupted_gc_leftovers_are_cleaned_at_the_next_open(place: Place) -> None:
    chunks = [random_chunk(i, 16 << 10) for i in range(40)]
    with place.create(pack_size=128 << 10) as s:
        digests = put_all(s, chunks)
        s.commit()
        s.flush_uploads(5)
        crash: dict[str, Place] = {}

        def snapshot(step: str) -> None:
            if step.startswith("written") and "written" not in crash:
                crash["written"] = place.crash_image("after-write")  # new packs, old index
            if step == "indexed":
                crash["indexed"] = place.crash_image("after-index")  # old packs still there

        keep = set(digests[::4])
        s.collect_garbage(keep, on_progress=snapshot)
        final_packs = {p.name for p in place.packs("backend")}
    for name, image in crash.items():
        with image.open() as s:
            assert_readable(s, [c for d, c in zip(digests, chunks, strict=True) if d in keep])
            assert s.flush_uploads(5)
            assert s.check(digests=keep).ok, name
            # Same packs as the finished collection, or its inputs: never a leftover.
            left = {p.name for p in image.packs("backend")}
            if name == "indexed":
                assert left == final_packs
        assert image.recovered(), f"the {name} crash image needed no repair?"
