"""Every string nhlink puts on (or reads off) the wire, spelled once, with its PROTOCOL.md section.

Statuses are the current server's enumeration (§7.4): sending anything else crashes its device
channel, which is why the Elixir client's ``fwup_complete``/``update_failed``/``reschedule`` are
not here.
"""

from __future__ import annotations

from typing import Final

# §2.1–2.2 — socket URL
DEVICE_SOCKET_PATH: Final = "/device-socket/websocket"
LEGACY_SOCKET_PATH: Final = (
    "/socket/websocket"  # device endpoint only; the browser socket on web hosts
)
VSN_QUERY: Final = "vsn=2.0.0"
VSN_QUERY_MSGPACK: Final = "vsn=3.0.0"  # §4.6: MessagePack, binary frames (opt-in)
SERIALIZER_JSON: Final = "json"
SERIALIZER_MSGPACK: Final = "msgpack"

# §2.5 / §3 — HTTP upgrade
HEADER_CONNECTION_ERROR_REASON: Final = "nh-connection-error-reason"
HEADER_ALG: Final = "x-nh-alg"
HEADER_KEY: Final = "x-nh-key"
HEADER_TIME: Final = "x-nh-time"
HEADER_SIGNATURE: Final = "x-nh-signature"
NH1_ALG: Final = "NH1-HMAC-sha256-1000-32"

# §4.2–4.3 — Phoenix control events and topics
TOPIC_PHOENIX: Final = "phoenix"
TOPIC_DEVICE: Final = "device"
TOPIC_EXTENSIONS: Final = "extensions"
EVENT_JOIN: Final = "phx_join"
EVENT_LEAVE: Final = "phx_leave"
EVENT_REPLY: Final = "phx_reply"
EVENT_CLOSE: Final = "phx_close"
EVENT_ERROR: Final = "phx_error"
EVENT_HEARTBEAT: Final = "heartbeat"
REPLY_OK: Final = "ok"
REPLY_ERROR: Final = "error"

# §6.2 — device join parameters
JOIN_FW_PREFIX: Final = "nerves_fw_"
JOIN_DEVICE_API_VERSION: Final = "device_api_version"
JOIN_CURRENTLY_DOWNLOADING_UUID: Final = "currently_downloading_uuid"
JOIN_META: Final = "meta"
META_FIRMWARE_VALIDATED: Final = "firmware_validated"
META_AUTO_REVERT_DETECTED: Final = "firmware_auto_revert_detected"
DEVICE_API_VERSION: Final = "2.2.0"  # gates extensions (≥ 2.2.0); §6.2
REQUIRED_FIRMWARE_META: Final = ("uuid", "product", "architecture", "version", "platform")

# §6.4 — server → device on "device"
EVENT_UPDATE: Final = "update"
EVENT_REBOOT: Final = "reboot"
EVENT_IDENTIFY: Final = "identify"
EVENT_EXTENSIONS_GET: Final = "extensions:get"
EVENT_SCRIPTS_RUN: Final = "scripts/run"
EVENT_ARCHIVE: Final = "archive"
EVENT_FWUP_PUBLIC_KEYS: Final = "fwup_public_keys"
EVENT_ARCHIVE_PUBLIC_KEYS: Final = "archive_public_keys"

# §6.5 — device → server on "device" (never replied to)
EVENT_STATUS_UPDATE: Final = "status_update"
EVENT_FWUP_PROGRESS: Final = "fwup_progress"
EVENT_FIRMWARE_VALIDATED: Final = "firmware_validated"
EVENT_REBOOTING: Final = "rebooting"

# §7.4 — the only status strings the current server accepts
STATUS_RECEIVED: Final = "received"
STATUS_STARTED: Final = "started"
STATUS_DOWNLOADING: Final = "downloading"
STATUS_UPDATING: Final = "updating"
STATUS_COMPLETED: Final = "completed"
STATUS_IGNORED: Final = "ignored"
STATUS_RESCHEDULED: Final = "rescheduled"
STATUS_FAILED: Final = "failed"
STATUSES: Final = frozenset(
    {
        STATUS_RECEIVED,
        STATUS_STARTED,
        STATUS_DOWNLOADING,
        STATUS_UPDATING,
        STATUS_COMPLETED,
        STATUS_IGNORED,
        STATUS_RESCHEDULED,
        STATUS_FAILED,
    }
)
PROGRESS_STAGE_DOWNLOADING: Final = "downloading"
PROGRESS_STAGE_UPDATING: Final = "updating"

