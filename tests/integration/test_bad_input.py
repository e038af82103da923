"""Bad input through the console: clear errors with catalog codes, nothing lost."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from tests.helpers.hosts import Console, TestHost
from tests.helpers.protection import event_ids, protect, wait_idle

Hosts = tuple[Console, TestHost, TestHost]


def _error(proc_stdout: str) -> dict[str, object]:
    err: dict[str, object] = json.loads(proc_stdout)["error"]
    return err


def test_wrong_password_is_refused_counted_and_logged(two_hosts: Hosts) -> None:
    console, alpha, _ = two_hosts
    assert console.login(alpha.api, password="wrong") == -1009
    assert 9000 in event_ids(alpha)
    # The cached login from before still works: nothing was lost.
    assert console.json("jobs", "--server", alpha.api) == {"jobs": []}
    # ... and the failure is in the host's Security statistics.
    from twinvault.cli.client import ApiClient, CredentialCache

    cred = CredentialCache(console.config_dir).get(alpha.api)
    security = ApiClient(alpha.api, cred.fingerprint, cred.token).call("GET", "/api/host")["security"]
    assert security["logins_failed"] == 1
    assert security["logins_ok"] >= 1


def test_unknown_host_without_login_names_the_fix(two_hosts: Hosts) -> None:
    console, _, _ = two_hosts
    proc = console.run("jobs", "--server", "nowhere.invalid:6340", "--json", check=False)
    assert proc.returncode != 0
    err = _error(proc.stdout)
    assert err["code"] == -1000
    assert "twinvault login" in str(err["message"])


def test_unpinned_and_changed_fingerprints_are_refused(two_hosts: Hosts, tmp_path: Path) -> None:
    _, alpha, _ = two_hosts
    fresh = Console(tmp_path / "fresh-console")
    assert fresh.login(alpha.api) == -1002
    assert fresh.login(alpha.api, "--accept-fingerprint", "00" * 32) == -1001
    # Pin the real one, then make the host present another certificate.
    assert fresh.login(alpha.api, "--trust-on-first-use") == 0
    creds_file = tmp_path / "fresh-console" / "credentials.json"
    assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
    creds = json.loads(creds_file.read_text())
    for c in creds.values():
        c["fingerprint"] = "ab" * 32
    creds_file.write_text(json.dumps(creds))
    assert fresh.refused("jobs", "--server", alpha.api) == -1001
    assert fresh.login(alpha.api) == -1001


def _protect(console: Console, source: TestHost, repository: TestHost, *args: str) -> int:
    return console.refused("protect", "--source", source.api, "--repository", repository.api, *args)


def test_missing_or_unreadable_selection_is_refused(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    assert _protect(console, alpha, beta, "--data", str(tmp_path / "does-not-exist")) == -140
    assert console.json("jobs", "--server", beta.api)["jobs"] == []  # nothing left behind
    assert _protect(console, alpha, beta, "--data", "relative/path") == -101


def test_unreadable_selection_for_an_unprivileged_daemon(tmp_path: Path) -> None:
    # Root reads everything, so unreadability is shown with a directory the daemon
    # cannot list: a FUSE-less way is a path through a file (ENOTDIR).
    from tests.helpers.hosts import running_hosts

    with running_hosts(tmp_path, "alpha", "beta") as (console, (alpha, beta)):
        blocker = tmp_path / "a-file"
        blocker.write_text("x")
        assert _protect(console, alpha, beta, "--data", str(blocker / "inside")) in (-140, -142)


def test_repository_path_prefix_not_writable(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    src = tmp_path / "src"
    src.mkdir()
    blocker = tmp_path / "prefix-is-a-file"
    blocker.write_text("not a directory")
    assert _protect(console, alpha, beta, "--data", str(src), "--path-prefix", str(blocker)) == -1006
    assert _protect(console, alpha, beta, "--data", str(src), "--path-prefix", "relative") == -218


def test_selection_holding_the_repository_image_is_refused(two_hosts: Hosts, tmp_path: Path) -> None:
    console, _, beta = two_hosts
    assert _protect(console, beta, beta, "--data", str(tmp_path)) == -1013


def test_unknown_job_and_repeated_stop(two_hosts: Hosts, tmp_path: Path) -> None:
    console, alpha, beta = two_hosts
    for action in ("show", "stop", "resume", "delete", "verify"):
        assert console.refused("job", action, "nosuchjob", "--server", alpha.api) == -107
    src = tmp_path / "src"
    src.mkdir()
    job, _ = protect(console, alpha, beta, src)
    wait_idle(console, alpha, job)
    console.run("job", "stop", job, "--server", alpha.api)
    assert console.refused("job", "stop", job, "--server", alpha.api) == -1014
    assert console.refused("job", "verify", job, "--server", alpha.api) == -107


def test_api_refuses_requests_without_a_valid_token(two_hosts: Hosts, tmp_path: Path) -> None:
    _, alpha, _ = two_hosts
    from twinvault.cli.client import ApiClient, CredentialCache
    from twinvault.ops.errors import TwinvaultError

    cred = CredentialCache(tmp_path / "console").get(alpha.api)
    client = ApiClient(alpha.api, cred.fingerprint, "forged-token")
    try:
        client.call("GET", "/api/jobs")
    except TwinvaultError as exc:
        assert exc.code == -1010
    else:
        raise AssertionError("a forged token was accepted")
