"""zstd for chunks at the transmission levels (``compression_levels``), and the one test
for data not worth compressing.

Used by the link's senders (a protection job's reader, a Data Recovery job's stream) and
by the chunk store's codec, so that a chunk is judged compressible the same way wherever
it is compressed, and a chunk the store holds compressed can go on the wire as it is.

The minimum level keeps up with a 1 Gbit/s link on one core (``bench/bench_compression.py``).

zstd contexts are not thread-safe: each thread gets its own.
"""

from __future__ import annotations

import threading
from typing import Final

import zstandard

from twinvault.compression_levels import LEVELS, checked_level

# A sample of this many bytes from the middle of a chunk decides whether the whole
# chunk is worth a full compression (chunks of at least 4 samples only).
PROBE_BYTES: Final = 4096


def worth_compressing(raw_len: int, compressed_len: int) -> bool:
    """Compression that saves under ~3 % is not worth a decompression on every read."""
    return compressed_len <= raw_len - raw_len // 32


class ChunkCompressor:
    """Compresses chunks at one zstd level, each into a zstd frame of its own."""

    def __init__(self, level: int) -> None:
        self.level = level
        self._local = threading.local()

    def _contexts(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdCompressor]:
        pair: tuple[zstandard.ZstdCompressor, zstandard.ZstdCompressor] | None = getattr(
            self._local, "pair", None
        )
        if pair is None:
            # The probe runs at level 1 whatever the level: it only asks "is there
            # redundancy at all", and must cost next to nothing.
            pair = (zstandard.ZstdCompressor(level=self.level), zstandard.ZstdCompressor(level=1))
            self._local.pair = pair
        return pair

    def compress(self, data: bytes | memoryview) -> bytes | None:
        """The chunk as a zstd frame, or None when it is not worth compressing (then it
        travels or is stored as it is)."""
        full, probe = self._contexts()
        if len(data) >= 4 * PROBE_BYTES:
            # Already-compressed or random data (media, archives, encrypted files) is
            # most of a large tree's bytes: a fast look at a sample from its middle saves
            # a full compression that would be thrown away.
            middle = len(data) // 2
            sample = data[middle : middle + PROBE_BYTES]
            if not worth_compressing(len(sample), len(probe.compress(sample))):
                return None
        frame: bytes = full.compress(data)
        return frame if worth_compressing(len(data), len(frame)) else None


def compressor_for(name: str) -> ChunkCompressor | None:
    """The compressor of a level name (None for "none"); -153 for an unknown name."""
    level = LEVELS[checked_level(name)]
    return None if level is None else ChunkCompressor(level)


_decompressors = threading.local()


class FrameInvalid(ValueError):
    """A zstd frame that does not decode to the length it claims."""


def _decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompressor (a zstd context serves one thread at a time)."""
    d: zstandard.ZstdDecompressor | None = getattr(_decompressors, "d", None)
    if d is None:
        d = _decompressors.d = zstandard.ZstdDecompressor()
    return d


def decompress_whole(frame: bytes | memoryview) -> bytes:
    """The plain bytes of one zstd frame that records its own size (a store's object)."""
    try:
        out: bytes = _decompressor().decompress(frame)
    except zstandard.ZstdError as exc:
        raise FrameInvalid(f"zstd: {exc}") from None
    return out


def decompress_frame(frame: bytes | memoryview, raw_len: int) -> bytes:
    """The plain bytes of one zstd frame that must hold exactly ``raw_len`` bytes."""
    try:
        out: bytes = _decompressor().decompress(frame, max_output_size=max(raw_len, 1))
    except zstandard.ZstdError as exc:
        raise FrameInvalid(f"zstd: {exc}") from None
    if len(out) != raw_len:
        raise FrameInvalid(f"zstd frame holds {len(out)} bytes, not {raw_len}")
    return out
