"""The WebSocket frame hot path, nhlink against the parsers and maskers of other libraries.

Run: ``python -m pytest benchmarks/bench_frames.py -p no:cacheprovider --benchmark-only -q``.

Parsing: a buffer of many server frames (unmasked, as a client receives them) is fed in 64 KiB
chunks, the size of a typical socket read; one round parses the whole buffer with a fresh parser.
Rivals, each driven the way its library drives it:

* aiohttp: the compiled ``WebSocketReader.feed_data`` into its ``WebSocketDataQueue`` (limit
  raised so the reader never stalls waiting for the application to read).
* websockets: the ``Frame.parse`` generator over a ``StreamReader``, as its protocol runs it.
* wsproto: ``FrameProtocol(client=True).receive_bytes`` then ``received_frames()``.
* picows: its parser lives inside its asyncio protocol, so the protocol is given a fake transport
  (over a real loopback socket it never uses), completes the 101 handshake, and then receives the
  same chunks through ``get_buffer``/``buffer_updated``; frames reach a listener that counts them.

Not identical work: nhlink and aiohttp validate UTF-8 of text frames (aiohttp decodes to str),
wsproto decodes text too, websockets leaves UTF-8 to its message assembler, picows hands out
zero-copy frames valid only during the callback. nhlink returns owned ``bytes`` payloads.

Masking: ``mask: N`` allocates the masked copy (nhlink ``apply_mask``, websockets' C
``apply_mask``; the memcpy baseline is ``bytes(bytearray)``); ``mask in place: N`` rewrites a
buffer (nhlink ``mask_inplace``, aiohttp's compiled mask; baseline: copy into a preallocated
buffer). ``extra_info`` carries ``impl``, ``items`` and ``unit`` for the compare script.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib
import logging
import re
import socket
import struct
from collections.abc import Callable, Iterator
from functools import partial
from types import ModuleType
from typing import Any

import pytest

from benchmarks._bench import optional, run

CHUNK = 64 * 1024
KEY = bytes.fromhex("37fa213d")


NH_C = optional("nhlink._core.cython")
NH_PY = optional("nhlink._core.python")
AIOHTTP_READER = optional("aiohttp._websocket.reader_c")
AIOHTTP_MASK = optional("aiohttp._websocket.mask")
WS_FRAMES = optional("websockets.frames")
WS_STREAMS = optional("websockets.streams")
WS_SPEEDUPS = optional("websockets.speedups")
WSPROTO = optional("wsproto.frame_protocol")
PICOWS = optional("picows")


# --- Parsing -----------------------------------------------------------------------------------


def server_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def _text_payload() -> bytes:
    # A Phoenix-channel-like JSON message of exactly 100 ASCII bytes.
    text = '["3","7","device:abc123","update",{"firmware_url":"https://x/y","id":42}]'
    return (text + " " * (100 - len(text))).encode()


STREAMS = {
    "100 B text frames": (1, _text_payload(), 10_000),
    "16 KiB binary frames": (2, bytes(range(256)) * 64, 256),
}


def chunked(name: str) -> tuple[list[bytes], int]:
    opcode, payload, count = STREAMS[name]
    data = server_frame(opcode, payload) * count
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)], count


def parse_nhlink(core: ModuleType, chunks: list[bytes]) -> int:
    parser = core.FrameParser()
    count = 0
    for chunk in chunks:
        count += len(parser.feed(chunk))
    return count


class _Protocol:
    """The bits of aiohttp's protocol that its WebSocketDataQueue touches."""

    _reading_paused = False

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        self._reading_paused = False


def parse_aiohttp(
    reader_c: ModuleType, loop: asyncio.AbstractEventLoop, chunks: list[bytes]
) -> int:
    queue = reader_c.WebSocketDataQueue(_Protocol(), 2**31 - 1, loop=loop)
    reader = reader_c.WebSocketReader(queue, 2**30, compress=False, decode_text=True)
    for chunk in chunks:
        reader.feed_data(chunk)
    return len(queue._buffer)


