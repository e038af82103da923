"""Messages of the peer protocol (version 2) and the operation stream they carry.

Every frame body is a msgpack array ``[kind, ...]``. The op stream (mirror and
replication share it) is ordered by ``seq``; file contents travel as a ``fbegin``,
any number of ``fdata`` and one ``fend`` frame so that no frame grows with the file.
Paths travel as bytes (``os.fsencode``) so that names that are not UTF-8 survive.
The full table is in ``docs/wire.md``; change both together and bump the version.
"""

from __future__ import annotations

import os
import sys
from typing import Final

PROTOCOL_NAME: Final = "twinvault"
# Version history: 1 = first release; 2 = compressed chunks (segment SEG_ZDATA), sent
# only by a version 2 sender to a receiver that welcomed version 2. A repository accepts
# any source version in [MIN_SUPPORTED_VERSION, PROTOCOL_VERSION]; a source newer than
# the repository is refused with error -157 because the repository cannot know what
# its ops mean.
PROTOCOL_VERSION: Final = 2
COMPRESSED_SEGMENTS_SINCE: Final = 2
MIN_SUPPORTED_VERSION: Final = 1

# Handshake
HELLO: Final = "hello"  # [hello, {proto, version, job, token, source, epoch}]
WELCOME: Final = "welcome"  # [welcome, {version, image_root, last_seq, epoch}]
REFUSE: Final = "refuse"  # [refuse, code, message]

# Source -> repository: the op stream
MKDIR: Final = "mkdir"  # [mkdir, seq, path, meta]
META: Final = "meta"  # [meta, seq, path, meta]
SYMLINK: Final = "symlink"  # [symlink, seq, path, meta]
SPECIAL: Final = "special"  # [special, seq, path, meta]   fifo / device / socket
LINK: Final = "link"  # [link, seq, path, existing_path]
DELETE: Final = "delete"  # [delete, seq, path]
RENAME: Final = "rename"  # [rename, seq, old_path, new_path]
FILE: Final = "file"  # [file, seq, path, size, base_digest, segments, meta]  a whole small file
FBEGIN: Final = "fbegin"  # [fbegin, seq, path, size, base_digest]
FDATA: Final = "fdata"  # [fdata, seq, segments]
FEND: Final = "fend"  # [fend, seq, meta]
MARK: Final = "mark"  # [mark, seq, name]  a barrier acknowledged like an op
# Mark names: a mirror starts / completed. Between them the image is not valid for recovery.
MARK_MIRROR_START: Final = "mirror-start"
MARK_MIRROR_COMPLETE: Final = "mirror-complete"
# A recovery's last op: everything of the point has been sent before it.
MARK_RECOVERY_COMPLETE: Final = "recovery-complete"

OP_KINDS: Final = frozenset(
    {FILE, MKDIR, META, SYMLINK, SPECIAL, LINK, DELETE, RENAME, FBEGIN, FDATA, FEND, MARK}
)

# Source -> repository: requests
MANIFEST_REQ: Final = "manifest?"  # [manifest?, request_id, roots, checksum: bool]
STATUS: Final = "status"  # [status, {...}] the source's view of the job, for the repository's console

# Repository -> source
MANIFEST: Final = "manifest"  # [manifest, request_id, entries, done]
ACK: Final = "ack"  # [ack, seq]  every op <= seq is applied and durable
NEED: Final = "need"  # [need, seq, path]  a file op referred to data the repository lacks
APPLY_FAILED: Final = "failed"  # [failed, seq, path, code, message] discarded after the retry limit
# [shutdown, {"job", "reason"}]: a recovery of this source's image is done; the source runs
# its host's configured shutdown command (or refuses: none configured). Recovery option.
SHUTDOWN_SOURCE: Final = "shutdown"

# Segments of a file body, in order; together they cover [0, size).
SEG_DATA: Final = 0  # [0, hash, bytes]             new chunk
SEG_REF: Final = 1  # [1, hash, length]            a chunk the repository holds elsewhere
SEG_RUN: Final = 2  # [2, first_index, count]      chunks of this path's previous version
SEG_HOLE: Final = 3  # [3, length]                  sparse hole
SEG_ZDATA: Final = 4  # [4, hash, zstd_frame, length] new chunk, compressed (version 2)

# Manifest entries: [path, kind, size, mtime_ns, mode, uid, gid, chunks]
# where chunks is b"" (unknown / not a file) or the concatenated 32-byte chunk hashes
# followed by nothing else; lengths come from the repository's index when needed.


_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


def wire_path(path: str) -> bytes:
    return os.fsencode(path)


def path_from_wire(raw: bytes | str) -> str:
    # os.fsdecode's own work, minus its checks: a manifest decodes a path per entry.
    if isinstance(raw, bytes):
        return raw.decode(_FS_ENCODING, _FS_ERRORS)
    return os.fsdecode(raw)  # a str as it is; anything else raises TypeError
