"""``cpus`` in ``[host]``: which CPUs a daemon runs on (twinvault.daemon.cpus)."""

from __future__ import annotations

import os

import pytest

from twinvault.daemon.cpus import confine, parse_cpus
from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError


def test_lists_and_ranges() -> None:
    assert parse_cpus("") == set()
    assert parse_cpus("1") == {1}
    assert parse_cpus("0,2-4, 7") == {0, 2, 3, 4, 7}
    assert parse_cpus("3-3") == {3}


@pytest.mark.parametrize("spec", ["a", "1-", "-1", "3-1", "1.5", "0;1", "1-2-3"])
def test_what_is_not_a_cpu_list_is_refused(spec: str) -> None:
    with pytest.raises(TwinvaultError) as caught:
        parse_cpus(spec)
    assert caught.value.code == errors.INVALID_OPTION


def test_a_cpu_this_process_may_not_use_is_refused_and_nothing_changes() -> None:
    before = os.sched_getaffinity(0)
    with pytest.raises(TwinvaultError) as caught:
        confine(f"{min(before)},{max(before) + 4096}")
    assert caught.value.code == errors.INVALID_OPTION and "not available" in caught.value.message
    assert os.sched_getaffinity(0) == before
    assert confine("") == before and os.sched_getaffinity(0) == before
