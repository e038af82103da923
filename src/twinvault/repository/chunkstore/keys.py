"""The store's config object and its keys: what makes a folder or bucket a chunk store.

The config (backend name `config`, JSON, cached in the state dir as `config.json`) holds
the format version, the store's uuid, the writer defaults and, for an encrypted store,
the master key wrapped by a key-encryption key (KEK):

- passphrase: KEK = scrypt(passphrase, salt, n=2^16, r=8, p=1, 32 bytes) — about 0.14 s
  and 64 MiB on this project's test machines;
- key file: 32 random bytes; KEK = BLAKE3 derive_key("twinvault chunkstore v1 key file
  KEK", file bytes).

Wrapping is AES-256-GCM (random 96-bit nonce, AAD = "twinvault master key" + store uuid),
so a wrong key fails the tag check: STORE_WRONG_KEY, never garbage. From the random 32-byte
master key, BLAKE3 derive_key gives the blob key (AES-256-GCM for blobs, trailers and
objects, separated by their AAD) and the id key (keyed BLAKE3 that turns a plain digest into
a store id, so nothing on the backend names a plaintext digest).
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from twinvault.durable import write_private
from twinvault.ops import errors
from twinvault.ops.errors import TwinvaultError

CONFIG_NAME: Final = "config"
FORMAT: Final = "twinvault-chunkstore"
CONFIG_VERSION: Final = 1
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
SCRYPT_N: Final = 2**16
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_WRAP_AAD: Final = b"twinvault master key"
_KEY_FILE_CONTEXT: Final = "twinvault chunkstore v1 key file KEK"
_BLOB_KEY_CONTEXT: Final = "twinvault chunkstore v1 blob key"
_ID_KEY_CONTEXT: Final = "twinvault chunkstore v1 store id key"
PASSPHRASE: Final = "passphrase"
KEY_FILE: Final = "key-file"


class StoreKeys:
    """The keys of an unlocked encrypted store."""

    def __init__(self, master: bytes) -> None:
        self.aead = AESGCM(blake3.blake3(master, derive_key_context=_BLOB_KEY_CONTEXT).digest())
        self.id_key = blake3.blake3(master, derive_key_context=_ID_KEY_CONTEXT).digest()

    def seal(self, data: bytes | memoryview, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self.aead.encrypt(nonce, data, aad)

    def open(self, sealed: bytes | memoryview, aad: bytes) -> bytes:
        """Decrypt; raises `cryptography.exceptions.InvalidTag` on any tampering."""
        view = memoryview(sealed)
        return self.aead.decrypt(view[:NONCE_BYTES], view[NONCE_BYTES:], aad)


@dataclass(frozen=True)
class StoreConfig:
    store_uuid: bytes
    compression_level: int
    pack_size: int
    encryption: dict[str, Any] | None  # None: not encrypted

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT,
            "version": CONFIG_VERSION,
            "store_uuid": self.store_uuid.hex(),
            "compression": {"algorithm": "zstd", "level": self.compression_level},
            "pack_size": self.pack_size,
            "encryption": self.encryption,
        }
        return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, where: str) -> StoreConfig:
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT:
                raise TwinvaultError(errors.STORE_FORMAT_UNSUPPORTED, f"{where}: not a twinvault chunk store")
            version = doc.get("version")
            if not isinstance(version, int) or version > CONFIG_VERSION:
                raise TwinvaultError(
                    errors.STORE_FORMAT_UNSUPPORTED,
                    f"{where}: config version {version} (this build reads up to {CONFIG_VERSION})",
                )
            return cls(
                store_uuid=bytes.fromhex(doc["store_uuid"]),
                compression_level=int(doc["compression"]["level"]),
                pack_size=int(doc["pack_size"]),
                encryption=doc["encryption"],
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TwinvaultError(
                errors.STORE_FORMAT_UNSUPPORTED, f"{where}: unreadable config: {exc}"
            ) from exc


def new_config(
    *, passphrase: str | None, key_file: Path | None, compression_level: int, pack_size: int
) -> tuple[StoreConfig, StoreKeys | None]:
    """A fresh store's config and (if a passphrase or key file is given) its keys."""
    if passphrase is not None and key_file is not None:
        raise TwinvaultError(errors.INVALID_ARGUMENT, "give a passphrase or a key file, not both")
    store_uuid = uuid.uuid4().bytes
    encryption: dict[str, Any] | None = None
    keys: StoreKeys | None = None
    if passphrase is not None or key_file is not None:
        master = os.urandom(KEY_BYTES)
        if passphrase is not None:
            salt = os.urandom(16)
            kdf: dict[str, Any] = {
                "name": "scrypt",
                "n": SCRYPT_N,
                "r": SCRYPT_R,
                "p": SCRYPT_P,
                "salt": _b64(salt),
            }
            kek = _scrypt(passphrase, kdf)
            source = PASSPHRASE
        else:
            assert key_file is not None
            kdf = {"name": "blake3-derive-key", "context": _KEY_FILE_CONTEXT}
            kek = _key_file_kek(key_file)
            source = KEY_FILE
        wrapped = _KeyWrap(kek).wrap(master, store_uuid)
        encryption = {"cipher": "AES-256-GCM", "key_source": source, "kdf": kdf, "wrapped_key": _b64(wrapped)}
        keys = StoreKeys(master)
    return StoreConfig(store_uuid, compression_level, pack_size, encryption), keys


