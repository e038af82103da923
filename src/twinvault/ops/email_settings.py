"""A host's e-mail notification settings: what they hold, how they are checked, where they live.

The guide's "E-mailing ... event messages" pages: an SMTP server (optionally with a LOGIN
account), a From address, up to 256 recipients, the severities to mail, event IDs to
exclude ("4000-4010;5500"), an optional subject prefix and event description. Settings
are one JSON file per host (``notify.json`` in the home, 0600: it holds the SMTP
password; ``docs/formats.md``). Every change is validated whole before it is written, so
a refused change leaves the file as it was. ``ops.email_notifier`` mails events with them.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, get_args

from twinvault.durable import write_private
from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.ops.events import SEVERITIES, Severity

Security = Literal["none", "starttls", "tls"]
SECURITIES: Final[tuple[Security, ...]] = get_args(Security)
FORMAT_VERSION: Final = 1
FILE_NAME: Final = "notify.json"

# The guide's limits.
MAX_RECIPIENTS: Final = 256
MAX_ADDRESS_CHARS: Final = 256
MAX_SUBJECT_CHARS: Final = 150
MAX_TEST_MESSAGE_CHARS: Final = 1024
# Ours: a retry window of about 45 minutes by default (30 s doubling, capped at 10 minutes).
DEFAULT_RETRY_INTERVAL_S: Final = 30.0
DEFAULT_RETRY_LIMIT: Final = 8
MAX_RETRY_DELAY_S: Final = 600.0

# local@domain, no spaces, no angle brackets or header-breaking characters. Deliberately
# simpler than RFC 5322: a display name or a quoted local part is refused, not guessed at.
_ADDRESS: Final = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
_EXCLUDE_ITEM: Final = re.compile(r"^\s*(\d{1,6})\s*(?:-\s*(\d{1,6})\s*)?$")
_SEVERITY_WORDS: Final[dict[str, Severity]] = {
    "error": "error",
    "warning": "warning",
    "info": "info",
    "information": "info",
}


class SettingsMissing(TwinvaultError):
    """Required settings are absent (the guide's event 5506)."""


class SettingsMalformed(TwinvaultError):
    """A setting is not in a valid format (the guide's event 5600 names the setting)."""

    def __init__(self, code: int, setting: str, detail: str) -> None:
        super().__init__(code, detail)
        self.setting = setting


@dataclass(frozen=True)
class IdRanges:
    """Event IDs excluded from mailing: inclusive ranges, kept with the text they came from."""

    text: str = ""
    ranges: tuple[tuple[int, int], ...] = ()

    def __contains__(self, event_id: object) -> bool:
        return isinstance(event_id, int) and any(lo <= event_id <= hi for lo, hi in self.ranges)


def parse_id_ranges(text: str) -> IdRanges:
    """Parse the guide's exclude list: IDs and ranges separated by ``,`` or ``;``.

    ``"4000-4010; 5500,"`` -> ranges (4000, 4010), (5500, 5500). Empty items (a trailing
    separator) are ignored; anything else that is not an ID or a low-high range is refused.
    """
    ranges: list[tuple[int, int]] = []
    for item in re.split(r"[,;]", text):
        if not item.strip():
            continue
        match = _EXCLUDE_ITEM.match(item)
        if match is None:
            raise SettingsMalformed(
                errors.EMAIL_ALERT_ID_INVALID,
                "exclude IDs",
                f"{item.strip()!r} is not an ID or a range LOW-HIGH",
            )
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) else low
        if high < low:
            raise SettingsMalformed(
                errors.EMAIL_ALERT_ID_INVALID, "exclude IDs", f"range {item.strip()!r} ends before it starts"
            )
        ranges.append((low, high))
    normal = ";".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)
    return IdRanges(normal, tuple(ranges))


def split_addresses(values: list[str] | tuple[str, ...]) -> list[str]:
    """Addresses from arguments that may each hold a ``,`` or ``;`` separated list."""
    return [a.strip() for v in values for a in re.split(r"[,;]", v) if a.strip()]