def parse_websockets(chunks: list[bytes]) -> int:
    assert WS_FRAMES is not None
    assert WS_STREAMS is not None
    frame_cls = WS_FRAMES.Frame
    reader = WS_STREAMS.StreamReader()
    frames: list[Any] = []

    def parse() -> Iterator[None]:
        while True:
            frame = yield from frame_cls.parse(
                reader.read_exact, mask=False, max_size=None, extensions=[]
            )
            frames.append(frame)

    parser = parse()
    next(parser)
    for chunk in chunks:
        reader.feed_data(chunk)
        next(parser)
    return len(frames)


def parse_wsproto(chunks: list[bytes]) -> int:
    assert WSPROTO is not None
    protocol = WSPROTO.FrameProtocol(client=True, extensions=[])
    count = 0
    for chunk in chunks:
        protocol.receive_bytes(chunk)
        for frame in protocol.received_frames():
            # wsproto streams: a frame split across reads arrives as several pieces.
            count += frame.frame_finished
    return count


class _PicowsTransport:
    """Enough of an asyncio transport for picows' WSProtocol; writes are collected, not sent."""

    def __init__(self) -> None:
        server = socket.create_server(("127.0.0.1", 0))
        self.sock = socket.create_connection(server.getsockname())
        self.peer, _ = server.accept()
        server.close()
        self.written = bytearray()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        info = {"socket": self.sock, "peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}
        return info.get(name, default)

    def write(self, data: bytes) -> None:
        self.written += data

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        self.sock.close()
        self.peer.close()


class PicowsHarness:
    """A client-side picows WSProtocol past its handshake, fed bytes as the event loop would."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        assert PICOWS is not None
        picows: Any = PICOWS
        protocol_cls: Any = importlib.import_module("picows.picows").WSProtocol

        class Counter(picows.WSListener):  # type: ignore[misc]
            count = 0

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                self.count += 1

        async def connect() -> Any:
            return protocol_cls(
                "localhost:1", "/", True, Counter, logging.getLogger("bench.picows"), True, None,
                False, 1.0, 1.0, picows.WSAutoPingStrategy.PING_WHEN_IDLE, False, 1 << 30, None,
                1 << 20,
            )  # fmt: skip

        self.loop = loop
        self.protocol = loop.run_until_complete(connect())
        self.transport = _PicowsTransport()
        self.protocol.connection_made(self.transport)
        request = bytes(self.transport.written)
        match = re.search(rb"sec-websocket-key: *(\S+)", request, re.IGNORECASE)
        assert match is not None, request
        accept = base64.b64encode(
            hashlib.sha1(match.group(1) + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        )
        self.feed(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        loop.run_until_complete(asyncio.sleep(0))
        self.listener = self.protocol.listener
        assert self.listener is not None, "picows handshake did not complete"

    def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            buffer = self.protocol.get_buffer(-1)
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            self.protocol.buffer_updated(n)
            view = view[n:]

    def parse(self, chunks: list[bytes]) -> int:
        before = self.listener.count
        for chunk in chunks:
            self.feed(chunk)
        return int(self.listener.count - before)

    def close(self) -> None:
        self.transport.close()


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


PARSERS = ["nhlink-cython", "nhlink-python", "aiohttp", "websockets", "wsproto", "picows"]


@pytest.mark.parametrize("stream", list(STREAMS))
@pytest.mark.parametrize("impl", PARSERS)
def test_parse(benchmark: Any, loop: asyncio.AbstractEventLoop, stream: str, impl: str) -> None:
    chunks, count = chunked(stream)
    harness: PicowsHarness | None = None
    fn: Callable[[], int]
    if impl == "nhlink-cython":
        if NH_C is None:
            pytest.skip("nhlink compiled core not built")
        fn = partial(parse_nhlink, NH_C, chunks)
    elif impl == "nhlink-python":
        if NH_PY is None:
            pytest.skip("nhlink python core not importable")
        fn = partial(parse_nhlink, NH_PY, chunks)
    elif impl == "aiohttp":
        if AIOHTTP_READER is None:
            pytest.skip("aiohttp compiled reader not importable")
        fn = partial(parse_aiohttp, AIOHTTP_READER, loop, chunks)
    elif impl == "websockets":
        if WS_FRAMES is None or WS_STREAMS is None:
            pytest.skip("websockets not installed")
        fn = partial(parse_websockets, chunks)
    elif impl == "wsproto":
        if WSPROTO is None:
            pytest.skip("wsproto not installed")
        fn = partial(parse_wsproto, chunks)
    else:
        if PICOWS is None:
            pytest.skip("picows not installed")
        try:
            harness = PicowsHarness(loop)
        except Exception as exc:  # its internals are not an API: skip rather than fail
            pytest.skip(f"picows protocol could not be driven: {exc!r}")
        fn = partial(harness.parse, chunks)
    try:
        assert fn() == count, impl
        run(benchmark, fn, group=f"parse: {stream}", impl=impl, items=count, unit="frames")
    finally:
        if harness is not None:
            harness.close()


# --- Masking -----------------------------------------------------------------------------------

MASK_SIZES = {"125 B": 125, "4 KiB": 4096, "64 KiB": 65536, "1 MiB": 1 << 20}


def _data(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + bytes(range(size % 256))


@pytest.mark.parametrize("size_name", list(MASK_SIZES))
@pytest.mark.parametrize("impl", ["nhlink-cython", "nhlink-python", "websockets", "memcpy"])
def test_mask_copy(benchmark: Any, size_name: str, impl: str) -> None:
    size = MASK_SIZES[size_name]
    data = _data(size)
    source = bytearray(data)
    # functools.partial: the same small call overhead for every rival, and less than a lambda.
    fn: Callable[[], bytes]
    if impl == "nhlink-cython":
        if NH_C is None:
            pytest.skip("nhlink compiled core not built")
        fn = partial(NH_C.apply_mask, data, KEY)
    elif impl == "nhlink-python":
        if NH_PY is None:
            pytest.skip("nhlink python core not importable")
        fn = partial(NH_PY.apply_mask, data, KEY)
    elif impl == "websockets":
        if WS_SPEEDUPS is None:
            pytest.skip("websockets C speedups not built")
        fn = partial(WS_SPEEDUPS.apply_mask, data, KEY)
    else:
        fn = partial(bytes, source)
    if impl != "memcpy":
        masked = fn()
        assert len(masked) == size
        assert masked[:5] == bytes(b ^ KEY[i % 4] for i, b in enumerate(data[:5]))
    run(benchmark, fn, group=f"mask: {size_name}", impl=impl, items=size, unit="bytes")


@pytest.mark.parametrize("size_name", list(MASK_SIZES))
@pytest.mark.parametrize("impl", ["nhlink-cython", "nhlink-python", "aiohttp", "memcpy"])
def test_mask_in_place(benchmark: Any, size_name: str, impl: str) -> None:
    size = MASK_SIZES[size_name]
    data = _data(size)
    buffer = bytearray(data)
    fn: Callable[[], object]
    if impl == "nhlink-cython":
        if NH_C is None:
            pytest.skip("nhlink compiled core not built")
        fn = partial(NH_C.mask_inplace, buffer, KEY)
    elif impl == "nhlink-python":
        if NH_PY is None:
            pytest.skip("nhlink python core not importable")
        fn = partial(NH_PY.mask_inplace, buffer, KEY)
    elif impl == "aiohttp":
        if AIOHTTP_MASK is None:
            pytest.skip("aiohttp compiled mask not importable")
        fn = partial(AIOHTTP_MASK._websocket_mask_cython, KEY, buffer)
    else:
        # Copy into the existing buffer: the same reads and writes as masking it in place.
        fn = partial(memoryview(buffer).__setitem__, slice(None), data)
    fn()
    if impl != "memcpy":
        assert buffer[:5] == bytes(b ^ KEY[i % 4] for i, b in enumerate(data[:5]))
    run(benchmark, fn, group=f"mask in place: {size_name}", impl=impl, items=size, unit="bytes")
