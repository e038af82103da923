"""The notifier against a real SMTP server (aiosmtpd), without a daemon: what happens to
e-mails that cannot be sent, and that a flood of events never blocks the event path."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.hosts import wait_for
from tests.helpers.smtp import USER, MailServer
from twinvault.ops.email_notifier import QUEUE_LIMIT, EmailNotifier
from twinvault.ops.event_log import EventLog

Setup = tuple[EventLog, EmailNotifier, MailServer]


@pytest.fixture
def notifier(tmp_path: Path) -> Iterator[Setup]:
    server = MailServer(tmp_path / "smtp", "pw")
    server.start()
    log = EventLog(tmp_path / "events")
    notifier = EmailNotifier(tmp_path / "notify.json", "alpha", log.emit)
    log.subscribe(notifier.on_event)
    notifier.start()
    notifier.update(
        {"smtp": server.address, "security": "starttls", "ca_file": str(server.ca_file), "login": USER,
         "password": "pw", "from": "tv@example.com", "to": ["ops@example.com"], "severity": "warning",
         "retry_interval_s": 0.05, "retry_limit": 2}
    )  # fmt: skip
    try:
        yield log, notifier, server
    finally:
        notifier.stop()
        server.stop()
        log.close()


def ids(log: EventLog, event_id: int) -> list[dict[str, object]]:
    return [e.fields for e in log.read() if e.id == event_id]


def test_an_email_that_fails_every_retry_is_given_up_and_reported(notifier: Setup) -> None:
    log, mailer, server = notifier
    server.stop()
    log.emit(9000, user="lost", peer="p")
    (given_up,) = wait_for(lambda: ids(log, 9041), 10, what="event 9041")
    assert given_up["count"] == 1 and given_up["ids"] == "9000" and "3 times" in str(given_up["reason"])
    assert len(ids(log, 5500)) == 1
    assert mailer.settings_view()["status"]["dropped"] == 1
    assert mailer.settings_view()["status"]["queued"] == 0


def test_a_flood_of_events_never_blocks_the_event_path(notifier: Setup) -> None:
    log, mailer, server = notifier
    mailer.update({"retry_interval_s": 60, "retry_limit": 50})  # nothing leaves the queue
    server.stop()
    started = time.monotonic()
    for i in range(QUEUE_LIMIT + 500):
        log.emit(9000, user=f"u{i}", peer="p")
    # Only the event log's own file writes: no wait for the (dead) mail server.
    assert time.monotonic() - started < 10

    def overflow_reports() -> list[dict[str, object]]:
        return [f for f in ids(log, 9041) if "more than 1000" in str(f["reason"])]

    first = wait_for(overflow_reports, 20, what="event 9041 for the overflow")[0]
    assert str(first["ids"]).startswith("9000")
    # Events still in the inbox (the overflow's own reports among them) count as queued
    # until the sender thread moves them to the outbox, which it trims to the limit.
    wait_for(lambda: mailer.settings_view()["status"]["queued"] <= QUEUE_LIMIT, 20, what="the trimmed queue")
    mailer.stop()
    # During a flood the report comes once, then at the stop; every e-mail is accounted for.
    assert 1 <= len(overflow_reports()) <= 2
    assert sum(int(str(f["count"])) for f in ids(log, 9041)) == QUEUE_LIMIT + 500


def test_damaged_or_incomplete_settings_at_start_are_reported_and_leave_mail_off(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events")
    path = tmp_path / "notify.json"
    path.write_text("{not json")
    damaged = EmailNotifier(path, "alpha", log.emit)
    damaged.start()
    damaged.stop()
    (report,) = ids(log, 5600)
    assert report["setting"] == "file" and report["error_code"] == -2212
    assert damaged.settings_view()["status"]["active"] is False

    # Enabled, but a required value is missing (a hand-edited file): 5506.
    path.write_text(json.dumps({"v": 1, "enabled": True, "smtp_host": "mail.example.com", "smtp_port": 25,
                                "from": "", "to": ["ops@example.com"], "severity": ["warning"]}))  # fmt: skip
    incomplete = EmailNotifier(path, "alpha", log.emit)
    incomplete.start()
    log.emit(4012, message="would be mailed")
    incomplete.stop()
    (missing,) = ids(log, 5506)
    assert "From address" in str(missing["reason"])
    assert incomplete.settings_view()["status"]["active"] is False and not ids(log, 9041)
