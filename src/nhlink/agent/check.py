"""``nhlink check``: try one device's connection once and say what happened at each step —
name resolution, TCP and TLS (the server certificate verified as the agent would), the
WebSocket upgrade with the device's credentials (NH1 headers or the client certificate),
and with ``--join`` the device channel join and the server's reply."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any

from ..errors import AuthRejected, InvalidStatus, NHLinkError, TLSVerificationError
from ..link import NervesHubLink, send_frame
from ..protocol import wire
from ..protocol.channel import Joined, JoinRefused
from .config import DeviceSpec

__all__ = ["check_device"]


def _say(name: str, step: str, text: str) -> None:
    print(f"{name}: {step:<10} {text}", flush=True)


async def check_device(spec: DeviceSpec, *, join: bool, timeout: float) -> bool:
    """True when every step worked (printed as it goes)."""
    link = NervesHubLink(**spec.link_options)
    config = link.config
    name = spec.name
    _say(name, "identity", f"{config.identity} ({config.auth_mode}) at {config.url}")
    if isinstance(config.device_key, str) and config.device_cert is not None:
        # A key in a token (a TPM): say which, and prove it signs for this certificate.
        from ..errors import ConfigError
        from ..transport import pkcs11

        key = pkcs11.parse_uri(config.device_key)
        _say(name, "key", f"{key.engine_uri} in {key.module} (PKCS#11; never leaves the token)")
        try:
            _say(name, "key", "test: " + pkcs11.test_signature(config.device_cert, key))
        except ConfigError as exc:
            _say(name, "key", f"FAILED: {exc}")
            return False
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM), timeout
        )
    except (OSError, TimeoutError) as exc:
        _say(name, "resolve", f"FAILED: {config.host}: {exc or 'timed out'}")
        return False
    addresses = sorted({str(info[4][0]) for info in infos})
    _say(name, "resolve", f"{config.host} → {', '.join(addresses)}")
    try:
        ws = await asyncio.wait_for(link._open_socket(), timeout)
    except AuthRejected as exc:
        _say(
            name,
            "upgrade",
            f"FAILED: {exc} — check product_key/product_secret/identifier "
            "(or the device certificate) and the clock",
        )
        return False
    except TLSVerificationError as exc:
        _say(name, "tls", f"FAILED: {exc} — check ca_file")
        return False
    except InvalidStatus as exc:
        _say(name, "upgrade", f"FAILED: HTTP {exc.status} {exc.reason or ''}".rstrip())
        return False
    except (NHLinkError, OSError, TimeoutError) as exc:
        _say(name, "connect", f"FAILED: {exc or type(exc).__name__}")
        return False
    try:
        if config.ssl:
            _say(
                name,
                "tls",
                "server certificate verified"
                if not config.dangerously_disable_verification
                else "NOT verified (disabled)",
            )
        _say(
            name,
            "upgrade",
            "accepted: the server took the device credentials (101); "
            + ("MessagePack (vsn 3.0.0)" if link.session.binary else "JSON (vsn 2.0.0)"),
        )
        if not join:
            return True
        params = config.join_params(
            validated=link.firmware_validated(),
            auto_revert=False,
            downloading_uuid=(link.store.state.download or {}).get("uuid"),
        )
        await send_frame(ws, link.session, link.session.join(wire.TOPIC_DEVICE, params))
        return await asyncio.wait_for(_await_join(ws, link, name), timeout)
    except TimeoutError:
        _say(name, "join", "FAILED: no reply to the join")
        return False
    except NHLinkError as exc:
        _say(name, "join", f"FAILED: {exc}")
        return False
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(1000, "check done"), 2)


async def _await_join(ws: Any, link: NervesHubLink, name: str) -> bool:
    async for message in ws:
        if isinstance(message, bytes) != link.session.binary:
            continue
        event = link.session.receive(message)
        if isinstance(event, Joined) and event.topic == wire.TOPIC_DEVICE:
            _say(name, "join", f"joined; the server replied {json.dumps(event.response)}")
            return True
        if isinstance(event, JoinRefused) and event.topic == wire.TOPIC_DEVICE:
            _say(name, "join", f"REFUSED: {json.dumps(event.response)}")
            return False
    _say(name, "join", f"FAILED: the server closed the socket ({ws.close_code})")
    return False
