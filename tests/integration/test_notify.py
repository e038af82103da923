"""E-mail notification through the console, real daemons and a real SMTP server (aiosmtpd,
STARTTLS required, AUTH required over TLS): the guide's "E-mailing ... event messages"."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.history import settle
from tests.helpers.hosts import Console, TestHost, running_hosts, wait_for
from tests.helpers.smtp import USER, MailServer

Mailed = tuple[Console, TestHost, MailServer]
PASSWORD = "smtp-pw-4b7e1c"


@pytest.fixture
def mailed_host(tmp_path: Path) -> Iterator[Mailed]:
    with (
        MailServer(tmp_path / "smtp", PASSWORD) as server,
        running_hosts(tmp_path, "alpha") as (console, hosts),
    ):
        yield console, hosts[0], server


def smtp_options(server: MailServer, prefix: str = "") -> list[str]:
    """The options that reach `server`: STARTTLS trusting its certificate, LOGIN."""
    return [
        f"--{prefix}smtp", server.address, f"--{prefix}starttls",
        f"--{prefix}smtp-ca-file", str(server.ca_file), f"--{prefix}login", USER, f"--{prefix}password-stdin",
        f"--{prefix}from", "twinvault@example.com",
        f"--{prefix}to", "ops@example.com",
    ]  # fmt: skip


def notify_set(
    console: Console, host: TestHost, server: MailServer, *extra: str, password: str = PASSWORD
) -> Any:
    proc = console.run("notify", "set", "--server", host.api, *smtp_options(server), *extra, "--json",
                       stdin=password + "\n")  # fmt: skip
    return json.loads(proc.stdout)


def fail_login(console: Console, host: TestHost, user: str) -> None:
    """Log event 9000 (warning) on `host`: a login with a wrong password."""
    proc = console.run("login", host.api, "--user", user, "--password-stdin", stdin="wrong\n", check=False)
    assert proc.returncode != 0


def about(user: str) -> Any:
    return lambda m: f"user {user} " in str(m["Subject"]) or f"user: {user}\n" in m.get_content()


def events_with(host: TestHost, event_id: int) -> list[dict[str, Any]]:
    return [e for e in host.events() if e["id"] == event_id]


def test_an_event_of_a_chosen_severity_is_mailed_and_an_excluded_id_is_not(mailed_host: Mailed) -> None:
    console, alpha, server = mailed_host
    shown = notify_set(console, alpha, server, "--severity", "warning", "--subject-prefix", "TV",
                       "--add-description", "--exclude-ids", "4000-4010;5500")  # fmt: skip
    assert shown["settings"]["enabled"] and shown["settings"]["exclude_ids"] == "4000-4010;5500"
    fail_login(console, alpha, "mallory")
    (mail,) = server.wait_for(about("mallory"))
    assert mail["Subject"] == "TV : alpha : Warning : 9000 : Login failed for user mallory from 127.0.0.1"
    assert mail["From"] == "twinvault@example.com" and mail["To"] == "ops@example.com"
    body = mail.get_content()
    assert body.startswith("Login failed for user mallory from 127.0.0.1\n")
    assert "Server: alpha" in body and "Event ID: 9000" in body and "Severity: Warning" in body

    # Info now included, 9000 excluded: the settings change (9042, info) arrives before and
    # after the excluded event, which never does (one queue, in order).
    notify_set(console, alpha, server, "--severity", "warning,info", "--exclude-ids", "9000;4000-4010")
    server.wait_for(lambda m: ": 9042 :" in str(m["Subject"]))
    fail_login(console, alpha, "eve")
    wait_for(
        lambda: [e for e in events_with(alpha, 9000) if e["fields"]["user"] == "eve"], 10, what="9000 eve"
    )
    console.run("notify", "set", "--server", alpha.api, "--subject-prefix", "TV2")
    server.wait_for(lambda m: str(m["Subject"]).startswith("TV2 : alpha : Information : 9042"))
    assert not [m for m in server.messages() if about("eve")(m)]
    # The first settings change was info while only warnings were mailed: not mailed.
    assert len([m for m in server.messages() if ": 9042 :" in str(m["Subject"])]) == 2

    sent = console.json("notify", "test", "--server", alpha.api, "--to", "a@example.com", "b@example.com",
                        "--message", "hello from the test")  # fmt: skip
    assert sent["to"] == ["a@example.com", "b@example.com"]
    (test_mail,) = server.wait_for(lambda m: str(m["Subject"]) == "TV2 : alpha : Test")
    assert test_mail["To"] == "a@example.com, b@example.com"
    assert test_mail.get_content() == "hello from the test\n"

    # Settings survive a restart of the daemon, in a 0600 file.
    before = console.json("notify", "show", "--server", alpha.api)["settings"]
    alpha.stop()
    alpha.start(console)
    assert console.json("notify", "show", "--server", alpha.api)["settings"] == before
    assert os.stat(alpha.home / "notify.json").st_mode & 0o777 == 0o600


def test_bad_settings_are_refused_with_codes_and_change_nothing(mailed_host: Mailed) -> None:
    console, alpha, server = mailed_host

    def refused(*args: str, password: str = PASSWORD) -> int:
        return console.refused("notify", "set", "--server", alpha.api, *args, stdin=password + "\n")

    base = smtp_options(server)
    without_from = [a for a in base if a not in ("--from", "twinvault@example.com")]
    assert refused(*without_from) == -2212
    assert events_with(alpha, 5506) and "From address" in events_with(alpha, 5506)[0]["fields"]["reason"]
    assert console.json("notify", "show", "--server", alpha.api)["settings"] is None
    assert not (alpha.home / "notify.json").exists()

    notify_set(console, alpha, server, "--exclude-ids", "5500")
    good = console.json("notify", "show", "--server", alpha.api)["settings"]
    too_many = [f"r{i}@example.com" for i in range(257)]
    cases = [
        (["--to", "not-an-address"], -2212),
        (["--to", *too_many], -2212),
        (["--to", "ops@example.com", "Ops@example.com"], -2213),
        (["--from", "a" * 250 + "@example.com"], -2212),
        (["--exclude-ids", "4000-4010;55x0"], -2214),
        (["--exclude-ids", "4010-4000"], -2214),
        (["--severity", "error,fatal"], -2212),
        (["--subject-prefix", "p" * 151], -2212),
        (["--smtp", "127.0.0.1:70000"], -2212),
    ]
    for args, code in cases:
        assert refused(*base, *args) == code, args
        assert console.json("notify", "show", "--server", alpha.api)["settings"] == good, args
    # The LOGIN password would cross the network in clear.
    assert refused(*[a for a in base if a != "--starttls"], "--no-tls") == -2212
    assert console.json("notify", "show", "--server", alpha.api)["settings"] == good
    assert {"exclude IDs", "recipient", "From address"} <= {
        e["fields"]["setting"] for e in events_with(alpha, 5600)
    }
    assert console.refused("notify", "test", "--server", alpha.api, "--message", "m" * 1025) == -2212
    assert console.refused("notify", "test", "--server", alpha.api, "--to", "nobody") == -2212


def test_a_wrong_smtp_password_is_reported_once_per_group_then_recovery_once(mailed_host: Mailed) -> None:
    console, alpha, server = mailed_host
    wrong = "wrong-pw-9d2f0a"
    notify_set(console, alpha, server, "--severity", "warning", "--retry-interval", "0.3",
               "--retry-limit", "50", password=wrong)  # fmt: skip
    for user in ("u1", "u2", "u3"):
        fail_login(console, alpha, user)
    wait_for(lambda: events_with(alpha, 5500), 20, what="event 5500")
    wait_for(lambda: server.auth_failures >= 4, 20, what="retries")  # retried, still refused
    assert len(events_with(alpha, 5500)) == 1 and not events_with(alpha, 5505)
    assert events_with(alpha, 5500)[0]["fields"]["error_code"] == -2201
    assert console.json("notify", "show", "--server", alpha.api)["status"]["failing"]

    server.accepted_password = wrong  # the server accepts it now: the group ends
    for user in ("u1", "u2", "u3"):
        server.wait_for(about(user), 90)  # the retry interval has doubled meanwhile
    wait_for(lambda: events_with(alpha, 9040), 10, what="event 9040")
    time.sleep(1)
    assert len(events_with(alpha, 9040)) == 1 and len(events_with(alpha, 5500)) == 1

    server.accepted_password = "changed-again"  # a second group: one more 5500, one more 9040
    fail_login(console, alpha, "u4")
    fail_login(console, alpha, "u5")
    wait_for(lambda: len(events_with(alpha, 5500)) == 2, 20, what="second 5500")
    server.accepted_password = wrong
    server.wait_for(about("u5"), 90)
    wait_for(lambda: len(events_with(alpha, 9040)) == 2, 10, what="second 9040")
    time.sleep(0.5)
    assert len(events_with(alpha, 5500)) == 2
    # The failure reports themselves are never mailed, each event is mailed once.
    subjects = [str(m["Subject"]) for m in server.messages()]
    assert not [s for s in subjects if ": 5500" in s or ": 5505" in s]
    assert len([m for m in server.messages() if about("u1")(m)]) == 1

    # The password is in the settings file only: not shown, not in events, not in the logs.
    shown = console.run("notify", "show", "--server", alpha.api, "--json").stdout
    assert json.loads(shown)["settings"]["password_set"] and wrong not in shown
    for path in alpha.home.rglob("*"):
        if path.is_file() and path.name != "notify.json":
            assert wrong.encode() not in path.read_bytes(), path
    assert wrong in (alpha.home / "notify.json").read_text()


def test_mail_is_delivered_after_retry_when_the_smtp_server_comes_back(mailed_host: Mailed) -> None:
    console, alpha, server = mailed_host
    notify_set(console, alpha, server, "--severity", "warning", "--retry-interval", "0.5")
    server.stop()
    fail_login(console, alpha, "while-down")
    reported = wait_for(lambda: events_with(alpha, 5500), 20, what="event 5500")
    assert reported[0]["fields"]["error_code"] == -2202 and "Connection" in reported[0]["fields"]["reason"]
    time.sleep(1.5)  # a few refused retries
    server.start()
    (mail,) = server.wait_for(about("while-down"), 90)
    assert "Event ID: 9000" in mail.get_content()
    wait_for(lambda: events_with(alpha, 9040), 10, what="event 9040")
    assert len(events_with(alpha, 5500)) == 1


def test_implicit_tls_servers_are_reached_with_tls(tmp_path: Path) -> None:
    with (
        MailServer(tmp_path / "smtp", PASSWORD, implicit_tls=True) as server,
        running_hosts(tmp_path, "alpha") as (console, (alpha,)),
    ):
        args = [a if a != "--starttls" else "--tls" for a in smtp_options(server)]
        console.run("notify", "set", "--server", alpha.api, *args, stdin=PASSWORD + "\n")
        console.run("notify", "test", "--server", alpha.api)
        (mail,) = server.wait_for(lambda m: str(m["Subject"]) == "alpha : Test")
        assert mail["To"] == "ops@example.com"
        # With STARTTLS against an implicit-TLS port, the test fails with a clear code.
        console.run("notify", "set", "--server", alpha.api, "--starttls")
        assert console.refused("notify", "test", "--server", alpha.api) == -2208


def recovered_mails(server: MailServer, job: str) -> list[EmailMessage]:
    return [m for m in server.messages() if f"Recovery {job} " in m.get_content()]


def test_a_recovery_with_email_options_makes_the_recovery_server_mail_its_events(tmp_path: Path) -> None:
    with (
        MailServer(tmp_path / "smtp", PASSWORD) as server,
        running_hosts(tmp_path, "alpha", "beta", "gamma") as (
            console,
            (alpha, beta, gamma),
        ),
    ):
        src = tmp_path / "src"
        (src / "d").mkdir(parents=True)
        for i in range(20):
            (src / "d" / f"f{i}.txt").write_text(f"file {i}\n" * 100)
        proc = console.run("protect", "--source", alpha.api, "--repository", beta.api, "--data", str(src),
                           "--email-severity", "error", *smtp_options(server, "email-"), "--json",
                           stdin=PASSWORD + "\n")  # fmt: skip
        out = json.loads(proc.stdout)
        job, image = out["job"], Path(out["image_location"])
        settle(console, alpha, job, src, image)
        assert console.json("notify", "show", "--server", beta.api)["settings"]["severity"] == ["error"]
        assert console.json("notify", "show", "--server", gamma.api)["settings"] is None

        proc = console.run(
            "recover", "--repository", beta.api, "--image", "alpha", "--live", "--to-server", gamma.api,
            "--target-path", str(tmp_path / "r"), *smtp_options(server, "email-"), "--email-severity", "info",
            "--email-subject-prefix", "REC", "--email-add-description", "--json", stdin=PASSWORD + "\n",
        )  # fmt: skip
        recovery = json.loads(proc.stdout)["job"]
        done = server.wait_for(
            lambda m: str(m["Subject"]).startswith("REC : gamma : Information : 9046 : "), 90
        )
        assert f"Recovery {recovery} from beta is complete" in str(done[0]["Subject"])
        assert f"job: {recovery}" in done[0].get_content()
        started = recovered_mails(server, recovery)
        assert [m for m in started if ": 9045 :" in str(m["Subject"])]
        shown = console.json("notify", "show", "--server", gamma.api)["settings"]
        assert shown["subject_prefix"] == "REC" and shown["severity"] == ["info"] and shown["password_set"]
        # A refused e-mail option refuses the recovery before anything is created.
        jobs_before = console.json("jobs", "--server", beta.api)["jobs"]
        assert console.refused(
            "recover", "--repository", beta.api, "--image", "alpha", "--live", "--to-server", gamma.api,
            "--target-path", str(tmp_path / "r2"), "--email-to", "bad address",
        ) == -2212  # fmt: skip
        assert len(console.json("jobs", "--server", beta.api)["jobs"]) == len(jobs_before)
