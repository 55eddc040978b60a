# cython: annotation_typing=False
# (Cython: the C types come from _frames_c.pxd alone; annotations are for type checkers.)
"""WebSocket frames, client side (RFC 6455 §5): build masked frames, parse unmasked ones.

One source, two modules. Imported as ``_frames_py`` this is the pure-Python core; compiled by
Cython from the ``_frames_c.py`` symlink, with the C types of ``_frames_c.pxd``, it is the fast
path. Hence the style: integer constants and states instead of enums, hot values in locals, byte
access by index (a ``const unsigned char *`` once compiled), and no ``import cython`` (Cython is
not a runtime dependency). Where the best algorithm differs between the two (UTF-8 validation,
the masking kernel) the code branches once on ``_COMPILED``.

Invariants of :class:`FrameParser` (everything that affects its transitions lives in the class):

* Between calls to ``feed`` the parser is in one of two states. ``_ST_HEADER``: ``_tail`` holds
  the first bytes of an incomplete header (always fewer than ``_MAX_HEADER``). ``_ST_PAYLOAD``: a
  header was accepted and ``_remaining`` payload bytes are still due. A payload of under 64 KiB
  (or over 16 MiB) collects in ``_parts`` (each a ``bytes`` the parser owns); any other is
  received in place: ``_direct`` is the whole payload under construction, its first ``_filled``
  bytes received, and ``_parts`` stays empty. ``_direct`` is ``None`` in ``_ST_HEADER``.
* A header is fully checked before any of its payload is kept: a peer cannot make the parser
  buffer a frame it will reject, or one larger than ``max_frame_size``.
* ``_msg_opcode`` is the opcode of the fragmented data message in progress (``_NO_MESSAGE``
  when none); it changes only when a data frame completes.
* The UTF-8 validator holds state only inside a text message; it is back to its initial state
  whenever no text message is in progress.
* After a ``FrameError`` the parser is dead: every later ``feed`` raises again.
"""

from __future__ import annotations

import codecs
import struct
from types import FunctionType

from ..errors import FrameError, LocalProtocolError

__all__ = [
    "CLOSE_NO_STATUS",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Frame",
    "FrameParser",
    "Utf8Validator",
    "build_close_payload",
    "build_frame",
    "parse_close_payload",
]

Buffer = bytes | bytearray | memoryview

# Opcodes, RFC 6455 §5.2 / §11.8. 0x3-0x7 and 0xB-0xF are reserved.
OP_CONT = 0
OP_TEXT = 1
OP_BINARY = 2
OP_CLOSE = 8
OP_PING = 9
OP_PONG = 10

# RFC 6455 §7.1.5: the status reported for a close frame without a status code.
CLOSE_NO_STATUS = 1005

_CLOSE_PROTOCOL_ERROR = 1002
_CLOSE_INVALID_DATA = 1007
_CLOSE_MESSAGE_TOO_BIG = 1009

# Private copies of the opcodes: _frames_c.pxd types these as C ints so the parser compares
# machine integers. (Module globals typed in a .pxd are invisible to Python, so the public
# names above must stay plain Python objects.)
_OP_CONT = OP_CONT
_OP_TEXT = OP_TEXT
_OP_BINARY = OP_BINARY
_OP_CLOSE = OP_CLOSE
_OP_PING = OP_PING
_OP_PONG = OP_PONG
_NO_MESSAGE = -1

# Parser states (see the invariants above).
_ST_HEADER = 0
_ST_PAYLOAD = 1

# RFC 6455 §5.2: 2 bytes + 8 bytes of extended length; a server frame carries no masking key.
_MAX_HEADER = 10
# RFC 6455 §5.5: "All control frames MUST have a payload length of 125 bytes or less".
_MAX_CONTROL_PAYLOAD = 125
# A frame with at least _DIRECT_MIN payload bytes still due is received in place (payload_buffer),
# unless it is larger than _DIRECT_MAX: the whole payload is allocated when its header arrives,
# and a header alone must not make the parser allocate more than that (a larger frame, allowed by
# a raised max_frame_size, collects in parts as its bytes arrive).
_DIRECT_MIN = 64 * 1024
_DIRECT_MAX = 16 * 1024 * 1024

_pack_header_7 = struct.Struct("!BB4s").pack
_pack_header_16 = struct.Struct("!BBH4s").pack
_pack_header_64 = struct.Struct("!BBQ4s").pack
_pack_close_code = struct.Struct("!H").pack

_utf8_decode = codecs.utf_8_decode


