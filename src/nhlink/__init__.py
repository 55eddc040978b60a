"""nhlink — a NervesHub device client for Linux gateways.

One WebSocket speaking Phoenix Channels v2 to a NervesHub server, mTLS or shared-secret (NH1)
authentication, OTA firmware streamed over HTTPS into a pluggable writer with SHA-256
verification. See README.md for a tour.
"""

from __future__ import annotations

from . import errors, instances
from ._version import __version__
from .client import Apply, Client, DefaultClient, Ignore, Reschedule
from .config import LinkConfig
from .errors import (
    AuthenticationError,
    AuthRejected,
    ChecksumMismatch,
    ClockNotSet,
    ConfigError,
    ConnectFailed,
    ConnectionClosed,
    ConnectTimeout,
    DecodeError,
    DownloadError,
    EncodeError,
    FrameError,
    HandshakeError,
    HeartbeatTimeout,
    InvalidStatus,
    JoinTimeout,
    LocalProtocolError,
    NHLinkError,
    PermanentDownloadError,
    RemoteProtocolError,
    RetryableDownloadError,
    TLSVerificationError,
    TransportError,
    UpdateError,
    WriterError,
)
from .instances import confirm_update, get, reconnect, start_link
from .link import LinkState, LinkStatus, NervesHubLink
from .update.state import DeviceState
from .update.writer import FwupWriter

__all__ = [
    "Apply",
    "AuthRejected",
    "AuthenticationError",
    "ChecksumMismatch",
    "Client",
    "ClockNotSet",
    "ConfigError",
    "ConnectFailed",
    "ConnectTimeout",
    "ConnectionClosed",
    "DecodeError",
    "DefaultClient",
    "DeviceState",
    "DownloadError",
    "EncodeError",
    "FrameError",
    "FwupWriter",
    "HandshakeError",
    "HeartbeatTimeout",
    "Ignore",
    "InvalidStatus",
    "JoinTimeout",
    "LinkConfig",
    "LinkState",
    "LinkStatus",
    "LocalProtocolError",
    "NHLinkError",
    "NervesHubLink",
    "PermanentDownloadError",
    "RemoteProtocolError",
    "Reschedule",
    "RetryableDownloadError",
    "TLSVerificationError",
    "TransportError",
    "UpdateError",
    "WriterError",
    "__version__",
    "confirm_update",
    "errors",
    "get",
    "instances",
    "reconnect",
    "start_link",
]
