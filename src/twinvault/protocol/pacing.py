"""The token bucket a link paces its writes with when its job has a bandwidth limit.

The guide's promise is that a limit is "never exceeded": here, the bytes on the wire in
ANY one-second window stay under the limit. Three things make that hold, not just the
average:

- a small bucket: it holds two *pieces* (a piece is 1 % of a second's worth, 1-16 KiB;
  the second absorbs the thread's late wake-ups), so a quiet link cannot save up a
  burst; a large frame is written a piece at a time, spread over as many windows as it
  needs, never as one burst;
- pieces are charged as wire bytes: ``WIRE_OVERHEAD`` covers the TCP/IP and Ethernet
  headers (66 bytes per 1448-byte segment) and the TLS record's 22 bytes;
- the kernel may hold at most one piece not yet sent (``SIOCOUTQNSD``): bytes queued in
  the socket while the peer's window was closed would otherwise leave at line rate all
  at once when it opens.

Only the link's I/O thread uses a Pacer; the link swaps it for a new one when the limit
changes.
"""

from __future__ import annotations

import fcntl
import struct
import time
from collections.abc import Callable

KIB = 1024
WIRE_OVERHEAD = 1.05
MIN_PIECE = 1 * KIB
MAX_PIECE = 16 * KIB  # one TLS record
SIOCOUTQNSD = 0x894B  # linux/sockios.h: bytes in the send queue not yet sent


class Pacer:
    def __init__(self, bytes_per_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        if bytes_per_s <= 0:
            raise ValueError("a pacer needs a positive rate")
        self.rate = float(bytes_per_s)
        self.piece = min(MAX_PIECE, max(MIN_PIECE, bytes_per_s // 100))
        self._capacity = 2 * self.piece * WIRE_OVERHEAD
        self._clock = clock
        self._tokens = self._capacity
        self._at = clock()

    def grant(self, size: int, unsent: int = 0) -> tuple[int, float]:
        """``(n, 0.0)``: write the first ``n`` of ``size`` bytes now (paid for); or
        ``(0, seconds)``: wait that long first. ``unsent``: bytes the kernel still holds."""
        if unsent > self.piece:
            return 0, max(0.0005, (unsent - self.piece) / self.rate)
        n = min(size, self.piece)
        cost = n * WIRE_OVERHEAD
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= cost * (1 - 1e-9):  # float rounding must not leave it short forever
            self._tokens = max(0.0, self._tokens - cost)
            return n, 0.0
        return 0, max(1e-4, (cost - self._tokens) / self.rate)

    def take_budget(self, default: int) -> int:
        """How much the link should take from its queue per round: an eighth of a second's
        worth, so frames counted as sent are on their way soon, not queued for seconds."""
        return max(64 * KIB, min(default, int(self.rate) // 8))


def unsent_bytes(fd: int) -> int:
    """Bytes the kernel holds for ``fd`` that have not been sent yet."""
    return int(struct.unpack("i", fcntl.ioctl(fd, SIOCOUTQNSD, b"\0\0\0\0"))[0])
