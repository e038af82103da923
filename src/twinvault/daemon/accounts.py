"""Console accounts and tokens of one host.

Passwords are stored as salted scrypt hashes (n=2^15, r=8, p=1: ~50 ms per check, so
guessing is slow). Tokens are random 32-byte strings handed to the console at login;
only their SHA-256 is stored, so reading ``tokens.json`` does not let anyone in.
Failed logins are counted for the Security statistics.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from twinvault.durable import write_private

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
TOKEN_LIFETIME_S = 30 * 24 * 3600


def hash_password(password: str, salt: bytes | None = None) -> dict[str, str | int | float]:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 << 20)
    return {"salt": salt.hex(), "hash": digest.hex(), "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P}


def check_password(record: dict[str, str | int | float], password: str) -> bool:
    digest = hashlib.scrypt(
        password.encode(),
        salt=bytes.fromhex(str(record["salt"])),
        n=int(record["n"]),
        r=int(record["r"]),
        p=int(record["p"]),
        maxmem=64 << 20,
    )
    return hmac.compare_digest(digest.hex(), str(record["hash"]))


@dataclass(slots=True)
class SecurityCounters:
    logins_ok: int = 0
    logins_failed: int = 0
    requests_refused: int = 0
    peers_refused: int = 0


class Accounts:
    def __init__(self, accounts_path: Path, tokens_path: Path) -> None:
        self._accounts_path = accounts_path
        self._tokens_path = tokens_path
        self._lock = threading.Lock()
        self.counters = SecurityCounters()

    def _load(self, path: Path) -> dict[str, dict[str, str | int | float]]:
        try:
            data: dict[str, dict[str, str | int | float]] = json.loads(path.read_text())
            return data
        except FileNotFoundError:
            return {}

    def set_password(self, user: str, password: str) -> None:
        with self._lock:
            accounts = self._load(self._accounts_path)
            accounts[user] = hash_password(password)
            write_private(self._accounts_path, json.dumps(accounts, indent=1).encode())

    def has_accounts(self) -> bool:
        return bool(self._load(self._accounts_path))

    def login(self, user: str, password: str) -> str | None:
        record = self._load(self._accounts_path).get(user)
        # Check a dummy hash for unknown users too, so timing does not reveal who exists.
        ok = check_password(record or hash_password("x", b"0" * 16), password) and record is not None
        if not ok:
            self.counters.logins_failed += 1
            return None
        self.counters.logins_ok += 1
        token = secrets.token_urlsafe(32)
        with self._lock:
            tokens = self._load(self._tokens_path)
            now = time.time()
            tokens = {k: v for k, v in tokens.items() if float(v["expires"]) > now}
            tokens[_token_key(token)] = {"user": user, "expires": now + TOKEN_LIFETIME_S}
            write_private(self._tokens_path, json.dumps(tokens).encode())
        return token

    def user_for(self, token: str) -> str | None:
        record = self._load(self._tokens_path).get(_token_key(token))
        if record is None or float(record["expires"]) < time.time():
            self.counters.requests_refused += 1
            return None
        return str(record["user"])

    def revoke(self, token: str) -> None:
        with self._lock:
            tokens = self._load(self._tokens_path)
            tokens.pop(_token_key(token), None)
            write_private(self._tokens_path, json.dumps(tokens).encode())


def _token_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
