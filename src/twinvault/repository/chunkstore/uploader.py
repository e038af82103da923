"""The uploader thread: moves what waits in the state dir to the backend.

It works through three lists, oldest first, until they are empty:

- sealed packs (`sealed/`): saved (or, for a local backend on the same filesystem,
  renamed) to `packs/..`, then marked stored in the index, then the local copy removed.
  A kill between any two steps repeats the step (saves are idempotent);
- saved objects (`outbox/`): saved to `objects/<name>`, then the local file removed if no
  newer save or a remove replaced it meanwhile;
- packs garbage collection superseded (index state `deleting`) that could not be removed
  yet: removed, then forgotten by the index.

The backend is a `RetryingBackend`: while it fails, each call gives up after its bounded
retry and the thread waits the current backoff before the next round, so packs pile up
locally (commit never waits) and go out in order once the backend answers again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.repository.chunkstore import index as ix
from twinvault.repository.chunkstore.index import Index
from twinvault.repository.chunkstore.layout import StateDir, object_key, pack_key
from twinvault.repository.chunkstore.retry import RetryingBackend

log = logging.getLogger(__name__)


class Uploader:
    def __init__(
        self, state: StateDir, index: Index, backend: RetryingBackend, objects_lock: threading.Lock
    ) -> None:
        self.state = state
        self.index = index
        self.backend = backend
        self.objects_lock = objects_lock
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._work_seen = True  # a round is due (set by wake())
        self._thread = threading.Thread(target=self._run, name="chunkstore-uploader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        with self._cond:
            self._work_seen = True
            self._cond.notify_all()

    def pending(self) -> int:
        """Packs and objects that wait for the backend."""
        return len(self.state.packs_in(self.state.sealed)) + len(self.state.outbox_names())

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing waits for the backend; False if `timeout` passes first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.pending() or self.index.packs(ix.DELETING):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._work_seen = True
                self._cond.notify_all()
                self._cond.wait(min(left, 0.05))
        return True

    def stop(self) -> None:
        self._stop.set()
        self.wake()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                self._cond.wait_for(lambda: self._work_seen or self._stop.is_set(), timeout=1.0)
                self._work_seen = False
            try:
                self._round()
            except TwinvaultError as exc:
                if exc.code != errors.STORE_UNREACHABLE:
                    log.exception("uploader round failed")
                # Back off before the next round; RetryingBackend already reported the outage.
                self._stop.wait(max(self.backend.current_delay(), 0.05))
                self.wake()
            except Exception:  # a local disk error: keep the thread alive, try again later
                log.exception("uploader round failed")
                self._stop.wait(1.0)
                self.wake()
            with self._cond:
                self._cond.notify_all()  # wait_idle() re-checks

    def _round(self) -> None:
        for pack in self.state.packs_in(self.state.sealed):
            if self._stop.is_set():
                return
            self._upload_pack(pack, self.state.sealed_pack(pack))
        for name in self.state.outbox_names():
            if self._stop.is_set():
                return
            self._upload_object(name, self.state.outbox_file(name))
        for row in self.index.packs(ix.DELETING):
            if self._stop.is_set():
                return
            self.backend.remove(pack_key(row.name))
            with self.index.writing() as w:
                w.delete_pack(row.name)

    def _upload_pack(self, pack: str, path: Path) -> None:
        row = self.index.pack(pack)
        if row is not None and row.state in (ix.STORED, ix.DELETING):
            path.unlink(missing_ok=True)  # uploaded before a crash; only the local copy was left
            return
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return
        self.backend.adopt(pack_key(pack), path)
        with self.index.writing() as w:
            w.add_pack(pack, ix.STORED, size)
            w.set_pack(pack, ix.STORED, size)
        path.unlink(missing_ok=True)
        with self._cond:
            self._cond.notify_all()

    def _upload_object(self, name: str, path: Path) -> None:
        try:
            before = path.stat()
            data = path.read_bytes()
        except FileNotFoundError:
            return
        self.backend.save(object_key(name), data)
        with self.objects_lock:
            try:
                now = path.stat()
            except FileNotFoundError:
                # remove_object ran while we uploaded: our save may have landed after its remove.
                self.backend.remove(object_key(name))
                return
            if (now.st_ino, now.st_mtime_ns, now.st_size) == (
                before.st_ino,
                before.st_mtime_ns,
                before.st_size,
            ):
                os.unlink(path)
