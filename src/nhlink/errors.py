"""Every exception nhlink raises, in one tree.

* :class:`NHLinkError` — base of everything below.

  * :class:`ConfigError` (also a :class:`ValueError`) — a bad option; names the option.
  * :class:`LocalProtocolError` — *you* misused an API (sending after close, encoding an object
    that has no JSON form). Never caused by the peer.

    * :class:`EncodeError` — a Phoenix payload that cannot be encoded as JSON.

  * :class:`RemoteProtocolError` — *the peer* broke a protocol.

    * :class:`FrameError` — a WebSocket frame violated RFC 6455 (or a local limit); carries the
      close code to send (1002 protocol error, 1007 invalid payload data, 1009 too big).
    * :class:`DecodeError` — a Phoenix Channels message was malformed.
    * :class:`HandshakeError` — the opening handshake response was not a valid 101.

      * :class:`InvalidStatus` — the server answered with another status (401, 403, 503, ...); keeps
        the status, headers and body so callers can read ``nh-connection-error-reason`` and
        ``Date``.

  * :class:`TransportError` — the network said no (also an :class:`OSError`-free wrapper).

    * :class:`ConnectFailed` — DNS failure or connection refused/unreachable.
    * :class:`TLSVerificationError` — the server's certificate did not verify, or ours was refused.
    * :class:`ConnectTimeout` — the connection or handshake took too long.

      * :class:`JoinTimeout` — the server never answered the ``device`` channel join.
    * :class:`ConnectionClosed` — the WebSocket is closed; carries the close code and reason.
    * :class:`HeartbeatTimeout` — the server left a Phoenix heartbeat unanswered for an interval.

  * :class:`AuthenticationError` — NervesHub did not accept the device.

    * :class:`AuthRejected` — the server refused the credentials (HTTP 401).
    * :class:`ClockNotSet` — refusing to sign shared-secret headers with an unset clock.

  * :class:`UpdateError` — a firmware update step failed (reported to the server as ``failed``).

    * :class:`DownloadError` — the firmware HTTP download failed.

      * :class:`RetryableDownloadError` — worth another attempt (network, 5xx, 408, 429, idle).
      * :class:`PermanentDownloadError` — not worth retrying (404, expired URL, too many retries).

    * :class:`ChecksumMismatch` — the image's SHA-256 (whole or part) is not what the server sent.
    * :class:`WriterError` — the firmware writer failed (begin, chunk, finish, confirm).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "AuthRejected",
    "AuthenticationError",
    "ChecksumMismatch",
    "ClockNotSet",
    "ConfigError",
    "ConnectFailed",
    "ConnectTimeout",
    "ConnectionClosed",
    "DecodeError",
    "DownloadError",
    "EncodeError",
    "FrameError",
    "HandshakeError",
    "HeartbeatTimeout",
    "InvalidStatus",
    "JoinTimeout",
    "LocalProtocolError",
    "NHLinkError",
    "PermanentDownloadError",
    "ProxyError",
    "RemoteProtocolError",
    "RetryableDownloadError",
    "TLSVerificationError",
    "TransportError",
    "UpdateError",
    "WriterError",
]


def without_traceback(exc: BaseException) -> BaseException:
    """``exc`` (and the exceptions it was raised from) without traceback frames, for keeping
    as a "last error": a kept traceback pins every local variable of every frame it passed —
    a connection's buffers, an update's held firmware blocks — for as long as it is kept."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__
    return exc


# RFC 6455 §7.4.1 close codes used when the peer breaks the protocol.
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_MESSAGE_TOO_BIG = 1009


class NHLinkError(Exception):
    """Base class of every exception raised by nhlink."""


