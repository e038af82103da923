from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.hosts import Console, TestHost, running_hosts


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[tuple[Console, TestHost, TestHost]]:
    with running_hosts(tmp_path, "alpha", "beta") as (console, (alpha, beta)):
        yield console, alpha, beta