def _compiled_probe() -> None:
    """Compiled by Cython, a ``def`` is no longer a plain Python function object."""


_COMPILED = not isinstance(_compiled_probe, FunctionType)

# Each twin masks with its own kernel, so the pure core loads no extension at all.
if _COMPILED:
    from ._mask import mask_with_header as _mask_with_header
    from ._mask import payload_buffer as _payload_buffer
else:
    from ._mask_py import mask_with_header as _mask_with_header
    from ._mask_py import payload_buffer as _payload_buffer


# --- UTF-8 (RFC 3629), incremental and fail-fast -------------------------------------------------
#
# The compiled core runs Björn Höhrmann's DFA ("Flexible and Economical UTF-8 Decoder"): each byte
# maps to one of 12 classes, and (state + class) indexes the next state. States are multiples of
# 12; 0 accepts, 12 rejects and is absorbing. The DFA rejects at the first byte that no valid
# sequence can contain (overlongs, surrogates U+D800-DFFF, values above U+10FFFF), which is the
# "fail fast" Autobahn 6.4.x checks for. Pure Python runs CPython's C decoder instead.

_UTF8_ACCEPT = 0
_UTF8_REJECT = 12

_UTF8_CLASSES = bytes(
    [0] * 0x80  # 00..7F ASCII
    + [1] * 0x10  # 80..8F continuation
    + [9] * 0x10  # 90..9F continuation
    + [7] * 0x20  # A0..BF continuation
    + [8] * 2  # C0 C1 overlong lead bytes: never valid
    + [2] * 30  # C2..DF 2-byte lead
    + [10]  # E0 3-byte lead, second byte A0..BF (no overlongs)
    + [3] * 12  # E1..EC 3-byte lead
    + [4]  # ED 3-byte lead, second byte 80..9F (no surrogates)
    + [3] * 2  # EE EF 3-byte lead
    + [11]  # F0 4-byte lead, second byte 90..BF (no overlongs)
    + [6] * 3  # F1..F3 4-byte lead
    + [5]  # F4 4-byte lead, second byte 80..8F (nothing above U+10FFFF)
    + [8] * 11  # F5..FF never valid
)

# fmt: off
_UTF8_TRANSITIONS = bytes([
    0, 12, 24, 36, 60, 96, 84, 12, 12, 12, 48, 72,   # 0: accept
    12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12,  # 12: reject (absorbing)
    12, 0, 12, 12, 12, 12, 12, 0, 12, 0, 12, 12,     # 24: one continuation byte due
    12, 24, 12, 12, 12, 12, 12, 24, 12, 24, 12, 12,  # 36: two due
    12, 12, 12, 12, 12, 12, 12, 24, 12, 12, 12, 12,  # 48: after E0, need A0..BF
    12, 24, 12, 12, 12, 12, 12, 12, 12, 24, 12, 12,  # 60: after ED, need 80..9F
    12, 12, 12, 12, 12, 12, 12, 36, 12, 36, 12, 12,  # 72: after F0, need 90..BF
    12, 36, 12, 12, 12, 12, 12, 36, 12, 36, 12, 12,  # 84: after F1..F3, three due
    12, 36, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12,  # 96: after F4, need 80..8F
])
# fmt: on


def _utf8_scan(state: int, data: bytes, n: int) -> int:
    """Run the UTF-8 DFA over ``data[:n]`` from ``state``; return the new state.

    Returns ``_UTF8_REJECT`` at the first impossible byte. Used by the compiled core only: in
    pure Python a loop per byte is far slower than CPython's decoder.
    """
    classes = _UTF8_CLASSES
    transitions = _UTF8_TRANSITIONS
    i = 0
    while i < n:
        if state == _UTF8_ACCEPT:
            # ASCII fast path. Between characters a run of bytes below 0x80 is valid as it is, and
            # JSON text is mostly that. Test 16 bytes per step; the OR tree (not a chain) lets the
            # compiled loads and ORs run in parallel.
            while (
                i + 16 <= n
                and not (
                    (
                        ((data[i] | data[i + 1]) | (data[i + 2] | data[i + 3]))
                        | ((data[i + 4] | data[i + 5]) | (data[i + 6] | data[i + 7]))
                    )
                    | (
                        ((data[i + 8] | data[i + 9]) | (data[i + 10] | data[i + 11]))
                        | ((data[i + 12] | data[i + 13]) | (data[i + 14] | data[i + 15]))
                    )
                )
                & 0x80
            ):
                i += 16
            while i < n and data[i] < 0x80:
                i += 1
            if i == n:
                break
        state = transitions[state + classes[data[i]]]
        if state == _UTF8_REJECT:
            return state
        i += 1
    return state