def unlock(
    config: StoreConfig, *, passphrase: str | None, key_file: Path | None, where: str
) -> StoreKeys | None:
    """The keys of an existing store; STORE_KEY_REQUIRED or STORE_WRONG_KEY when they cannot be had."""
    enc = config.encryption
    if enc is None:
        if passphrase is not None or key_file is not None:
            raise TwinvaultError(
                errors.INVALID_ARGUMENT, f"{where} is not encrypted: give no passphrase or key file"
            )
        return None
    source = enc.get("key_source")
    if source == PASSPHRASE:
        if passphrase is None:
            raise TwinvaultError(errors.STORE_KEY_REQUIRED, f"{where} needs its passphrase")
        kek = _scrypt(passphrase, enc["kdf"])
    elif source == KEY_FILE:
        if key_file is None:
            raise TwinvaultError(errors.STORE_KEY_REQUIRED, f"{where} needs its key file")
        kek = _key_file_kek(key_file)
    else:
        raise TwinvaultError(errors.STORE_FORMAT_UNSUPPORTED, f"{where}: key source {source!r}")
    try:
        master = _KeyWrap(kek).unwrap(base64.b64decode(enc["wrapped_key"]), config.store_uuid)
    except InvalidTag:
        kind = "passphrase" if source == PASSPHRASE else "key file"
        raise TwinvaultError(errors.STORE_WRONG_KEY, f"wrong {kind} for {where}") from None
    return StoreKeys(master)


def write_key_file(path: Path) -> None:
    """Create a new random key file (0600)."""
    write_private(path, os.urandom(KEY_BYTES))


class _KeyWrap:
    """The KEK's one job: wrap and unwrap the master key."""

    def __init__(self, kek: bytes) -> None:
        self._aead = AESGCM(kek)

    def wrap(self, master: bytes, store_uuid: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, master, _WRAP_AAD + store_uuid)

    def unwrap(self, wrapped: bytes, store_uuid: bytes) -> bytes:
        return self._aead.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _WRAP_AAD + store_uuid)


def _scrypt(passphrase: str, kdf: dict[str, Any]) -> bytes:
    if kdf.get("name") != "scrypt":
        raise TwinvaultError(errors.STORE_FORMAT_UNSUPPORTED, f"key derivation {kdf.get('name')!r}")
    n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
    return Scrypt(salt=base64.b64decode(kdf["salt"]), length=KEY_BYTES, n=n, r=r, p=p).derive(
        passphrase.encode()
    )


def _key_file_kek(path: Path) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TwinvaultError(
            errors.STORE_KEY_REQUIRED, f"cannot read key file {path}: {exc.strerror}"
        ) from exc
    if len(data) != KEY_BYTES:
        raise TwinvaultError(
            errors.STORE_WRONG_KEY, f"key file {path} holds {len(data)} bytes, not {KEY_BYTES}"
        )
    return blake3.blake3(data, derive_key_context=_KEY_FILE_CONTEXT).digest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