# §8 — extensions channel
EXTENSION_ATTACH: Final = "attach"
EXTENSION_DETACH: Final = "detach"
EXTENSION_ATTACHED_SUFFIX: Final = ":attached"
EXTENSION_DETACHED_SUFFIX: Final = ":detached"
EXTENSION_ERROR_SUFFIX: Final = ":error"
EXTENSION_DETACH_REPLY: Final = "detach"  # bare-string error response, §8.2

# §4.4 — close codes seen from NervesHub
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001  # same identity connected elsewhere
CLOSE_PROTOCOL_ERROR: Final = 1002  # also Bandit's idle timeout
CLOSE_SERVICE_RESTART: Final = 1012  # server draining

# §8 — extension names, events and payload keys (used by nhlink.extensions)
# §8.1 — extensions/extension.py
EXT_DEFAULT_VERSION: Final = "0.0.1"

# §8.5 — extensions/geo.py
GEO_NAME: Final = "geo"
GEO_EVENT_LOCATION_REQUEST: Final = "location:request"  # server → device, {}
GEO_EVENT_LOCATION_UPDATE: Final = "location:update"  # device → server
GEO_KEY_SOURCE: Final = "source"
GEO_KEY_LATITUDE: Final = "latitude"
GEO_KEY_LONGITUDE: Final = "longitude"
GEO_KEY_ACCURACY: Final = "accuracy"
GEO_KEY_ERROR_CODE: Final = "error_code"
GEO_KEY_ERROR_DESCRIPTION: Final = "error_description"
GEO_ERROR_RESOLVER: Final = "resolver_error"
GEO_ERROR_INVALID: Final = "invalid_location"
GEO_ERROR_TIMEOUT: Final = "timeout"

# §8.3 — extensions/health.py
HEALTH_NAME: Final = "health"
HEALTH_EVENT_CHECK: Final = "check"  # server → device: health:check {}
HEALTH_EVENT_REPORT: Final = "report"  # device → server: health:report {"value": <report>}
HEALTH_REPORT_VALUE: Final = "value"  # the required wrapper key
HEALTH_KEY_TIMESTAMP: Final = "timestamp"
HEALTH_KEY_METRICS: Final = "metrics"
HEALTH_KEY_METADATA: Final = "metadata"
HEALTH_KEY_ALARMS: Final = "alarms"
HEALTH_KEY_CHECKS: Final = "checks"
HEALTH_KEY_CONNECTIVITY: Final = "connectivity"
HEALTH_CHECK_PASS: Final = "pass"
HEALTH_CHECK_NOTE: Final = "note"
HEALTH_ALARM_CHECK_FAILED: Final = "nhlink.HealthCheckFailed"
HEALTH_CHECK_PROVIDER: Final = "health_provider"

# §8.3 (metric names as nerves_hub_link reports them) — extensions/linux.py
HEALTH_METRIC_LOAD_1: Final = "load_1min"
HEALTH_METRIC_LOAD_5: Final = "load_5min"
HEALTH_METRIC_LOAD_15: Final = "load_15min"
HEALTH_METRIC_CPU_USAGE: Final = "cpu_usage_percent"
HEALTH_METRIC_CPU_TEMP: Final = "cpu_temp"  # °C
HEALTH_METRIC_MEM_SIZE: Final = "mem_size_mb"  # MiB
HEALTH_METRIC_MEM_USED: Final = "mem_used_mb"  # MiB
HEALTH_METRIC_MEM_USED_PERCENT: Final = "mem_used_percent"
HEALTH_METRIC_DISK_TOTAL: Final = "disk_total_kb"  # KiB
HEALTH_METRIC_DISK_AVAILABLE: Final = "disk_available_kb"  # KiB, available to unprivileged users
HEALTH_METRIC_DISK_USED_PERCENT: Final = "disk_used_percentage"
HEALTH_METRIC_UPTIME: Final = "uptime"  # seconds

# §8.4 — extensions/logs.py
LOGGING_NAME: Final = "logging"
LOGGING_EVENT_SEND: Final = "send"  # device → server: logging:send
LOGGING_KEY_LEVEL: Final = "level"
LOGGING_KEY_MESSAGE: Final = "message"
LOGGING_KEY_META: Final = "meta"
LOGGING_META_TIME: Final = "time"  # Unix microseconds as a decimal string; meta values are strings

# §8.2 — extensions/router.py
EXTENSIONS_ATTACH_KEY: Final = (
    "extensions"  # attach/detach payload: {"extensions": [names] | "all" | name}
)
EXTENSIONS_ATTACH_ALL: Final = "all"  # NHL accepts it; so do we
EXTENSIONS_ERROR_REASON: Final = "reason"  # "<name>:error" {"reason": str}
EXTENSIONS_REASON_START_FAILURE: Final = "start_failure"  # NHL's reason; we append the exception
