"""Protection-job steps shared by integration and system tests."""

from __future__ import annotations

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
