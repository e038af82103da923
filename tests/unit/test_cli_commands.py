"""The console imports only the module of the command it runs: the map from command to
module must name every command each module defines, and nothing else."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

from twinvault.cli.main import MODULE_OF, MODULES, build_parser


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_every_command_maps_to_the_module_that_defines_it() -> None:
    for name in MODULES:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers(dest="command")
        importlib.import_module(f"twinvault.cli.{name}").add_parsers(sub)
        assert _commands(parser) == {c for c, m in MODULE_OF.items() if m == name}, name
    assert _commands(build_parser()) == set(MODULE_OF)


def test_a_known_command_builds_its_module_alone() -> None:
    assert _commands(build_parser("mounts")) == {"mount", "umount", "mounts"}
    assert _commands(build_parser("nosuch")) == set(MODULE_OF)


def test_running_a_job_command_does_not_import_the_other_commands() -> None:
    code = (
        "import sys\n"
        "from twinvault.cli.main import build_parser\n"
        "build_parser('job').parse_args(['job', 'show', 'x'])\n"
        "print(sorted(m for m in sys.modules if m.startswith(('twinvault.cli.', 'rich'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for absent in ("history_cmd", "mount_cmd", "recover_cmd", "host_cmd", "'rich"):
        assert absent not in out, out


def test_a_job_command_loads_no_codec_config_reader_or_rich_and_prints_brackets_as_they_are() -> None:
    """What a cold `job resume` reads from disk before its request is on its way: no
    zstandard, no TOML, no rich (a path's brackets are no markup either)."""
    code = (
        "import sys\n"
        "import twinvault.cli.jobs_cmd\n"
        "from twinvault.cli.output import say\n"
        "say('  differs: /data/[red]x[/]')\n"
        "print(sorted(m for m in ('zstandard', 'tomllib', 'tomli_w', 'rich') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["  differs: /data/[red]x[/]", "[]"]


def test_markup_lines_print_a_peers_text_as_it_is() -> None:
    from rich.console import Console

    from twinvault.cli.output import literal

    console = Console(record=True, width=200)
    console.print(f"  [yellow]warning[/]: {literal('/data/[red]x[/] and [bold]')}")
    assert console.export_text().strip() == "warning: /data/[red]x[/] and [bold]"
