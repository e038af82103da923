"""What is mounted where: this mount namespace's mounts, read from /proc/self/mountinfo.

Unlike ``os.path.ismount``, which stats the path, it also sees a FUSE mount whose server
died ("Transport endpoint is not connected"), and it never sends a request to a FUSE
server that is not serving yet. Used by the mount service (is a mount point busy, is it
still mounted) and by a mount itself (its backing device, to size the kernel's read-ahead).
"""

from __future__ import annotations

from typing import Final

_ESCAPES: Final = (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\"))


def mounts() -> dict[str, str]:
    """Mount point -> its device ("major:minor"); the last mount of a point wins (it is
    the one on top)."""
    found = {}
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split(" ")
            point = fields[4]
            for escaped, plain in _ESCAPES:
                point = point.replace(escaped, plain)
            found[point] = fields[2]
    return found
