"""How the daemon's heap uses the machine's memory: freed buffers are kept for reuse
while data flows, and given back to the system after a burst (a mirror's plan and queue).

Why keep them: a page the process touches for the first time costs a fault and a zeroed
page, and on a virtual machine whose free memory is handed back to the host (virtio
balloon free page reporting) a host fault too; measured here, ~3 s per GiB against
~0.1 s for a page reused. glibc's defaults return large freed blocks at once (mmap'ed
above a dynamic threshold, the heap's top trimmed above another), so every few-MiB frame
buffer of a mirror was fresh memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

_libc_name = ctypes.util.find_library("c")
_libc = ctypes.CDLL(_libc_name) if _libc_name else None

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks below this come from the heap and are reused (frames are at most a few MiB;
# glibc caps the threshold at 32 MiB on 64-bit).
MMAP_THRESHOLD = 32 << 20
# Free memory at the top of a heap kept for reuse; ``release_free_memory`` trims it all.
TRIM_THRESHOLD = 64 << 20


def keep_freed_memory() -> bool:
    """Make glibc keep freed buffers for reuse (see the module docstring). False when
    the C library has no ``mallopt`` or refuses (nothing changes then)."""
    mallopt = getattr(_libc, "mallopt", None) if _libc is not None else None
    if mallopt is None:
        return False
    mapped = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    return mapped and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_free_memory() -> None:
    """Collect garbage, then ask glibc to return free heap pages (``malloc_trim``):
    without it the daemon's resident size stays at its mirror-time peak for good."""
    gc.collect()
    trim = getattr(_libc, "malloc_trim", None) if _libc is not None else None
    if trim is not None:
        trim(0)
