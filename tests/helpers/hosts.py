"""Real twinvault hosts for tests: ``setup`` + ``serve`` as child processes, console logins.

Every test host gets its own home, free ports and console config directory; hosts are
stopped by pid in teardown. ``Console.run`` calls the real ``twinvault`` command.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.procs import start_child, stop_child

PASSWORD = "correct horse battery staple"


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now and that this process has not handed out before."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


@dataclass
class Console:
    config_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    netns: str | None = None  # run the console inside this network namespace

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "TWINVAULT_CONFIG": str(self.config_dir), **self.env}
        argv = [sys.executable, "-m", "twinvault.cli.main", *args]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        proc = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"twinvault {' '.join(args)} failed ({proc.returncode}): {proc.stderr}{proc.stdout}"
            )
        return proc

    def json(self, *args: str, check: bool = True) -> Any:
        proc = self.run(*args, "--json", check=check)
        return json.loads(proc.stdout)

    def refused(self, *args: str, stdin: str | None = None) -> int:
        """Run a command that must fail; return the catalog code it reports."""
        code = self._outcome(*args, stdin=stdin)
        assert code != 0, f"twinvault {' '.join(args)} succeeded"
        return code

    def login(self, api: str, *extra: str, password: str = PASSWORD) -> int:
        """Log in; returns 0 on success, else the error code."""
        return self._outcome(
            "login", api, "--user", "admin", "--password-stdin", *extra, stdin=password + "\n"
        )

    def _outcome(self, *args: str, stdin: str | None) -> int:
        """0 for success; for a failure check the contract's shape (non-zero exit,
        ``error CODE: ...`` on stderr, the JSON error document on stdout), return CODE."""
        proc = self.run(*args, "--json", stdin=stdin, check=False)
        if proc.returncode == 0:
            return 0
        code = int(json.loads(proc.stdout)["error"]["code"])
        assert f"error {code}:" in proc.stderr
        return code


class PortTaken(Exception):
    pass


LEAKED_TASK = "Task was destroyed but it is pending"


@dataclass
class TestHost:
    __test__ = False  # not a pytest test class

    name: str
    home: Path
    api_port: int
    peer_port: int
    address: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = None
    netns: str | None = None

    @property
    def api(self) -> str:
        return f"{self.address}:{self.api_port}"

    def start(self, console: Console) -> None:
        for _ in range(3):
            try:
                self._start_once(console)
                return
            except PortTaken:
                # Another process took a port between free_port() and bind: pick new ones.
                self.api_port, self.peer_port = free_port(), free_port()
                console.run(
                    "setup",
                    "--home",
                    str(self.home),
                    "--api-port",
                    str(self.api_port),
                    "--peer-port",
                    str(self.peer_port),
                )
        self._start_once(console)

    def _start_once(self, console: Console) -> None:
        argv = [sys.executable, "-m", "twinvault.cli.main", "serve", "--home", str(self.home)]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        with open(self.home / "serve.log", "ab") as log:  # the child keeps its own descriptor
            self.process = start_child(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log_text = (self.home / "serve.log").read_text()
                self.process = None
                if "address already in use" in log_text[-2000:]:
                    raise PortTaken(self.name)
                raise AssertionError(f"{self.name} exited: {log_text[-3000:]}")
            if console.login(self.api, "--trust-on-first-use") == 0:
                return
            time.sleep(0.1)
        raise AssertionError(f"{self.name} did not answer: {(self.home / 'serve.log').read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None:
            stop_child(self.process, timeout=15)
            self.process = None

    def assert_no_leaked_tasks(self) -> None:
        """A task left pending and then destroyed (a waiter nobody cancelled) is a leak
        asyncio only reports in the log: fail the test that caused it."""
        log = self.home / "serve.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        at = text.find(LEAKED_TASK)
        assert at < 0, f"{self.name}: {text[at : at + 600]}"

    def kill9(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def events(self) -> list[dict[str, Any]]:
        path = self.home / "events" / "events.log"
        out = []
        for line in path.read_text().splitlines() if path.exists() else []:
            with contextlib.suppress(json.JSONDecodeError):  # a line being written
                out.append(json.loads(line))
        return out


def make_host(
    base: Path,
    name: str,
    console: Console,
    *,
    extra_config: str = "",
    netns: str | None = None,
    address: str = "127.0.0.1",
) -> TestHost:
    home = base / f"home-{name}"
    host = TestHost(name, home, free_port(), free_port(), address=address, netns=netns)
    args = [
        "setup",
        "--home",
        str(home),
        "--name",
        name,
        "--peer-port",
        str(host.peer_port),
        "--api-port",
        str(host.api_port),
        "--admin",
        "admin",
        "--password-stdin",
    ]
    if extra_config:
        cfg = base / f"{name}-setup.toml"
        cfg.write_text(extra_config)
        args += ["--config", str(cfg)]
    console.run(*args, stdin=PASSWORD + "\n")
    return host


@contextmanager
def running_hosts(
    base: Path, *names: str, console: Console | None = None, configs: dict[str, str] | None = None, **kw: Any
) -> Iterator[tuple[Console, list[TestHost]]]:
    """``configs``: a setup file's text for some hosts, by name (``extra_config`` is for all)."""
    console = console or Console(base / "console")
    own = configs or {}
    hosts = [
        make_host(base, n, console, **({"extra_config": own[n]} if n in own else {}), **kw) for n in names
    ]
    try:
        for h in hosts:
            h.start(console)
        yield console, hosts
    finally:
        for h in hosts:
            h.stop()
    for h in hosts:
        h.assert_no_leaked_tasks()


def wait_for(predicate: Any, timeout: float = 60, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value {last!r}")
