"""The CPUs a daemon runs on (``cpus`` in ``[host]``): a list such as ``"1"`` or ``"0,2-3"``.

Why a daemon may want fewer CPUs than the machine has: its threads (event loop, link I/O,
applier, history recorder) take turns holding the interpreter's lock, and each turn that
crosses CPUs wakes the other CPU. On a virtual machine that wake-up goes through the
hypervisor: on the 2-vCPU machine of docs/benchmarks.md (session 9), a repository daemon
confined to one CPU mirrored 20,000 small files in 5.9-7.4 s instead of 9.6-9.7 s, and a
1 GiB file no slower. The default is every CPU the daemon is allowed.
"""

from __future__ import annotations

import os

from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError


def parse_cpus(spec: str) -> set[int]:
    """``"0,2-3"`` -> {0, 2, 3}; ``""`` -> set() (every CPU)."""
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise TwinvaultError(errors.INVALID_OPTION, f"cpus: {part!r} is not a CPU number or range")
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise TwinvaultError(errors.INVALID_OPTION, f"cpus: range {part!r} runs backwards")
        cpus.update(range(low, high + 1))
    return cpus


def confine(spec: str) -> set[int]:
    """Confine this process, and every thread it starts afterwards, to the CPUs of
    ``spec`` (nothing when it is empty); returns the CPUs it runs on. Called before the
    daemon starts a thread: a thread keeps the CPUs it was started with."""
    allowed = os.sched_getaffinity(0)
    cpus = parse_cpus(spec)
    if not cpus:
        return allowed
    missing = cpus - allowed
    if missing:
        raise TwinvaultError(
            errors.INVALID_OPTION,
            f"cpus: {_listed(missing)} not available to this daemon (it may use {_listed(allowed)})",
        )
    os.sched_setaffinity(0, cpus)
    return cpus


def _listed(cpus: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))
