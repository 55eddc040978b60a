"""The asyncio client against independent servers on 127.0.0.1: websockets and aiohttp."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import websockets
from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve

from nhlink.errors import (
    ConnectFailed,
    ConnectionClosed,
    ConnectTimeout,
    InvalidStatus,
    LocalProtocolError,
)
from nhlink.transport import connect

BIG = 16 * 1024 * 1024


async def _echo(ws: ServerConnection) -> None:
    try:
        async for message in ws:
            if message == "close-4001":
                await ws.close(4001, "asked")
                return
            await ws.send(message)
    except websockets.ConnectionClosed:
        pass


@pytest.fixture
async def ws_server() -> AsyncIterator[str]:
    async with serve(
        _echo, "127.0.0.1", 0, max_size=BIG + 1024, compression=None, ping_interval=None
    ) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/echo"


@pytest.fixture
async def ws_deflate_server() -> AsyncIterator[str]:
    async with serve(
        _echo, "127.0.0.1", 0, max_size=BIG + 1024, compression="deflate", ping_interval=None
    ) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/echo"


async def _aiohttp_app(
    handler: Callable[[web.Request], Awaitable[Any]],
) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"ws://127.0.0.1:{port}/ws"


@pytest.fixture
async def aiohttp_server() -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=BIG + 1024, autoping=True)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                if msg.data == "close-4002":
                    await ws.close(code=4002, message=b"bye")
                    break
                await ws.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    runner, url = await _aiohttp_app(handler)
    yield url
    await runner.cleanup()


async def test_text_binary_roundtrip_websockets(ws_server: str) -> None:
    async with connect(ws_server) as ws:
        await ws.send_text("héllo wörld")
        assert await ws.recv() == "héllo wörld"
        await ws.send_binary(b"\x00\x01\xfe\xff")
        assert await ws.recv() == b"\x00\x01\xfe\xff"
        await ws.send("via send")
        assert await ws.recv() == "via send"
    assert ws.closed
    assert ws.close_code == 1000


async def test_large_messages_websockets(ws_server: str) -> None:
    payload = os.urandom(BIG)
    async with connect(ws_server, max_message_size=BIG) as ws:
        await ws.send_binary(payload)
        assert await ws.recv() == payload
        text = "ü" * (BIG // 2)
        await ws.send_text(text)
        assert await ws.recv() == text


async def test_fragmented_from_server() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(["frag", "ment", "ed ✓"])  # websockets sends an iterable as fragments
        await ws.send([b"\x01", b"\x02", b"\x03"])
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            assert await ws.recv() == "fragmented ✓"
            assert await ws.recv() == b"\x01\x02\x03"


async def test_ping_pong_websockets(ws_server: str) -> None:
    async with connect(ws_server) as ws:
        waiter = await ws.ping(b"are you there")
        assert await asyncio.wait_for(waiter, 5) > 0
        second = await ws.ping(b"dup")
        with pytest.raises(LocalProtocolError):
            await ws.ping(b"dup")
        await asyncio.wait_for(second, 5)


async def test_server_close_code_websockets(ws_server: str) -> None:
    async with connect(ws_server) as ws:
        await ws.send_text("close-4001")
        messages = [m async for m in ws]  # ends quietly on a clean close
        assert messages == []
        assert ws.close_code == 4001
        assert ws.close_reason == "asked"
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.code == 4001
        with pytest.raises(ConnectionClosed):
            await ws.send_text("after close")
    await ws.wait_closed()


async def test_server_ping_answered_aiohttp() -> None:
    got_pong = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await ws.ping(b"srv")
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.PONG and msg.data == b"srv":
                got_pong.set()
                await ws.close()
        return ws

    runner, url = await _aiohttp_app(handler)
    try:
        async with connect(url) as ws:
            await asyncio.wait_for(got_pong.wait(), 5)
            assert [m async for m in ws] == []
    finally:
        await runner.cleanup()


async def test_roundtrip_aiohttp(aiohttp_server: str) -> None:
    payload = os.urandom(BIG)
    async with connect(aiohttp_server, max_message_size=BIG) as ws:
        await ws.send_text("aio")
        assert await ws.recv() == "aio"
        await ws.send_binary(payload)
        assert await ws.recv() == payload
        await ws.send_text("close-4002")
        assert [m async for m in ws] == []
        assert ws.close_code == 4002
        assert ws.close_reason == "bye"


async def test_client_close_code_seen_by_server() -> None:
    seen: asyncio.Future[tuple[int | None, str | None]] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        try:
            await ws.recv()
        except websockets.ConnectionClosed as exc:
            seen.set_result(
                (exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else None)
            )

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        ws = await connect(f"ws://127.0.0.1:{port}/")
        await ws.close(4321, "client says bye")
        assert await asyncio.wait_for(seen, 5) == (4321, "client says bye")


async def test_deflate_interop(ws_deflate_server: str) -> None:
    text = "compressible text " * 1000
    async with connect(ws_deflate_server, compression="deflate") as ws:
        assert ws.compression
        for _ in range(3):  # context takeover across messages
            await ws.send_text(text)
            assert await ws.recv() == text
        await ws.send_binary(b"\x00" * 100_000)
        assert await ws.recv() == b"\x00" * 100_000


async def test_no_deflate_unless_asked(ws_deflate_server: str) -> None:
    async with connect(ws_deflate_server) as ws:
        assert not ws.compression


async def test_message_too_big_fails_with_1009(ws_server: str) -> None:
    async with connect(ws_server, max_message_size=1000) as ws:
        await ws.send_binary(b"x" * 2000)
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.code == 1009
    assert ws.closed


async def test_rejected_upgrade_keeps_status_and_headers() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            status=401, headers={"nh-connection-error-reason": "no credentials"}, body=b"nope"
        )

    runner, url = await _aiohttp_app(handler)
    try:
        with pytest.raises(InvalidStatus) as info:
            await connect(url)
        assert info.value.status == 401
        assert info.value.reason == "no credentials"
        assert "date" in info.value.headers
        assert info.value.body == b"nope"
    finally:
        await runner.cleanup()


async def test_connection_refused() -> None:
    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(ConnectFailed, match="cannot connect"):
        await connect(f"ws://127.0.0.1:{port}/")


async def test_open_timeout() -> None:
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()  # never answers the upgrade
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConnectTimeout):
            await connect(f"ws://127.0.0.1:{port}/", open_timeout=0.3)
        assert accepted.is_set()
    finally:
        server.close()
        await server.wait_closed()


async def test_backpressure_pauses_reading() -> None:
    sent = 0
    done = asyncio.Event()

    async def flood(ws: ServerConnection) -> None:
        nonlocal sent
        chunk = b"x" * 65536
        try:
            for _ in range(400):  # 25 MiB the client does not read at first
                await ws.send(chunk)
                sent += 1
        finally:
            done.set()

    async with serve(flood, "127.0.0.1", 0, compression=None, write_limit=65536) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/", read_limit=1024 * 1024) as ws:
            # The server pushes until our read limit pauses reading and the socket buffers fill.
            paused = asyncio.Event()
            transport = ws._transport
            assert transport is not None
            original = transport.pause_reading

            def pause() -> None:
                paused.set()
                original()

            transport.pause_reading = pause  # type: ignore[method-assign]
            await asyncio.wait_for(paused.wait(), 10)
            # Checked after each read: at most one read (256 KiB) beyond the limit.
            assert ws._queued_bytes <= 1024 * 1024 + 256 * 1024
            assert not done.is_set()
            received = 0
            while received < 400:
                assert len(await ws.recv()) == 65536
                received += 1
            await asyncio.wait_for(done.wait(), 10)
            assert sent == 400
