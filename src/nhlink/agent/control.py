"""The agent's control socket: ``nhlink status``, ``confirm`` and ``reconnect`` talk to a running
agent over a Unix stream socket (default ``/run/nhlink/control.sock``).

One JSON object per line each way: ``{"command": "status"}`` → ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``. The socket is created with mode 0600 (owned by the agent's
user) and every connection's peer credentials (``SO_PEERCRED``) are checked: only the agent's
own user and root are answered; anyone else gets an error and the connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

__all__ = ["ControlError", "ControlServer", "request"]

logger = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlError(RuntimeError):
    """No agent answers on the socket, or it refused the request."""


def peer_uid(sock: socket.socket) -> int:
    """The user id of the process at the other end of a Unix socket (Linux SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ControlServer:
    """Serves ``handler`` on ``path`` (mode 0600). The caller holds the agent's instance lock,
    so a socket file already there is stale and replaced."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._server: asyncio.Server | None = None
        self.allowed_uids = {os.geteuid(), 0}

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o177)  # the socket is born 0600: no window where others can connect
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST
            )
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            uid = peer_uid(sock) if sock is not None else -1
            if uid not in self.allowed_uids:
                logger.warning("control socket: refused a connection from uid %d", uid)
                # Take the request first: closing on unread data resets the connection, and
                # the client would see that instead of the answer.
                with contextlib.suppress(TimeoutError, ValueError, asyncio.LimitOverrunError):
                    await asyncio.wait_for(reader.readline(), 2.0)
                await _reply(writer, {"ok": False, "error": "permission denied (another user)"})
                return
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict) or not isinstance(req.get("command"), str):
                        raise ValueError('expected {"command": ...}')
                except ValueError as exc:
                    await _reply(writer, {"ok": False, "error": f"bad request: {exc}"})
                    return
                try:
                    answer = await self.handler(req)
                except Exception as exc:
                    logger.exception("control socket: %s failed", req.get("command"))
                    answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                await _reply(writer, answer)
        except (ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _reply(writer: asyncio.StreamWriter, answer: dict[str, Any]) -> None:
    writer.write(json.dumps(answer, default=str).encode() + b"\n")
    await writer.drain()


def request(path: Path, command: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
    """Send one command to the agent listening on ``path``; its answer (``ok`` true).
    Raises :class:`ControlError` when no agent answers or the agent refuses."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps({"command": command, **args}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(f"no nhlink agent is running (nothing listens on {path})") from None
    except PermissionError:
        raise ControlError(f"permission denied on {path} (run as the agent's user)") from None
    except OSError as exc:
        raise ControlError(f"cannot talk to the agent on {path}: {exc}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError(f"the agent on {path} sent no answer") from None
    if not isinstance(answer, dict) or not answer.get("ok"):
        error = answer.get("error") if isinstance(answer, dict) else answer
        raise ControlError(f"the agent refused: {error}")
    return answer
