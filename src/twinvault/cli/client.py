"""The console's side of the management API: pinned HTTPS calls and the credentials cache.

The cache (``$TWINVAULT_CONFIG/credentials.json``, else ``~/.config/twinvault``, mode
0600) maps ``HOST:PORT`` to the pinned certificate fingerprint and a token.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from twinvault.cli.https import Connection, ProtocolError
from twinvault.daemon.ports import DEFAULT_API_PORT
from twinvault.durable import write_private
from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError
from twinvault.protocol.tls import check_pinned, client_context


def config_dir() -> Path:
    env = os.environ.get("TWINVAULT_CONFIG")
    return Path(env) if env else Path.home() / ".config" / "twinvault"


def split_host(spec: str) -> tuple[str, int]:
    """``HOST[:PORT]`` (``[v6]:PORT`` too) -> (host, port)."""
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else DEFAULT_API_PORT
    if spec.count(":") == 1:
        host, port = spec.split(":")
        if not port.isdigit():
            raise TwinvaultError(errors.INVALID_ARGUMENT, f"bad port in {spec!r}")
        return host, int(port)
    return spec, DEFAULT_API_PORT


def host_key(spec: str) -> str:
    host, port = split_host(spec)
    return f"{host}:{port}"


class Credential:
    """A login: the pinned fingerprint, the token, who and which host. (A plain class:
    dataclasses cost a console command's start ~20 ms of imports.)"""

    def __init__(self, fingerprint: str, token: str, user: str, name: str = "") -> None:
        self.fingerprint = fingerprint
        self.token = token
        self.user = user
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Credential) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"Credential(user={self.user!r}, name={self.name!r}, fingerprint={self.fingerprint!r})"


class CredentialCache:
    def __init__(self, directory: Path | None = None) -> None:
        self.path = (directory or config_dir()) / "credentials.json"

    def load(self) -> dict[str, Credential]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return {k: Credential(**v) for k, v in raw.items()}

    def save(self, creds: dict[str, Credential]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self.path, json.dumps({k: vars(v) for k, v in creds.items()}, indent=1).encode())

    def get(self, spec: str) -> Credential:
        cred = self.load().get(host_key(spec))
        if cred is None:
            raise TwinvaultError(errors.UNKNOWN_HOST, f"{spec}: run 'twinvault login {spec}' first")
        return cred


class ApiClient:
    def __init__(self, spec: str, fingerprint: str, token: str = "", timeout: float = 60) -> None:
        self.spec = spec
        self.host, self.port = split_host(spec)
        self.fingerprint = fingerprint
        self.token = token
        self.timeout: float | None = timeout

    @staticmethod
    def for_host(spec: str, cache: CredentialCache | None = None) -> ApiClient:
        cred = (cache or CredentialCache()).get(spec)
        return ApiClient(spec, cred.fingerprint, cred.token)

    def probe_fingerprint(self) -> str:
        """Connect and return the server's certificate fingerprint (nothing sent)."""
        conn = self._connect()
        try:
            return check_pinned(conn.sock, "")
        finally:
            conn.close()

    def _connect(self) -> Connection:
        conn = Connection(self.host, self.port, timeout=self.timeout, context=client_context())
        try:
            conn.connect()
        except (ConnectionRefusedError, socket.gaierror, TimeoutError, OSError) as exc:
            code = (
                errors.SERVER_NOT_RESPONDING if isinstance(exc, TimeoutError) else errors.DAEMON_NOT_REACHABLE
            )
            raise TwinvaultError(code, f"{self.spec}: {exc}") from exc
        return conn

    def call_long(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """A call that may take as long as the work it asks for (restore, check --read-data)."""
        saved, self.timeout = self.timeout, None
        try:
            return self.call(method, path, body)
        finally:
            self.timeout = saved

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[bytes]:
        """POST and yield the response body as it arrives (a restore's frames); an error
        answer is raised as the error it carries."""
        conn = Connection(self.host, self.port, timeout=None, context=client_context())
        try:
            try:
                conn.connect()
                check_pinned(conn.sock, self.fingerprint)
                headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"}
                conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
                response = conn.getresponse()
            except (OSError, ProtocolError) as exc:
                raise TwinvaultError(errors.DAEMON_NOT_REACHABLE, f"{self.spec}: {exc}") from exc
            if response.status != 200:
                data = json.loads(response.read() or b"{}")
                if isinstance(data, dict) and "error" in data:
                    raise TwinvaultError.from_json(data)
                raise TwinvaultError(errors.UNKNOWN_ERROR, f"{self.spec}: HTTP {response.status}")
            while True:
                try:
                    piece = response.read1(1 << 20)
                except (OSError, ProtocolError) as exc:
                    raise TwinvaultError(errors.DAEMON_NOT_REACHABLE, f"{self.spec}: {exc}") from exc
                if not piece:
                    return
                yield piece
        finally:
            conn.close()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, **query: Any) -> Any:
        conn = self._connect()
        try:
            check_pinned(conn.sock, self.fingerprint)
            if query:
                from urllib.parse import urlencode

                path += "?" + urlencode({k: v for k, v in query.items() if v is not None})
            headers = {"Content-Type": "application/json"}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            payload = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = json.loads(response.read() or b"{}")
        except (OSError, ProtocolError) as exc:
            raise TwinvaultError(errors.DAEMON_NOT_REACHABLE, f"{self.spec}: {exc}") from exc
        finally:
            conn.close()
        if isinstance(data, dict) and "error" in data:
            raise TwinvaultError.from_json(data)
        return data
