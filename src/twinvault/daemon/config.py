"""A host's state directory and configuration file (``config.toml``).

Layout of ``--home`` (see ``docs/formats.md``)::

    config.toml            host name, ports, queue limits, repository defaults
    tls/cert.pem key.pem   the host's TLS identity (key 0600)
    accounts.json          console accounts, scrypt hashes (0600)
    tokens.json            issued console tokens, stored hashed (0600)
    notify.json            e-mail notification settings, SMTP password included (0600)
    events/events.log      the event log (rotated)
    source/jobs/ID.json    protection jobs this host is the source of
    repository/jobs/ID.json, repository/index/IMAGE.sqlite   jobs and indexes of images held here
    repository/history/    chunk store state (open pack, chunk index), journal, catalog.sqlite
    repository/store/      the local chunk store backend (packs, config), unless [store] says otherwise
    queue/ID/              disk queue segments
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from twinvault.daemon.ports import DEFAULT_API_PORT, DEFAULT_PEER_PORT
from twinvault.durable import write_private


@dataclass(slots=True)
class QueueConfig:
    memory_max_mb: int = 256
    disk_folder: str = ""  # "" = <home>/queue
    disk_max_mb: int | None = None  # None = unlimited
    min_free_mb: int = 64


@dataclass(slots=True)
class StoreConfig:
    """Where the repository keeps history (``[store]`` in config.toml; docs/history.md)."""

    backend: str = "local"  # local | s3
    path: str = ""  # local backend: "" = <home>/repository/store
    s3_endpoint: str = ""
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_access_key: str = ""
    s3_secret_key_file: str = ""  # a 0600 file holding the secret key
    s3_region: str = "us-east-1"
    passphrase_file: str = ""  # encryption at rest: a file holding the passphrase ...
    key_file: str = ""  # ... or 32 random bytes
    compression_level: int = 3
    catalog: str = ""  # "" = sqlite:///<home>/repository/history/catalog.sqlite, or postgresql://...
    prune_every_s: int = 3600  # retention runs on the repository's own clock


@dataclass(slots=True)
class HostConfig:
    name: str
    peer_port: int = DEFAULT_PEER_PORT
    api_port: int = DEFAULT_API_PORT
    bind_address: str = "0.0.0.0"
    path_prefix: str = ""  # "" = <home>/images
    retry_limit: int = 10  # target write retries; -1 = forever (the seed's TGExecutionRetryLimit)
    capture: str = "auto"  # auto | fanotify | inotify
    metrics_token: str = ""
    # Run when a recovery asks this source to shut down (recover --shutdown-source);
    # "" refuses such requests.
    shutdown_command: str = ""
    cpus: str = ""  # the CPUs the daemon runs on ("1", "0,2-3"); "" = all it may use (daemon/cpus.py)
    queue: QueueConfig = field(default_factory=QueueConfig)
    store: StoreConfig = field(default_factory=StoreConfig)

    def to_toml(self) -> dict[str, Any]:
        host = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("queue", "store")}
        queue = {k: v for k, v in vars_of(self.queue).items() if v is not None}
        return {"host": host, "queue": queue, "store": vars_of(self.store)}

    @staticmethod
    def from_toml(raw: dict[str, Any]) -> HostConfig:
        host = dict(raw.get("host", {}))
        queue = QueueConfig(**raw.get("queue", {}))
        store = StoreConfig(**raw.get("store", {}))
        return HostConfig(**host, queue=queue, store=store)


def vars_of(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


@dataclass(frozen=True, slots=True)
class Home:
    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / "config.toml"

    @property
    def cert(self) -> Path:
        return self.root / "tls" / "cert.pem"

    @property
    def key(self) -> Path:
        return self.root / "tls" / "key.pem"

    @property
    def accounts(self) -> Path:
        return self.root / "accounts.json"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens.json"

    @property
    def email_settings(self) -> Path:
        return self.root / "notify.json"

    @property
    def events_dir(self) -> Path:
        return self.root / "events"

    @property
    def source_jobs(self) -> Path:
        return self.root / "source" / "jobs"

    @property
    def repository_jobs(self) -> Path:
        return self.root / "repository" / "jobs"

    @property
    def index_dir(self) -> Path:
        return self.root / "repository" / "index"

    @property
    def history_dir(self) -> Path:
        return self.root / "repository" / "history"

    def store_path(self, config: HostConfig) -> Path:
        return Path(config.store.path) if config.store.path else self.root / "repository" / "store"

    def catalog_url(self, config: HostConfig) -> str:
        return config.store.catalog or f"sqlite:///{self.history_dir / 'catalog.sqlite'}"

    def queue_dir(self, config: HostConfig) -> Path:
        return Path(config.queue.disk_folder) if config.queue.disk_folder else self.root / "queue"

    def path_prefix(self, config: HostConfig) -> Path:
        return Path(config.path_prefix) if config.path_prefix else self.root / "images"

    def make_dirs(self) -> None:
        for d in (
            self.root,
            self.cert.parent,
            self.events_dir,
            self.source_jobs,
            self.repository_jobs,
            self.index_dir,
        ):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)


def default_home() -> Path:
    return Path(os.environ.get("TWINVAULT_HOME", "/var/lib/twinvault"))


def load_config(home: Home) -> HostConfig:
    with open(home.config_file, "rb") as f:
        return HostConfig.from_toml(tomllib.load(f))


def save_config(home: Home, config: HostConfig) -> None:
    write_private(home.config_file, tomli_w.dumps(config.to_toml()).encode())
