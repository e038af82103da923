"""E-mail settings: the guide's limits, the exclude-list format and the subject line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from twinvault.ops.email_notifier import compose_body, compose_subject
from twinvault.ops.email_settings import (
    EmailSettings,
    SettingsMalformed,
    SettingsMissing,
    apply_changes,
    load_settings,
    parse_id_ranges,
    save_settings,
)
from twinvault.ops.errors import TwinvaultError
from twinvault.ops.event_log import Event

BASE = {"smtp": "mail.example.com", "from": "tv@example.com", "to": ["ops@example.com"]}


def test_exclude_ids_take_ranges_separated_by_commas_or_semicolons() -> None:
    ranges = parse_id_ranges(" 4000-4010; 5500 ,9000-9000;")
    assert ranges.text == "4000-4010;5500;9000"
    assert 4000 in ranges and 4010 in ranges and 5500 in ranges and 9000 in ranges
    assert 3999 not in ranges and 4011 not in ranges and 5501 not in ranges
    assert parse_id_ranges("").ranges == ()


@pytest.mark.parametrize("text", ["4000-", "abc", "4000-4010-4020", "4010-4000", "-5", "40 00", "1234567"])
def test_a_malformed_exclude_list_is_refused_naming_the_setting(text: str) -> None:
    with pytest.raises(SettingsMalformed) as caught:
        parse_id_ranges(text)
    assert caught.value.code == -2214 and caught.value.setting == "exclude IDs"


def test_a_first_setting_needs_server_from_and_recipients() -> None:
    with pytest.raises(SettingsMissing) as caught:
        apply_changes(EmailSettings(), {"smtp": "mail.example.com", "to": ["ops@example.com"]})
    assert caught.value.code == -2212 and "From address" in caught.value.detail
    settings = apply_changes(EmailSettings(), BASE)
    assert settings.enabled and settings.smtp_port == 25 and settings.severities == ("error", "warning")
    assert apply_changes(EmailSettings(), {**BASE, "security": "tls"}).smtp_port == 465
    # Later changes keep what they do not name.
    later = apply_changes(settings, {"severity": "info", "enabled": False})
    assert later.recipients == ("ops@example.com",) and later.severities == ("info",) and not later.enabled


def test_the_guides_limits_are_enforced() -> None:
    ok = apply_changes(EmailSettings(), {**BASE, "to": [f"r{i}@example.com" for i in range(256)]})
    assert len(ok.recipients) == 256
    long_address = "a" * 245 + "@example.com"  # 257 characters
    refused = [
        ({"to": [f"r{i}@example.com" for i in range(257)]}, -2212),
        ({"to": [long_address]}, -2212),
        ({"from": long_address}, -2212),
        ({"to": ["not-an-address"]}, -2212),
        ({"to": ["Ops <ops@example.com>"]}, -2212),
        ({"to": ["ops@example.com", "OPS@example.com"]}, -2213),
        ({"to": []}, -2217),
        ({"subject_prefix": "x" * 151}, -2212),
        ({"subject_prefix": "two\nlines"}, -2212),
        ({"severity": "fatal"}, -2212),
        ({"smtp": "mail.example.com:99999"}, -2212),
        ({"smtp": "bad host:25"}, -2212),
        ({"login": "u", "password": "p"}, -2212),  # a password over plain SMTP
        ({"security": "starttls", "login": "u"}, -2212),  # a login without a password
        ({"exclude_ids": "4000-;1"}, -2214),
        ({"bogus": 1}, -218),
    ]
    for change, code in refused:
        with pytest.raises(TwinvaultError) as caught:
            apply_changes(EmailSettings(), {**BASE, **change})
        assert caught.value.code == code, (change, caught.value)


def test_the_subject_is_prefix_server_severity_id_description_cut_to_150() -> None:
    event = Event(
        9000, 0.0, "warning", "Security", "Login failed for user eve from 10.0.0.1", {"user": "eve"}
    )
    plain = apply_changes(EmailSettings(), BASE)
    assert compose_subject(plain, "alpha", event) == "alpha : Warning : 9000"
    full = apply_changes(plain, {"subject_prefix": "TV", "add_description": True})
    assert compose_subject(full, "alpha", event) == "TV : alpha : Warning : 9000 : " + event.message
    long = Event(4013, 0.0, "info", "Service", "x" * 300)
    assert compose_subject(full, "alpha", long) == ("TV : alpha : Information : 4013 : " + "x" * 300)[:150]
    body = compose_body("alpha", event)
    assert body.startswith(event.message + "\n") and "Event ID: 9000" in body and "user: eve" in body


def test_settings_are_saved_0600_with_the_password_and_shown_without_it(tmp_path: Path) -> None:
    changes = {**BASE, "security": "starttls", "login": "u", "password": "pw-in-file-only"}
    settings = apply_changes(EmailSettings(), changes)
    path = tmp_path / "notify.json"
    save_settings(path, settings)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert load_settings(path) == settings
    assert "pw-in-file-only" not in repr(settings) and "pw-in-file-only" not in str(settings.view())
    assert settings.view()["password_set"] is True
    path.write_text('{"v": 99}')
    with pytest.raises(SettingsMalformed):
        load_settings(path)
