"""The one error catalog: numeric error codes, their messages, and the exception that carries them.

Every failure a user can see (CLI exit line, API error body) is a `TwinvaultError` whose code
comes from here. The codes are the seed's ("Error codes" table of the Double-Take Backup
user's guide), worded for Linux; cases the guide lacks get twinvault codes from -1000 down.
The CLI renders `error <code>: <message>`, the API `{"error": {"code", "message"}}`;
`docs/errors.md` is generated from `ERROR_CATALOG` by `scripts/gen_catalog_docs.py`.
"""

from __future__ import annotations

from typing import Any, Final

# --- Named codes from the guide's table (the ones code raises; the rest are in the catalog only) ---

UNKNOWN_ERROR: Final = -1
INVALID_PARAMETER: Final = -101
INVALID_COMMAND: Final = -102
SOURCE_NOT_LOADED: Final = -103
NO_SOURCE_IDENTIFIED: Final = -104
TARGET_NOT_LOADED: Final = -105
CONNECTION_ALREADY_ESTABLISHED: Final = -106
CONNECTION_DOES_NOT_EXIST: Final = -107
MIRROR_CURRENTLY_ACTIVE: Final = -108
SERVER_NOT_FOUND: Final = -109
SERVER_NOT_RESPONDING: Final = -110
UNKNOWN_CONNECTION_ERROR: Final = -112
MIRROR_ALREADY_ACTIVE: Final = -113
INVALID_DATE: Final = -114
INVALID_TIME: Final = -115
INVALID_OPTION: Final = -116
MIRROR_NOT_PAUSED: Final = -117
CONNECTION_NOT_PAUSED: Final = -118
CONNECTION_ALREADY_CONNECTED: Final = -120
MIRROR_NOT_RUNNING: Final = -121
REPLICATION_SET_EXISTS: Final = -122
REPLICATION_SET_DOES_NOT_EXIST: Final = -123
CONNECTION_REPLICATING: Final = -125
CONNECTION_NOT_REPLICATING: Final = -126
MEMORY_LOW: Final = -132
REPLICATION_PENDING: Final = -134
MIRROR_QUEUE_FULL: Final = -137
INSUFFICIENT_SECURITY_ACCESS: Final = -138
SCHEDULE_INVALID: Final = -139
SOURCE_PATH_INVALID: Final = -140
INSUFFICIENT_SOURCE_SECURITY_ACCESS: Final = -142
INVALID_STATISTICS_FILE: Final = -143
CONNECTION_FAILED: Final = -145
TARGET_RESTARTED: Final = -150
REPLICATION_OUT_OF_MEMORY: Final = -151
WRITE_ACCESS_BLOCKED: Final = -152
COMPRESSION_NOT_SUPPORTED: Final = -153
TRANSMISSION_ACTIVE: Final = -154
TARGET_DOES_NOT_SUPPORT_COMMAND: Final = -155
COMMAND_CONVERSION_FAILED: Final = -156
INCOMPATIBLE_VERSIONS: Final = -157
INCOMPATIBLE_OPERATING_SYSTEMS: Final = -158
OPERATION_NOT_SUPPORTED: Final = -161
TARGET_PAUSED: Final = -162
TARGET_PENDING: Final = -163
TARGET_ACTIVE: Final = -164
TARGET_RETRYING: Final = -165
FEATURE_NOT_SUPPORTED: Final = -170
COMMAND_NOT_SUPPORTED: Final = -171
TARGET_QUEUE_LOG_ERROR: Final = -172
TARGET_DISK_FULL: Final = -173
TARGET_DISK_SUFFICIENT: Final = -174
QUEUE_LOG_IO_ERROR: Final = -175
RESTORE_REQUIRED: Final = -178
INVALID_CONNECTION_ID: Final = -183
SCHEDULE_PAUSED: Final = -187
SCHEDULE_RESUMED: Final = -188
TARGET_STATE_CHANGED: Final = -189
INVALID_ARGUMENT: Final = -218
RECOVERY_BUSY: Final = -219
RECOVERY_STARTED: Final = -221
SCRIPT_FAILED_TO_START: Final = -222
SCRIPT_TIMEOUT: Final = -223
NO_REPLICATION_TIMEOUT: Final = -224
INVALID_PATH: Final = -225
EMAIL_SERVER_COMMUNICATION_ERROR: Final = -2201
EMAIL_SERVER_CONNECT_ERROR: Final = -2202
EMAIL_NOTIFICATION_DISABLED: Final = -2203
EMAIL_NOTIFICATION_ENABLED: Final = -2204
EMAIL_SEND_ERROR: Final = -2207
EMAIL_TEST_SEND_ERROR: Final = -2208
EMAIL_SETTING_INVALID: Final = -2212
EMAIL_ADDRESS_EXISTS: Final = -2213
EMAIL_ALERT_ID_INVALID: Final = -2214
EMAIL_FORMAT_INVALID: Final = -2215
EMAIL_ADDRESS_DOES_NOT_EXIST: Final = -2216
EMAIL_RECIPIENTS_EMPTY: Final = -2217
EMAIL_OK: Final = 2200
BANDWIDTH_TIME_EXISTS: Final = -2301
BANDWIDTH_NAME_EXISTS: Final = -2302
BANDWIDTH_LIMIT_NOT_FOUND: Final = -2303
BANDWIDTH_DAY_INVALID: Final = -2304
BANDWIDTH_LABEL_INVALID: Final = -2305
SNAPSHOT_NOT_LOADED: Final = -2401
SNAPSHOT_NOT_FOUND: Final = -2403
NO_SNAPSHOT_CONNECTIONS: Final = -2404
FULL_SERVER_DISABLED: Final = -2501

