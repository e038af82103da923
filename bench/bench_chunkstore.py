"""Chunk store throughput: put and get MB/s against plain file writes and reads of the same bytes.

For each kind of data (random = incompressible, text = compressible) and each store kind
(plain, encrypted), the same 64 KiB chunks are

- put into a fresh `ChunkStore` on a `LocalBackend` (one thread, then two threads), with a
  `commit()` every 50 ms as the repository's group commit does, then read back with `get`
  (in put order) and with `get_many`;
- written with `os.write` to one plain file, with an `fdatasync` every 50 ms, and read back
  with one `os.pread` per chunk: the reference (STYLE rule 10).

Digests are computed before the clock starts (the chunker has them already). The page
cache is warm for both readers (the data was just written); `--drop-caches` (root) drops
it before each read for both. Also measured: the cost of one `commit()` with one new
chunk in it, against one plain `write` + `fdatasync`.

    .venv/bin/python bench/bench_chunkstore.py              # 256 MiB per run, ~1 min
    .venv/bin/python bench/bench_chunkstore.py --mib 64     # quick
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src")]

import blake3  # noqa: E402

from twinvault.repository.chunkstore import ChunkStore  # noqa: E402
from twinvault.repository.chunkstore.local import LocalBackend  # noqa: E402

CHUNK = 64 << 10
COMMIT_EVERY = 0.05


def random_chunks(count: int) -> list[bytes]:
    return [os.urandom(CHUNK) for _ in range(count)]


def text_chunks(count: int) -> list[bytes]:
    """English-like text, distinct per chunk, ~3-4x compressible by zstd -3."""
    rng = random.Random(7)
    words = [
        "".join(rng.choice("etaoinshrdlucmfwypvbgkjqxz") for _ in range(rng.randint(2, 9)))
        for _ in range(5000)
    ]
    base = " ".join(rng.choice(words) for _ in range(400_000)).encode()
    out = []
    for i in range(count):
        at = (i * 40_009) % (len(base) - CHUNK)
        out.append(b"%016d" % i + base[at + 16 : at + CHUNK])
    return out


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def rate(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def with_commits(puts: Callable[[int], None], count: int, commit: Callable[[], None]) -> float:
    """Run puts(i) for every i, committing every COMMIT_EVERY s; return the seconds taken."""
    start = last = time.perf_counter()
    for i in range(count):
        puts(i)
        now = time.perf_counter()
        if now - last >= COMMIT_EVERY:
            commit()
            last = now
    commit()
    return time.perf_counter() - start


def bench_plain(root: Path, chunks: list[bytes], drop: bool) -> tuple[float, float]:
    path = root / "plain.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    seconds = with_commits(lambda i: os.write(fd, chunks[i]), len(chunks), lambda: os.fdatasync(fd))
    os.close(fd)
    total = len(chunks) * CHUNK
    write = rate(total, seconds)
    if drop:
        drop_caches()
    fd = os.open(path, os.O_RDONLY)
    start = time.perf_counter()
    for i in range(len(chunks)):
        os.pread(fd, CHUNK, i * CHUNK)
    read = rate(total, time.perf_counter() - start)
    os.close(fd)
    path.unlink()
    return write, read


def bench_store(
    root: Path, chunks: list[bytes], digests: list[bytes], passphrase: str | None, threads: int, drop: bool
) -> dict[str, float]:
    state, backend = root / "state", root / "backend"
    store = ChunkStore.create(state, LocalBackend(backend), passphrase=passphrase)
    total = len(chunks) * CHUNK
    if threads == 1:
        seconds = with_commits(lambda i: store.put(digests[i], chunks[i]), len(chunks), store.commit)
    else:
        start = time.perf_counter()

        def worker(k: int) -> None:
            part = range(k, len(chunks), threads)
            with_commits(lambda i: store.put(digests[part[i]], chunks[part[i]]), len(part), store.commit)

        pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        seconds = time.perf_counter() - start
    result = {"put": rate(total, seconds)}
    store.seal()
    store.flush_uploads(60)
    stats = store.stats()
    result["ratio"] = stats.stored_bytes / stats.raw_bytes
    if threads == 1:
        if drop:
            drop_caches()
        start = time.perf_counter()
        for d in digests:
            store.get(d)
        result["get"] = rate(total, time.perf_counter() - start)
        if drop:
            drop_caches()
        start = time.perf_counter()
        for _ in store.get_many(digests):
            pass
        result["get_many"] = rate(total, time.perf_counter() - start)
    store.close()
    shutil.rmtree(state)
    shutil.rmtree(backend)
    return result


def bench_commit(root: Path, samples: int) -> tuple[list[float], list[float]]:
    """Latency of commit() with one new 64 KiB chunk, and of plain write + fdatasync."""
    store = ChunkStore.create(root / "c-state", LocalBackend(root / "c-backend"))
    ours = []
    for _ in range(samples):
        data = os.urandom(CHUNK)
        store.put(blake3.blake3(data).digest(), data)
        start = time.perf_counter()
        store.commit()
        ours.append(time.perf_counter() - start)
    store.close()
    fd = os.open(root / "c-plain", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    plain = []
    for _ in range(samples):
        data = os.urandom(CHUNK)
        start = time.perf_counter()
        os.write(fd, data)
        os.fdatasync(fd)
        plain.append(time.perf_counter() - start)
    os.close(fd)
    return ours, plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB of chunks per run (default 256)")
    parser.add_argument("--drop-caches", action="store_true", help="drop the page cache before reads (root)")
    parser.add_argument("--commit-samples", type=int, default=200)
    args = parser.parse_args()
    count = args.mib * (1 << 20) // CHUNK
    base = Path(os.environ.get("TV_BENCH_DIR") or tempfile.gettempdir())
    root = Path(tempfile.mkdtemp(prefix="tv-bench-chunkstore-", dir=base))
    print(
        f"chunk store: {args.mib} MiB per run, {CHUNK >> 10} KiB chunks, zstd -3, 16 MiB packs, "
        f"commit every {COMMIT_EVERY * 1000:.0f} ms, {os.cpu_count()} cores, dir {root}, "
        f"page cache {'dropped' if args.drop_caches else 'warm'} before reads, "
        f"load average before {os.getloadavg()[0]:.2f} (other processes share the cores)"
    )
    print(
        f"{'data':<7} {'store':<10} {'threads':>7} {'put MB/s':>9} {'plain write':>11} {'ratio':>6} "
        f"{'get MB/s':>9} {'get_many':>9} {'plain read':>10} {'ratio':>6} {'stored/raw':>10}"
    )
    try:
        for kind, make in (("random", random_chunks), ("text", text_chunks)):
            chunks = make(count)
            digests = [blake3.blake3(c).digest() for c in chunks]
            write, read = bench_plain(root, chunks, args.drop_caches)
            for passphrase in (None, "bench"):
                for threads in (1, 2):
                    r = bench_store(root, chunks, digests, passphrase, threads, args.drop_caches)
                    name = "encrypted" if passphrase else "plain"
                    line = (
                        f"{kind:<7} {name:<10} {threads:>7} {r['put']:>9.0f} {write:>11.0f} "
                        f"{r['put'] / write:>6.2f}"
                    )
                    if "get" in r:
                        line += (
                            f" {r['get']:>9.0f} {r['get_many']:>9.0f} {read:>10.0f} {r['get'] / read:>6.2f}"
                        )
                    else:
                        line += f" {'':>9} {'':>9} {'':>10} {'':>6}"
                    print(line + f" {r['ratio']:>10.2f}", flush=True)
        ours, plain = bench_commit(root, args.commit_samples)
        q = statistics.quantiles
        print(
            f"commit with one new 64 KiB chunk: mean {statistics.mean(ours) * 1e3:.2f} ms, "
            f"p99 {q(ours, n=100)[98] * 1e3:.2f} ms; plain write + fdatasync: mean "
            f"{statistics.mean(plain) * 1e3:.2f} ms, p99 {q(plain, n=100)[98] * 1e3:.2f} ms; "
            f"ratio {statistics.mean(ours) / statistics.mean(plain):.2f}"
        )
        print(f"load average after {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
