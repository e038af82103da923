"""E-mail notification: every event a host logs that passes its filter is mailed.

The event log (``ops.event_log``) calls `EmailNotifier.on_event` on whatever thread emitted
the event; it only filters and puts the event on a bounded queue, so the daemon's event
path never waits for a mail server. One sender thread (smtplib, off the event loop) takes
events in batches, one SMTP connection per batch and one message per event, with the
settings of ``ops.email_settings``.

The guide's failure rule: when sending fails, one event (5500 could not connect, 5505
could not be sent) is logged for the whole group of failed e-mails, and that event is not
mailed; when an e-mail goes through again, one event (9040) says so. A failed e-mail is
retried (the retry interval doubling from ``retry_interval_s`` up to 10 minutes) up to
``retry_limit`` times; e-mails given up, or dropped because the queue overflowed, are
reported by event 9041, never lost silently.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import email.policy
import logging
import queue
import smtplib
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any, Final

from twinvault.ops import errors
from twinvault.ops import events as ev
from twinvault.ops.email_settings import (
    MAX_RETRY_DELAY_S,
    MAX_SUBJECT_CHARS,
    MAX_TEST_MESSAGE_CHARS,
    EmailSettings,
    SettingsMalformed,
    SettingsMissing,
    apply_changes,
    check_recipients,
    load_settings,
    save_settings,
    split_addresses,
)
from twinvault.ops.errors import TwinvaultError
from twinvault.ops.event_log import Event

log = logging.getLogger(__name__)

Emit = Callable[..., Any]
QUEUE_LIMIT: Final = 1000  # events waiting for the sender thread, and e-mails waiting for a retry
BATCH_LIMIT: Final = 50  # e-mails sent over one SMTP connection
SMTP_TIMEOUT_S: Final = 20.0
OVERFLOW_REPORT_S: Final = 60.0
STOP_FLUSH_S: Final = 5.0
# Reports of the notifier's own failures: mailing them would only fail again (the guide:
# "This message will not trigger an e-mail").
NEVER_MAILED: Final = frozenset({ev.EMAIL_CONNECT_FAILED, ev.EMAIL_SEND_FAILED, ev.EMAIL_NOT_SENT})
_POLICY: Final = email.policy.SMTP.clone(max_line_length=998)
SEVERITY_WORDS: Final = {"error": "Error", "warning": "Warning", "info": "Information"}


class SmtpFailure(Exception):
    """Sending failed: `event_id` is 5500 (connect, TLS, login) or 5505 (the message)."""

    def __init__(self, event_id: int, code: int, reason: str) -> None:
        super().__init__(reason)
        self.event_id = event_id
        self.code = code
        self.reason = reason


def compose_subject(settings: EmailSettings, server: str, event: Event) -> str:
    """The guide's subject: ``Prefix : Server Name : Severity : Message ID : Description``,
    prefix and description optional, cut to 150 characters."""
    parts = [server, SEVERITY_WORDS[event.severity], str(event.id)]
    if settings.subject_prefix:
        parts.insert(0, settings.subject_prefix)
    if settings.add_description:
        parts.append(" ".join(event.message.split()))
    return " : ".join(parts)[:MAX_SUBJECT_CHARS]


def compose_body(server: str, event: Event) -> str:
    """The event's message, then where and when it was logged and its fields."""
    when = datetime.datetime.fromtimestamp(event.time).astimezone().isoformat(timespec="seconds")
    lines = [
        event.message,
        "",
        f"Server: {server}",
        f"Event ID: {event.id}",
        f"Severity: {SEVERITY_WORDS[event.severity]}",
        f"Category: {event.category}",
        f"Time: {when}",
    ]
    lines += [f"{name}: {value}" for name, value in sorted(event.fields.items())]
    return "\n".join(lines) + "\n"


