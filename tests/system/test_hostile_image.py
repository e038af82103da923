"""A hostile image cannot make a restore or a recovery write outside its target.

The image is written straight into a repository's history (as a compromised source or a
tampered catalog could leave it): names with ``..``, a symlink that points outside with
entries "under" it, an absolute symlink swap. Restore and recovery must refuse or
neutralise every one of them, write nothing outside the target, never follow a symlink
in the target, and still restore the honest files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import blake3
import pytest

from tests.helpers.hosts import Console, running_hosts, wait_for
from twinvault import fsmeta
from twinvault.daemon.config import Home, load_config
from twinvault.daemon.history_setup import open_history
from twinvault.repository.chunklist import Piece, pack_chunks
from twinvault.repository.history import PUT, History, pack_meta

pytestmark = pytest.mark.system


def _put_file(history: History, path: bytes, data: bytes) -> None:
    digest = blake3.blake3(data).digest()
    history.store.put(digest, data)
    meta = fsmeta.Meta("file", 0o644, 0, 0, 1_700_000_000_000_000_000, 0, len(data), 0, "", ())
    history.record(
        PUT, "hostile", path, "file", pack_meta(meta), pack_chunks([Piece(digest, len(data))]), len(data)
    )


def _put_dir(history: History, path: bytes) -> None:
    meta = fsmeta.Meta("dir", 0o755, 0, 0, 1_700_000_000_000_000_000, 0, 0, 0, "", ())
    history.record(PUT, "hostile", path, "dir", pack_meta(meta), b"", 0)


def _put_symlink(history: History, path: bytes, target: str) -> None:
    meta = fsmeta.Meta("symlink", 0o777, 0, 0, 1_700_000_000_000_000_000, 0, len(target), 0, target, ())
    history.record(PUT, "hostile", path, "symlink", pack_meta(meta), os.fsencode(target), len(target))


def _write_hostile_image(home: Path, outside: Path) -> None:
    config = load_config(Home(home))
    history = open_history(Home(home), config, lambda *a, **k: None)
    try:
        history.ensure_image("hostile", 1)
        _put_dir(history, b"/data")
        _put_file(history, b"/data/ok.txt", b"an honest file\n")
        _put_file(history, b"/data/../../escape-dotdot.txt", b"pwned by ..\n")
        _put_file(history, b"/../escape-root.txt", b"pwned from the root\n")
        _put_symlink(history, b"/data/link", str(outside))  # points outside the target
        _put_file(history, b"/data/link/through-symlink.txt", b"pwned through a symlink\n")
        _put_symlink(history, b"/data/abs", "/")
        _put_file(history, b"/data/abs" + os.fsencode(str(outside)) + b"/abs-swap.txt", b"pwned by a swap\n")
        history.commit()
    finally:
        history.close()


def _outside_untouched(outside: Path, base: Path) -> None:
    assert list(outside.iterdir()) == []
    for name in ("escape-dotdot.txt", "escape-root.txt", "through-symlink.txt", "abs-swap.txt"):
        found = [p for p in base.rglob(name) if "restored" not in str(p) and "recovered" not in str(p)]
        assert found == [], found
        assert not Path("/", name).exists()


def test_restore_and_recovery_of_a_hostile_image_stay_inside_the_target(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    with running_hosts(tmp_path, "beta", "gamma") as (console, (beta, gamma)):
        beta.stop()
        _write_hostile_image(beta.home, outside)
        beta.start(console)

        restored = tmp_path / "restored"
        proc = console.run("restore", "--repository", beta.api, "--image", "hostile", "--live",
                           "--to", str(restored), "--json", check=False)  # fmt: skip
        reply = json.loads(proc.stdout)
        assert proc.returncode == 1, reply  # some files refused
        assert (restored / "data" / "ok.txt").read_bytes() == b"an honest file\n"
        _outside_untouched(outside, tmp_path)
        refused = {f["path"] for f in reply["failed"]}
        assert any("escape-dotdot" in p for p in refused) and any("escape-root" in p for p in refused)
        # A symlink standing where the image later has a directory is replaced inside the
        # target (never followed): what was meant to go through it lands inside.
        assert (restored / "data" / "link" / "through-symlink.txt").exists()
        assert not os.path.islink(restored / "data" / "link")

        recovered = tmp_path / "recovered"
        out = _recover(console, beta.api, gamma.api, recovered)
        wait_for(lambda: console.json("job", "show", out, "--server", beta.api)["status"] == "Recovered",
                 60, what="the hostile recovery to end")  # fmt: skip
        assert (recovered / "data" / "ok.txt").read_bytes() == b"an honest file\n"
        _outside_untouched(outside, tmp_path)


def _recover(console: Console, repository: str, target: str, path: Path) -> str:
    out = console.json("recover", "--repository", repository, "--image", "hostile", "--live",
                       "--to-server", target, "--target-path", str(path))  # fmt: skip
    return str(out["job"])