# Twinvault situations the guide already names: aliases, so callers use our words and the
# user still sees the seed's code. The matching -10xx numbers stay unassigned (see below).
ACCESS_DENIED: Final = INSUFFICIENT_SECURITY_ACCESS
JOB_NOT_FOUND: Final = CONNECTION_DOES_NOT_EXIST  # a job is the seed's connection
SELECTION_PATH_MISSING: Final = SOURCE_PATH_INVALID
SELECTION_PATH_UNREADABLE: Final = INSUFFICIENT_SOURCE_SECURITY_ACCESS
DAEMON_NOT_REACHABLE: Final = SERVER_NOT_FOUND  # refused / unresolvable; a timeout is -110
TRANSMISSION_PAUSED: Final = COMPRESSION_NOT_SUPPORTED  # the guide gives -153 both meanings
PATH_NOT_FOUND: Final = INVALID_PATH

_GUIDE_CATALOG: Final[dict[int, str]] = {
    -1: "Unknown error code (generated when a command failed but the failure is not linked to a "
    "pre-defined error code)",
    -101: "Invalid parameter was supplied",
    -102: "Command is not a valid or the syntax is incorrect",
    -103: "twinvault source module is not loaded",
    -104: "No twinvault source identified",
    -105: "twinvault target module is not loaded",
    -106: "Connection already established",
    -107: "Connection does not exist",
    -108: "Mirror currently active",
    -109: "Server does not exist or could not be located",
    -110: "Server is not responding",
    -111: "twinvault is running",
    -112: "Unknown connection error",
    -113: "Mirror already active",
    -114: "Date is invalid - valid format is mm/dd/yy",
    -115: "Time is invalid - valid format is hh:mm",
    -116: "Invalid option supplied",
    -117: "Mirror is not paused",
    -118: "Connection is not paused",
    -119: "Connection does not exist",
    -120: "Connection already connected",
    -121: "Mirror is not running",
    -122: "Replication set exists",
    -123: "Replication set does not exist",
    -124: "No replication set has been selected",
    -125: "Connection is replicating",
    -126: "Connection is not replicating",
    -127: "Replication set is enabled",
    -128: "Schedule is not defined",
    -129: "Replication set is changed",
    -130: "Replication set is in use",
    -131: "No twinvault target identified",
    -132: "Memory is low",
    -133: "Memory is sufficient",
    -134: "Replication is pending",
    -135: "Invalid option supplied",
    -136: "Replication set rule does not exist",
    -137: "Mirror queue is full",
    -138: "Insufficient security access",
    -139: "Schedule command is invalid",
    -140: "Source path is invalid",
    -141: "Replication set is not changed",
    -142: "Insufficient source security access",
    -143: "Invalid statistics file",
    -144: "Replication set not saved",
    -145: "Connection failed",
    -146: "Cleaner option is not enabled",
    -147: "Target mirror capacity high threshold is met",
    -148: "Target mirror capacity low threshold is met",
    -149: "New option applied",
    -150: "Target is restarted",
    -151: "Replication is out of memory",
    -152: "Write access is blocked on the volume",
    # The guide: "could be one of two errors"; one message names both.
    -153: "Compression level is not supported, or server does not support compression, "
    "or transmission is paused",
    -154: "Transmission is active",
    -155: "Target does not support the command",
    -156: "Command conversion to accommodate a different twinvault version has failed",
    -157: "Incompatible source and target twinvault versions",
    -158: "Incompatible source and target operating system versions",
    -159: "NAS server to non-NAS server is not a supported configuration",
    -160: "Target module is not loaded",
    -161: "Operation or command is not supported",
    -162: "Target is paused",
    -163: "Target is pending",
    -164: "Target is active",
    -165: "Target is retrying operations",
    -166: "Target is no longer retrying operations",
    -167: "Restore required state is unknown",
    -168: "Not a valid failover source",
    -169: "Failover login failed",
    -170: "Feature is not supported",
    -171: "Command is not supported",
    -172: "Target queue log file error",
    -173: "Target disk is full",
    -174: "Target disk has sufficient disk space",
    -175: "Error reading from or writing to the queue log file",
    -176: "Memory-based queue is in use",
    -177: "Disk-based queue is in use",
    -178: "Restore is required",
    -179: "ID the driver supplied to the service is invalid",
    -180: "Child path is blocked",
    -181: "Parent path is blocked",
    -182: "Target path blocking is disabled",
    -183: "Connection ID specified is invalid",
    -184: "No command objects are in the queue",
    -185: "Target is discarding operations from the target queue",
    -186: "Target is not discarding operations from the target queue",
    -187: "Schedule is paused",
    -188: "Schedule is resumed",
    -189: "Target state has changed",
    -190: "Target name has changed",
    -201: "Monitor name exists",
    -202: "Monitor name does not exist",
    -203: "Monitor configuration exists",
    -204: "Monitor configuration does not exist",
    -205: "Monitor configuration is in use",
    -206: "Monitor configuration is not in use",
    -207: "Source is online",
    -208: "Source is offline",
    -209: "Server is not failed over",
    -210: "Server is failed over",
    -211: "Server is not being monitored",
    -212: "Failback is in progress",
    -213: "IP address placeholders on the target are unavailable",
    -214: "Target NIC was not found",
    -215: "Source module is not loaded",
    -216: "Failed to set the source state",
    -217: "Unable to ping source",
    -218: "Invalid argument",
    -219: "Recovery is busy",
    -220: "Invalid command",
    -221: "Recovery is started",
    -222: "Script failed to start",
    -223: "Script timeout met",
    -224: "No replication timeout met - connection is bad",
    -225: "Invalid path",
    -226: "Kernel module is not loaded",
    -2201: "Error communicating with e-mail server",
    -2202: "Error connecting to e-mail server",
    -2203: "E-mail notification is disabled",
    -2204: "E-mail notification is enabled",
    # -2205, -2206, -2209, -2210: Windows prerequisites with no Linux counterpart; kept as the
    # guide words them so the table stays complete, never raised.
    -2205: "E-mail notification requires Internet Explorer version 5.0 and WMI",
    -2206: "E-mail notification requires Internet Explorer version 5.0",
    -2207: "Error sending e-mail",
    -2208: "Error sending test e-mail",
    -2209: "WMI error connecting to e-mail server",
    -2210: "E-mail notification requires WMI",
    -2211: "Event log settings for e-mail notification are invalid",
    -2212: "E-mail notification setting is invalid",
    -2213: "E-mail notification address exists",
    -2214: "E-mail notification alert ID is invalid",
    -2215: "E-mail notification format is invalid",
    -2216: "E-mail notification address does not exist",
    -2217: "E-mail notification address notification list is empty",
    -2218: "E-mail warning is not set",
    -2219: "E-mail test warning is not set",
    2200: "E-mail notification is functioning properly",
    -2301: "Bandwidth limiting time exists",
    -2302: "Bandwidth limiting name exists",
    -2303: "Bandwidth limit not found",
    -2304: "Bandwidth limit day is invalid",
    -2305: "Bandwidth limit label is invalid",
    -2401: "Snapshot module is not loaded",
    -2402: "Error reading the snapshot library",
    -2403: "Snapshot not found",
    -2404: "No snapshot connections found",
    -2501: "Full-server functionality is disabled",
    -2502: "No full-server interface available",
}

