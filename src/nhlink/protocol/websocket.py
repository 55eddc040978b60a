"""RFC 6455 client connection, sans-I/O: bytes in, bytes and messages out.

The caller owns the socket. The contract, in the order a caller uses it:

1. Create :class:`ClientConnection` with a random 16-byte key and a mask-key source; write
   :meth:`ClientConnection.data_to_send` (the upgrade request) to the socket.
2. Feed every byte read with :meth:`~ClientConnection.receive_data`; it returns the complete data
   messages (``str`` for text, ``bytes`` for binary) found in those bytes. **After every call,
   write** :meth:`~ClientConnection.data_to_send` (pongs, close frames). The handshake outcome is
   :attr:`~ClientConnection.state` becoming ``OPEN``; a rejected upgrade raises
   :class:`~nhlink.errors.InvalidStatus`, a malformed one :class:`~nhlink.errors.HandshakeError`.
3. Call :meth:`~ClientConnection.receive_eof` when the peer closes the TCP stream.
4. When :meth:`~ClientConnection.close_expected` is true, the server should close TCP soon; if it
   does not within a timeout, close it yourself. :attr:`~ClientConnection.state` ``CLOSED`` means
   nothing more will be sent or received.

State invariants (everything that changes ``_state`` lives in this file):

* ``CONNECTING``: only the upgrade request has been produced; nothing may be sent.
* ``OPEN``: the handshake was valid; data and control frames flow both ways.
* ``CLOSING``: a close frame was sent *or* received (``close_sent``/``close_received`` say which);
  no data frame may be sent; incoming data after the peer's close frame is discarded.
* ``CLOSED``: the TCP stream ended (``receive_eof``) — terminal.

Protocol violations by the peer never raise from ``receive_data`` once open: the connection is
*failed* (RFC 6455 §7.1.7): a close frame with 1002/1007/1009 is queued, ``failure`` records the
error, and everything after is discarded.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import _core
from ..errors import (
    FrameError,
    HandshakeError,
    InvalidStatus,
    LocalProtocolError,
)

__all__ = [
    "CLOSED",
    "CLOSING",
    "CONNECTING",
    "OPEN",
    "ClientConnection",
    "DeflateOptions",
    "accept_key",
]

# Integer states (cheap to compare on the hot path).
CONNECTING = 0
OPEN = 1
CLOSING = 2
CLOSED = 3
_STATE_NAMES = {CONNECTING: "CONNECTING", OPEN: "OPEN", CLOSING: "CLOSING", CLOSED: "CLOSED"}

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
_MAX_RESPONSE_HEAD = 64 * 1024
_MAX_ERROR_BODY = 64 * 1024
_DEFLATE_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 §7.2.1

OP_CONT = _core.OP_CONT
OP_TEXT = _core.OP_TEXT
OP_BINARY = _core.OP_BINARY
OP_CLOSE = _core.OP_CLOSE
OP_PING = _core.OP_PING
OP_PONG = _core.OP_PONG

Message = str | bytes


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value a server must answer for ``key`` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


@dataclass(frozen=True)
class DeflateOptions:
    """What to offer for ``permessage-deflate`` (RFC 7692). Off unless the caller passes one.

    ``client_max_window_bits`` bounds the memory of our compressor; ``server_max_window_bits``
    asks the server to bound our decompressor's window (None: do not ask; 15 is the protocol max).
    """

    client_no_context_takeover: bool = False
    server_no_context_takeover: bool = False
    client_max_window_bits: int | None = 15
    server_max_window_bits: int | None = None
    compress_level: int = 6
    min_size: int = 64  # smaller outgoing messages are sent uncompressed

    def offer(self) -> str:
        params = ["permessage-deflate"]
        if self.client_no_context_takeover:
            params.append("client_no_context_takeover")
        if self.server_no_context_takeover:
            params.append("server_no_context_takeover")
        if self.client_max_window_bits is not None:
            params.append(f"client_max_window_bits={self.client_max_window_bits}")
        if self.server_max_window_bits is not None:
            params.append(f"server_max_window_bits={self.server_max_window_bits}")
        return "; ".join(params)


class _Deflate:
    """Negotiated permessage-deflate state: one compressor, one decompressor (RFC 7692 §7)."""

    def __init__(
        self,
        options: DeflateOptions,
        *,
        client_no_context_takeover: bool,
        server_no_context_takeover: bool,
        client_max_window_bits: int,
        server_max_window_bits: int,
        max_message_size: int,
    ) -> None:
        self.level = options.compress_level
        self.min_size = options.min_size
        self.client_no_context_takeover = client_no_context_takeover
        self.server_no_context_takeover = server_no_context_takeover
        # zlib cannot compress with an 8-bit raw window, and a 9-bit stream may hold distances an
        # 8-bit inflater rejects. Messages may always be sent uncompressed (RFC 7692 §6: RSV1 is per
        # message), so with 8 bits we simply never compress.
        self.client_bits = client_max_window_bits
        self.compress_enabled = client_max_window_bits >= 9
        self.server_bits = server_max_window_bits
        self.max_message_size = max_message_size
        self._compressor: zlib._Compress | None = None
        self._decompressor: zlib._Decompress | None = None

    def compress(self, payload: bytes) -> bytes:
        if self._compressor is None or self.client_no_context_takeover:
            self._compressor = zlib.compressobj(self.level, zlib.DEFLATED, -self.client_bits)
        data = self._compressor.compress(payload) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        if data.endswith(_DEFLATE_TAIL):
            data = data[:-4]
        return data or b"\x00"

    def decompress(self, payload: bytes) -> bytes:
        if self._decompressor is None or self.server_no_context_takeover:
            self._decompressor = zlib.decompressobj(-self.server_bits)
        try:
            data = self._decompressor.decompress(payload + _DEFLATE_TAIL, self.max_message_size + 1)
        except zlib.error as exc:
            raise FrameError(f"invalid permessage-deflate data: {exc}", 1007) from exc
        if len(data) > self.max_message_size or self._decompressor.unconsumed_tail:
            raise FrameError(f"decompressed message exceeds {self.max_message_size} bytes", 1009)
        return data


def _parse_extension_header(value: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    result: list[tuple[str, list[tuple[str, str | None]]]] = []
    for item in value.split(","):
        parts = [p.strip() for p in item.split(";")]
        if not parts[0]:
            raise HandshakeError(f"malformed Sec-WebSocket-Extensions: {value!r}")
        params: list[tuple[str, str | None]] = []
        for p in parts[1:]:
            if not p:
                continue
            name, sep, raw = p.partition("=")
            name = name.strip().lower()
            val = raw.strip().strip('"') if sep else None
            params.append((name, val))
        result.append((parts[0].lower(), params))
    return result


def _window_bits(name: str, value: str | None) -> int:
    if (
        value is None
        or not value.isdigit()
        or not 8 <= int(value) <= 15
        or value != str(int(value))
    ):
        raise HandshakeError(f"permessage-deflate: invalid {name}={value!r}")
    return int(value)


def _parse_headers(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HandshakeError(f"malformed HTTP header line: {line[:100]!r}")
        name = name.lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


class ClientConnection:
    """A WebSocket client connection, sans-I/O. See the module docstring for the contract."""

    __slots__ = (
        "_compression_offer",
        "_deferred_failure",
        "_deflate",
        "_error_body_len",
        "_error_headers",
        "_error_status",
        "_fragment_compressed",
        "_fragment_opcode",
        "_fragments",
        "_head",
        "_key",
        "_mask_key",
        "_max_frame_size",
        "_max_message_size",
        "_out",
        "_parser",
        "_response_head",
        "_state",
        "close_code",
        "close_reason",
        "close_received",
        "close_sent",
        "failure",
        "pongs",
        "response_started",
    )

    def __init__(
        self,
        *,
        host: str,
        port: int,
        resource: str,
        secure: bool,
        key: bytes,
        mask_key: Callable[[], bytes],
        extra_headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        max_message_size: int = 16 * 1024 * 1024,
        max_frame_size: int | None = None,
        compression: DeflateOptions | None = None,
        user_agent: str | None = None,
    ) -> None:
        if len(key) != 16:
            raise ValueError("the Sec-WebSocket-Key must be 16 random bytes")
        if max_message_size <= 0:
            raise ValueError("max_message_size must be positive")
        self._key = base64.b64encode(key).decode("ascii")
        self._mask_key = mask_key
        self._max_message_size = max_message_size
        self._max_frame_size = max_frame_size or max_message_size
        self._compression_offer = compression
        self._deflate: _Deflate | None = None
        self._state = CONNECTING
        self._out: list[bytes] = []
        self._head = bytearray()
        self._error_status: int | None = None
        self._error_headers: dict[str, str] = {}
        self._error_body_len: int | None = None
        self._parser: _core.FrameParser | None = None
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0
        self._fragment_compressed = False
        self._response_head = ""  # the 101's header lines, parsed on demand (kept small)
        self.response_started = False  # any byte of the upgrade response received
        self.pongs: list[bytes] = []  # rare: a list costs less than a deque per connection
        self.close_sent = False
        self.close_received = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.failure: FrameError | None = None
        self._deferred_failure: FrameError | None = None
        self._out.append(self._request(host, port, resource, secure, extra_headers, user_agent))

    # -- introspection -------------------------------------------------------------------------

    @property
    def state(self) -> int:
        """One of ``CONNECTING``, ``OPEN``, ``CLOSING``, ``CLOSED``."""
        return self._state

    @property
    def state_name(self) -> str:
        return _STATE_NAMES[self._state]

    @property
    def compression_negotiated(self) -> bool:
        return self._deflate is not None

    def close_expected(self) -> bool:
        """True once the close handshake is under way: the server should now close TCP."""
        return self._state == CLOSING and (self.close_received or self.failure is not None)

    def data_to_send(self) -> bytes:
        """Bytes to write to the socket now (may be empty). Call after every other method."""
        if not self._out:
            return b""
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        return data

    # -- handshake -------------------------------------------------------------------------------

    def _request(
        self,
        host: str,
        port: int,
        resource: str,
        secure: bool,
        extra_headers: Mapping[str, str] | Iterable[tuple[str, str]],
        user_agent: str | None,
    ) -> bytes:
        if not resource.startswith("/"):
            raise ValueError("resource must start with '/'")
        host_header = f"[{host}]" if ":" in host and not host.startswith("[") else host
        if port != (443 if secure else 80):
            host_header = f"{host_header}:{port}"
        headers: list[tuple[str, str]] = [
            ("Host", host_header),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", self._key),
            ("Sec-WebSocket-Version", "13"),
        ]
        if self._compression_offer is not None:
            headers.append(("Sec-WebSocket-Extensions", self._compression_offer.offer()))
        if user_agent:
            headers.append(("User-Agent", user_agent))
        items = extra_headers.items() if isinstance(extra_headers, Mapping) else extra_headers
        for name, value in items:
            for text in (name, value):
                if "\r" in text or "\n" in text or "\x00" in text:
                    raise LocalProtocolError(f"header {name!r} contains a line break or NUL")
            headers.append((name, value))
        lines = [f"GET {resource} HTTP/1.1"] + [f"{n}: {v}" for n, v in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _receive_handshake(self, data: bytes) -> list[Message]:
        self.response_started = True
        self._head += data
        if self._error_status is not None:
            return self._receive_error_body()
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > _MAX_RESPONSE_HEAD:
                raise HandshakeError("upgrade response headers exceed 64 KiB")
            return []
        head = bytes(self._head[:end]).decode("latin-1")
        rest = bytes(self._head[end + 4 :])
        self._head.clear()
        lines = head.split("\r\n")
        status_line = lines[0].split(" ", 2)
        if (
            len(status_line) < 2
            or not status_line[0].startswith("HTTP/1.")
            or not (status_line[1].isdigit() and len(status_line[1]) == 3)
        ):
            raise HandshakeError(f"malformed HTTP status line: {lines[0][:100]!r}")
        status = int(status_line[1])
        headers = _parse_headers(lines[1:])
        if status != 101:
            self._error_status = status
            self._error_headers = headers
            length = headers.get("content-length", "")
            self._error_body_len = int(length) if length.isdigit() else None
            self._head += rest
            return self._receive_error_body()
        self._validate_upgrade(headers)
        # An idle connection keeps one string rather than a dict of strings: ~0.5 KiB less for
        # each of 10,000 links in one process (nhlink fleet).
        self._response_head = head.partition("\r\n")[2]
        self._state = OPEN
        parser = self._parser = _core.FrameParser(
            max_frame_size=self._max_frame_size,
            max_message_size=self._max_message_size,
            allow_rsv1=self._deflate is not None,
            validate_utf8=True,
        )
        return self._receive_frames(parser.feed, rest) if rest else []

    @property
    def response_headers(self) -> dict[str, str]:
        """The server's 101 response headers, lower-case names (empty before the upgrade).
        A new dict on every access; repeated headers are joined with ``", "``."""
        return _parse_headers(self._response_head.split("\r\n")) if self._response_head else {}

    def release_response_headers(self) -> None:
        """Forget the 101's headers (:attr:`response_headers` is empty afterwards)."""
        self._response_head = ""

    def _receive_error_body(self, eof: bool = False) -> list[Message]:
        assert self._error_status is not None
        body_len = self._error_body_len
        have = len(self._head)
        if (
            eof
            or (body_len is not None and have >= min(body_len, _MAX_ERROR_BODY))
            or (have >= _MAX_ERROR_BODY)
        ):
            cap = _MAX_ERROR_BODY if body_len is None else min(body_len, _MAX_ERROR_BODY)
            body = bytes(self._head[:cap])
            self._head.clear()
            self._state = CLOSED
            raise InvalidStatus(self._error_status, self._error_headers, body)
        return []

    def _validate_upgrade(self, headers: dict[str, str]) -> None:
        # RFC 6455 §4.1, client requirements 1–6 on the server's handshake.
        upgrade = [t.strip().lower() for t in headers.get("upgrade", "").split(",")]
        if "websocket" not in upgrade:
            raise HandshakeError("101 response without 'Upgrade: websocket'")
        connection = [t.strip().lower() for t in headers.get("connection", "").split(",")]
        if "upgrade" not in connection:
            raise HandshakeError("101 response without 'Connection: Upgrade'")
        if headers.get("sec-websocket-accept") != accept_key(self._key):
            raise HandshakeError("Sec-WebSocket-Accept does not match the key sent")
        self._key = ""  # needed for the check only
        if "sec-websocket-protocol" in headers:
            raise HandshakeError("server selected a subprotocol that was not offered")
        extensions = headers.get("sec-websocket-extensions")
        if extensions:
            self._negotiate(extensions)

    def _negotiate(self, header: str) -> None:
        offer = self._compression_offer
        parsed = _parse_extension_header(header)
        if offer is None or len(parsed) != 1 or parsed[0][0] != "permessage-deflate":
            raise HandshakeError(f"server accepted extensions that were not offered: {header!r}")
        seen: set[str] = set()
        client_nct = offer.client_no_context_takeover
        server_nct = False
        client_bits = 15
        server_bits = 15
        for name, value in parsed[0][1]:
            if name in seen:
                raise HandshakeError(f"permessage-deflate: duplicate parameter {name}")
            seen.add(name)
            if name == "server_no_context_takeover" and value is None:
                server_nct = True
            elif name == "client_no_context_takeover" and value is None:
                client_nct = True
            elif name == "server_max_window_bits":
                server_bits = _window_bits(name, value)
                if (
                    offer.server_max_window_bits is not None
                    and server_bits > offer.server_max_window_bits
                ):
                    raise HandshakeError("server_max_window_bits larger than offered")
            elif name == "client_max_window_bits":
                if offer.client_max_window_bits is None:
                    raise HandshakeError("client_max_window_bits was not offered")
                client_bits = _window_bits(name, value)
            else:
                raise HandshakeError(f"permessage-deflate: unknown parameter {name}")
        if offer.server_no_context_takeover and not server_nct:
            raise HandshakeError("server did not accept server_no_context_takeover")
        if offer.server_max_window_bits is not None and "server_max_window_bits" not in seen:
            raise HandshakeError("server did not accept server_max_window_bits")
        if offer.client_max_window_bits is not None:
            client_bits = min(client_bits, offer.client_max_window_bits)
        self._deflate = _Deflate(
            offer,
            client_no_context_takeover=client_nct,
            server_no_context_takeover=server_nct,
            client_max_window_bits=client_bits,
            server_max_window_bits=server_bits,
            max_message_size=self._max_message_size,
        )

    # -- receiving -------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Message]:
        """Process bytes read from the socket; returns the complete data messages they finish.

        Raises only during the handshake (``InvalidStatus``/``HandshakeError``). Afterwards, a
        peer that breaks the protocol fails the connection instead (see the module docstring).
        """
        if self._state == CONNECTING:
            return self._receive_handshake(data)
        if not self._frames_expected():
            return []  # RFC 6455 §5.5.1: nothing after the peer's close frame is processed
        parser = self._parser
        assert parser is not None
        return self._receive_frames(parser.feed, data)

    def _frames_expected(self) -> bool:
        """Open (or closing from our side) with nothing failed: frames are still processed."""
        return not (
            self._state == CLOSED
            or self.close_received
            or self.failure is not None
            or self._deferred_failure is not None
        )

    def receive_buffer(self) -> memoryview | None:
        """A writable view to read the next bytes into, when they are the rest of a large payload
        (see ``FrameParser.payload_buffer``); report them with :meth:`receive_payload`. ``None``
        otherwise: read into a buffer of your own and pass it to :meth:`receive_data`."""
        parser = self._parser
        if parser is None or not self._frames_expected():
            return None
        return parser.payload_buffer()

    def receive_payload(self, nbytes: int) -> list[Message]:
        """Process ``nbytes`` read into the view :meth:`receive_buffer` returned; as
        :meth:`receive_data`, returns the data messages they complete."""
        parser = self._parser
        assert parser is not None
        return self._receive_frames(parser.payload_received, nbytes)

    def _receive_frames(
        self, parse: Callable[[Any], list[_core.Frame]], received: Any
    ) -> list[Message]:
        """Messages from ``parse(received)`` (the parser's ``feed`` or ``payload_received``)."""
        try:
            frames = parse(received)
        except FrameError as exc:
            # Deliver the good messages before the bad frame, then fail the connection
            # (§7.1.7). When there are some, the failure waits for fail_deferred(): the caller
            # lets the application see (and answer) them first.
            return self._parse_failed(exc)
        return self._process_frames(frames)

    def _parse_failed(self, exc: FrameError) -> list[Message]:
        messages = self._process_frames(exc.frames) if exc.frames else []
        if self.failure is None and not self.close_received:
            if messages:
                self._deferred_failure = exc
            else:
                self._fail(exc)
        return messages

    def _process_frames(self, frames: list[_core.Frame]) -> list[Message]:
        messages: list[Message] = []
        for frame in frames:
            opcode = frame.opcode
            if opcode == OP_TEXT or opcode == OP_BINARY:  # noqa: SIM109 - faster than a tuple
                if frame.fin and not frame.rsv1:
                    # The common case: one unfragmented, uncompressed frame. The parser already
                    # validated text as UTF-8 (RFC 6455 §8.1), so decode cannot fail.
                    messages.append(frame.payload.decode() if opcode == OP_TEXT else frame.payload)
                    continue
                self._fragment_opcode = opcode
                self._fragment_compressed = frame.rsv1
                self._fragments = [frame.payload]
                if frame.fin:
                    message = self._finish_message()
                    if message is None:
                        return messages
                    messages.append(message)
            elif opcode == OP_CONT:
                self._fragments.append(frame.payload)
                if frame.fin:
                    message = self._finish_message()
                    if message is None:
                        return messages
                    messages.append(message)
            elif opcode == OP_PING:
                if not self.close_sent:
                    self._out.append(_core.build_frame(OP_PONG, frame.payload, self._mask_key()))
            elif opcode == OP_PONG:
                self.pongs.append(frame.payload)
            elif opcode == OP_CLOSE:
                self._receive_close(frame.payload)
                return messages  # frames after a close frame are discarded
        return messages

    def _finish_message(self) -> Message | None:
        fragments = self._fragments
        payload = fragments[0] if len(fragments) == 1 else b"".join(fragments)
        self._fragments = []
        if self._fragment_compressed:
            assert self._deflate is not None
            try:
                payload = self._deflate.decompress(payload)
                if self._fragment_opcode == OP_TEXT:
                    return payload.decode("utf-8")
            except FrameError as exc:
                self._fail(exc)
                return None
            except UnicodeDecodeError as exc:
                self._fail(FrameError(f"invalid UTF-8 in text message: {exc.reason}", 1007))
                return None
            return payload
        return payload.decode() if self._fragment_opcode == OP_TEXT else payload

    def _receive_close(self, payload: bytes) -> None:
        # The parser already checked the code and the reason (RFC 6455 §7.4, 1002/1007).
        code, reason = _core.parse_close_payload(payload)
        self.close_received = True
        self.close_code = code
        self.close_reason = reason
        if not self.close_sent:
            # RFC 6455 §5.5.1: echo the status code; an empty close gets an empty close.
            echo = b"" if code == _core.CLOSE_NO_STATUS else _core.build_close_payload(code, "")
            self._out.append(_core.build_frame(OP_CLOSE, echo, self._mask_key()))
            self.close_sent = True
        self._state = CLOSING

    def _fail(self, exc: FrameError) -> None:
        """RFC 6455 §7.1.7: send a close frame with the error's code, then expect the TCP close."""
        self.failure = exc
        if not self.close_sent:
            payload = _core.build_close_payload(exc.close_code, "")
            self._out.append(_core.build_frame(OP_CLOSE, payload, self._mask_key()))
            self.close_sent = True
        self.close_code = exc.close_code
        self.close_reason = str(exc)
        self._state = CLOSING

    @property
    def failure_deferred(self) -> bool:
        """True when a protocol error follows messages just returned by ``receive_data``.

        The connection still accepts sends (the application may answer those messages); call
        :meth:`fail_deferred` once it has seen them, then write :meth:`data_to_send`.
        """
        return self._deferred_failure is not None

    def fail_deferred(self) -> None:
        """Fail the connection for the deferred protocol error (no-op if there is none)."""
        exc = self._deferred_failure
        if exc is not None:
            self._deferred_failure = None
            if self.failure is None and not self.close_received and self._state == OPEN:
                self._fail(exc)

    def receive_eof(self) -> None:
        """The peer closed the TCP stream. Terminal; raises during an unanswered handshake."""
        state = self._state
        self._state = CLOSED
        if state == CONNECTING:
            if self._error_status is not None:
                self._receive_error_body(eof=True)
            raise HandshakeError("connection closed during the opening handshake")
        if not self.close_received and self.failure is None:
            self.close_code = 1006  # RFC 6455 §7.1.5: closed abnormally, no close frame

    # -- sending ---------------------------------------------------------------------------------

    def _check_can_send(self) -> None:
        if self._state != OPEN:
            raise LocalProtocolError(f"cannot send data in state {self.state_name}")

    def send_text(self, text: str | bytes) -> None:
        """Queue a text message. ``bytes`` are taken as already-UTF-8 text (not re-validated)."""
        self._check_can_send()
        payload = text.encode() if isinstance(text, str) else text
        self._send_data(OP_TEXT, payload)

    def send_binary(self, data: bytes | bytearray | memoryview) -> None:
        """Queue a binary message."""
        self._check_can_send()
        self._send_data(OP_BINARY, data)

    def _send_data(self, opcode: int, payload: bytes | bytearray | memoryview) -> None:
        deflate = self._deflate
        if deflate is not None and deflate.compress_enabled and len(payload) >= deflate.min_size:
            compressed = deflate.compress(bytes(payload))
            self._out.append(_core.build_frame(opcode, compressed, self._mask_key(), True, True))
        else:
            self._out.append(_core.build_frame(opcode, payload, self._mask_key()))

    def send_ping(self, data: bytes = b"") -> None:
        """Queue a ping (at most 125 bytes)."""
        self._check_can_send()
        self._out.append(_core.build_frame(OP_PING, data, self._mask_key()))

    def send_pong(self, data: bytes = b"") -> None:
        """Queue an unsolicited pong (at most 125 bytes)."""
        self._check_can_send()
        self._out.append(_core.build_frame(OP_PONG, data, self._mask_key()))

    def send_close(self, code: int | None = 1000, reason: str = "") -> None:
        """Start the closing handshake. Further sends raise :class:`LocalProtocolError`."""
        if self._state == CONNECTING:
            raise LocalProtocolError("cannot close before the handshake completed")
        if self.close_sent or self._state == CLOSED:
            return
        payload = _core.build_close_payload(code, reason)
        self._out.append(_core.build_frame(OP_CLOSE, payload, self._mask_key()))
        self.close_sent = True
        self._state = CLOSING
