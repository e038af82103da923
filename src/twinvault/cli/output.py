"""How the console prints: JSON documents with ``--json``, rich tables otherwise."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from twinvault.ops.errors import TwinvaultError


class _Console:
    """rich's Console, made on first use: a command that prints JSON or nothing never
    imports rich (a third of the command's start)."""

    def __init__(self, *, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Any = None

    def get(self) -> Any:
        """The rich Console itself, for what needs the object (``Live`` enters it as a
        context manager, which a proxy's ``__getattr__`` cannot stand in for)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


console: Any = _Console()
err_console: Any = _Console(stderr=True)


def say(text: str) -> None:
    """One line of plain text on stdout. Not through rich: a path may hold brackets that
    rich would take for markup, and importing rich is a third of a cold console start."""
    sys.stdout.write(text + "\n")


def literal(text: object) -> str:
    """``text`` for a rich markup string, its brackets escaped (a path or a peer's message
    must print as it is, not as markup)."""
    from rich.markup import escape

    return escape(str(text))


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=1, default=str) + "\n")


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for row in rows:
        t.add_row(*["" if v is None else str(v) for v in row])
    console.print(t)


def fail(exc: TwinvaultError, as_json: bool) -> int:
    if as_json:
        emit_json(exc.to_json())
    sys.stderr.write(f"error {exc.code}: {exc.message}\n")
    return 1


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"
