"""The one event catalog: every event a host can record.

`EVENT_CATALOG` keeps the seed's event IDs ("Event messages" in the Double-Take Backup user's
guide) wherever the meaning carries over to Linux, worded for twinvault, plus twinvault's own
events from 9000 up. `ops.event_log.EventLog` records them (rotated JSON lines, the
`twinvault.events` logger, live subscribers); `docs/events.md` is generated from here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final, Literal, get_args

Severity = Literal["error", "warning", "info"]
SEVERITIES: Final[tuple[Severity, ...]] = get_args(Severity)
FieldValue = str | int | float

LOG_NAME: Final = "events.log"
FORMAT_VERSION: Final = 1

_log = logging.getLogger("twinvault.events")
_LOG_LEVELS: Final[dict[str, int]] = {
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
}


@dataclass(frozen=True)
class EventSpec:
    """One catalog entry: the event's ID, category, severity and message template.

    Templates name their fields (`{target}`) where the guide numbers them (%1).
    """

    id: int
    category: str
    severity: Severity
    template: str


# --- Named IDs: every catalog entry has one. ---
# Service (the daemon and its source/target roles); the guide's "Kernel" is our daemon.
LOGGER_STARTED: Final = 3000
LOGGER_STOPPED: Final = 3001
SERVICE_STARTED: Final = 4000
TARGET_STARTED: Final = 4001
SOURCE_STARTED: Final = 4002
SOURCE_STOPPED: Final = 4003
TARGET_STOPPED: Final = 4004
SERVICE_STOPPED: Final = 4005
SERVICE_ABORTED: Final = 4006
AUTO_DISCONNECT: Final = 4007
AUTO_DISCONNECT_SUCCEEDED: Final = 4008
AUTO_RECONNECTING: Final = 4009
AUTO_RECONNECT_SUCCEEDED: Final = 4010
AUTO_RECONNECT_FAILED: Final = 4011
GENERIC_WARNING: Final = 4012
GENERIC_INFO: Final = 4013
TRANSMISSION_STARTED: Final = 4014
TRANSMISSION_STOPPED: Final = 4015
CONNECTED: Final = 4016
DISCONNECTED: Final = 4017
RESTORE_REQUIRED: Final = 4018
MIRROR_STARTED: Final = 4019
MIRROR_PAUSED: Final = 4020
MIRROR_RESUMED: Final = 4021
MIRROR_STOPPED: Final = 4022
MIRROR_COMPLETED: Final = 4023
REPLICATION_STARTED: Final = 4024
REPLICATION_STOPPED: Final = 4025
TARGET_PAUSED: Final = 4026
TARGET_RESUMED: Final = 4027
REPLICATION_STOPPED_BY_ERROR: Final = 4044
PORT_OUT_OF_RANGE: Final = 4045
PORT_CONFLICT: Final = 4046
COMPRESSION_UNAVAILABLE: Final = 4047
ORPHANS_STARTED: Final = 4048
ORPHANS_PAUSED: Final = 4049
ORPHANS_RESUMED: Final = 4050
ORPHANS_STOPPED: Final = 4051
ORPHANS_COMPLETED: Final = 4052
RESTORE_STARTED: Final = 4053
RESTORE_PAUSED: Final = 4054
RESTORE_RESUMED: Final = 4055
RESTORE_STOPPED: Final = 4056
RESTORE_COMPLETED: Final = 4057
VERIFY_STARTED: Final = 4058
VERIFY_PAUSED: Final = 4059
VERIFY_RESUMED: Final = 4060
VERIFY_STOPPED: Final = 4061
VERIFY_COMPLETED: Final = 4062
BANDWIDTH_LIMIT_CHANGED: Final = 4063
BANDWIDTH_PERIOD_CHANGED: Final = 4064
TARGET_DATA_STATE_CHANGED: Final = 4065
NO_CHANGES_FROM_CAPTURE: Final = 4067
REPLICATING_VOLUME_WRITE_FAILED: Final = 4068
# System
UNKNOWN_CONFIG_PARAMETER: Final = 4096
CHANGE_CAPTURE_FAILED: Final = 4097
CONFIG_LOAD_FAILED: Final = 4098
# Target writes
TARGET_DISK_FULL: Final = 4110
TARGET_SHARING: Final = 4111
TARGET_ACCESS_DENIED: Final = 4112
TARGET_UNKNOWN_WRITE_ERROR: Final = 4113
TARGET_WRITE_RETRIED_OK: Final = 4120
TARGET_WRITE_DISCARDED: Final = 4150
FILE_OPERATION_TIMED_OUT: Final = 4155
# In-band tasks
TASK_SUBMITTED: Final = 4200
TASK_DISCARDED: Final = 4201
TASK_SCRIPT_RUNNING: Final = 4202
TASK_SCRIPT_COMPLETED: Final = 4203
TASK_SCRIPT_FAILED: Final = 4204
TASK_SCRIPT_TIMEOUT: Final = 4205
TASK_SCRIPT_TIMEOUT_DISABLED: Final = 4206
TASK_SCRIPTS_DISABLED: Final = 4207
# Snapshots, orphans, system state, firewall
SNAPSHOT_FAILED: Final = 4400
AUTO_SNAPSHOT_DELETE_FAILED: Final = 4401
SNAPSHOT_DELETE_FAILED: Final = 4402
SCHEDULED_SNAPSHOT_DEFERRED: Final = 4403
SNAPSHOT_SCHEDULE_SET: Final = 4404
SNAPSHOT_SCHEDULE_REMOVED: Final = 4405
SNAPSHOT_SCHEDULE_ENABLED: Final = 4406
SNAPSHOT_SCHEDULE_DISABLED: Final = 4407
ORPHANS_MOVE_FAILED: Final = 4408
ORPHANS_DELETE_FAILED: Final = 4409
SYSTEM_STATE_CAPTURE_FAILED: Final = 4410
PORT_BLOCKED_BY_FIREWALL: Final = 4411
# Server recovery (the guide's failover events)
FAILOVER_COMPLETED: Final = 5100
ADDRESS_ADDED: Final = 5101
FAILOVER_WAITING_FOR_USER: Final = 5102
FAILOVER_SCRIPT_STARTING: Final = 5105
FAILOVER_SCRIPT_SUCCEEDED: Final = 5106
FAILOVER_SCRIPT_FAILED: Final = 5107
FAILOVER_SCRIPT_STILL_RUNNING: Final = 5110
MAC_ADDRESS_BROADCAST: Final = 5400
# E-mail notification
EMAIL_CONNECT_FAILED: Final = 5500
EMAIL_ENABLE_FAILED: Final = 5501
EMAIL_SEND_FAILED: Final = 5505
EMAIL_SETTINGS_MISSING: Final = 5506
EMAIL_SETTING_INVALID: Final = 5600
# Archiving and recall
ARCHIVE_STARTED: Final = 11000
ARCHIVE_COMPLETED: Final = 11001
RECALL_STARTED: Final = 11002
RECALL_COMPLETED: Final = 11003
RECALL_COMPONENT_FAILED: Final = 11004
ARCHIVE_ABORTED: Final = 11005
RECALL_ABORTED: Final = 11006
VERIFY_FINISHED_WITH_ERRORS: Final = 11007
ARCHIVE_NOT_SUPPORTED: Final = 11008
ARCHIVE_PREVIEW_STARTED: Final = 11009
ARCHIVE_PREVIEW_COMPLETED: Final = 11010
ARCHIVE_PREVIEW_ABORTED: Final = 11011
# Twinvault additions (the guide's 9000-9125 are Windows driver events we do not carry)
LOGIN_FAILED: Final = 9000
MALFORMED_FRAME: Final = 9001
CAPTURE_FELL_BACK_TO_INOTIFY: Final = 9002
CAPTURE_LOST_EVENTS: Final = 9003
ORPHANS_FOUND: Final = 9004
IMAGE_MISMATCH: Final = 9005
PEER_REJECTED: Final = 9006
CAPTURE_RESTORED: Final = 9007
# Repository history
SNAPSHOT_TAKEN: Final = 9010
STORE_BACKEND_FAILING: Final = 9011
STORE_BACKEND_RECOVERED: Final = 9012
CATALOG_REBUILT: Final = 9013
CATALOG_REPLAYED: Final = 9014
PRUNE_COMPLETED: Final = 9015
CHECK_FOUND_DAMAGE: Final = 9016
STORE_RECOVERED_AFTER_CRASH: Final = 9017
SOURCE_SHUTDOWN_REQUESTED: Final = 9020
# E-mail notification (ops.email_notifier) and the recovery server's side of a recovery
EMAIL_SENDING_RESUMED: Final = 9040
EMAIL_NOT_SENT: Final = 9041
EMAIL_SETTINGS_CHANGED: Final = 9042
RECOVERY_RECEIVING: Final = 9045
RECOVERY_RECEIVED: Final = 9046

# The guide's "%1 (%2) for Replication Set %3, ID: %4": target name, its address, the
# job's replication set (its name), the job (connection) ID.
_TO = "to {target} ({address}) for Replication Set {replication_set}, ID: {job}"
_FROM = "from {target} ({address}) for Replication Set {replication_set}, ID: {job}"
_SOURCE = "source {source} ({address}) Connection ID: {job}"
_SCHEDULE = "snapshot schedule for source {source} ({address}) connection {job}"
_RETRY = "Operation will be retried ({retries} times or forever)"

_GUIDE_EVENTS: Final[tuple[tuple[int, str, Severity, str], ...]] = (
    (LOGGER_STARTED, "Service", "info", "Logger service was successfully started."),
    (LOGGER_STOPPED, "Service", "info", "Logger service was successfully stopped."),
    (SERVICE_STARTED, "Service", "info", "Service was successfully started."),
    (TARGET_STARTED, "Service", "info", "Target service was successfully started."),
    (SOURCE_STARTED, "Service", "info", "Source service was successfully started."),
    (SOURCE_STOPPED, "Service", "info", "Source service was successfully stopped."),
    (TARGET_STOPPED, "Service", "info", "Target service was successfully stopped."),
    (SERVICE_STOPPED, "Service", "info", "Service was successfully stopped."),
    (
        SERVICE_ABORTED,
        "Service",
        "error",
        "Service has aborted due to the following unrecoverable error: {error}",
    ),
    (AUTO_DISCONNECT, "Service", "warning", "Auto-disconnecting " + _FROM + " due to {reason}"),
    (
        AUTO_DISCONNECT_SUCCEEDED,
        "Service",
        "info",
        "Auto-disconnect has succeeded for {target} ({address}) for Replication Set {replication_set}, "
        "ID: {job}",
    ),
    (
        AUTO_RECONNECTING,
        "Service",
        "info",
        "Auto-reconnecting Replication Set {replication_set} to {target} ({address})",
    ),
    (
        AUTO_RECONNECT_SUCCEEDED,
        "Service",
        "info",
        "Auto-reconnect has succeeded connecting Replication Set {replication_set} to {target} ({address})",
    ),
    (
        AUTO_RECONNECT_FAILED,
        "Service",
        "error",
        "Auto-reconnect has failed connecting Replication Set {replication_set} to {target} ({address})",
    ),
    (GENERIC_WARNING, "Service", "warning", "{message}"),
    (GENERIC_INFO, "Service", "info", "{message}"),
    (TRANSMISSION_STARTED, "Service", "info", "Service has started network transmission."),
    (TRANSMISSION_STOPPED, "Service", "info", "Service has stopped network transmission."),
    (CONNECTED, "Service", "info", "Service has established a connection " + _TO),
    (DISCONNECTED, "Service", "info", "Service has disconnected " + _FROM),
    (
        RESTORE_REQUIRED,
        "Service",
        "warning",
        "{message}, however, mirroring and replication have been disabled as a restore is required due to a "
        "previous failover.",
    ),
    (MIRROR_STARTED, "Service", "info", "Service has started a mirror " + _TO),
    (MIRROR_PAUSED, "Service", "info", "Service has paused a mirror " + _TO),
    (MIRROR_RESUMED, "Service", "info", "Service has resumed a mirror " + _TO),
    (
        MIRROR_STOPPED,
        "Service",
        "info",
        "Service has stopped a mirror to {target} for Replication Set {replication_set}, ID: {job}, {detail}",
    ),
    (MIRROR_COMPLETED, "Service", "info", "Service has completed a mirror " + _TO + ", {detail}"),
    (REPLICATION_STARTED, "Service", "info", "Service has started Replication " + _TO),
    (REPLICATION_STOPPED, "Service", "info", "Service has stopped Replication " + _TO),
    (TARGET_PAUSED, "Service", "info", "The target has been paused due to user intervention."),
    (TARGET_RESUMED, "Service", "info", "The target has been resumed due to user intervention."),
    (
        REPLICATION_STOPPED_BY_ERROR,
        "Service",
        "error",
        "An error was encountered and replication has been stopped. It is necessary to stop and restart the "
        "service to correct this error.",
    ),
    (
        PORT_OUT_OF_RANGE,
        "Service",
        "error",
        "{setting} value must be between 1025 and 65535. Using default of {default}.",
    ),
    (
        PORT_CONFLICT,
        "Service",
        "error",
        "This service failed to start because of a possible port conflict. Error: {error}",
    ),
    (
        COMPRESSION_UNAVAILABLE,
        "Service",
        "error",
        "Could not load compression library {library}. Some levels of compression will not be available.",
    ),
    (ORPHANS_STARTED, "Service", "info", "Service has started a delete orphans task " + _TO),
    (ORPHANS_PAUSED, "Service", "info", "Service has paused a delete orphans task " + _TO),
    (ORPHANS_RESUMED, "Service", "info", "Service has resumed a delete orphans task " + _TO),
    (ORPHANS_STOPPED, "Service", "info", "Service has stopped a delete orphans task " + _TO),
    (ORPHANS_COMPLETED, "Service", "info", "Service has completed a delete orphans task " + _TO),
    (RESTORE_STARTED, "Service", "info", "Service has started a restore task " + _TO),
    (RESTORE_PAUSED, "Service", "info", "Service has paused a restore task " + _TO),
    (RESTORE_RESUMED, "Service", "info", "Service has resumed a restore task " + _TO),
    (RESTORE_STOPPED, "Service", "info", "Service has stopped a restore task " + _TO),
    (RESTORE_COMPLETED, "Service", "info", "Service has completed a restore task " + _TO),
    (VERIFY_STARTED, "Service", "info", "Service has started a verification task " + _TO),
    (VERIFY_PAUSED, "Service", "info", "Service has paused a verification task " + _TO),
    (VERIFY_RESUMED, "Service", "info", "Service has resumed a verification task " + _TO),
    (VERIFY_STOPPED, "Service", "info", "Service has stopped a verification task " + _TO),
    (VERIFY_COMPLETED, "Service", "info", "Service has completed a verification task " + _TO),
    (
        BANDWIDTH_LIMIT_CHANGED,
        "Service",
        "info",
        "Bandwidth limit to {target} ({address}) has changed to {limit}.",
    ),
    (
        BANDWIDTH_PERIOD_CHANGED,
        "Service",
        "info",
        'Bandwidth limit to {target} ({address}) is now in the "{period}" period at {time}.',
    ),
    (
        TARGET_DATA_STATE_CHANGED,
        "Service",
        "warning",
        "Target data state for connection {job} from {source} ({address}) has changed because {reason}.",
    ),
    (
        NO_CHANGES_FROM_CAPTURE,
        "Service",
        "error",
        "No replication ops have been received from change capture for an extended period of time.",
    ),
    (REPLICATING_VOLUME_WRITE_FAILED, "Service", "error", "Failed to write to a replicating volume."),
    (UNKNOWN_CONFIG_PARAMETER, "System", "warning", "The configuration parameter {parameter} is unknown."),
    (
        CHANGE_CAPTURE_FAILED,
        "System",
        "error",
        "The file system change capture failed to start ({reason}). Replication will not occur.",
    ),
    (
        CONFIG_LOAD_FAILED,
        "System",
        "warning",
        "The configuration parameters failed to load ({reason}), so the default configuration values will be "
        "used.",
    ),
    (
        TARGET_DISK_FULL,
        "Service",
        "warning",
        "Target cannot write {path} due to target disk being full. " + _RETRY,
    ),
    (
        TARGET_SHARING,
        "Service",
        "warning",
        "Target can not write {path} due to a sharing violation. " + _RETRY,
    ),
    (
        TARGET_ACCESS_DENIED,
        "Service",
        "warning",
        "Target can not write {path} due to access denied. " + _RETRY,
    ),
    (
        TARGET_UNKNOWN_WRITE_ERROR,
        "Service",
        "warning",
        "Target can not write {path} due to an unknown reason. "
        + _RETRY
        + ". Please check the log files for further information on the error.",
    ),
    (
        TARGET_WRITE_RETRIED_OK,
        "Service",
        "info",
        "Target write to {path} was completed successfully after {retries} retries.",
    ),
    (
        TARGET_WRITE_DISCARDED,
        "Service",
        "error",
        "Target write {path} failed after {retries} retries and will be discarded. See the event log or log "
        "files for error conditions. After correcting the problem, you should re-mirror or run a verify to "
        "resynchronize the changes.",
    ),
    (
        FILE_OPERATION_TIMED_OUT,
        "Service",
        "warning",
        "The service was unable to complete a file system operation in the allotted time. "
        "See the log files for error conditions. After correcting the problem, remirror or "
        "perform a verification with remirror to synchronize the changes.",
    ),
    (TASK_SUBMITTED, "Service", "info", "In band task {task} submitted from {source} by {user} at {time}"),
    (
        TASK_DISCARDED,
        "Service",
        "warning",
        "In band task {task} discarded (submitted from {source} by {user} at {time})",
    ),
    (
        TASK_SCRIPT_RUNNING,
        "Service",
        "info",
        "Running {kind} in band script: {script} (task {task} submitted from {source} by {user} at {time})",
    ),
    (
        TASK_SCRIPT_COMPLETED,
        "Service",
        "info",
        "Completed run of in band script: {script} (exit code {exit_code})",
    ),
    (TASK_SCRIPT_FAILED, "Service", "error", "Error running in band script: {script}"),
    (
        TASK_SCRIPT_TIMEOUT,
        "Service",
        "warning",
        "Timeout ({timeout} seconds) running in band script: {script}",
    ),
    (TASK_SCRIPT_TIMEOUT_DISABLED, "Service", "warning", "Run timeout disabled for in band script: {script}"),
    (
        TASK_SCRIPTS_DISABLED,
        "Service",
        "warning",
        "In band scripts disabled by server - no attempt will be made to run {script}",
    ),
    (
        SNAPSHOT_FAILED,
        "Service",
        "error",
        "Failed to create snapshot set for " + _SOURCE + ". Error: {error}",
    ),
    (
        AUTO_SNAPSHOT_DELETE_FAILED,
        "Service",
        "error",
        "Failed to delete automatic snapshot set for " + _SOURCE + ". Error: {error}",
    ),
    (
        SNAPSHOT_DELETE_FAILED,
        "Service",
        "error",
        "Failed to delete snapshot set for " + _SOURCE + ". Error: {error}",
    ),
    (
        SCHEDULED_SNAPSHOT_DEFERRED,
        "Service",
        "error",
        "A scheduled snapshot could not be created for " + _SOURCE + " because the target data was in a bad "
        "state. A snapshot will automatically be created when the target data reaches a good state.",
    ),
    (
        SNAPSHOT_SCHEDULE_SET,
        "Service",
        "info",
        "Set " + _SCHEDULE + " to every {minutes} minutes. Next snapshot: {next}.",
    ),
    (SNAPSHOT_SCHEDULE_REMOVED, "Service", "info", "Removed " + _SCHEDULE + "."),
    (SNAPSHOT_SCHEDULE_ENABLED, "Service", "info", "Enabled " + _SCHEDULE + "."),
    (SNAPSHOT_SCHEDULE_DISABLED, "Service", "info", "Disabled " + _SCHEDULE + "."),
    (
        ORPHANS_MOVE_FAILED,
        "Service",
        "warning",
        "twinvault was unable to move some orphans for source {source} on connection ID {job}. Check the "
        "twinvault logs for further details.",
    ),
    (
        ORPHANS_DELETE_FAILED,
        "Service",
        "warning",
        "twinvault was unable to delete some orphans for source {source} on connection ID {job}. Check the "
        "twinvault logs for further details.",
    ),
    (
        SYSTEM_STATE_CAPTURE_FAILED,
        "Service",
        "error",
        "The system state capture failed with an error: {error}.",
    ),
    (
        PORT_BLOCKED_BY_FIREWALL,
        "Service",
        "warning",
        "The Service has detected that port {port} is being {action} by the firewall.",
    ),
    (FAILOVER_COMPLETED, "Failover", "info", "Failover completed for {server}."),
    (
        ADDRESS_ADDED,
        "Failover",
        "info",
        "IP address {ip} with subnet mask {netmask} was added to target machine's {interface} adapter.",
    ),
    (
        FAILOVER_WAITING_FOR_USER,
        "Failover",
        "warning",
        "{server} has reached a failover condition. A response from the user is required before failover can "
        "take place.",
    ),
    (FAILOVER_SCRIPT_STARTING, "Failover", "info", "Attempting to run the {script} script."),
    (FAILOVER_SCRIPT_SUCCEEDED, "Failover", "info", "The {script} script ran successfully."),
    (FAILOVER_SCRIPT_FAILED, "Failover", "error", "Error occurred in running {script} script."),
    (FAILOVER_SCRIPT_STILL_RUNNING, "Failover", "info", 'The {kind} script "{script}" is still running.'),
    (MAC_ADDRESS_BROADCAST, "ARP", "info", "Broadcasted new MAC address {mac} for IP address {ip}."),
    (
        EMAIL_CONNECT_FAILED,
        "Service",
        "warning",
        "Could not connect to e-mail server. Check to make sure the SMTP server {server} is available (error "
        "code: {error_code}).",
    ),
    (
        EMAIL_ENABLE_FAILED,
        "Service",
        "warning",
        "E-mail notification could not be enabled (error code: {error_code}).",
    ),
    (
        EMAIL_SEND_FAILED,
        "Service",
        "warning",
        "E-mail could not be sent. Check e-mail settings (error code: {error_code}).",
    ),
    (
        EMAIL_SETTINGS_MISSING,
        "Service",
        "warning",
        "One or more required e-mail settings have not been specified (error code: {error_code}).",
    ),
    (
        EMAIL_SETTING_INVALID,
        "Service",
        "warning",
        "Part or all of the e-mail setting {setting} is not in a valid format.",
    ),
    (ARCHIVE_STARTED, "Service", "info", "Service has started an archive " + _TO),
    (ARCHIVE_COMPLETED, "Service", "info", "Service has completed an archive " + _TO + ", {detail}"),
    (RECALL_STARTED, "Service", "info", "Service has started a recall " + _FROM),
    (RECALL_COMPLETED, "Service", "info", "Service has completed a recall " + _FROM + ", {detail}"),
    (
        RECALL_COMPONENT_FAILED,
        "Service",
        "warning",
        "Service has failed connection to the recall component. {reason}",
    ),
    (ARCHIVE_ABORTED, "Service", "warning", "Service has aborted the archive operation."),
    (RECALL_ABORTED, "Service", "warning", "Service has aborted the archive recall operation."),
    (VERIFY_FINISHED_WITH_ERRORS, "Service", "warning", "Verification has finished with errors. {detail}"),
    (ARCHIVE_NOT_SUPPORTED, "Service", "warning", "Archive feature is not supported on volume {volume}."),
    (ARCHIVE_PREVIEW_STARTED, "Service", "info", "Service has started an archive preview " + _TO),
    (ARCHIVE_PREVIEW_COMPLETED, "Service", "info", "Service has completed an archive preview " + _TO),
    (ARCHIVE_PREVIEW_ABORTED, "Service", "warning", "Service has aborted the archive preview operation."),
)

_TWINVAULT_EVENTS: Final[tuple[tuple[int, str, Severity, str], ...]] = (
    (LOGIN_FAILED, "Security", "warning", "Login failed for user {user} from {peer}"),
    (MALFORMED_FRAME, "Protocol", "warning", "Malformed frame from {peer}: {reason}; connection dropped"),
    (CAPTURE_FELL_BACK_TO_INOTIFY, "Capture", "warning", "Change capture fell back to inotify: {reason}"),
    (
        CAPTURE_LOST_EVENTS,
        "Capture",
        "warning",
        "Change capture lost events ({reason}); running a difference mirror",
    ),
    (
        CAPTURE_RESTORED,
        "Capture",
        "info",
        "Change capture is running again ({method}) after it failed; running a difference mirror",
    ),
    (ORPHANS_FOUND, "Repository", "info", "Orphan files on the repository for {job}: {count} ({action})"),
    (
        IMAGE_MISMATCH,
        "Repository",
        "warning",
        "Repository image for {job} does not match the source: {count} differences",
    ),
    (PEER_REJECTED, "Security", "warning", "Peer {peer} rejected: {reason}"),
    (SNAPSHOT_TAKEN, "Repository", "info", "Snapshot {snapshot} ({type}) taken of image {image} at {time}"),
    (
        STORE_BACKEND_FAILING,
        "Repository",
        "warning",
        "Chunk store backend {backend} is failing ({reason}); {pending} packs wait locally and are retried",
    ),
    (STORE_BACKEND_RECOVERED, "Repository", "info", "Chunk store backend {backend} is reachable again"),
    (
        CATALOG_REBUILT,
        "Repository",
        "warning",
        "Catalog was {reason}: rebuilt from the journal ({records} records) in {seconds} s",
    ),
    (CATALOG_REPLAYED, "Repository", "info", "Catalog replayed {records} journal records"),
    (
        PRUNE_COMPLETED,
        "Repository",
        "info",
        "Prune removed {versions} versions and {chunks} chunks ({bytes} bytes) older than {horizon}",
    ),
    (CHECK_FOUND_DAMAGE, "Repository", "error", "Repository check found damage: {summary}"),
    (
        SOURCE_SHUTDOWN_REQUESTED,
        "Recovery",
        "warning",
        "Shutdown of source {source} requested after recovery {job}: {action}",
    ),
    (
        EMAIL_SENDING_RESUMED,
        "Service",
        "info",
        "E-mail notification is functioning properly again: SMTP server {server} accepted an e-mail "
        "after {failed} failed attempts.",
    ),
    (
        EMAIL_NOT_SENT,
        "Service",
        "warning",
        "{count} e-mail notifications were not sent and are dropped: {reason} (event IDs: {ids}).",
    ),
    (
        EMAIL_SETTINGS_CHANGED,
        "Service",
        "info",
        "E-mail notification settings changed by {user}: notification {state}, {recipients} recipients.",
    ),
    (
        RECOVERY_RECEIVING,
        "Recovery",
        "info",
        "Recovery {job} from {source} ({address}) is writing into {path}.",
    ),
    (
        RECOVERY_RECEIVED,
        "Recovery",
        "info",
        "Recovery {job} from {source} is complete: {ops} operations applied into {path}.",
    ),
    (
        STORE_RECOVERED_AFTER_CRASH,
        "Repository",
        "warning",
        "Chunk store recovered after an unclean stop: {detail}",
    ),
)

EVENT_CATALOG: Final[dict[int, EventSpec]] = {
    entry[0]: EventSpec(*entry) for entry in (*_GUIDE_EVENTS, *_TWINVAULT_EVENTS)
}
