"""A peer link: framed, counted messages over TLS, the TLS and socket work on a thread of its own.

Both ends of the peer protocol (``source.job``, ``repository.receiver``) talk through a
Link. The event loop, or any thread, posts frames and awaits decoded messages; one I/O
thread per link drives the connection's non-blocking ``ssl.SSLSocket``: it encrypts and
sends, receives, decrypts and cuts frames (``frames.FrameReader``). Why a thread:
asyncio's SSL transport pushes every byte through a MemoryBIO in Python with the GIL
held, copying it several times on the event loop; here OpenSSL and the socket calls run
with the GIL released, beside the loop and the reader or applier thread. Runs of small
frames go out in one write; a large frame goes as it is, never copied to be joined.

Only the I/O thread touches the SSL object: OpenSSL does not let two threads use one
connection at once. A sender may hand the thread a *feed*, a function it calls for more
frames whenever it has room, so that a source's queue drains straight onto the wire.

A bandwidth limit (``set_rate``) paces the writes with a ``pacing.Pacer``: the thread
writes a piece at a time and sleeps in ``poll`` (still reading) until the bucket allows
the next; unlimited links never consult it.

Back-pressure: received messages wait in an inbox of about ``INBOX_BYTES`` (beyond it
the thread stops reading and TCP holds the peer back); posted frames wait in an outbox,
and ``send`` waits while it holds more than ``OUTBOX_BYTES``. Opening links (connect,
listen, handshake, pinning) is ``connection``'s business.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import ssl
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twinvault.protocol.frames import FrameReader, encode_frame
from twinvault.protocol.pacing import Pacer, unsent_bytes

# A feed returns frames to send, about ``budget`` bytes of them (at least one if any).
Feed = Callable[[int], list[bytes]]

WRITE_BYTES = 1024 * 1024  # taken from the outbox and the feed per round of writes
JOIN_BELOW = 16 * 1024  # frames smaller than one TLS record are joined into one write
INBOX_BYTES = 4 * 1024 * 1024
OUTBOX_BYTES = 4 * 1024 * 1024
READ_ROUND = 1024 * 1024  # received per round before the thread turns to its output again
_IN = select.POLLIN
_OUT = select.POLLOUT
_ERR = select.POLLERR | select.POLLHUP | select.POLLNVAL


@dataclass(slots=True)
class LinkCounters:
    bytes_tx: int = 0
    bytes_rx: int = 0
    frames_tx: int = 0
    frames_rx: int = 0
    bytes_written: int = 0  # handed to TLS by the I/O thread (bytes_tx counts posted frames)


class Link:
    def __init__(self, sock: ssl.SSLSocket) -> None:
        """Take over a connected socket whose TLS handshake is done; on the event loop."""
        self.counters = LinkCounters()
        try:
            peer = sock.getpeername()
            self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        except OSError:
            self.peer = "?"
        self._sock = sock
        sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._outbox: deque[bytes] = deque()
        self._outbox_bytes = 0
        self._feed: Feed | None = None
        self._inbox: deque[tuple[list[Any], int]] = deque()
        self._inbox_bytes = 0
        self._end: BaseException | None = None  # why no message follows the inbox's
        self._closing = False  # send what is posted, then close
        self._aborted = False  # close now
        self._finished = False  # the thread has closed the socket
        self._sleeping = False
        self._kicked = False
        self._recv_waiter: asyncio.Future[None] | None = None
        self._room_waiters: list[asyncio.Future[None]] = []
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._rate: int | None = None  # bytes per second; None: unlimited
        self._rate_changed = False
        self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name=f"link {self.peer}", daemon=True)
        self._thread.start()

    # -- sending (any thread) -------------------------------------------------------

    def post(self, frame: bytes) -> None:
        """Queue one encoded frame for sending; never blocks."""
        with self._lock:
            if self._closing or self._finished:
                raise ConnectionError("the link is closed")
            self._outbox.append(frame)
            self._outbox_bytes += len(frame)
            self.counters.bytes_tx += len(frame)
            self.counters.frames_tx += 1
            self._wake_locked()

    def set_feed(self, feed: Feed | None) -> None:
        """Let the I/O thread pull frames from ``feed`` whenever it has room to send."""
        with self._lock:
            self._feed = feed
            self._wake_locked()

    def set_rate(self, bytes_per_s: int | None) -> None:
        """Limit what the link writes to ``bytes_per_s`` (None: unlimited), from now on;
        from any thread."""
        with self._lock:
            if bytes_per_s != self._rate:
                self._rate = bytes_per_s
                self._rate_changed = True
                self._wake_locked()

    @property
    def rate(self) -> int | None:
        return self._rate

    def wake(self) -> None:
        """The feed has frames again (after it returned none)."""
        with self._lock:
            self._wake_locked()

    def _wake_locked(self) -> None:
        self._kicked = True
        if self._sleeping and not self._finished:
            self._sleeping = False
            os.eventfd_write(self._wake_fd, 1)

    async def send(self, message: list[Any]) -> None:
        await self.send_raw(encode_frame(message))

    async def send_raw(self, frame: bytes) -> None:
        self.post(frame)
        if self._outbox_bytes > OUTBOX_BYTES:
            await self.flush()

    async def flush(self) -> None:
        """Wait until the outbox holds at most OUTBOX_BYTES (asyncio's ``drain``)."""
        while True:
            with self._lock:
                if self._finished:
                    raise ConnectionError("the link is closed")
                if self._outbox_bytes <= OUTBOX_BYTES:
                    return
                waiter = self._loop.create_future()
                self._room_waiters.append(waiter)
            await waiter

    # -- receiving (the event loop) -----------------------------------------------------

    async def recv(self, timeout: float | None = None) -> list[Any]:
        """The next message. Raises TimeoutError after ``timeout`` s without one,
        ``asyncio.IncompleteReadError`` at the end of the stream (clean or torn),
        ``TwinvaultError`` for a frame too large or not a message, ConnectionError
        when the link broke or was closed; every whole frame before comes first."""
        message, _ = await self.recv_sized(timeout)
        return message

    async def recv_sized(self, timeout: float | None = None) -> tuple[list[Any], int]:
        """``recv``, with the size of the message's frame on the wire."""
        while True:
            with self._lock:
                if self._inbox:
                    message, size = self._inbox.popleft()
                    self._inbox_bytes -= size
                    if self._inbox_bytes < INBOX_BYTES <= self._inbox_bytes + size:
                        self._wake_locked()  # room again: the thread may read on
                    return message, size
                if self._end is not None:
                    raise self._end
                waiter = self._recv_waiter = self._loop.create_future()
            try:
                if timeout is None:
                    await waiter
                else:
                    await asyncio.wait_for(waiter, timeout)
            finally:
                with self._lock:
                    if self._recv_waiter is waiter:
                        self._recv_waiter = None

    # -- closing ------------------------------------------------------------------------

    def abort(self) -> None:
        """Drop the connection now, from any thread; what was not sent is lost (the
        peer's protocol resends what was not acknowledged)."""
        with self._lock:
            self._aborted = self._closing = True
            self._wake_locked()

    async def close(self) -> None:
        """Send what was posted (for at most 2 s), end TLS and close; idempotent."""
        with self._lock:
            self._closing = True
            self._wake_locked()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._done), 2)
        self.abort()
        await asyncio.shield(self._done)

    # -- the I/O thread -------------------------------------------------------------------

    def _run(self) -> None:
        reader = FrameReader()
        out: deque[bytes | memoryview] = deque()
        out_bytes = 0
        readable = writable = True  # until a call says it would block
        read_on, write_on = _IN, _OUT  # what a blocked read or write waits for
        poller = select.poll()
        poller.register(self._wake_fd, _IN)
        fd = self._sock.fileno()
        poller.register(fd, 0)
        mask = 0
        watching = True  # False once the socket reported a hang-up or an error
        end: BaseException | None = None
        graceful = False
        pacer: Pacer | None = None
        paid = 0  # bytes at the head of ``out`` the pacer already granted
        try:
            while not self._aborted:
                if self._rate_changed:
                    with self._lock:
                        self._rate_changed = False
                        pacer = Pacer(self._rate) if self._rate else None
                budget = WRITE_BYTES if pacer is None else pacer.take_budget(WRITE_BYTES)
                if out_bytes < budget:
                    out_bytes += self._take(out, budget - out_bytes)
                drained = False  # all that was taken is written: take again before sleeping
                paced = 0.0  # seconds until the pacer allows the next write
                if out and writable:
                    if pacer is None:
                        out_bytes, write_on = self._write(out, out_bytes)
                        # A blocked write is retried with the same buffer, whole, even if
                        # a limit comes in meanwhile; anything else is paced from the start.
                        paid = len(out[0]) if out and write_on else 0
                    else:
                        out_bytes, write_on, paid, paced = self._write_paced(out, out_bytes, pacer, paid)
                    writable = not write_on
                    drained = not out
                reading = self._end is None and self._inbox_bytes < INBOX_BYTES
                if reading and readable:
                    read_on = self._read(reader)
                    readable = not read_on
                    reading = self._end is None and self._inbox_bytes < INBOX_BYTES
                if self._closing and not out and not self._outbox:
                    graceful = True
                    break
                if (out and writable and not paced) or (reading and readable) or drained:
                    continue
                with self._lock:
                    if self._kicked:
                        self._kicked = False
                        continue
                    self._sleeping = True
                want = (write_on if out else 0) | (read_on if reading else 0)
                if want != mask and watching:
                    poller.modify(fd, want)
                    mask = want
                events = poller.poll(max(1, int(paced * 1000 + 0.999)) if paced else None)
                with self._lock:
                    self._sleeping = False
                for ready_fd, ev in events:
                    if ready_fd == self._wake_fd:
                        with contextlib.suppress(BlockingIOError):
                            os.eventfd_read(self._wake_fd)
                        continue
                    if ev & _ERR:
                        # Reported whatever the mask, so stop watching (or poll would
                        # spin); the next read or write meets the error or the end.
                        poller.unregister(fd)
                        watching = False
                        readable = writable = True
                    if ev & _IN:
                        readable |= read_on == _IN
                        writable |= write_on == _IN
                    if ev & _OUT:
                        writable |= write_on == _OUT
                        readable |= read_on == _OUT
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            end = ConnectionError(f"link to {self.peer}: {exc}")
        finally:
            self._shut(graceful)
            self._finish(end)

    def _take(self, out: deque[bytes | memoryview], budget: int) -> int:
        """Move up to ``budget`` bytes of frames from the outbox, then the feed, to
        ``out``: small frames joined into one buffer, large ones as they are."""
        frames: list[bytes] = []
        taken = 0
        with self._lock:
            self._kicked = False
            while self._outbox and taken < budget:
                frame = self._outbox.popleft()
                frames.append(frame)
                taken += len(frame)
            self._outbox_bytes -= taken
            feed = self._feed if not self._closing else None
            room = self._room_waiters if self._outbox_bytes <= OUTBOX_BYTES else []
            if room:
                self._room_waiters = []
        for waiter in room:
            self._resolve(waiter)
        if feed is not None and taken < budget:
            for frame in feed(budget - taken):
                frames.append(frame)
                taken += len(frame)
        small: list[bytes] = []
        for frame in frames:
            if len(frame) < JOIN_BELOW:
                small.append(frame)
                continue
            if small:
                out.append(b"".join(small))
                small = []
            out.append(frame)
        if small:
            out.append(small[0] if len(small) == 1 else b"".join(small))
        return taken

    def _write(self, out: deque[bytes | memoryview], out_bytes: int) -> tuple[int, int]:
        """Write from ``out`` until it is empty (0) or the socket needs an event first."""
        try:
            while out:
                buffer = out[0]
                n = self._sock.send(buffer)  # OpenSSL sends it all or asks to be called again
                if n < len(buffer):
                    out[0] = memoryview(buffer)[n:]
                else:
                    out.popleft()
                out_bytes -= n
                self.counters.bytes_written += n
        except ssl.SSLWantWriteError:
            return out_bytes, _OUT
        except ssl.SSLWantReadError:
            return out_bytes, _IN
        return out_bytes, 0

    def _write_paced(
        self, out: deque[bytes | memoryview], out_bytes: int, pacer: Pacer, paid: int
    ) -> tuple[int, int, int, float]:
        """``_write`` a piece at a time as the pacer grants them; also returns the bytes
        paid for but not yet written and the seconds to wait for the next grant."""
        while out:
            if not paid:
                head = out[0]
                paid, wait = pacer.grant(len(head), unsent_bytes(self._sock.fileno()))
                if not paid:
                    return out_bytes, 0, 0, wait
                if paid < len(head):
                    # Split the head: OpenSSL retries a blocked write with the same buffer.
                    view = memoryview(head)
                    out[0] = view[paid:]
                    out.appendleft(view[:paid])
            before = out_bytes
            piece = deque([out.popleft()])
            out_bytes, blocked = self._write(piece, out_bytes)
            paid -= before - out_bytes
            if piece:
                out.appendleft(piece[0])
            if blocked:
                return out_bytes, blocked, paid, 0.0
        return out_bytes, 0, paid, 0.0

    def _read(self, reader: FrameReader) -> int:
        """Receive and cut frames for one round; the event a further read waits for
        (0: none, the round ended or the stream did)."""
        blocked = 0
        end: BaseException | None = None
        got = 0
        try:
            while got < READ_ROUND:
                n = self._sock.recv_into(reader.space())
                if not n:
                    end = asyncio.IncompleteReadError(b"", None)  # clean or torn, the caller's call
                    break
                reader.received(n)
                got += n
        except ssl.SSLWantReadError:
            blocked = _IN
        except ssl.SSLWantWriteError:
            blocked = _OUT
        except OSError as exc:
            end = ConnectionError(f"link to {self.peer}: {exc}")
        frames, error = reader.cut()
        self._deliver(frames, error or end)
        return blocked

    def _deliver(self, frames: list[tuple[list[Any], int]], end: BaseException | None) -> None:
        size = sum(s for _, s in frames)
        self.counters.bytes_rx += size
        self.counters.frames_rx += len(frames)
        with self._lock:
            self._inbox.extend(frames)
            self._inbox_bytes += size
            if end is not None and self._end is None:
                self._end = end
            waiter = self._recv_waiter if (frames or end is not None) else None
            if waiter is not None:
                self._recv_waiter = None
        if waiter is not None:
            self._resolve(waiter)

    def _shut(self, graceful: bool) -> None:
        if graceful:
            # close_notify tells the peer the stream ended here, not cut; best effort
            with contextlib.suppress(OSError, ValueError):
                self._sock.unwrap()
        with contextlib.suppress(OSError):
            self._sock.close()

    def _finish(self, end: BaseException | None) -> None:
        with self._lock:
            self._finished = True
            if self._end is None:
                self._end = end or ConnectionAbortedError(f"link to {self.peer} closed")
            os.close(self._wake_fd)
            waiters = [*self._room_waiters, *([self._recv_waiter] if self._recv_waiter else [])]
            self._room_waiters, self._recv_waiter = [], None
        for waiter in [*waiters, self._done]:
            self._resolve(waiter)

    def _resolve(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(_set_done, waiter)


def _set_done(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
