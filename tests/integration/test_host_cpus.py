"""``cpus`` in ``[host]``: the daemon and every thread it starts run on those CPUs; a bad
list is refused at setup with its code, and the host's configuration is left as it was."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.hosts import running_hosts


def _allowed_lists(pid: int) -> set[str]:
    lists = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            lists.update(line.split()[1] for line in f if line.startswith("Cpus_allowed_list:"))
    return lists


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to confine to one")
def test_a_daemon_and_its_threads_run_on_the_cpus_it_is_given(tmp_path: Path) -> None:
    cpu = max(os.sched_getaffinity(0))
    with running_hosts(tmp_path, "alpha", extra_config=f'[config]\ncpus = "{cpu}"\n') as (console, hosts):
        (alpha,) = hosts
        assert alpha.process is not None
        pid = alpha.process.pid
        assert console.json("jobs", "--server", alpha.api) == {"jobs": []}  # serving
        assert _allowed_lists(pid) == {str(cpu)}  # its event loop and every other thread
        assert f"running on CPUs {cpu}" in (alpha.home / "serve.log").read_text()


def test_a_bad_cpu_list_is_refused_at_setup_and_changes_nothing(tmp_path: Path) -> None:
    with running_hosts(tmp_path, "alpha") as (console, hosts):
        (alpha,) = hosts
        config = (alpha.home / "config.toml").read_bytes()
        bad = tmp_path / "bad.toml"
        for spec in ('"two"', '"3-1"'):
            bad.write_text(f"[config]\ncpus = {spec}\n")
            proc = console.run("setup", "--home", str(alpha.home), "--config", str(bad), check=False)
            assert proc.returncode != 0 and "-116" in proc.stderr + proc.stdout
            assert (alpha.home / "config.toml").read_bytes() == config
