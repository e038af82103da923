"""Protection-job steps shared by integration and system tests."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from tests.helpers.hosts import Console, TestHost, wait_for
from tests.helpers.tree import compare_trees


def protect(
    console: Console, source: TestHost, repository: TestHost, *paths: Path, extra: tuple[str, ...] = ()
) -> tuple[str, Path]:
    out = console.json(
        "protect",
        "--source",
        source.api,
        "--repository",
        repository.api,
        "--data",
        *[str(p) for p in paths],
        *extra,
    )
    return out["job"], Path(out["image_location"])


def in_image(image: Path, path: Path) -> Path:
    return Path(str(image) + str(path))


def job_show(console: Console, host: TestHost, job: str) -> dict[str, Any]:
    result: dict[str, Any] = console.json("job", "show", job, "--server", host.api)
    return result


def wait_idle(console: Console, host: TestHost, job: str, timeout: float = 60) -> dict[str, Any]:
    def idle() -> dict[str, Any] | None:
        v = job_show(console, host, job)
        return v if v["mirror"]["status"] == "Idle" and v["recovery_available"] else None

    result: dict[str, Any] = wait_for(idle, timeout, 0.2, what=f"job {job} to finish its mirror")
    return result


def wait_session_closed(console: Console, repository: TestHost, job: str, timeout: float = 60) -> None:
    """Wait until the repository has closed the job's session (after a `job stop`): its
    close syncs the image and records the instant up to which the image is committed, so
    a test that then plays a crash's leftovers in the image must come after it."""

    def closed() -> bool:
        return not job_show(console, repository, job)["connected"]

    wait_for(closed, timeout, 0.1, what=f"the repository to close the session of job {job}")


def wait_commits_quiet(repository: TestHost, job: str, quiet: float = 0.3, timeout: float = 30) -> None:
    """Wait until the repository's image index has recorded no new commit instant for the
    job during ``quiet`` seconds. A quiet stream is committed once more shortly after its
    last commit (so that its time covers the last changes): a test that changes the image
    behind the repository's back, to be seen as uncommitted, must come after that."""

    def instant() -> int | None:
        values = []
        for path in sorted((repository.home / "repository" / "index").glob("*.sqlite")):
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                row = db.execute("SELECT value FROM meta WHERE key=?", (f"settled:{job}",)).fetchone()
            values.append(int(row[0]) if row else 0)
        return max(values, default=None)

    deadline = time.monotonic() + timeout
    last, since = instant(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, f"commits of job {job} did not quiet down"
        time.sleep(0.05)
        now = instant()
        if now != last:
            last, since = now, time.monotonic()


def wait_equal(expected: Path, actual: Path, timeout: float = 30, **kw: Any) -> None:
    last: list[str] = []

    def equal() -> bool:
        nonlocal last
        last = compare_trees(expected, actual, **kw) if actual.exists() else ["image missing"]
        return not last

    try:
        wait_for(equal, timeout, 0.2, what="image to equal the source")
    except AssertionError:
        raise AssertionError("image differs from source:\n" + "\n".join(last[:40])) from None


def event_ids(host: TestHost) -> list[int]:
    return [int(e["id"]) for e in host.events()]