def check_address(address: str, what: str) -> str:
    """Return `address` if it is a plain ``local@domain`` of at most 256 characters."""
    if len(address) > MAX_ADDRESS_CHARS:
        raise SettingsMalformed(
            errors.EMAIL_SETTING_INVALID, what, f"{what} is longer than {MAX_ADDRESS_CHARS} characters"
        )
    if not _ADDRESS.match(address):
        raise SettingsMalformed(
            errors.EMAIL_SETTING_INVALID, what, f"{what} {address!r} is not an e-mail address"
        )
    return address


def check_recipients(addresses: list[str], what: str = "recipients") -> tuple[str, ...]:
    """Check a recipient list: 1 to 256 distinct addresses of at most 256 characters each."""
    if not addresses:
        raise TwinvaultError(errors.EMAIL_RECIPIENTS_EMPTY, f"no {what}")
    if len(addresses) > MAX_RECIPIENTS:
        raise SettingsMalformed(
            errors.EMAIL_SETTING_INVALID, what, f"{len(addresses)} {what}: at most {MAX_RECIPIENTS}"
        )
    seen: set[str] = set()
    for address in addresses:
        check_address(address, "recipient")
        if address.lower() in seen:
            raise TwinvaultError(errors.EMAIL_ADDRESS_EXISTS, f"{address} is listed twice")
        seen.add(address.lower())
    return tuple(addresses)


def parse_severities(text: str | list[str]) -> tuple[Severity, ...]:
    """``"error,warning"`` (or a list of words) -> the severities to mail, in catalog order."""
    words = split_addresses([text] if isinstance(text, str) else text)
    chosen: set[Severity] = set()
    for word in words:
        severity = _SEVERITY_WORDS.get(word.lower())
        if severity is None:
            raise SettingsMalformed(
                errors.EMAIL_SETTING_INVALID, "severity", f"severity {word!r}: use error, warning and/or info"
            )
        chosen.add(severity)
    return tuple(s for s in SEVERITIES if s in chosen)


def parse_smtp(text: str, security: Security) -> tuple[str, int]:
    """``HOST[:PORT]`` or ``[v6]:PORT`` -> (host, port); the port defaults to 465 with
    implicit TLS and 25 otherwise."""
    default = 465 if security == "tls" else 25
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not host or not re.match(r"^[A-Za-z0-9.:_-]+$", host):
        raise SettingsMalformed(errors.EMAIL_SETTING_INVALID, "SMTP server", f"SMTP server {text!r}")
    if port_text and (not port_text.isdigit() or not 0 < int(port_text) < 65536):
        raise SettingsMalformed(errors.EMAIL_SETTING_INVALID, "SMTP server", f"SMTP port in {text!r}")
    return host, int(port_text) if port_text else default


def check_plain_text(text: str, what: str, limit: int) -> str:
    """A one-line text (subject prefix, login) of at most `limit` characters."""
    if len(text) > limit:
        raise SettingsMalformed(
            errors.EMAIL_SETTING_INVALID, what, f"{what} is longer than {limit} characters"
        )
    if any(c in text for c in "\r\n\0"):
        raise SettingsMalformed(errors.EMAIL_SETTING_INVALID, what, f"{what} must be one line")
    return text


