"""Transport edge cases against raw sockets on 127.0.0.1: a bad frame after good ones, a peer
that never answers the close frame, cancellation during close."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from nhlink.errors import ConnectionClosed
from nhlink.transport import connect

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    key = next(
        line.split(":", 1)[1].strip()
        for line in head.split("\r\n")
        if line.lower().startswith("sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    writer.write(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
        ).encode()
    )
    await writer.drain()


async def read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack(">H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack(">Q", await reader.readexactly(8))
    key = await reader.readexactly(4)
    data = await reader.readexactly(n)
    return b0 & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(data))


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> str:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"

    yield start
    for server in servers:
        server.close()


async def test_messages_before_a_bad_frame_are_delivered_and_answered(
    raw_server: Callable[[Handler], Awaitable[str]],
) -> None:
    seen: list[tuple[int, bytes]] = []
    done = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handshake(reader, writer)
        # A good text frame and a frame with reserved opcode 3 in ONE write.
        writer.write(b"\x81\x04good" + b"\x83\x00")
        await writer.drain()
        try:
            while True:
                opcode, payload = await read_client_frame(reader)
                seen.append((opcode, payload))
                if opcode == 8:
                    break
        finally:
            writer.close()
            done.set()

    url = await raw_server(handler)
    ws = await connect(url, close_timeout=2)
    assert await ws.recv() == "good"
    await ws.send_text("echo: good")  # the application answers before the failure goes out
    with pytest.raises(ConnectionClosed) as info:
        await ws.recv()
    assert info.value.code == 1002
    await asyncio.wait_for(done.wait(), 5)
    assert seen == [(1, b"echo: good"), (8, struct.pack(">H", 1002))]
    await ws.wait_closed()


async def test_close_against_a_peer_that_never_answers(
    raw_server: Callable[[Handler], Awaitable[str]],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handshake(reader, writer)
        await reader.read()  # swallow everything, answer nothing, never close

    url = await raw_server(handler)
    ws = await connect(url, close_timeout=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(ws.close(), 5)
    assert ws.closed
    assert loop.time() - started < 2


async def test_cancelled_close_drops_the_connection(
    raw_server: Callable[[Handler], Awaitable[str]],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handshake(reader, writer)
        await reader.read()

    url = await raw_server(handler)
    ws = await connect(url, close_timeout=60)
    closing = asyncio.create_task(ws.close())
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(closing), 0.2)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await asyncio.wait_for(ws.wait_closed(), 5)  # aborted, not left open
