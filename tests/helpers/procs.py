"""Child processes of the tests: start them in their own session, stop them by process group.

Every server or client a test starts (daemons, listeners inside network namespaces, sshd)
goes through `start_child`, so teardown can always find it: each child leads its own
process group (start_new_session), which lets `stop_child` end the child *and* whatever it
forked, without ever signalling a process the tests did not start.  Children still
running when the interpreter exits are stopped by an atexit hook, so a failed test cannot
leave a daemon behind for the next run.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

_children: set[subprocess.Popen[Any]] = set()


def start_child(argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
    """Start `argv` as a tracked child leading its own session; kw goes to Popen."""
    kw.setdefault("start_new_session", True)
    if not kw["start_new_session"]:
        # A child sharing our process group could only be stopped by pid, leaving its own
        # children running; every tracked child must be a group leader.
        raise ValueError("start_child needs start_new_session=True")
    p: subprocess.Popen[Any] = subprocess.Popen(list(argv), **kw)
    _children.add(p)
    return p


def _signal_group(p: subprocess.Popen[Any], sig: int) -> None:
    # The group id is the child's pid (it is the session leader).  While the group has a
    # member that pid cannot be reused, so this never hits a stranger; ESRCH means the
    # whole group is gone already.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, sig)


def stop_child(p: subprocess.Popen[Any], timeout: float = 5.0) -> int:
    """Stop `p` and its process group: SIGTERM, then SIGKILL after `timeout`; reap it.

    Returns the child's exit status (negative signal number if a signal ended it).
    """
    try:
        if p.poll() is None:
            _signal_group(p, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                p.wait(timeout)
        # The leader may be gone while grandchildren it forked still run in its group.
        _signal_group(p, signal.SIGKILL)
    finally:
        _children.discard(p)
        for stream in (p.stdin, p.stdout, p.stderr):
            if stream is not None:
                stream.close()
    assert p.returncode is not None
    return p.returncode


def tracked_children() -> list[subprocess.Popen[Any]]:
    """Return the children started by `start_child` and not yet stopped."""
    return list(_children)


def stop_all_children(timeout: float = 5.0) -> None:
    """Stop every tracked child (teardown of a fixture, or the interpreter exiting)."""
    for p in list(_children):
        stop_child(p, timeout)


atexit.register(stop_all_children, 2.0)
