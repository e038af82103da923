"""How a chunk becomes a blob and back: store ids, zstd compression, AES-256-GCM.

- store id: the plain BLAKE3 digest, or in an encrypted store `blake3(digest, key=id_key)`;
- payload: zstd at the store's level unless that saves under ~3 % (then the raw bytes:
  incompressible data is not worth a decompression on every read; the test is
  `twinvault.compression`'s, shared with the link), then, in an encrypted
  store, `nonce (12) | AES-256-GCM(payload, AAD = store id)`;
- objects (`save_object`): `TVOB`, u8 version, u8 flags, 2 zero bytes, then the payload
  compressed and sealed the same way with AAD = "object\\0" + name.

zstd contexts are not thread-safe: each thread gets its own compressor and decompressor.
"""

from __future__ import annotations

import struct
from typing import Final

import blake3
from cryptography.exceptions import InvalidTag

from twinvault.compression import ChunkCompressor, FrameInvalid, decompress_frame, decompress_whole
from twinvault.repository.chunkstore.keys import StoreKeys
from twinvault.repository.chunkstore.pack import FLAG_COMPRESSED, FLAG_ENCRYPTED

DIGEST_BYTES: Final = 32
_OBJECT: Final = struct.Struct("<4sBB2x")
_OBJECT_MAGIC: Final = b"TVOB"
_OBJECT_VERSION: Final = 1
_TRAILER_AAD: Final = b"trailer\0"


class BlobInvalid(ValueError):
    """A payload that does not decode to the chunk it claims to be."""


def digest_of(data: bytes | memoryview) -> bytes:
    return blake3.blake3(data, max_threads=1).digest()


class BlobCodec:
    def __init__(self, level: int, keys: StoreKeys | None) -> None:
        self.level = level
        self.keys = keys
        self.encrypted = keys is not None
        self._chunks = ChunkCompressor(level)

    def store_id(self, digest: bytes) -> bytes:
        if self.keys is None:
            return digest
        return blake3.blake3(digest, key=self.keys.id_key).digest()

    def encode(self, store_id: bytes, data: bytes) -> tuple[int, bytes]:
        """(flags, payload) of a chunk given plain."""
        frame = self._chunks.compress(data)
        if frame is None:
            return self._seal(store_id, 0, data)
        return self._seal(store_id, FLAG_COMPRESSED, frame)

    def encode_frame(self, store_id: bytes, frame: bytes) -> tuple[int, bytes]:
        """(flags, payload) of a chunk that arrived as a zstd frame: kept as it is."""
        return self._seal(store_id, FLAG_COMPRESSED, frame)

    def _seal(self, store_id: bytes, flags: int, payload: bytes) -> tuple[int, bytes]:
        if self.keys is None:
            return flags, payload
        return flags | FLAG_ENCRYPTED, self.keys.seal(payload, store_id)

    def decode(self, store_id: bytes, flags: int, raw_len: int, payload: bytes | memoryview) -> bytes:
        """The plain chunk; raises BlobInvalid when it cannot be decrypted or decompressed."""
        data = self.unseal(store_id, flags, payload)
        if flags & FLAG_COMPRESSED:
            return self.decompress(data, raw_len)
        if len(data) != raw_len:
            raise BlobInvalid(f"length {len(data)}, header says {raw_len}")
        return bytes(data)

    def unseal(self, store_id: bytes, flags: int, payload: bytes | memoryview) -> bytes | memoryview:
        """The payload decrypted (in an encrypted store), still compressed if it was:
        a zstd frame then, which a sender may put on the wire as it is."""
        if flags & FLAG_ENCRYPTED:
            if self.keys is None:
                raise BlobInvalid("blob is encrypted but the store is not")
            try:
                return self.keys.open(payload, store_id)
            except InvalidTag:
                raise BlobInvalid("authentication failed (damaged or not this store's)") from None
        if self.keys is not None:
            raise BlobInvalid("blob is not encrypted in an encrypted store")
        return payload

    def decompress(self, frame: bytes | memoryview, raw_len: int) -> bytes:
        try:
            return decompress_frame(frame, raw_len)
        except FrameInvalid as exc:
            raise BlobInvalid(str(exc)) from None

    def verify(self, store_id: bytes, flags: int, raw_len: int, payload: memoryview) -> bytes | None:
        """The plain digest of a blob if it decodes to data whose store id is `store_id`."""
        try:
            digest = digest_of(self.decode(store_id, flags, raw_len, payload))
        except BlobInvalid:
            return None
        return digest if self.store_id(digest) == store_id else None

    # --- trailers and objects ------------------------------------------------------------

    def seal_trailer(self, body: bytes) -> bytes:
        assert self.keys is not None
        return self.keys.seal(body, _TRAILER_AAD)

    def open_trailer(self, stored: bytes) -> bytes:
        if self.keys is None:
            raise BlobInvalid("trailer is encrypted but the store is not")
        try:
            return self.keys.open(stored, _TRAILER_AAD)
        except InvalidTag:
            raise BlobInvalid("trailer authentication failed") from None

    def encode_object(self, name: str, data: bytes) -> bytes:
        packed = self._chunks.compress(data)
        flags, payload = (0, data) if packed is None else (FLAG_COMPRESSED, packed)
        if self.keys is not None:
            flags |= FLAG_ENCRYPTED
            payload = self.keys.seal(payload, _object_aad(name))
        return _OBJECT.pack(_OBJECT_MAGIC, _OBJECT_VERSION, flags) + payload

    def decode_object(self, name: str, blob: bytes) -> bytes:
        if len(blob) < _OBJECT.size:
            raise BlobInvalid("object shorter than its header")
        magic, version, flags = _OBJECT.unpack_from(blob)
        if magic != _OBJECT_MAGIC or version != _OBJECT_VERSION:
            raise BlobInvalid("not an object of this format")
        payload: bytes = blob[_OBJECT.size :]
        if flags & FLAG_ENCRYPTED:
            if self.keys is None:
                raise BlobInvalid("object is encrypted but the store is not")
            try:
                payload = self.keys.open(payload, _object_aad(name))
            except InvalidTag:
                raise BlobInvalid("object authentication failed") from None
        elif self.keys is not None:
            raise BlobInvalid("object is not encrypted in an encrypted store")
        if flags & FLAG_COMPRESSED:
            try:
                payload = decompress_whole(payload)
            except FrameInvalid as exc:
                raise BlobInvalid(str(exc)) from None
        return payload


def _object_aad(name: str) -> bytes:
    return b"object\0" + name.encode()