def _message(settings: EmailSettings, to: tuple[str, ...], subject: str, body: str) -> EmailMessage:
    # Headers up to SMTP's line limit: the subject (<= 150 characters) is never folded, which
    # Python's folder would do by moving it whole onto a continuation line (" Prefix : ...").
    message = EmailMessage(policy=_POLICY)
    message["From"] = settings.from_address
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=settings.from_address.rpartition("@")[2])
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to notifications
    message.set_content(body)
    return message


class SmtpSession:
    """One connection to the settings' SMTP server: TLS as configured, LOGIN if a login is set."""

    def __init__(self, settings: EmailSettings) -> None:
        self._settings = settings
        self._client: smtplib.SMTP | None = None

    def __enter__(self) -> SmtpSession:
        s = self._settings
        try:
            context = ssl.create_default_context(cafile=s.ca_file or None)
            if s.security == "tls":
                client: smtplib.SMTP = smtplib.SMTP_SSL(
                    s.smtp_host, s.smtp_port, timeout=SMTP_TIMEOUT_S, context=context
                )
            else:
                client = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=SMTP_TIMEOUT_S)
            self._client = client
            client.ehlo()
            if s.security == "starttls":
                client.starttls(context=context)
                client.ehlo()
        except (OSError, smtplib.SMTPException) as exc:
            self.__exit__()
            raise SmtpFailure(
                ev.EMAIL_CONNECT_FAILED, errors.EMAIL_SERVER_CONNECT_ERROR, _reason(exc)
            ) from exc
        if s.login:
            try:
                if "login" in client.esmtp_features.get("auth", "").lower().split():
                    # The guide names LOGIN; smtplib would prefer CRAM-MD5 or PLAIN when offered.
                    client.user, client.password = s.login, s.password
                    client.auth("LOGIN", client.auth_login, initial_response_ok=False)
                else:
                    client.login(s.login, s.password)
            except (OSError, smtplib.SMTPException) as exc:
                self.__exit__()
                raise SmtpFailure(
                    ev.EMAIL_CONNECT_FAILED, errors.EMAIL_SERVER_COMMUNICATION_ERROR, _reason(exc)
                ) from exc
        return self

    def send(self, message: EmailMessage) -> None:
        """Send one message; SmtpFailure 5505 when the server takes it from no recipient."""
        assert self._client is not None
        try:
            refused = self._client.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            raise SmtpFailure(ev.EMAIL_SEND_FAILED, errors.EMAIL_SEND_ERROR, _reason(exc)) from exc
        if refused:
            log.warning("e-mail %s refused for %s", message["Subject"], ", ".join(sorted(refused)))

    def __exit__(self, *exc_info: object) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                client.close()


def _id_summary(counts: collections.Counter[int]) -> str:
    """``"9000 x3, 4016"``: the event IDs of unsent e-mails for event 9041, most frequent first."""
    shown = [f"{i} x{n}" if n > 1 else str(i) for i, n in counts.most_common(10)]
    return ", ".join(shown) + (", ..." if len(counts) > 10 else "")


def _connection_lost(exc: BaseException | None) -> bool:
    """True when the SMTP connection cannot carry another message (smtplib's own errors
    are OSErrors too, but a refused message leaves the connection usable)."""
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, smtplib.SMTPException)


def _reason(exc: BaseException) -> str:
    """A failure's text for logs and events; smtplib's never includes the password."""
    if isinstance(exc, smtplib.SMTPResponseException):
        text = (
            exc.smtp_error.decode(errors="replace")
            if isinstance(exc.smtp_error, bytes)
            else str(exc.smtp_error)
        )
        return f"{exc.smtp_code} {text}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "every recipient refused: " + ", ".join(sorted(exc.recipients))
    return f"{type(exc).__name__}: {exc}"


@dataclass(eq=False)  # identity: two pendings of equal events are still two e-mails
class _Pending:
    """An event waiting to be mailed: how often it failed, and when to try it again."""

    event: Event
    attempts: int = 0
    due: float = 0.0  # time.monotonic()