# --- Twinvault codes: cases the guide has no code for. Numbers are never reused. ---

# Twinvault numbers left unassigned on purpose: the guide's code covers the case (see the
# aliases above). Never give them another meaning.
UNASSIGNED_CODES: Final[dict[int, str]] = {
    -1003: "job not found: use -107 (JOB_NOT_FOUND)",
    -1004: "selection path missing: use -140 (SELECTION_PATH_MISSING)",
    -1005: "selection path unreadable: use -142 (SELECTION_PATH_UNREADABLE)",
    -1011: "invalid argument: use -218 (INVALID_ARGUMENT)",
    -1012: "daemon not reachable: use -109 (DAEMON_NOT_REACHABLE), or -110 for a timeout",
    -1028: "snapshot not found: use -2403 (SNAPSHOT_NOT_FOUND)",
}

UNKNOWN_HOST: Final = -1000
FINGERPRINT_MISMATCH: Final = -1001
FINGERPRINT_NOT_PINNED: Final = -1002
REPOSITORY_PATH_NOT_WRITABLE: Final = -1006
MALFORMED_FRAME: Final = -1007
FRAME_TOO_LARGE: Final = -1008
AUTHENTICATION_FAILED: Final = -1009
TOKEN_INVALID: Final = -1010
SELECTION_OVERLAPS_IMAGE: Final = -1013
JOB_ALREADY_IN_STATE: Final = -1014
INTERNAL_ERROR: Final = -1015
# Repository history (chunk store, journal, catalog, points in time)
STORE_WRONG_KEY: Final = -1020
STORE_KEY_REQUIRED: Final = -1021
STORE_UNREACHABLE: Final = -1022
STORE_FORMAT_UNSUPPORTED: Final = -1023
CHUNK_MISSING: Final = -1024
CHUNK_CORRUPT: Final = -1025
CATALOG_UNAVAILABLE: Final = -1026
INSTANT_NOT_VALID: Final = -1027
IMAGE_NOT_FOUND: Final = -1029
REPOSITORY_DAMAGED: Final = -1030
STORE_EXISTS: Final = -1031
# Mounts of a point in time (FUSE)
MOUNTPOINT_NOT_DIRECTORY: Final = -1040
MOUNTPOINT_NOT_EMPTY: Final = -1041
MOUNTPOINT_BUSY: Final = -1042
FUSE_UNAVAILABLE: Final = -1043
NOT_A_MOUNT: Final = -1044
MOUNT_FAILED: Final = -1045
# Transmission: bandwidth limits and routes
BANDWIDTH_LIMIT_INVALID: Final = -1060
ROUTE_NOT_ON_TARGET: Final = -1061
ROUTE_UNREACHABLE: Final = -1062
BIND_ADDRESS_NOT_LOCAL: Final = -1063

