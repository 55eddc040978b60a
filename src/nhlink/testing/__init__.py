"""Test support: :class:`FakeHub`, a NervesHub-compatible device endpoint for tests, demos and CI.

``FakeHub`` speaks the device side of PROTOCOL.md as the real server does (paths, ``vsn``, mTLS
and NH1 shared-secret authentication, Phoenix v2 channels, extensions, console, idle timeout,
drain) and records everything a device sends, with awaitable helpers to observe it. It verifies
the wire protocol independently: nothing here imports nhlink's client signer, codec or protocol
code. See docs/testing.md.

:mod:`nhlink.testing.certs` builds a test PKI for mTLS (needs ``cryptography``).
Run ``python -m nhlink.testing --help`` to serve a hub from the command line.
"""

from __future__ import annotations

from nhlink.testing._hub import (
    DEVICE_STATUSES,
    KNOWN_EXTENSIONS,
    NO_AUTH_REASON,
    PLATFORM_REASON,
    SOCKET_PATHS,
    FakeHub,
)
from nhlink.testing._records import Attempt, DeviceRecord, Message

__all__ = [
    "DEVICE_STATUSES",
    "KNOWN_EXTENSIONS",
    "NO_AUTH_REASON",
    "PLATFORM_REASON",
    "SOCKET_PATHS",
    "Attempt",
    "DeviceRecord",
    "FakeHub",
    "Message",
]
