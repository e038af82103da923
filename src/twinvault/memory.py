"""Giving freed memory back to the system after a burst (a mirror's plan and queue)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

_libc_name = ctypes.util.find_library("c")
_libc = ctypes.CDLL(_libc_name) if _libc_name else None


def release_free_memory() -> None:
    """Collect garbage, then ask glibc to return free heap pages (``malloc_trim``):
    without it the daemon's resident size stays at its mirror-time peak for good."""
    gc.collect()
    trim = getattr(_libc, "malloc_trim", None) if _libc is not None else None
    if trim is not None:
        trim(0)