def _utf8_valid(payload: bytes) -> bool:
    """True when ``payload`` is complete, valid UTF-8 (RFC 3629)."""
    if _COMPILED:
        return _utf8_scan(_UTF8_ACCEPT, payload, len(payload)) == _UTF8_ACCEPT
    try:
        _utf8_decode(payload, "strict", True)
    except UnicodeDecodeError:
        return False
    return True


class Utf8Validator:
    """Incremental, strict, fail-fast UTF-8 validation of one text message (RFC 6455 §8.1).

    Feed the message's bytes in any split with :meth:`feed`, the last piece with ``final=True``.
    ``FrameError`` (close code 1007) is raised as soon as the bytes seen so far cannot begin valid
    UTF-8, and at ``final=True`` when the text ends inside a character. After ``final=True`` the
    validator is ready for the next message; after an error it stays failed until :meth:`reset`.
    Nothing fed is kept beyond an incomplete character (at most 3 bytes).
    """

    __slots__ = ("_pending", "_state")

    def __init__(self) -> None:
        self._state = _UTF8_ACCEPT  # DFA state; also _UTF8_REJECT after an error in pure Python
        self._pending = b""  # pure Python only: the incomplete character at the end of the input

    def reset(self) -> None:
        """Forget everything fed so far (start a new message)."""
        self._state = _UTF8_ACCEPT
        self._pending = b""

    def feed(self, data: Buffer, final: bool = False) -> None:
        """Validate the next piece of the message; ``final=True`` for the last one.

        Raises ``FrameError(close_code=1007)`` on invalid or (when final) incomplete UTF-8.
        """
        if self._state == _UTF8_REJECT:
            raise FrameError("invalid UTF-8 in text message", _CLOSE_INVALID_DATA)
        if type(data) is not bytes:
            data = bytes(data)
        if _COMPILED:
            state = _utf8_scan(self._state, data, len(data))
            if state == _UTF8_REJECT:
                self._state = state
                raise FrameError("invalid UTF-8 in text message", _CLOSE_INVALID_DATA)
            if final and state != _UTF8_ACCEPT:
                self._state = _UTF8_REJECT
                raise FrameError("text message ends inside a UTF-8 sequence", _CLOSE_INVALID_DATA)
            self._state = state  # _UTF8_ACCEPT after a final piece: ready for the next message
            return
        if self._pending:
            data = self._pending + data
        try:
            consumed = _utf8_decode(data, "strict", final)[1]
        except UnicodeDecodeError:
            self._state = _UTF8_REJECT
            raise FrameError("invalid UTF-8 in text message", _CLOSE_INVALID_DATA) from None
        pending = data[consumed:]
        # CPython keeps ED A0..BF pending, waiting for a third byte, though no third byte can make
        # a UTF-16 surrogate valid UTF-8 (RFC 3629 §3). Fail here, as the DFA does.
        if len(pending) >= 2 and pending[0] == 0xED and pending[1] >= 0xA0:
            self._state = _UTF8_REJECT
            raise FrameError("invalid UTF-8 in text message", _CLOSE_INVALID_DATA)
        self._pending = pending


# --- Frames ----------------------------------------------------------------------------------


