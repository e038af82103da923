"""A real SMTP server for tests (aiosmtpd): STARTTLS or implicit TLS, AUTH required over TLS.

`MailServer` listens on a fixed free port so it can be stopped and started again at the
same address (the notifier's retries must find it back). Its certificate is self-signed
for 127.0.0.1; `ca_file` is what the daemon's ``--smtp-ca-file`` needs to trust it.
Received messages are parsed and kept in order; `accepted_password` can change while
it runs (a server whose password was wrong "accepts again").
"""

from __future__ import annotations

import email
import email.policy
import ssl
import threading
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.helpers.hosts import free_port
from twinvault.protocol.tls import create_identity

USER = "mailer"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1: (cert.pem, key.pem)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    create_identity(cert_path, key_path, "localhost", ip_addresses=["127.0.0.1"])
    return cert_path, key_path


class _Collector:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        # Stored as a mailbox would (LF line ends), so get_content() reads as the text sent.
        content = envelope.content.replace(b"\r\n", b"\n")
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        with self.lock:
            self.messages.append(parsed)
        return "250 Message accepted for delivery"


class MailServer:
    """aiosmtpd on 127.0.0.1:`port`; `implicit_tls` for SMTPS, else STARTTLS is required."""

    def __init__(self, directory: Path, password: str, *, implicit_tls: bool = False) -> None:
        self.cert, self.key = make_certificate(directory)
        self.ca_file = self.cert
        self.port = free_port()
        self.accepted_password = password
        self.implicit_tls = implicit_tls
        self.collector = _Collector()
        self.auth_failures = 0
        self._controller: Controller | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode() == USER
            and data.password.decode() == self.accepted_password
        )
        if not ok:
            self.auth_failures += 1
        return AuthResult(success=ok, handled=False)

    def start(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        tls: dict[str, Any] = (
            {"ssl_context": context}
            if self.implicit_tls
            else {"tls_context": context, "require_starttls": True}
        )
        self._controller = Controller(
            self.collector,
            hostname="127.0.0.1",
            port=self.port,
            authenticator=self._authenticate,
            auth_required=True,
            # aiosmtpd sees only STARTTLS as TLS: on an implicit-TLS port every session is TLS.
            auth_require_tls=not self.implicit_tls,
            **tls,
        )
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> MailServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def messages(self) -> list[EmailMessage]:
        with self.collector.lock:
            return list(self.collector.messages)

    def wait_for(
        self, predicate: Callable[[EmailMessage], bool], timeout: float = 30, count: int = 1
    ) -> list[EmailMessage]:
        """Wait until `count` received messages match; return them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.messages() if predicate(m)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                subjects = [str(m["Subject"]) for m in self.messages()]
                raise AssertionError(f"{count} matching e-mails not received in {timeout}s; got {subjects}")
            time.sleep(0.05)
