"""Repository-history steps shared by integration and system tests."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.helpers.hosts import Console, TestHost
from tests.helpers.protection import in_image, wait_equal, wait_idle


def frozen_copy(src: Path, dst: Path) -> Path:
    """The source tree as it is now, every metadata kept: the expected result of a restore."""
    subprocess.run(["cp", "-a", "--sparse=always", str(src), str(dst)], check=True)
    return dst


def now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="microseconds")


def settle(console: Console, source: TestHost, job: str, src: Path, image: Path) -> str:
    """Wait until the image equals the source and the repository has committed it, then
    return an instant at which history holds exactly this tree."""
    wait_idle(console, source, job)
    wait_equal(src, in_image(image, src))
    time.sleep(0.3)  # past the repository's group commit (50 ms)
    instant = now_iso()
    time.sleep(0.05)
    return instant


def restore(console: Console, repo: TestHost, image: str, to: Path, *point: str) -> dict[str, Any]:
    """``twinvault restore``; the JSON document whether or not some files failed."""
    proc = console.run(
        "restore", "--repository", repo.api, "--image", image, *point, "--to", str(to), "--json", check=False
    )
    out: dict[str, Any] = json.loads(proc.stdout)
    assert "error" not in out, out
    return out


def points(console: Console, repo: TestHost, image: str) -> dict[str, Any]:
    out: dict[str, Any] = console.json("points", "--repository", repo.api, "--image", image)
    return out