class Frame:
    """One WebSocket frame (RFC 6455 §5.2): ``opcode``, ``fin``, ``rsv1`` and its ``payload``.

    ``payload`` is an immutable ``bytes`` the frame owns; for a received frame it is already
    unmasked. Frames compare equal by their fields, whichever core built them.
    """

    __slots__ = ("fin", "opcode", "payload", "rsv1")

    def __init__(self, opcode: int, payload: Buffer, fin: bool = True, rsv1: bool = False) -> None:
        self.opcode = opcode
        self.payload = payload if type(payload) is bytes else bytes(payload)
        self.fin = fin
        self.rsv1 = rsv1

    def __eq__(self, other: object) -> bool:
        # By fields rather than by class, so that a compiled Frame equals a pure one.
        if type(other).__name__ != "Frame":
            return NotImplemented
        return bool(
            self.opcode == getattr(other, "opcode", None)
            and self.fin == getattr(other, "fin", None)
            and self.rsv1 == getattr(other, "rsv1", None)
            and self.payload == getattr(other, "payload", None)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        payload = self.payload
        shown = repr(payload) if len(payload) <= 40 else f"{payload[:32]!r}... ({len(payload)} B)"
        return f"Frame(opcode={self.opcode}, fin={self.fin}, rsv1={self.rsv1}, payload={shown})"


def _new_frame(opcode: int, payload: bytes, fin: bool, rsv1: bool) -> Frame:
    # The parser's constructor: skips __init__'s argument parsing and payload coercion (compiled,
    # Frame.__new__ is a direct tp_new call).
    frame = Frame.__new__(Frame)
    frame.opcode = opcode
    frame.payload = payload
    frame.fin = fin
    frame.rsv1 = rsv1
    return frame


def build_frame(
    opcode: int, payload: Buffer, mask_key: Buffer, fin: bool = True, rsv1: bool = False
) -> bytes:
    """Serialize one client frame: header, masking key, masked payload (RFC 6455 §5.2, §5.3).

    The caller draws ``mask_key`` (exactly 4 bytes) from a strong random source for every frame
    (§5.3); the core never draws randomness. ``payload`` is not modified or kept; the result is
    ready to write to the socket. Raises ``LocalProtocolError`` for a reserved opcode, a control
    frame that is fragmented, carries RSV1 or more than 125 bytes (§5.5), or a bad mask key.
    """
    if (opcode > _OP_BINARY and opcode < _OP_CLOSE) or opcode > _OP_PONG or opcode < 0:
        raise LocalProtocolError(f"reserved or invalid opcode {opcode} (RFC 6455 §5.2)")
    n = payload.nbytes if type(payload) is memoryview else len(payload)
    if opcode >= _OP_CLOSE:
        if n > _MAX_CONTROL_PAYLOAD:
            raise LocalProtocolError(
                f"control frame payload of {n} bytes; at most 125 allowed (RFC 6455 §5.5)"
            )
        if not fin:
            raise LocalProtocolError("control frames cannot be fragmented (RFC 6455 §5.5)")
        if rsv1:
            raise LocalProtocolError("control frames cannot be compressed (RFC 7692 §6.1)")
    if type(mask_key) is not bytes:
        mask_key = bytes(mask_key)
    if len(mask_key) != 4:
        raise LocalProtocolError(f"mask key must be 4 bytes, got {len(mask_key)} (RFC 6455 §5.3)")
    b0 = opcode
    if fin:
        b0 |= 0x80
    if rsv1:
        b0 |= 0x40
    # §5.2: the minimal length encoding; 0x80 sets the MASK bit (every client frame is masked).
    if n < 126:
        header = _pack_header_7(b0, 0x80 | n, mask_key)
    elif n < 0x10000:
        header = _pack_header_16(b0, 0x80 | 126, n, mask_key)
    else:
        header = _pack_header_64(b0, 0x80 | 127, n, mask_key)
    return _mask_with_header(header, payload, mask_key)


# --- Close frames (RFC 6455 §5.5.1, §7.4) --------------------------------------------------------


def _close_code_valid(code: int) -> bool:
    # §7.4.1 defines 1000-1003 and 1007-1011; 1012-1014 were registered with IANA later (§11.7)
    # and are in use. 1004 is reserved; 1005, 1006 and 1015 MUST NOT be set in a close frame.
    # 1016-2999 are reserved for future RFCs, 3000-3999 registered for libraries and frameworks,
    # 4000-4999 private use (§7.4.2). Nothing else is valid.
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def build_close_payload(code: int | None, reason: str = "") -> bytes:
    """Return the payload of a close frame: 2-byte status code then the UTF-8 ``reason``.

    ``code=None`` sends no status (an empty payload; ``reason`` must then be empty). Raises
    ``LocalProtocolError`` for a code that may not be sent (RFC 6455 §7.4) or a payload longer
    than the 125 bytes a control frame can carry (§5.5).
    """
    if code is None:
        if reason:
            raise LocalProtocolError("a close reason needs a status code (RFC 6455 §5.5.1)")
        return b""
    if not _close_code_valid(code):
        raise LocalProtocolError(f"close code {code} cannot be sent (RFC 6455 §7.4)")
    try:
        payload = _pack_close_code(code) + reason.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"close reason is not encodable as UTF-8: {exc}") from None
    if len(payload) > _MAX_CONTROL_PAYLOAD:
        raise LocalProtocolError(
            f"close payload of {len(payload)} bytes; at most 125 allowed (RFC 6455 §5.5)"
        )
    return payload