_TWINVAULT_CATALOG: Final[dict[int, str]] = {
    UNKNOWN_HOST: "Unknown host: no cached login (run twinvault login first)",
    FINGERPRINT_MISMATCH: "Server certificate fingerprint does not match the pinned fingerprint",
    FINGERPRINT_NOT_PINNED: "Server certificate fingerprint is not pinned "
    "(use --accept-fingerprint or --trust-on-first-use)",
    REPOSITORY_PATH_NOT_WRITABLE: "Repository path is not writable",
    MALFORMED_FRAME: "Malformed frame",
    FRAME_TOO_LARGE: "Frame is too large",
    AUTHENTICATION_FAILED: "Authentication failed: wrong user name or password",
    TOKEN_INVALID: "Login token has expired or is invalid (run twinvault login again)",
    SELECTION_OVERLAPS_IMAGE: "Selection overlaps the repository image",
    JOB_ALREADY_IN_STATE: "Job is already in that state",
    # Distinct from the guide's -1 (a failure without a specific code): -1015 is a twinvault
    # defect, worth a bug report.
    INTERNAL_ERROR: "Internal error",
    STORE_WRONG_KEY: "Wrong encryption key for the chunk store",
    STORE_KEY_REQUIRED: "The chunk store is encrypted: a passphrase or key file is required",
    STORE_UNREACHABLE: "Chunk store backend is unreachable",
    STORE_FORMAT_UNSUPPORTED: "Chunk store format version is not supported",
    CHUNK_MISSING: "Chunk is missing from the chunk store",
    CHUNK_CORRUPT: "Chunk failed its integrity check",
    CATALOG_UNAVAILABLE: "Catalog database is unavailable",
    INSTANT_NOT_VALID: "The instant is outside every range valid for recovery",
    IMAGE_NOT_FOUND: "Image does not exist on this repository",
    REPOSITORY_DAMAGED: "Repository check found damaged data",
    STORE_EXISTS: "A chunk store already exists at that location",
    MOUNTPOINT_NOT_DIRECTORY: "Mount point does not exist or is not a directory",
    MOUNTPOINT_NOT_EMPTY: "Mount point is not an empty directory",
    MOUNTPOINT_BUSY: "Mount point is busy: something is already mounted there",
    FUSE_UNAVAILABLE: "FUSE is not available on the repository host "
    "(install the Debian package fuse3 and the pip package pyfuse3)",
    NOT_A_MOUNT: "Not a twinvault mount of this host",
    MOUNT_FAILED: "The mount could not be started",
    BANDWIDTH_LIMIT_INVALID: "Bandwidth limit is invalid (whole KB/s, or 0 / unlimited for no limit)",
    ROUTE_NOT_ON_TARGET: "Route address is not an address of the receiving host",
    ROUTE_UNREACHABLE: "Route address cannot be reached from the sending host",
    BIND_ADDRESS_NOT_LOCAL: "Bind address is not an address of the sending host",
}

