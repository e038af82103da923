"""The error catalog, the event catalog and the event log (emit, read, rotation, filters)."""

from __future__ import annotations

import json
import logging
import re
import string
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twinvault.ops import errors, events
from twinvault.ops.errors import ERROR_CATALOG, TwinvaultError, describe
from twinvault.ops.event_log import Event, EventLog, format_template
from twinvault.ops.events import EVENT_CATALOG

REPO = Path(__file__).resolve().parents[2]
GUIDE = Path("/work/shared/reference/double-take-backup-users-guide.txt")


class FakeClock:
    """An injectable clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _guide_section(start: str, end: str) -> list[str]:
    if not GUIDE.exists():
        pytest.skip("the Double-Take Backup guide is not on this machine")
    lines = GUIDE.read_text().splitlines()
    first = max(i for i, line in enumerate(lines) if line.strip() == start)
    last = next(i for i in range(first, len(lines)) if lines[i].strip() == end)
    return lines[first:last]


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def _int_constants(module: object) -> dict[str, int]:
    return {
        name: value
        for name, value in vars(module).items()
        if name.isupper() and not name.startswith("_") and type(value) is int
    }


# --- error catalog ---


def test_error_catalog_has_the_guides_messages_for_the_codes_the_console_uses() -> None:
    assert ERROR_CATALOG[-107] == "Connection does not exist"
    assert ERROR_CATALOG[-123] == "Replication set does not exist"
    assert ERROR_CATALOG[-157] == "Incompatible source and target twinvault versions"
    assert errors.CONNECTION_DOES_NOT_EXIST == -107
    assert errors.REPLICATION_SET_DOES_NOT_EXIST == -123
    assert errors.INCOMPATIBLE_VERSIONS == -157
    assert errors.TARGET_DISK_FULL == -173
    assert ERROR_CATALOG[errors.SERVER_NOT_FOUND] == "Server does not exist or could not be located"


def test_error_catalog_holds_every_code_of_the_guides_table() -> None:
    section = _guide_section("Error codes", "Cargo archiving")
    guide = {int(m[1]): m[2] for line in section if (m := re.match(r"^(-?\d+)\t(.*)$", line))}
    assert len(guide) > 140
    assert guide.keys() - ERROR_CATALOG.keys() == set()
    # Verbatim except where the guide names the product, Windows parts, the -153 double
    # meaning, or has a typo.
    reworded = {-103, -104, -105, -111, -131, -153, -156, -157, -2211, -2305, -2402}
    differing = {code for code, text in guide.items() if ERROR_CATALOG[code] != text.strip()}
    assert differing == reworded


def test_twinvault_error_codes_sit_in_their_own_block_and_skip_the_unassigned_numbers() -> None:
    ours = {code for code in ERROR_CATALOG if -1999 <= code <= -1000}
    assert ours >= {-1000, -1001, -1002, -1006, -1007, -1008, -1009, -1010, -1013, -1014, -1015}
    assert ours >= set(range(-1031, -1019)) - {-1028}
    assert errors.UNASSIGNED_CODES.keys() & ERROR_CATALOG.keys() == set()
    assert errors.JOB_NOT_FOUND == errors.CONNECTION_DOES_NOT_EXIST
    assert errors.INVALID_ARGUMENT == -218


def test_every_named_error_code_is_in_the_catalog() -> None:
    missing = {name: code for name, code in _int_constants(errors).items() if code not in ERROR_CATALOG}
    assert missing == {}


def test_describe_names_an_unknown_code() -> None:
    assert describe(-107) == "Connection does not exist"
    assert describe(-4242) == "Unknown error code -4242"


def test_twinvault_error_message_appends_the_detail() -> None:
    bare = TwinvaultError(errors.CONNECTION_DOES_NOT_EXIST)
    detailed = TwinvaultError(errors.JOB_NOT_FOUND, "job 3f2a")
    assert bare.message == "Connection does not exist"
    assert detailed.message == "Connection does not exist: job 3f2a"
    assert str(detailed) == "error -107: Connection does not exist: job 3f2a"
    assert detailed.to_json() == {"error": {"code": -107, "message": "Connection does not exist: job 3f2a"}}


@given(code=st.sampled_from(sorted(ERROR_CATALOG)), detail=st.text(max_size=40))
def test_twinvault_error_round_trips_through_json(code: int, detail: str) -> None:
    original = TwinvaultError(code, detail)
    document = json.loads(json.dumps(original.to_json()))
    copy = TwinvaultError.from_json(document)
    assert (copy.code, copy.detail, copy.message) == (code, detail, original.message)


def test_error_from_a_newer_peer_keeps_its_message() -> None:
    copy = TwinvaultError.from_json({"error": {"code": -1999, "message": "Something new: x"}})
    assert copy.code == -1999
    assert copy.message == "Something new: x"
    assert copy.to_json() == {"error": {"code": -1999, "message": "Something new: x"}}


def test_error_from_json_rejects_a_document_that_is_not_an_error() -> None:
    with pytest.raises(ValueError):
        TwinvaultError.from_json({"job": "3f2a"})


# --- event catalog ---


def test_event_catalog_keeps_the_guides_ids_and_meanings() -> None:
    connected = EVENT_CATALOG[events.CONNECTED].template
    assert connected.startswith("Service has established a connection to {target}")
    assert EVENT_CATALOG[events.AUTO_DISCONNECT].severity == "warning"
    assert EVENT_CATALOG[events.AUTO_RECONNECT_FAILED].severity == "error"
    assert EVENT_CATALOG[events.TARGET_WRITE_DISCARDED].severity == "error"
    assert events.MIRROR_COMPLETED == 4023
    assert events.VERIFY_COMPLETED == 4062
    assert events.TARGET_DISK_FULL == 4110
    assert EVENT_CATALOG[9000].template == "Login failed for user {user} from {peer}"


def test_seed_event_ids_exist_in_the_guide_with_the_same_severity() -> None:
    section = _guide_section("Event messages", "E-mailing source event messages")
    guide: dict[int, set[str]] = {}
    for line in section:
        cells = line.split("\t")
        if len(cells) >= 3 and cells[0].isdigit():
            severity = cells[2].rstrip(".").lower()  # the guide writes "Info.", "Info..", "Info"
            guide.setdefault(int(cells[0]), set()).add(severity)
    for spec in EVENT_CATALOG.values():
        if 9000 <= spec.id <= 9999:
            continue
        assert spec.id in guide, spec
        assert spec.severity in guide[spec.id], spec


def test_every_named_event_id_is_in_the_catalog_and_every_entry_is_named() -> None:
    # Event IDs are positive; negative names are error codes imported from errors.
    constants = _int_constants(events)
    named = {value for name, value in constants.items() if value > 0 and name != "FORMAT_VERSION"}
    assert named == set(EVENT_CATALOG)


def test_every_template_formats_with_its_own_placeholder_names() -> None:
    for spec in EVENT_CATALOG.values():
        names = _placeholders(spec.template)
        assert all(name.isidentifier() for name in names), spec
        text = format_template(spec.template, {name: f"<{name}>" for name in names})
        assert "{" not in text and "}" not in text, spec
        for name in names:
            assert f"<{name}>" in text, spec


@given(st.dictionaries(st.text(max_size=10), st.one_of(st.text(max_size=10), st.integers())))
def test_formatting_any_fields_never_fails(fields: dict[str, str | int]) -> None:
    for spec in EVENT_CATALOG.values():
        assert isinstance(format_template(spec.template, dict(fields)), str)


def test_event_round_trips_through_json() -> None:
    event = Event(4016, 12.5, "info", "Service", "connected", {"target": "repo1", "count": 3, "ratio": 0.5})
    assert Event.from_json(json.loads(json.dumps(event.to_json()))) == event


# --- event log ---


def test_emit_formats_the_template_and_read_returns_the_event(tmp_path: Path) -> None:
    log = EventLog(tmp_path, clock=FakeClock(500.0))
    emitted = log.emit(
        events.CONNECTED, target="repo1", address="10.0.0.2", replication_set="srv1_data", job="3f2a"
    )
    assert emitted.message == (
        "Service has established a connection to repo1 (10.0.0.2) for Replication Set srv1_data, ID: 3f2a"
    )
    assert emitted.time == 500.0
    assert emitted.severity == "info"
    assert log.read() == [emitted]
    line = json.loads((tmp_path / "events.log").read_text())
    assert line["v"] == 1
    assert line["id"] == 4016


def test_emit_with_a_missing_field_leaves_its_placeholder(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    event = log.emit(events.LOGIN_FAILED, user="alice")
    assert event.message == "Login failed for user alice from {peer}"


def test_emit_of_an_unknown_event_id_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TwinvaultError) as caught:
        EventLog(tmp_path).emit(1)
    assert caught.value.code == errors.INVALID_ARGUMENT


def test_events_survive_reopening_the_log(tmp_path: Path) -> None:
    EventLog(tmp_path).emit(events.SERVICE_STARTED)
    reopened = EventLog(tmp_path)
    reopened.emit(events.SERVICE_STOPPED)
    assert [e.id for e in reopened.read()] == [4000, 4005]


def test_log_rotates_and_keeps_only_the_configured_backups(tmp_path: Path) -> None:
    log = EventLog(tmp_path, max_bytes=1000, backups=2)
    for n in range(60):
        log.emit(events.GENERIC_INFO, message=f"event number {n:03d}")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["events.log", "events.log.1", "events.log.2"]
    assert all(p.stat().st_size <= 1000 for p in tmp_path.iterdir())
    kept = [e.message for e in log.read()]
    assert kept == [f"event number {n:03d}" for n in range(60 - len(kept), 60)]
    assert 10 < len(kept) < 60


def test_read_skips_a_torn_last_line_and_the_next_event_is_not_lost(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    log.emit(events.SERVICE_STARTED)
    log.close()
    with (tmp_path / "events.log").open("ab") as file:
        file.write(b'{"v":1,"id":4005,"time":12')  # killed mid-write
    reopened = EventLog(tmp_path)
    assert [e.id for e in reopened.read()] == [4000]
    reopened.emit(events.SOURCE_STARTED)
    assert [e.id for e in reopened.read()] == [4000, 4002]


def test_severity_filter_selects_exactly_that_severity(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    log.emit(events.AUTO_RECONNECT_FAILED)
    log.emit(events.AUTO_DISCONNECT)
    log.emit(events.CONNECTED)
    assert [e.id for e in log.read(severity="error")] == [4011]
    assert [e.id for e in log.read(severity="warning")] == [4007]
    assert [e.id for e in log.read(severity="info")] == [4016]
    with pytest.raises(TwinvaultError):
        log.read(severity="fatal")


def test_since_filter_includes_events_at_that_time_and_after(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    log = EventLog(tmp_path, clock=clock)
    for now in (100.0, 200.0, 300.0):
        clock.now = now
        log.emit(events.GENERIC_INFO, message=str(now))
    assert [e.time for e in log.read(since=200.0)] == [200.0, 300.0]
    assert log.read(since=301.0) == []


def test_limit_returns_the_newest_events_oldest_first(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    for n in range(5):
        log.emit(events.GENERIC_INFO, message=str(n))
    assert [e.message for e in log.read(limit=2)] == ["3", "4"]
    assert log.read(limit=0) == []


def test_subscribers_see_each_event_until_they_unsubscribe(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    seen: list[int] = []

    def broken(event: Event) -> None:
        raise RuntimeError("mail server down")

    log.subscribe(broken)
    unsubscribe = log.subscribe(lambda event: seen.append(event.id))
    log.emit(events.MIRROR_STARTED)
    unsubscribe()
    log.emit(events.MIRROR_COMPLETED)
    assert seen == [4019]
    assert [e.id for e in log.read()] == [4019, 4023]


def test_events_go_to_the_twinvault_events_logger(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="twinvault.events"):
        EventLog(tmp_path).emit(events.TARGET_DISK_FULL, path="/srv/a", retries=3)
    records = [r for r in caplog.records if r.name == "twinvault.events" and r.levelno == logging.WARNING]
    assert len(records) == 1
    assert "4110 Target cannot write /srv/a due to target disk being full" in records[0].getMessage()


def test_concurrent_emits_each_write_one_whole_line(tmp_path: Path) -> None:
    log = EventLog(tmp_path, max_bytes=20_000, backups=100)

    def emit_many(thread: int) -> None:
        for n in range(100):
            log.emit(events.GENERIC_INFO, message=f"{thread}-{n}")

    threads = [threading.Thread(target=emit_many, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    messages = [e.message for e in log.read()]
    assert sorted(messages) == sorted(f"{t}-{n}" for t in range(8) for n in range(100))


def test_generated_docs_match_the_catalogs() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_catalog_docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
