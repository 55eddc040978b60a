"""The sans-I/O client connection: handshake, messages, control frames, closing, deflate."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Iterator

import pytest

from nhlink import _core
from nhlink.errors import FrameError, HandshakeError, InvalidStatus, LocalProtocolError
from nhlink.protocol import websocket as ws
from nhlink.protocol.websocket import ClientConnection, DeflateOptions, accept_key

KEY = bytes(range(16))
KEY_B64 = base64.b64encode(KEY).decode()


def _keys() -> Iterator[bytes]:
    n = 0
    while True:
        yield struct.pack(">I", (n * 2654435761) & 0xFFFFFFFF)
        n += 1


def make(**kwargs: object) -> ClientConnection:
    keys = _keys()
    options: dict[str, object] = {
        "host": "hub.example.com",
        "port": 443,
        "resource": "/device-socket/websocket?vsn=2.0.0",
        "secure": True,
        "key": KEY,
        "mask_key": lambda: next(keys),
    }
    options.update(kwargs)
    return ClientConnection(**options)  # type: ignore[arg-type]


def response_101(extra: str = "") -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(KEY_B64)}\r\n{extra}\r\n"
    ).encode()


def server_frame(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    head = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        return bytes([head, n]) + payload
    if n < 65536:
        return bytes([head, 126]) + struct.pack(">H", n) + payload
    return bytes([head, 127]) + struct.pack(">Q", n) + payload


def client_frames(data: bytes) -> list[tuple[int, bool, bool, bytes]]:
    """Parse masked client frames independently (opcode, fin, rsv1, unmasked payload)."""
    out = []
    i = 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        assert b1 & 0x80, "client frames must be masked"
        n = b1 & 0x7F
        i += 2
        if n == 126:
            (n,) = struct.unpack(">H", data[i : i + 2])
            i += 2
        elif n == 127:
            (n,) = struct.unpack(">Q", data[i : i + 8])
            i += 8
        key = data[i : i + 4]
        i += 4
        payload = bytes(b ^ key[j % 4] for j, b in enumerate(data[i : i + n]))
        i += n
        out.append((b0 & 0x0F, bool(b0 & 0x80), bool(b0 & 0x40), payload))
    return out


def opened(**kwargs: object) -> ClientConnection:
    conn = make(**kwargs)
    conn.data_to_send()
    assert conn.receive_data(response_101()) == []
    assert conn.state == ws.OPEN
    return conn


# -- handshake -----------------------------------------------------------------------------------


def test_accept_key_rfc_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_request_shape() -> None:
    conn = make(extra_headers={"x-nh-key": "nhp_x"}, user_agent="nhlink/test")
    request = conn.data_to_send().decode()
    lines = request.split("\r\n")
    assert lines[0] == "GET /device-socket/websocket?vsn=2.0.0 HTTP/1.1"
    assert "Host: hub.example.com" in lines  # default port omitted
    assert f"Sec-WebSocket-Key: {KEY_B64}" in lines
    assert "Sec-WebSocket-Version: 13" in lines
    assert "Upgrade: websocket" in lines and "Connection: Upgrade" in lines
    assert "x-nh-key: nhp_x" in lines
    assert "User-Agent: nhlink/test" in lines
    assert not any(line.lower().startswith("origin:") for line in lines)  # PROTOCOL.md §2.5
    assert not any("Sec-WebSocket-Extensions" in line for line in lines)
    assert request.endswith("\r\n\r\n")
    assert conn.data_to_send() == b""


@pytest.mark.parametrize(
    ("host", "port", "secure", "expected"),
    [
        ("h", 4001, True, "h:4001"),
        ("h", 80, False, "h"),
        ("h", 443, False, "h:443"),
        ("::1", 8080, False, "[::1]:8080"),
    ],
)
def test_host_header(host: str, port: int, secure: bool, expected: str) -> None:
    request = make(host=host, port=port, secure=secure).data_to_send().decode()
    assert f"\r\nHost: {expected}\r\n" in request


def test_header_injection_refused() -> None:
    with pytest.raises(LocalProtocolError):
        make(extra_headers={"x-a": "1\r\nEvil: yes"})


def test_open_and_frames_in_same_chunk() -> None:
    conn = make()
    conn.data_to_send()
    messages = conn.receive_data(response_101() + server_frame(1, b"hi"))
    assert messages == ["hi"]
    assert conn.state == ws.OPEN


def test_response_headers_lower_case_and_repeated_joined() -> None:
    conn = make()
    conn.data_to_send()
    assert conn.response_headers == {}
    conn.receive_data(response_101("Date: Sat, 05 Dec 2026 02:00:00 GMT\r\nX-A: 1\r\nx-a:  2 \r\n"))
    headers = conn.response_headers
    assert headers["date"] == "Sat, 05 Dec 2026 02:00:00 GMT"
    assert headers["x-a"] == "1, 2"
    assert headers["upgrade"] == "websocket"
    headers.clear()  # a fresh dict on every access: the caller's copy
    assert conn.response_headers["x-a"] == "1, 2"


def test_response_split_byte_by_byte() -> None:
    conn = make()
    data = response_101() + server_frame(2, b"\x00\x01")
    got: list[object] = []
    for i in range(len(data)):
        got.extend(conn.receive_data(data[i : i + 1]))
    assert got == [b"\x00\x01"]


@pytest.mark.parametrize(
    ("response", "match"),
    [
        (response_101().replace(b"Upgrade: websocket\r\n", b""), "Upgrade"),
        (
            response_101().replace(b"Connection: Upgrade\r\n", b"Connection: keep-alive\r\n"),
            "Connection",
        ),
        (response_101().replace(accept_key(KEY_B64).encode(), b"AAAA"), "Accept"),
        (response_101("Sec-WebSocket-Protocol: chat\r\n"), "subprotocol"),
        (response_101("Sec-WebSocket-Extensions: permessage-deflate\r\n"), "not offered"),
        (b"HTTP/1.1 1O1 Switching\r\n\r\n", "status line"),
        (b"HTTP/1.1 101 OK\r\nBad header\r\n\r\n", "header"),
    ],
)
def test_invalid_upgrade_responses(response: bytes, match: str) -> None:
    conn = make()
    with pytest.raises(HandshakeError, match=match):
        conn.receive_data(response)


def test_rejected_upgrade_keeps_status_headers_body() -> None:
    conn = make()
    head = (
        b"HTTP/1.1 401 Unauthorized\r\nDate: Tue, 14 Nov 2023 22:13:20 GMT\r\n"
        b"nh-connection-error-reason: no certificate pair or shared secrets connection settings "
        b"were provided\r\ncontent-length: 6\r\n\r\n"
    )
    assert conn.receive_data(head + b"den") == []  # body not complete yet
    with pytest.raises(InvalidStatus) as info:
        conn.receive_data(b"ied")
    exc = info.value
    assert exc.status == 401
    assert exc.headers["date"] == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert exc.reason is not None and exc.reason.startswith("no certificate pair")
    assert exc.body == b"denied"
    assert conn.state == ws.CLOSED


def test_rejected_upgrade_without_length_reads_to_eof() -> None:
    conn = make()
    assert conn.receive_data(b"HTTP/1.1 403 Forbidden\r\nserver: x\r\n\r\nno vsn") == []
    with pytest.raises(InvalidStatus) as info:
        conn.receive_eof()
    assert info.value.status == 403
    assert info.value.body == b"no vsn"


def test_eof_during_handshake() -> None:
    conn = make()
    conn.receive_data(b"HTTP/1.1 10")
    with pytest.raises(HandshakeError, match="closed during"):
        conn.receive_eof()


def test_oversized_response_head() -> None:
    conn = make()
    with pytest.raises(HandshakeError, match="64 KiB"):
        conn.receive_data(b"HTTP/1.1 101 OK\r\n" + b"X: " + b"a" * 70000)


def test_cannot_send_before_open() -> None:
    conn = make()
    with pytest.raises(LocalProtocolError):
        conn.send_text("early")
    with pytest.raises(LocalProtocolError):
        conn.send_close()


# -- messages and control frames -------------------------------------------------------------


def test_send_text_binary_ping_are_masked_frames() -> None:
    conn = opened()
    conn.send_text("héllo")
    conn.send_binary(b"\x00\xff")
    conn.send_ping(b"p")
    conn.send_pong(b"q")
    frames = client_frames(conn.data_to_send())
    assert frames == [
        (1, True, False, "héllo".encode()),
        (2, True, False, b"\x00\xff"),
        (9, True, False, b"p"),
        (10, True, False, b"q"),
    ]


def test_fragmented_message_with_interleaved_ping() -> None:
    conn = opened()
    data = (
        server_frame(1, "hé".encode()[:2], fin=False)
        + server_frame(9, b"ping!")
        + server_frame(0, "hé".encode()[2:], fin=False)
        + server_frame(0, b"llo", fin=True)
    )
    assert conn.receive_data(data) == ["héllo"]
    assert client_frames(conn.data_to_send()) == [(10, True, False, b"ping!")]


def test_pong_recorded() -> None:
    conn = opened()
    conn.receive_data(server_frame(10, b"abc"))
    assert list(conn.pongs) == [b"abc"]
    assert conn.data_to_send() == b""


def test_server_close_is_echoed_and_later_frames_discarded() -> None:
    conn = opened()
    close = server_frame(8, struct.pack(">H", 1001) + b"bye")
    assert conn.receive_data(close + server_frame(1, b"late")) == []
    assert conn.close_code == 1001 and conn.close_reason == "bye"
    assert client_frames(conn.data_to_send()) == [(8, True, False, struct.pack(">H", 1001))]
    assert conn.close_expected()
    assert conn.state == ws.CLOSING
    assert conn.receive_data(server_frame(9, b"x")) == []
    assert conn.data_to_send() == b""  # no pong after close
    with pytest.raises(LocalProtocolError):
        conn.send_text("after close")
    conn.receive_eof()
    assert conn.state == ws.CLOSED
    assert conn.close_code == 1001


def test_empty_close_echoed_empty() -> None:
    conn = opened()
    conn.receive_data(server_frame(8, b""))
    assert conn.close_code == 1005
    assert client_frames(conn.data_to_send()) == [(8, True, False, b"")]


def test_client_initiated_close() -> None:
    conn = opened()
    conn.send_close(1000, "done")
    assert client_frames(conn.data_to_send()) == [(8, True, False, b"\x03\xe8done")]
    assert conn.state == ws.CLOSING and not conn.close_expected()
    assert conn.receive_data(server_frame(1, b"in flight")) == ["in flight"]
    conn.receive_data(server_frame(8, b"\x03\xe8"))
    assert conn.data_to_send() == b""  # close already sent: not echoed twice
    assert conn.close_expected()


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (bytes([0x81, 0x82, 1, 2, 3, 4, 5, 6]), 1002),  # masked server frame
        (bytes([0x83, 0x00]), 1002),  # reserved opcode
        (bytes([0xC1, 0x00]), 1002),  # RSV1 without deflate
        (bytes([0x81, 0x02, 0xC3, 0x28]), 1007),  # invalid UTF-8
        (bytes([0x80, 0x00]), 1002),  # continuation without a message
    ],
)
def test_protocol_errors_fail_the_connection(data: bytes, code: int) -> None:
    conn = opened()
    assert conn.receive_data(data) == []
    assert isinstance(conn.failure, FrameError)
    assert conn.failure.close_code == code
    frames = client_frames(conn.data_to_send())
    assert frames == [(8, True, False, struct.pack(">H", code))]
    assert conn.close_expected()
    assert conn.receive_data(server_frame(1, b"ignored")) == []


def test_message_too_big() -> None:
    conn = opened(max_message_size=10)
    conn.receive_data(server_frame(1, b"x" * 6, fin=False) + server_frame(0, b"y" * 6))
    assert conn.failure is not None and conn.failure.close_code == 1009


def test_eof_without_close_is_1006() -> None:
    conn = opened()
    conn.receive_eof()
    assert conn.state == ws.CLOSED
    assert conn.close_code == 1006


# -- permessage-deflate ------------------------------------------------------------------------


def _server_compress(data: bytes, bits: int = 15) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -bits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def test_deflate_offer_and_roundtrip() -> None:
    options = DeflateOptions(client_no_context_takeover=True, server_max_window_bits=12)
    conn = make(compression=options)
    request = conn.data_to_send().decode()
    assert (
        "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; "
        "client_max_window_bits=15; server_max_window_bits=12\r\n" in request
    )
    conn.receive_data(
        response_101(
            "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=12; "
            "client_no_context_takeover\r\n"
        )
    )
    assert conn.compression_negotiated
    text = "compress me " * 50
    compressed = _server_compress(text.encode(), 12)
    half = len(compressed) // 2
    data = server_frame(1, compressed[:half], fin=False, rsv1=True) + server_frame(
        0, compressed[half:]
    )
    assert conn.receive_data(data) == [text]
    conn.send_text(text)
    ((opcode, fin, rsv1, payload),) = client_frames(conn.data_to_send())
    assert (opcode, fin, rsv1) == (1, True, True)
    assert zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff") == text.encode()
    conn.send_text("tiny")  # below min_size: sent uncompressed
    assert client_frames(conn.data_to_send()) == [(1, True, False, b"tiny")]


def test_deflate_context_takeover_across_messages() -> None:
    conn = make(compression=DeflateOptions())
    conn.data_to_send()
    conn.receive_data(response_101("Sec-WebSocket-Extensions: permessage-deflate\r\n"))
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    frames = b""
    for word in ("alpha beta gamma " * 8, "alpha beta gamma " * 8):
        body = c.compress(word.encode()) + c.flush(zlib.Z_SYNC_FLUSH)
        frames += server_frame(1, body[:-4], rsv1=True)
    assert conn.receive_data(frames) == ["alpha beta gamma " * 8] * 2


def test_deflate_8_bit_client_window_disables_compression() -> None:
    conn = make(compression=DeflateOptions())
    conn.data_to_send()
    conn.receive_data(
        response_101("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=8\r\n")
    )
    conn.send_text("x" * 500)
    assert client_frames(conn.data_to_send()) == [(1, True, False, b"x" * 500)]


@pytest.mark.parametrize(
    "params",
    [
        "permessage-deflate; foo",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=07",
        "x-webkit-deflate-frame",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate, permessage-deflate",
    ],
)
def test_deflate_bad_responses(params: str) -> None:
    conn = make(compression=DeflateOptions())
    with pytest.raises(HandshakeError):
        conn.receive_data(response_101(f"Sec-WebSocket-Extensions: {params}\r\n"))


def test_deflate_bomb_limited() -> None:
    conn = make(compression=DeflateOptions(), max_message_size=1000)
    conn.data_to_send()
    conn.receive_data(response_101("Sec-WebSocket-Extensions: permessage-deflate\r\n"))
    conn.receive_data(server_frame(2, _server_compress(b"\x00" * 100_000), rsv1=True))
    assert conn.failure is not None and conn.failure.close_code == 1009


def test_deflate_invalid_utf8_after_inflate() -> None:
    conn = make(compression=DeflateOptions())
    conn.data_to_send()
    conn.receive_data(response_101("Sec-WebSocket-Extensions: permessage-deflate\r\n"))
    conn.receive_data(server_frame(1, _server_compress(b"ok \xc3\x28" * 20), rsv1=True))
    assert conn.failure is not None and conn.failure.close_code == 1007


def test_core_is_used() -> None:
    # The protocol runs on whichever core nhlink._core selected.
    assert _core.IMPLEMENTATION in ("cython", "python")