@dataclass
class _Status:
    sent: int = 0
    dropped: int = 0
    last_sent: float | None = None
    last_error: str = ""
    failing_since: float | None = None
    failures_in_group: int = 0
    # Events the full queue turned away, by ID, not yet reported (event 9041).
    overflowed: collections.Counter[int] = field(default_factory=collections.Counter)


class EmailNotifier:
    """A host's notifier: settings in `path`, mailing as `server`, reporting through `emit`."""

    def __init__(self, path: Path, server: str, emit: Emit, *, clock: Callable[[], float] = time.monotonic):
        self.path = path
        self._server = server
        self._emit = emit
        self._clock = clock
        self._settings: EmailSettings | None = None
        self._active = False  # enabled and complete: events are queued
        self._inbox: queue.Queue[Event | None] = queue.Queue(QUEUE_LIMIT)
        self._outbox: collections.deque[_Pending] = collections.deque()
        self._lock = threading.Lock()  # the outbox and settings: API calls vs the sender thread
        self._overflow_lock = threading.Lock()
        self._overflow_reported = -OVERFLOW_REPORT_S
        self._stopping = False
        self._status = _Status()
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Load the saved settings (bad ones are reported by 5600 / 5506 and stay off) and
        start the sender thread."""
        try:
            settings = load_settings(self.path)
            if settings is not None and settings.enabled:
                settings.check()
        except SettingsMissing as exc:
            self._emit(ev.EMAIL_SETTINGS_MISSING, error_code=exc.code, reason=exc.detail)
            settings = None
        except SettingsMalformed as exc:
            self._emit(ev.EMAIL_SETTING_INVALID, setting=exc.setting, error_code=exc.code, reason=exc.detail)
            settings = None
        self._use(settings)
        self._thread = threading.Thread(target=self._run, name="email-notifier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Send what is due (at most a few seconds, not while the server is failing), then stop."""
        self._stopping = True
        self._wake()
        if self._thread is not None:
            # A daemon thread: a send stuck in its timeout does not hold up the stop for long.
            self._thread.join(STOP_FLUSH_S + 1)
            self._thread = None

    # -- the event path ------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """The event log's subscriber: queue `event` if it is to be mailed; never blocks."""
        settings = self._settings
        if not self._active or settings is None or event.id in NEVER_MAILED:
            return
        if event.severity not in settings.severities or event.id in settings.exclude:
            return
        try:
            self._inbox.put_nowait(event)
        except queue.Full:
            with self._overflow_lock:  # held for an increment only
                self._status.overflowed[event.id] += 1

    # -- settings ------------------------------------------------------------------------

    def settings_view(self) -> dict[str, Any]:
        """`notify show`: the settings (no password) and how sending goes."""
        settings = self._settings
        s = self._status
        return {
            "settings": None if settings is None else settings.view(),
            "status": {
                "active": self._active,
                "queued": self._inbox.qsize() + len(self._outbox),
                "sent": s.sent,
                "dropped": s.dropped,
                "last_sent": s.last_sent,
                "failing": s.failing_since is not None,
                "last_error": s.last_error,
            },
        }

    def update(self, changes: dict[str, Any], by: str = "") -> dict[str, Any]:
        """Apply `notify set`'s changes: checked whole, saved (0600), then used. A refusal
        changes nothing and is logged as 5506 (missing settings) or 5600 (bad format)."""
        with self._lock:
            current = self._settings or EmailSettings()
            try:
                new = apply_changes(current, changes)
            except SettingsMissing as exc:
                self._emit(ev.EMAIL_SETTINGS_MISSING, error_code=exc.code, reason=exc.detail)
                raise
            except SettingsMalformed as exc:
                self._emit(
                    ev.EMAIL_SETTING_INVALID, setting=exc.setting, error_code=exc.code, reason=exc.detail
                )
                raise
            save_settings(self.path, new)
            self._use(new)
            # New settings deserve a try now; the failure group goes on until a success.
            for pending in self._outbox:
                pending.due = 0.0
        self._wake()
        self._emit(
            ev.EMAIL_SETTINGS_CHANGED,
            user=by or "?",
            state="enabled" if new.enabled else "disabled",
            recipients=len(new.recipients),
        )
        return self.settings_view()

    def _wake(self) -> None:
        """Make the sender thread look again (a None on the queue is a wake-up, not an event)."""
        with contextlib.suppress(queue.Full):
            self._inbox.put_nowait(None)

    def _use(self, settings: EmailSettings | None) -> None:
        self._settings = settings
        self._active = settings is not None and settings.enabled
        if not self._active and self._outbox:
            log.info("e-mail notification is off: %d queued e-mails discarded", len(self._outbox))
            self._outbox.clear()

    # -- test ----------------------------------------------------------------------------

    def send_test(self, to: list[str] | None = None, message: str = "") -> dict[str, Any]:
        """Send a test e-mail now (blocking: call it off the event loop); error -2208 with the
        server's answer when it fails. Works while notification is disabled."""
        settings = self._settings
        if settings is None:
            raise TwinvaultError(errors.EMAIL_TEST_SEND_ERROR, "no e-mail settings: run twinvault notify set")
        recipients = check_recipients(split_addresses(to), "test recipients") if to else settings.recipients
        if len(message) > MAX_TEST_MESSAGE_CHARS:
            raise TwinvaultError(
                errors.EMAIL_SETTING_INVALID,
                f"the test message is longer than {MAX_TEST_MESSAGE_CHARS} characters",
            )
        text = message or f"This is a test message from twinvault on {self._server}."
        parts = [p for p in (settings.subject_prefix, self._server, "Test") if p]
        email = _message(settings, recipients, " : ".join(parts)[:MAX_SUBJECT_CHARS], text + "\n")
        try:
            with SmtpSession(settings) as session:
                session.send(email)
        except SmtpFailure as exc:
            raise TwinvaultError(errors.EMAIL_TEST_SEND_ERROR, exc.reason) from exc
        return {"sent": True, "to": list(recipients), "code": errors.EMAIL_OK}

    # -- the sender thread -----------------------------------------------------------------

    def _run(self) -> None:
        wait: float | None = None
        while True:
            self._take_inbox(wait)
            self._report_overflow()
            if self._stopping:
                self._report_overflow(now=True)
                self._flush_before_stop()
                return
            wait = self._send_due()

    def _take_inbox(self, wait: float | None) -> None:
        """Move queued events to the outbox, waiting up to `wait` seconds for the first."""
        try:
            item = self._inbox.get(timeout=wait) if wait is None or wait > 0 else self._inbox.get_nowait()
        except queue.Empty:
            return
        with self._lock:
            while True:
                if item is not None and self._active:
                    self._outbox.append(_Pending(item))
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
            while len(self._outbox) > QUEUE_LIMIT:
                dropped = self._outbox.popleft()
                with self._overflow_lock:
                    self._status.overflowed[dropped.event.id] += 1

    def _send_due(self) -> float | None:
        """Send the due e-mails in one batch; return how long to wait before looking again."""
        with self._lock:
            settings = self._settings if self._active else None
            now = self._clock()
            due = [p for p in self._outbox if p.due <= now][:BATCH_LIMIT]
        if settings is None or not self._outbox:
            return None
        if not due:
            return max(0.01, min(p.due for p in self._outbox) - now)
        self._send_batch(settings, due)
        return 0 if any(p.due <= self._clock() for p in self._outbox) else self._next_wait()

    def _next_wait(self) -> float | None:
        if not self._outbox:
            return None
        return max(0.01, min(p.due for p in self._outbox) - self._clock())

    def _send_batch(self, settings: EmailSettings, batch: list[_Pending]) -> None:
        try:
            with SmtpSession(settings) as session:
                for pending in batch:
                    event = pending.event
                    email = _message(
                        settings,
                        settings.recipients,
                        compose_subject(settings, self._server, event),
                        compose_body(self._server, event),
                    )
                    try:
                        session.send(email)
                    except SmtpFailure as exc:
                        self._failed([pending], settings, exc)
                        if _connection_lost(exc.__cause__):
                            raise  # the rest of the batch waits for the next connection too
                        continue
                    self._sent(pending)
        except SmtpFailure as exc:
            with self._lock:
                untried = [p for p in batch if p in self._outbox and p.due <= self._clock()]
            self._failed(untried, settings, exc)

    def _sent(self, pending: _Pending) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._outbox.remove(pending)
        s = self._status
        s.sent += 1
        s.last_sent = time.time()
        if s.failing_since is not None:
            failed, s.failing_since, s.failures_in_group = s.failures_in_group, None, 0
            self._emit(ev.EMAIL_SENDING_RESUMED, server=self._settings_server(), failed=failed)

    def _failed(self, batch: list[_Pending], settings: EmailSettings, exc: SmtpFailure) -> None:
        s = self._status
        s.last_error = exc.reason
        log.warning("e-mail to %s failed: %s", settings.server_address(), exc.reason)
        if s.failing_since is None:
            # The first failure of a group is reported once; the rest of the group is not.
            s.failing_since = time.time()
            fields: dict[str, Any] = {"error_code": exc.code, "reason": exc.reason}
            if exc.event_id == ev.EMAIL_CONNECT_FAILED:
                fields["server"] = self._settings_server()
            self._emit(exc.event_id, **fields)
        now = self._clock()
        given_up = []
        for pending in batch:
            pending.attempts += 1
            s.failures_in_group += 1
            if pending.attempts > settings.retry_limit:
                given_up.append(pending)
                continue
            pending.due = now + min(
                settings.retry_interval_s * 2 ** (pending.attempts - 1), MAX_RETRY_DELAY_S
            )
        with self._lock:
            for pending in given_up:
                with contextlib.suppress(ValueError):
                    self._outbox.remove(pending)
        if given_up:
            s.dropped += len(given_up)
            self._emit(
                ev.EMAIL_NOT_SENT,
                count=len(given_up),
                reason=f"failed {settings.retry_limit + 1} times",
                ids=_id_summary(collections.Counter(p.event.id for p in given_up)),
            )

    def _report_overflow(self, *, now: bool = False) -> None:
        """Report turned-away e-mails (9041): at once, then at most once a minute during a flood."""
        if not now and self._clock() - self._overflow_reported < OVERFLOW_REPORT_S:
            return
        with self._overflow_lock:
            counts, self._status.overflowed = self._status.overflowed, collections.Counter()
        if counts:
            self._overflow_reported = self._clock()
            total = sum(counts.values())
            self._status.dropped += total
            reason = f"more than {QUEUE_LIMIT} e-mails waiting"
            self._emit(ev.EMAIL_NOT_SENT, count=total, reason=reason, ids=_id_summary(counts))

    def _flush_before_stop(self) -> None:
        """At stop: one last batch of what is due, unless the server is known to be failing."""
        deadline = self._clock() + STOP_FLUSH_S
        while self._outbox and self._status.failing_since is None and self._clock() < deadline:
            settings = self._settings if self._active else None
            due = [p for p in self._outbox if p.due <= self._clock()][:BATCH_LIMIT]
            if settings is None or not due:
                break
            self._send_batch(settings, due)
        if self._outbox:
            # Queued e-mails live in memory only: say what the stop leaves unsent.
            count = len(self._outbox)
            self._status.dropped += count
            self._emit(
                ev.EMAIL_NOT_SENT,
                count=count,
                reason="the daemon stopped",
                ids=_id_summary(collections.Counter(p.event.id for p in self._outbox)),
            )
            self._outbox.clear()

    def _settings_server(self) -> str:
        settings = self._settings
        return "" if settings is None else settings.server_address()
