"""The fault-injecting TCP proxy (nhlink.testing.proxy) against a plain asyncio server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

import pytest

from nhlink.testing.proxy import Fault, FaultProxy

DATA = os.urandom(300_000)


@pytest.fixture
async def source() -> AsyncIterator[asyncio.Server]:
    """Sends DATA to whoever connects, then echoes what it receives (prefixed by nothing)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            writer.write(DATA)
            await writer.drain()
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield server


def port_of(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


async def read_all(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            out += chunk
    return bytes(out)


async def fetch(proxy: FaultProxy, send: bytes = b"") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    if send:
        writer.write(send)
    writer.write_eof()
    data = await asyncio.wait_for(read_all(reader), 10)
    writer.close()
    return data


async def test_clean_connection_and_split_writes(source: asyncio.Server) -> None:
    async with FaultProxy("127.0.0.1", port_of(source), seed=1, split=True, max_split=333) as p:
        assert await fetch(p, b"hello") == DATA + b"hello"
        conn = p.connections[0]
        await asyncio.wait_for(conn.done.wait(), 5)
        assert (conn.down, conn.up, conn.outcome) == (len(DATA) + 5, 5, "closed")


async def test_cut_at_an_offset(source: asyncio.Server) -> None:
    async with FaultProxy("127.0.0.1", port_of(source)) as proxy:
        proxy.schedule(Fault("cut", at=100_000))
        got = await fetch(proxy)
        assert got == DATA[:100_000]
        assert await fetch(proxy) == DATA  # the next connection is clean
        assert proxy.connections[0].outcome == "cut"
        assert [f.kind for f in proxy.connections[0].fired] == ["cut"]


async def test_reset_is_a_tcp_rst(source: asyncio.Server) -> None:
    async with FaultProxy("127.0.0.1", port_of(source)) as proxy:
        proxy.schedule(Fault("reset", at=1000))
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)

        async def read_to_the_end() -> None:
            async with asyncio.timeout(10):
                while await reader.read(65536):
                    pass

        with pytest.raises(ConnectionResetError):
            await read_to_the_end()
        writer.close()
        assert proxy.connections[0].outcome == "reset"


async def test_corrupt_flips_exactly_one_byte(source: asyncio.Server) -> None:
    async with FaultProxy("127.0.0.1", port_of(source)) as proxy:
        proxy.schedule(Fault("corrupt", at=12345), Fault("corrupt", at=65536))
        got = await fetch(proxy)
        assert len(got) == len(DATA)
        diff = [i for i in range(len(DATA)) if got[i] != DATA[i]]
        assert diff == [12345, 65536]
        assert got[12345] == DATA[12345] ^ 0xFF


async def test_corrupt_upstream(source: asyncio.Server) -> None:
    async with FaultProxy("127.0.0.1", port_of(source)) as proxy:
        proxy.always = (Fault("corrupt", at=1, direction="up"),)
        assert await fetch(proxy, b"abc") == DATA + b"a" + bytes([ord("b") ^ 0xFF]) + b"c"


async def test_stall_and_slow(source: asyncio.Server) -> None:
    async with FaultProxy("127.0.0.1", port_of(source)) as proxy:
        proxy.schedule(Fault("stall", at=1000, seconds=0.3))
        started = time.monotonic()
        assert await fetch(proxy) == DATA
        assert time.monotonic() - started >= 0.3
        proxy.schedule(Fault("slow", at=len(DATA) - 20_000, rate=100_000))
        started = time.monotonic()
        assert await fetch(proxy) == DATA
        assert time.monotonic() - started >= 0.15  # 20 kB at 100 kB/s


async def test_half_close_towards_the_client(source: asyncio.Server) -> None:
    async with FaultProxy("127.0.0.1", port_of(source)) as proxy:
        proxy.schedule(Fault("half_close", at=5000))
        assert await fetch(proxy) == DATA[:5000]  # EOF after 5000 bytes, no reset


async def test_refused_upstream_and_bad_faults() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = port_of(probe)
    probe.close()
    await probe.wait_closed()
    async with FaultProxy("127.0.0.1", port) as proxy:
        assert await fetch(proxy) == b""
        await asyncio.wait_for(proxy.connections[0].done.wait(), 5)
        assert proxy.connections[0].outcome == "refused"
    with pytest.raises(ValueError):
        Fault("explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Fault("slow")
    with pytest.raises(ValueError):
        Fault("stall", seconds=0)
    with pytest.raises(ValueError):
        Fault("cut", at=-1)


async def test_drop_all(source: asyncio.Server) -> None:
    async with FaultProxy("127.0.0.1", port_of(source)) as proxy:
        proxy.schedule(Fault("stall", at=10, seconds=30))
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        await reader.readexactly(10)
        assert proxy.drop_all() >= 1
        assert await asyncio.wait_for(read_all(reader), 5) == b""
        writer.close()