class ConfigError(NHLinkError, ValueError):
    """A configuration value is missing or invalid. ``option`` names it."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option


class LocalProtocolError(NHLinkError):
    """The caller misused a protocol API (e.g. sent after close)."""


class EncodeError(LocalProtocolError):
    """A Phoenix message could not be encoded (payload not representable as JSON)."""


class RemoteProtocolError(NHLinkError):
    """The peer violated a protocol."""


class FrameError(RemoteProtocolError):
    """A WebSocket frame broke RFC 6455 or a configured limit.

    ``close_code`` is what the client must send in its close frame: 1002 (protocol error),
    1007 (invalid payload data, e.g. bad UTF-8) or 1009 (message too big).
    """

    def __init__(self, message: str, close_code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.close_code = close_code
        #: Frames the parser completed, in the same input, before the bad one.
        self.frames: list[Any] = []


class DecodeError(RemoteProtocolError):
    """A Phoenix Channels message was malformed (not JSON, wrong shape, wrong types)."""


class HandshakeError(RemoteProtocolError):
    """The WebSocket opening handshake response was invalid."""


class InvalidStatus(HandshakeError):
    """The server answered the upgrade with a status other than 101.

    Header names in ``headers`` are lower-case. ``reason`` is NervesHub's
    ``nh-connection-error-reason`` header when present.
    """

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes = b"") -> None:
        self.status = status
        self.headers = dict(headers)
        self.body = body
        self.reason = self.headers.get("nh-connection-error-reason")
        detail = f": {self.reason}" if self.reason else ""
        super().__init__(f"server rejected WebSocket upgrade with HTTP {status}{detail}")


class TransportError(NHLinkError):
    """The network or TLS layer failed."""


class ConnectFailed(TransportError):
    """The host name did not resolve, or the TCP connection was refused or unreachable."""


class ProxyError(ConnectFailed):
    """The HTTP proxy could not be reached or refused the tunnel (``status``: its HTTP status,
    e.g. 407 when it wants credentials or they are wrong, 403 when it forbids the target; None
    when it was unreachable or did not speak HTTP). Never names the proxy's credentials."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TLSVerificationError(TransportError):
    """TLS failed: the server certificate did not verify, or the server refused ours."""


class ConnectTimeout(TransportError):
    """Connecting (TCP, TLS or the WebSocket handshake) took longer than allowed."""


class JoinTimeout(ConnectTimeout):
    """The server did not answer the ``device`` channel join in time: the socket is closed and
    the link reconnects with backoff."""


class ConnectionClosed(TransportError):
    """The WebSocket connection is closed.

    ``code``/``reason`` are from the close frame (1006 if there was none).
    """

    def __init__(self, code: int = 1006, reason: str = "", message: str | None = None) -> None:
        self.code = code
        self.reason = reason
        super().__init__(
            message or f"connection closed (code {code}{', ' + reason if reason else ''})"
        )


class HeartbeatTimeout(TransportError):
    """The previous heartbeat was still unanswered when the next one was due: the socket is dead."""


class AuthenticationError(NHLinkError):
    """NervesHub did not authenticate the device."""


class AuthRejected(AuthenticationError):
    """The server refused the device's credentials (HTTP 401)."""


class ClockNotSet(AuthenticationError):
    """The system clock is unset (before 2001); shared-secret signatures would be rejected."""


class UpdateError(NHLinkError):
    """A firmware update failed; ``str(error)`` is the reason reported to the server."""


class DownloadError(UpdateError):
    """The firmware download failed."""


class RetryableDownloadError(DownloadError):
    """A download failure worth retrying (network error, 5xx, 408, 429, idle timeout)."""


class PermanentDownloadError(DownloadError):
    """A download failure not worth retrying (4xx such as 403/404, or retries exhausted)."""


class ChecksumMismatch(UpdateError):
    """The firmware's SHA-256 does not match what the server announced."""

    def __init__(self, expected: str, actual: str, what: str = "firmware image") -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"SHA-256 mismatch for {what}: expected {expected.upper()}, got {actual.upper()}"
        )


class WriterError(UpdateError):
    """The firmware writer failed."""
