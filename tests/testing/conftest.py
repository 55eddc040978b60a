"""Fixtures for the FakeHub tests: a frozen clock, a hub, a device built on ``websockets``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from nhlink.testing import FakeHub
from tests.testing import _signer

KEY = _signer.VECTOR_KEY
SECRET = _signer.VECTOR_SECRET
IDENT = _signer.VECTOR_IDENTIFIER
T0 = _signer.VECTOR_T

JOIN_PARAMS: dict[str, Any] = {
    "nerves_fw_uuid": "a1b2c3d4-e5f6-7890-abcd-ef1234567890",
    "nerves_fw_product": "my-product",
    "nerves_fw_architecture": "x86_64",
    "nerves_fw_platform": "linux",
    "nerves_fw_version": "1.0.0",
    "device_api_version": "2.2.0",
    "meta": {"firmware_validated": True, "firmware_auto_revert_detected": False},
}


class FrozenClock:
    """A settable hub clock (Unix seconds)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


@pytest.fixture
async def hub(clock: FrozenClock) -> AsyncIterator[FakeHub]:
    async with FakeHub(
        shared_secrets={KEY: SECRET}, clock=clock, extensions=["health", "logging"]
    ) as hub:
        yield hub


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from nhlink.testing.certs import create_pki

    return create_pki(Path(tmp_path_factory.mktemp("pki")))


async def open_device(
    hub: FakeHub,
    identifier: str = IDENT,
    *,
    key: str = KEY,
    secret: str = SECRET,
    t: int | None = None,
    headers: dict[str, str] | None = None,
    url: str | None = None,
    **kwargs: Any,
) -> ClientConnection:
    """Open a device socket signed with our own NH1 signer (at the hub's clock by default)."""
    if headers is None:
        when = t if t is not None else int(hub.clock())
        headers = _signer.sign(key, secret, identifier, when)
    return await connect(url or hub.url, additional_headers=headers, open_timeout=5, **kwargs)


async def recv(ws: ClientConnection) -> list[Any]:
    """The next frame (within 5 s), decoded; asserts it is a Phoenix v2 text frame."""
    async with asyncio.timeout(5):
        data = await ws.recv()
    assert isinstance(data, str)
    frame = json.loads(data)
    assert isinstance(frame, list)
    assert len(frame) == 5
    return frame


async def send(ws: ClientConnection, frame: list[Any]) -> None:
    await ws.send(json.dumps(frame))


async def join_device(
    ws: ClientConnection, params: dict[str, Any] | None = None, ref: str = "1"
) -> list[Any]:
    """Join ``device``; return the reply frame."""
    await send(ws, [ref, ref, "device", "phx_join", JOIN_PARAMS if params is None else params])
    return await recv(ws)


async def close_code(ws: ClientConnection) -> int:
    """Drain frames until the server closes (within 5 s); return the close code it sent."""
    async with asyncio.timeout(5):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
    assert rcvd is not None, "the server sent no close frame"
    return rcvd.code
