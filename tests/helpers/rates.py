"""Bytes per second as the tests measure them: interface counters of a process's network
namespace sampled on a thread, and the busiest one-second window of a series of samples
(the guide's bandwidth limit is "never exceeded", so tests check every window, not the
average)."""

from __future__ import annotations

import threading
import time
from types import TracebackType

Samples = list[tuple[float, int]]


def max_window(samples: Samples, window: float = 1.0) -> float:
    """The most bytes per second over any ``window`` s of cumulative (time, bytes) samples:
    from each sample to the first one at least ``window`` later."""
    best = 0.0
    j = 0
    for i, (t0, b0) in enumerate(samples):
        j = max(j, i + 1)
        while j < len(samples) and samples[j][0] - t0 < window:
            j += 1
        if j == len(samples):
            break
        t1, b1 = samples[j]
        best = max(best, (b1 - b0) / (t1 - t0))
    return best


def mean_rate(samples: Samples) -> float:
    (t0, b0), (t1, b1) = samples[0], samples[-1]
    return (b1 - b0) / (t1 - t0)


def between(samples: Samples, start: float, end: float) -> Samples:
    return [s for s in samples if start <= s[0] <= end]


def interface_bytes(pid: int, device: str) -> tuple[int, int]:
    """(received, transmitted) bytes of ``device`` in the network namespace of ``pid``."""
    with open(f"/proc/{pid}/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == device:
                fields = rest.split()
                return int(fields[0]), int(fields[8])
    raise LookupError(f"no device {device} in the namespace of {pid}")


class CounterSampler:
    """Samples the transmitted bytes of some devices every ``interval`` s on a thread:
    ``sampler.samples[device]`` is a list of (monotonic time, bytes)."""

    def __init__(self, pid: int, devices: list[str], interval: float = 0.05) -> None:
        self._pid = pid
        self._interval = interval
        self.samples: dict[str, Samples] = {d: [] for d in devices}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="counter-sampler", daemon=True)

    def __enter__(self) -> CounterSampler:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            for device, series in self.samples.items():
                # On a loaded machine the thread can lose the CPU between reading the
                # clock and the counter, and the bytes would look sent in less time:
                # keep only reads that took under 2 ms, timed at their middle.
                before = time.monotonic()
                sent = interface_bytes(self._pid, device)[1]
                after = time.monotonic()
                if after - before < 0.002:
                    series.append(((before + after) / 2, sent))
            self._stop.wait(self._interval)