ERROR_CATALOG: Final[dict[int, str]] = {**_GUIDE_CATALOG, **_TWINVAULT_CATALOG}


def describe(code: int) -> str:
    """Return the catalog message for `code` (a placeholder naming the code if it is unknown)."""
    return ERROR_CATALOG.get(code, f"Unknown error code {code}")


class TwinvaultError(Exception):
    """A failure with a catalog code and an optional detail naming the thing that failed.

    Raised where the cause is known; the CLI and API render it (`str()` is the CLI line
    `error <code>: <message>`, `to_json()` the API body).
    """

    def __init__(self, code: int, detail: str = "", *, summary: str | None = None) -> None:
        """`summary` overrides the catalog message; only used for messages from another host."""
        super().__init__(code, detail)
        self.code = code
        self.detail = detail
        self._summary = summary

    @property
    def message(self) -> str:
        """The catalog message, followed by `: detail` when there is a detail."""
        summary = describe(self.code) if self._summary is None else self._summary
        return f"{summary}: {self.detail}" if self.detail else summary

    def __str__(self) -> str:
        return f"error {self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"TwinvaultError({self.code!r}, {self.detail!r})"

    def to_json(self) -> dict[str, Any]:
        """Return the API/CLI error document `{"error": {"code", "message"}}`."""
        return {"error": {"code": self.code, "message": self.message}}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> TwinvaultError:
        """Rebuild an error from `to_json()` output, e.g. an API error body from another host.

        The detail is split off the catalog message when the message starts with it; a
        message this catalog does not know (a newer peer) is kept verbatim.
        """
        body = document.get("error")
        if not isinstance(body, dict) or not isinstance(body.get("code"), int):
            raise ValueError(f"not an error document: {document!r}")
        code: int = body["code"]
        message = body.get("message")
        if not isinstance(message, str):
            return cls(code)
        known = ERROR_CATALOG.get(code)
        if known is not None:
            if message == known:
                return cls(code)
            if message.startswith(known + ": "):
                return cls(code, message[len(known) + 2 :])
        return cls(code, summary=message)
