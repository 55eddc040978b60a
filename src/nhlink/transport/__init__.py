"""I/O: the asyncio WebSocket transport and TLS contexts. Bytes move here; rules live in
:mod:`nhlink.protocol`."""

from .tls import client_ssl_context
from .ws import WebSocket, connect

__all__ = ["WebSocket", "client_ssl_context", "connect"]