def parse_close_payload(payload: Buffer) -> tuple[int, str]:
    """Return ``(code, reason)`` from a received close frame's payload (RFC 6455 §5.5.1).

    An empty payload gives ``(1005, "")`` (§7.1.5). Raises ``FrameError`` with close code 1002
    for a 1-byte payload or a status code not valid on the wire (§7.4), 1007 for a reason that is
    not valid UTF-8.
    """
    if type(payload) is not bytes:
        payload = bytes(payload)
    n = len(payload)
    if n == 0:
        return (CLOSE_NO_STATUS, "")
    if n == 1:
        raise FrameError("close frame payload of 1 byte (RFC 6455 §5.5.1)", _CLOSE_PROTOCOL_ERROR)
    code = payload[0] << 8 | payload[1]
    if not _close_code_valid(code):
        raise FrameError(f"invalid close code {code} (RFC 6455 §7.4)", _CLOSE_PROTOCOL_ERROR)
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError("close reason is not valid UTF-8", _CLOSE_INVALID_DATA) from None
    return (code, reason)


# --- The parser ----------------------------------------------------------------------------------


class FrameParser:
    """Incremental parser of the frames a server sends to this client (RFC 6455 §5).

    Feed the bytes read from the connection, in any split, to :meth:`feed`; it returns the frames
    completed so far, in order, and keeps only the incomplete rest (a partial header, or the
    pieces of a partial payload; nothing is re-copied as more arrives, so a large frame costs
    linear time). A transport that reads into buffers (``asyncio.BufferedProtocol``) can let a
    large payload go straight from the socket into the frame: see :meth:`payload_buffer`.
    Control frames are returned where they arrive, also between the fragments of a message;
    reassembling messages and answering pings is the caller's job.

    Checked here, each raising ``FrameError`` with the close code the caller must send (§7.4.1):
    masking, reserved bits and opcodes, control frame rules, minimal length encoding and
    fragmentation order (1002); ``max_frame_size`` (decided from the header, before buffering the
    payload) and ``max_message_size`` over a fragmented message (1009); with ``validate_utf8``,
    the UTF-8 of uncompressed text messages, failing fast across fragments and chunks (1007), and
    close payloads (see :func:`parse_close_payload`). ``allow_rsv1`` accepts RSV1 on the first
    frame of a data message (permessage-deflate negotiated): such a message's payload is left for
    the layer above to inflate and validate.
    """

    __slots__ = (
        "_allow_rsv1",
        "_check_text",
        "_direct",
        "_direct_view",
        "_error",
        "_filled",
        "_fin",
        "_lent",
        "_max_frame_size",
        "_max_message_size",
        "_msg_opcode",
        "_msg_rsv1",
        "_msg_size",
        "_opcode",
        "_parts",
        "_remaining",
        "_rsv1",
        "_state",
        "_tail",
        "_validate_utf8",
        "_validator",
    )

    def __init__(
        self,
        max_frame_size: int = 16 * 1024 * 1024,
        max_message_size: int = 16 * 1024 * 1024,
        allow_rsv1: bool = False,
        validate_utf8: bool = True,
    ) -> None:
        if not 0 <= max_frame_size < 1 << 63 or not 0 <= max_message_size < 1 << 63:
            raise ValueError("max_frame_size and max_message_size must be in 0 .. 2**63 - 1")
        self._max_frame_size = max_frame_size
        self._max_message_size = max_message_size
        self._allow_rsv1 = allow_rsv1
        self._validate_utf8 = validate_utf8
        self._state = _ST_HEADER
        self._tail = b""  # _ST_HEADER: start of an incomplete header
        # The frame being received (valid in _ST_PAYLOAD).
        self._opcode = 0
        self._fin = False
        self._rsv1 = False
        self._check_text = False  # its payload goes through the UTF-8 validator
        self._remaining = 0  # payload bytes still due
        self._parts: list[bytes] = []  # payload bytes received so far
        # Or, once payload_buffer() was asked for: the payload, its first _filled bytes received.
        self._direct: bytes | bytearray | None = None
        self._direct_view: memoryview | None = None
        self._filled = 0
        self._lent: memoryview | None = None  # the view payload_buffer() returned last
        # The fragmented data message in progress (§5.4).
        self._msg_opcode = _NO_MESSAGE
        self._msg_rsv1 = False
        self._msg_size = 0  # payload bytes of its completed frames
        self._validator = Utf8Validator()
        self._error: FrameError | None = None

    @property
    def message_in_progress(self) -> bool:
        """True between the first and the final frame of a fragmented data message (§5.4)."""
        return self._msg_opcode != _NO_MESSAGE

    def feed(self, data: Buffer) -> list[Frame]:
        """Parse the next bytes received; return the frames they complete, in order.

        ``data`` is not kept (bytes are copied as needed). On a protocol violation raises
        ``FrameError``; the caller must then send a close frame with ``close_code`` and stop
        reading. Frames completed earlier in the same ``data`` travel on the exception as
        ``exc.frames`` (in order), so a caller can still act on them before failing (RFC 6455
        §7.1.7 fails the connection at the bad frame, not before it). The parser is then dead:
        every later call raises ``FrameError`` again (with no frames).
        """
        error = self._error
        if error is not None:
            raise FrameError(f"parser failed earlier: {error}", error.close_code)
        if type(data) is not bytes:
            data = bytes(data)
        frames: list[Frame] = []
        try:
            if self._direct is not None:
                # Bytes fed while a payload is received in place go into it too.
                view = self._direct_view
                assert view is not None
                take = len(data) if len(data) < self._remaining else self._remaining
                view[self._filled : self._filled + take] = memoryview(data)[:take]
                self._received(take, frames)
                if take == len(data):
                    return frames
                data = data[take:]
            self._parse(data, frames)
        except FrameError as exc:
            self._error = exc
            exc.frames = frames
            raise
        return frames

    def payload_buffer(self) -> memoryview | None:
        """Where the next bytes should be read to when they belong to a large payload.

        While a frame of 64 KiB to 16 MiB is being received, returns a writable ``memoryview``
        of exactly its payload bytes still due (the bytes of it that came with the header are
        already in place): read from the socket into it (``recv_into``,
        ``SSLObject.read(n, buffer)``), then report the count with :meth:`payload_received`.
        Compiled, the view lies over the frame's final ``bytes``, so the payload is copied once,
        from the kernel. Otherwise (a header is due, or a small payload) returns ``None``: read
        into a buffer of your own and :meth:`feed` it. The view ends at the frame's last byte,
        so it never receives the next frame's header. The header was checked against the limits
        before the payload was allocated (``max_frame_size`` bounds it).
        """
        view = self._direct_view
        if view is None or self._error is not None:
            return None
        lent = self._lent
        if lent is not None:
            lent.release()
        lent = self._lent = view[self._filled :]
        return lent

    def payload_received(self, nbytes: int) -> list[Frame]:
        """Account for ``nbytes`` read into the view :meth:`payload_buffer` returned; return the
        frame they complete (a list of at most one). Raises ``FrameError`` as :meth:`feed` does
        (text is validated as it arrives, to fail fast)."""
        error = self._error
        if error is not None:
            raise FrameError(f"parser failed earlier: {error}", error.close_code)
        lent = self._lent
        if self._direct is None or lent is None or not 0 <= nbytes <= len(lent):
            raise ValueError("payload_received() without a payload_buffer() to match")
        frames: list[Frame] = []
        try:
            self._received(nbytes, frames)
        except FrameError as exc:
            self._error = exc
            exc.frames = frames
            raise
        return frames

    def _start_direct(self, size: int) -> memoryview:
        direct, view = _payload_buffer(size)
        self._direct = direct
        self._direct_view = view
        self._filled = 0
        return view

    def _received(self, nbytes: int, frames: list[Frame]) -> None:
        view = self._direct_view
        assert view is not None
        lent = self._lent
        if lent is not None:
            # The caller has read into it: from here on it can write nothing more.
            self._lent = None
            lent.release()
        start = self._filled
        self._filled = start + nbytes
        remaining = self._remaining - nbytes
        self._remaining = remaining
        if self._check_text and (nbytes or not remaining):
            self._validator.feed(view[start : start + nbytes], remaining == 0 and self._fin)
        if remaining:
            return
        direct = self._direct
        assert direct is not None
        view.release()  # no write can reach the payload from here on
        self._direct = None
        self._direct_view = None
        self._filled = 0
        self._state = _ST_HEADER
        payload = direct if type(direct) is bytes else bytes(direct)
        frames.append(self._complete(payload))

    def _parse(self, data: bytes, frames: list[Frame]) -> None:
        n = len(data)
        pos = 0
        if self._tail:
            # A header split across reads: complete it from the first bytes of data only, never
            # by joining the tail to the whole chunk (that would copy every chunk once more).
            tail_len = len(self._tail)
            head = self._tail + data[:_MAX_HEADER]
            end = self._header(head, 0, len(head))
            if end < 0:
                self._tail = head  # head holds all of data: still short of a header
                return
            self._tail = b""
            pos = end - tail_len
        while True:
            if self._state == _ST_HEADER:
                end = self._header(data, pos, n)
                if end < 0:
                    if pos < n:
                        self._tail = data[pos:n]
                    return
                pos = end
            remaining = self._remaining
            avail = n - pos
            if remaining > avail:
                if _DIRECT_MIN <= remaining <= _DIRECT_MAX and not self._parts:
                    # A large payload, none of it received yet (a frame over 16 MiB that has
                    # come down to 16 MiB keeps collecting parts): received in place from here.
                    view = self._start_direct(remaining)
                    if avail:
                        view[0:avail] = memoryview(data)[pos:n]
                    self._received(avail, frames)
                    return
                # The frame continues in a later read. Keep this piece (the chunk itself when it
                # is all payload: no copy) and check text now, to fail fast (Autobahn 6.4.3).
                if avail:
                    piece = data if pos == 0 else data[pos:n]
                    self._parts.append(piece)
                    self._remaining = remaining - avail
                    if self._check_text:
                        self._validator.feed(piece, False)
                return
            end = pos + remaining
            if self._parts:
                piece = data[pos:end]
                if self._check_text:
                    self._validator.feed(piece, self._fin)
                self._parts.append(piece)
                payload = b"".join(self._parts)
                self._parts = []
            else:
                payload = data if pos == 0 and end == n else data[pos:end]
                if self._check_text:
                    if self._fin and self._opcode == _OP_TEXT:
                        # A whole text message in one frame: validate in one go.
                        if not _utf8_valid(payload):
                            raise FrameError("invalid UTF-8 in text message", _CLOSE_INVALID_DATA)
                    else:
                        self._validator.feed(payload, self._fin)
            pos = end
            self._remaining = 0
            self._state = _ST_HEADER
            frames.append(self._complete(payload))

    def _header(self, buf: bytes, pos: int, n: int) -> int:
        """Check the frame header starting at ``buf[pos]``; return the index after it.

        Returns -1 when ``buf[pos:n]`` holds only part of the header (nothing is changed then;
        the checks that need only the first two bytes already ran, so errors come early). On
        success the parser moves to ``_ST_PAYLOAD`` for this frame.
        """
        if n - pos < 2:
            return -1
        p = buf  # compiled: a const unsigned char * into buf
        b0 = p[pos]
        b1 = p[pos + 1]
        hlen = self._first_bytes(b0, b1)
        if n - pos < hlen:
            return -1
        opcode = b0 & 0x0F
        rsv1 = (b0 & 0x40) != 0
        size = self._length(buf, pos, hlen, b1 & 0x7F)
        self._opcode = opcode
        self._fin = (b0 & 0x80) != 0
        self._rsv1 = rsv1
        self._check_text = self._within_limits(opcode, rsv1, size)
        self._remaining = size
        self._state = _ST_PAYLOAD
        return pos + hlen

    def _first_bytes(self, b0: int, b1: int) -> int:
        """The checks on a header's first two bytes; returns the header's length (2, 4 or 10)."""
        opcode = b0 & 0x0F
        fin = (b0 & 0x80) != 0
        rsv1 = (b0 & 0x40) != 0
        length7 = b1 & 0x7F  # 126 and 127 announce a 16-bit and a 64-bit length
        # §5.2: RSV2/RSV3 MUST be 0 unless an extension defines them; none that do is supported.
        if b0 & 0x30:
            raise FrameError("RSV2/RSV3 set (RFC 6455 §5.2)", _CLOSE_PROTOCOL_ERROR)
        # §5.1: "A client MUST close a connection if it detects a masked frame."
        if b1 & 0x80:
            raise FrameError("masked frame from the server (RFC 6455 §5.1)", _CLOSE_PROTOCOL_ERROR)
        if opcode >= _OP_CLOSE:
            if opcode > _OP_PONG:
                raise FrameError(f"reserved opcode {opcode} (RFC 6455 §5.2)", _CLOSE_PROTOCOL_ERROR)
            # §5.5: control frames are never fragmented, carry at most 125 bytes, and RSV1
            # belongs to data messages only (RFC 7692 §6.1).
            if not fin:
                raise FrameError("fragmented control frame (RFC 6455 §5.5)", _CLOSE_PROTOCOL_ERROR)
            if length7 > _MAX_CONTROL_PAYLOAD:
                raise FrameError(
                    "control frame payload over 125 bytes (RFC 6455 §5.5)", _CLOSE_PROTOCOL_ERROR
                )
            if rsv1:
                raise FrameError(
                    "RSV1 set on a control frame (RFC 7692 §6.1)", _CLOSE_PROTOCOL_ERROR
                )
            return 2
        if opcode > _OP_BINARY:
            raise FrameError(f"reserved opcode {opcode} (RFC 6455 §5.2)", _CLOSE_PROTOCOL_ERROR)
        if rsv1:
            if not self._allow_rsv1:
                raise FrameError(
                    "RSV1 set without a negotiated extension (RFC 6455 §5.2)",
                    _CLOSE_PROTOCOL_ERROR,
                )
            if opcode == _OP_CONT:
                raise FrameError(
                    "RSV1 set on a continuation frame (RFC 7692 §6.1)", _CLOSE_PROTOCOL_ERROR
                )
        # §5.4: a message is one frame without FIN, continuations, then one with FIN; the
        # fragments of two data messages never interleave.
        if opcode == _OP_CONT:
            if self._msg_opcode == _NO_MESSAGE:
                raise FrameError(
                    "continuation frame without a message in progress (RFC 6455 §5.4)",
                    _CLOSE_PROTOCOL_ERROR,
                )
        elif self._msg_opcode != _NO_MESSAGE:
            raise FrameError(
                "new data message before the fragmented one finished (RFC 6455 §5.4)",
                _CLOSE_PROTOCOL_ERROR,
            )
        if length7 < 126:
            return 2
        return 4 if length7 == 126 else 10

    def _length(self, buf: bytes, pos: int, hlen: int, length7: int) -> int:
        """The payload length of the (complete) header at ``buf[pos]``, checked: minimal
        encoding, top bit clear, at most ``max_frame_size``."""
        p = buf  # compiled: a const unsigned char * into buf
        # §5.2: "the minimal number of bytes MUST be used to encode the length".
        length = length7
        if hlen == 4:
            length = p[pos + 2] << 8 | p[pos + 3]
            if length < 126:
                raise FrameError("non-minimal 16-bit length (RFC 6455 §5.2)", _CLOSE_PROTOCOL_ERROR)
        elif hlen == 10:
            length = p[pos + 2]
            if length & 0x80:
                # §5.2: "the most significant bit MUST be 0".
                raise FrameError(
                    "64-bit length with the top bit set (RFC 6455 §5.2)", _CLOSE_PROTOCOL_ERROR
                )
            for i in range(pos + 3, pos + 10):
                length = length << 8 | p[i]
            if length < 0x10000:
                raise FrameError("non-minimal 64-bit length (RFC 6455 §5.2)", _CLOSE_PROTOCOL_ERROR)
        size = length  # now below 2**63: a signed 64-bit value once compiled
        if size > self._max_frame_size:
            raise FrameError(
                f"frame of {size} bytes exceeds max_frame_size {self._max_frame_size}",
                _CLOSE_MESSAGE_TOO_BIG,
            )
        return size

    def _within_limits(self, opcode: int, rsv1: bool, size: int) -> bool:
        """Check a data frame against ``max_message_size``; return whether its payload goes
        through the UTF-8 validator (uncompressed text, when validating)."""
        if opcode >= _OP_CLOSE:
            return False
        if opcode == _OP_CONT:
            if size > self._max_message_size - self._msg_size:
                raise FrameError(
                    f"message of {self._msg_size + size} bytes exceeds max_message_size "
                    f"{self._max_message_size}",
                    _CLOSE_MESSAGE_TOO_BIG,
                )
            # Compressed text is validated after inflating, by the layer above.
            check_text = self._msg_opcode == _OP_TEXT and not self._msg_rsv1
        else:
            if size > self._max_message_size:
                raise FrameError(
                    f"message of {size} bytes exceeds max_message_size {self._max_message_size}",
                    _CLOSE_MESSAGE_TOO_BIG,
                )
            check_text = opcode == _OP_TEXT and not rsv1
        return check_text and self._validate_utf8

    def _complete(self, payload: bytes) -> Frame:
        """Account for the frame whose payload just completed; return it as a Frame."""
        opcode = self._opcode
        if opcode >= _OP_CLOSE:
            if opcode == _OP_CLOSE and self._validate_utf8:
                parse_close_payload(payload)  # raises on a bad code or reason
            return _new_frame(opcode, payload, True, False)
        fin = self._fin
        if opcode == _OP_CONT:
            if fin:
                self._msg_opcode = _NO_MESSAGE
                self._msg_size = 0
            else:
                self._msg_size += len(payload)
        elif not fin:
            self._msg_opcode = opcode
            self._msg_rsv1 = self._rsv1
            self._msg_size = len(payload)
        return _new_frame(opcode, payload, fin, self._rsv1)