@dataclass(frozen=True)
class EmailSettings:
    """One host's notification settings. `password` never leaves the host (see `view`)."""

    enabled: bool = False
    smtp_host: str = ""
    smtp_port: int = 25
    security: Security = "none"
    ca_file: str = ""  # PEM bundle that verifies the SMTP server; "" = the system's CAs
    login: str = ""  # "" = no SMTP authentication
    password: str = field(default="", repr=False)
    from_address: str = ""
    recipients: tuple[str, ...] = ()
    severities: tuple[Severity, ...] = ("error", "warning")
    exclude: IdRanges = IdRanges()
    subject_prefix: str = ""
    add_description: bool = False
    retry_interval_s: float = DEFAULT_RETRY_INTERVAL_S
    retry_limit: int = DEFAULT_RETRY_LIMIT

    def missing(self) -> list[str]:
        """The required settings not given (the guide: server, From, To, an event type)."""
        absent = []
        if not self.smtp_host:
            absent.append("SMTP server (--smtp)")
        if not self.from_address:
            absent.append("From address (--from)")
        if not self.recipients:
            absent.append("recipients (--to)")
        if not self.severities:
            absent.append("at least one severity (--severity)")
        return absent

    def check(self) -> EmailSettings:
        """Raise the first problem of the whole settings (missing, then malformed); return self."""
        absent = self.missing()
        if absent:
            raise SettingsMissing(
                errors.EMAIL_SETTING_INVALID, "required settings missing: " + ", ".join(absent)
            )
        parse_smtp(f"[{self.smtp_host}]:{self.smtp_port}", self.security)
        check_address(self.from_address, "From address")
        check_recipients(list(self.recipients))
        check_plain_text(self.subject_prefix, "subject prefix", MAX_SUBJECT_CHARS)
        check_plain_text(self.login, "login", MAX_ADDRESS_CHARS)
        if self.password and not self.login:
            raise SettingsMalformed(
                errors.EMAIL_SETTING_INVALID, "login", "a password needs a login (--login)"
            )
        if self.login and self.security == "none":
            # LOGIN sends the password base64-encoded, i.e. readable by anyone on the path.
            raise SettingsMalformed(
                errors.EMAIL_SETTING_INVALID,
                "login",
                "--login needs --starttls or --tls: the password is sent",
            )
        if self.login and not self.password:
            raise SettingsMalformed(errors.EMAIL_SETTING_INVALID, "login", "--login needs --password-stdin")
        if not 0 < self.retry_interval_s <= MAX_RETRY_DELAY_S or not 0 <= self.retry_limit <= 100:
            raise SettingsMalformed(
                errors.EMAIL_SETTING_INVALID,
                "retry",
                f"retry interval must be in (0, {MAX_RETRY_DELAY_S:.0f}] s and the retry limit 0-100",
            )
        return self

    def server_address(self) -> str:
        """``HOST:PORT`` (``[v6]:PORT``), as `notify set --smtp` takes it."""
        host = f"[{self.smtp_host}]" if ":" in self.smtp_host else self.smtp_host
        return f"{host}:{self.smtp_port}"

    def view(self) -> dict[str, Any]:
        """The settings as `notify show` prints them: everything but the password."""
        return {
            "enabled": self.enabled,
            "smtp": self.server_address() if self.smtp_host else "",
            "security": self.security,
            "ca_file": self.ca_file,
            "login": self.login,
            "password_set": bool(self.password),
            "from": self.from_address,
            "to": list(self.recipients),
            "severity": list(self.severities),
            "exclude_ids": self.exclude.text,
            "subject_prefix": self.subject_prefix,
            "add_description": self.add_description,
            "retry_interval_s": self.retry_interval_s,
            "retry_limit": self.retry_limit,
        }

    def to_json(self) -> dict[str, Any]:
        """The file's document (`docs/formats.md`), password included."""
        document = {k: v for k, v in self.view().items() if k not in ("smtp", "password_set")}
        document.update(
            {
                "v": FORMAT_VERSION,
                "smtp_host": self.smtp_host,
                "smtp_port": self.smtp_port,
                "password": self.password,
            }
        )
        return document

    @staticmethod
    def from_json(raw: dict[str, Any]) -> EmailSettings:
        """Read the file's document; raises SettingsMalformed for a foreign or damaged one."""
        if raw.get("v") != FORMAT_VERSION:
            raise SettingsMalformed(
                errors.EMAIL_SETTING_INVALID, "file", f"unknown format version {raw.get('v')!r}"
            )
        try:
            security = str(raw.get("security", "none"))
            if security not in SECURITIES:
                raise ValueError(f"security {security!r}")
            return EmailSettings(
                enabled=bool(raw["enabled"]),
                smtp_host=str(raw["smtp_host"]),
                smtp_port=int(raw["smtp_port"]),
                security=security,
                ca_file=str(raw.get("ca_file", "")),
                login=str(raw.get("login", "")),
                password=str(raw.get("password", "")),
                from_address=str(raw["from"]),
                recipients=tuple(str(a) for a in raw["to"]),
                severities=parse_severities([str(s) for s in raw["severity"]]),
                exclude=parse_id_ranges(str(raw.get("exclude_ids", ""))),
                subject_prefix=str(raw.get("subject_prefix", "")),
                add_description=bool(raw.get("add_description", False)),
                retry_interval_s=float(raw.get("retry_interval_s", DEFAULT_RETRY_INTERVAL_S)),
                retry_limit=int(raw.get("retry_limit", DEFAULT_RETRY_LIMIT)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SettingsMalformed(errors.EMAIL_SETTING_INVALID, "file", f"damaged settings: {exc}") from exc


def apply_changes(current: EmailSettings, changes: dict[str, Any]) -> EmailSettings:
    """Return `current` with the API's changes applied and the result checked whole.

    Keys (all optional; absent = unchanged): ``smtp`` ("HOST:PORT"), ``security``,
    ``ca_file``, ``login`` ("" = none), ``password``, ``from``, ``to`` (list), ``severity``
    ("error,warning" or a list), ``exclude_ids``, ``subject_prefix``, ``add_description``,
    ``enabled``, ``retry_interval_s``, ``retry_limit``. A first setting enables
    notification unless ``enabled`` says otherwise.
    """
    known = {
        "smtp",
        "security",
        "ca_file",
        "login",
        "password",
        "from",
        "to",
        "severity",
        "exclude_ids",
        "subject_prefix",
        "add_description",
        "enabled",
        "retry_interval_s",
        "retry_limit",
    }
    unknown = sorted(set(changes) - known)
    if unknown:
        raise TwinvaultError(errors.INVALID_ARGUMENT, f"unknown e-mail settings: {', '.join(unknown)}")
    new: dict[str, Any] = {}
    security = str(changes.get("security", current.security))
    if security not in SECURITIES:
        raise SettingsMalformed(errors.EMAIL_SETTING_INVALID, "security", f"security {security!r}")
    new["security"] = security
    if "smtp" in changes:
        new["smtp_host"], new["smtp_port"] = parse_smtp(str(changes["smtp"]), security)
    if "ca_file" in changes:
        new["ca_file"] = str(changes["ca_file"])
        if new["ca_file"] and not new["ca_file"].startswith("/"):
            raise SettingsMalformed(
                errors.EMAIL_SETTING_INVALID, "CA file", "the CA file must be an absolute path"
            )
    if "login" in changes:
        new["login"] = str(changes["login"])
        if not new["login"]:
            new["password"] = ""
    if "password" in changes:
        new["password"] = str(changes["password"])
    if "from" in changes:
        new["from_address"] = str(changes["from"]).strip()
    if "to" in changes:
        to = changes["to"]
        addresses = split_addresses([str(a) for a in to] if isinstance(to, list) else [str(to)])
        new["recipients"] = check_recipients(addresses)
    if "severity" in changes:
        severity = changes["severity"]
        new["severities"] = parse_severities(severity if isinstance(severity, list) else str(severity))
    if "exclude_ids" in changes:
        new["exclude"] = parse_id_ranges(str(changes["exclude_ids"]))
    if "subject_prefix" in changes:
        new["subject_prefix"] = check_plain_text(
            str(changes["subject_prefix"]), "subject prefix", MAX_SUBJECT_CHARS
        )
    for key in ("add_description", "enabled"):
        if key in changes:
            new[key] = bool(changes[key])
    if "retry_interval_s" in changes:
        new["retry_interval_s"] = float(changes["retry_interval_s"])
    if "retry_limit" in changes:
        new["retry_limit"] = int(changes["retry_limit"])
    first = not current.smtp_host
    if first and "enabled" not in changes:
        new["enabled"] = True
    return dataclasses.replace(current, **new).check()


def load_settings(path: Path) -> EmailSettings | None:
    """The settings saved at `path`, or None when there are none yet."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SettingsMalformed(errors.EMAIL_SETTING_INVALID, "file", f"{path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise SettingsMalformed(errors.EMAIL_SETTING_INVALID, "file", f"{path}: not a JSON object")
    return EmailSettings.from_json(raw)


def save_settings(path: Path, settings: EmailSettings) -> None:
    """Write the settings durably with mode 0600 (the file holds the SMTP password)."""
    write_private(path, json.dumps(settings.to_json(), indent=1).encode())
