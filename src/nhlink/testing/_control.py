"""HTTP control endpoints of FakeHub, under ``/_fakehub/`` (JSON in, JSON out).

For driving a hub that runs as a command (``python -m nhlink.testing``) from another process or
a shell. There is no authentication: the hub listens on 127.0.0.1 only.

==========================================================  =====================================
``GET  /_fakehub/devices``                                  ``{"devices": [summary, ...]}``
``GET  /_fakehub/devices/{id}``                             summary plus ``messages``
``POST /_fakehub/devices/{id}/push``                        ``{"topic", "event", "payload"}``
``POST /_fakehub/devices/{id}/update``                      ``{"firmware_url", "size", ...}``
``POST /_fakehub/devices/{id}/reboot`` / ``identify``       no body
``POST /_fakehub/devices/{id}/disconnect``                  ``{"code": 1000}`` (optional)
``POST /_fakehub/drain``                                    closes every socket with 1012
``GET  /_fakehub/attempts``                                 upgrade attempts
==========================================================  =====================================

POST answers are ``{"sent": bool, ...}``; an unknown device is a 404 ``{"error": ...}``.

There is no authentication, so the endpoints refuse what a web page in a browser could send
while the hub runs (cross-site request forgery, DNS rebinding): a request whose ``Host`` is not
a loopback name or address, one with an ``Origin`` header (browsers add it to cross-origin
requests; command-line clients do not), and a ``POST`` whose ``Content-Type`` is not
``application/json`` (a page can send ``text/plain`` or a form without a preflight; JSON
needs one, which the hub never answers). All get ``403``/``415`` with a JSON error.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from nhlink.testing._hub import FakeHub

__all__ = ["add_routes", "refusal"]

PREFIX = "/_fakehub"


def _error(status: int, text: str) -> web.Response:
    return web.json_response({"error": text}, status=status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _GuardedRoutes(web.RouteTableDef):
    """A route table whose handlers first apply :func:`refusal`."""

    def route(self, method: str, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        register = super().route(method, path, **kwargs)

        def decorate(handler: Handler) -> Handler:
            @functools.wraps(handler)
            async def guarded(request: web.Request) -> web.StreamResponse:
                refused = refusal(request)
                if refused is not None:
                    return refused
                return await handler(request)

            register(guarded)
            return handler

        return decorate


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except json.JSONDecodeError:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "body is not JSON"}), content_type="application/json"
        ) from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "body must be an object"}), content_type="application/json"
        )
    return data


_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _loopback_host(value: str | None) -> bool:
    """``Host: 127.0.0.1:8080``, ``localhost``, ``[::1]:80``... and nothing else."""
    if not value:
        return False
    host = value.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host in _LOOPBACK_HOSTS


def refusal(request: web.Request) -> web.Response | None:
    """Why a control request must be refused (a browser could have sent it), or None."""
    if not _loopback_host(request.headers.get("Host")):
        return _error(403, "the control API answers only requests for a loopback Host")
    if "Origin" in request.headers:
        return _error(403, "the control API refuses cross-origin (browser) requests")
    if request.method == "POST" and request.content_type != "application/json":
        return _error(415, "POST bodies must be application/json")
    return None


def add_routes(app: web.Application, hub: FakeHub) -> None:
    """Register the control endpoints on ``app`` (before the hub's catch-all route), each
    behind :func:`refusal`."""
    from nhlink.testing._hub import device_summary

    routes = _GuardedRoutes()

    def known(request: web.Request) -> str:
        identifier = request.match_info["identifier"]
        if identifier not in hub.devices:
            raise web.HTTPNotFound(
                text=json.dumps({"error": f"unknown device {identifier!r}"}),
                content_type="application/json",
            )
        return identifier

    @routes.get(PREFIX + "/devices")
    async def list_devices(request: web.Request) -> web.Response:
        return web.json_response({"devices": hub.summary()})

    @routes.get(PREFIX + "/devices/{identifier}")
    async def get_device(request: web.Request) -> web.Response:
        record = hub.devices[known(request)]
        return web.json_response(device_summary(record, messages=True))

    @routes.post(PREFIX + "/devices/{identifier}/push")
    async def push(request: web.Request) -> web.Response:
        identifier = known(request)
        body = await _body(request)
        topic, event = body.get("topic", "device"), body.get("event")
        if not isinstance(topic, str) or not isinstance(event, str):
            return _error(400, "'event' (and 'topic', default 'device') must be strings")
        sent = await hub.push(identifier, topic, event, body.get("payload", {}))
        return web.json_response({"sent": sent})

    @routes.post(PREFIX + "/devices/{identifier}/update")
    async def update(request: web.Request) -> web.Response:
        identifier = known(request)
        body = await _body(request)
        try:
            payload = await hub.push_update(
                identifier,
                body.get("firmware_url"),
                size=body.get("size"),
                checksum=body.get("checksum"),
                partials_checksums=body.get("partials_checksums"),
                firmware_meta=body.get("firmware_meta"),
                deployment_id=body.get("deployment_id"),
            )
        except (TypeError, AttributeError, ValueError) as exc:
            return _error(400, f"bad update fields: {exc}")
        return web.json_response({"sent": payload is not None, "payload": payload})

    @routes.post(PREFIX + "/devices/{identifier}/reboot")
    async def reboot(request: web.Request) -> web.Response:
        return web.json_response({"sent": await hub.reboot(known(request))})

    @routes.post(PREFIX + "/devices/{identifier}/identify")
    async def identify(request: web.Request) -> web.Response:
        return web.json_response({"sent": await hub.identify(known(request))})

    @routes.post(PREFIX + "/devices/{identifier}/disconnect")
    async def disconnect(request: web.Request) -> web.Response:
        identifier = known(request)
        code = (await _body(request)).get("code", 1000)
        if not isinstance(code, int) or isinstance(code, bool) or not 1000 <= code <= 4999:
            return _error(400, "'code' must be a close code 1000..4999")
        return web.json_response({"sent": await hub.disconnect(identifier, code)})

    @routes.post(PREFIX + "/drain")
    async def drain(request: web.Request) -> web.Response:
        return web.json_response({"closed": await hub.drain()})

    @routes.get(PREFIX + "/attempts")
    async def attempts(request: web.Request) -> web.Response:
        return web.json_response({"attempts": [asdict(a) for a in hub.attempts]})

    app.add_routes(routes)
