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
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from nhlink.testing._hub import FakeHub

__all__ = ["add_routes"]

PREFIX = "/_fakehub"


def _error(status: int, text: str) -> web.Response:
    return web.json_response({"error": text}, status=status)


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


def add_routes(app: web.Application, hub: FakeHub) -> None:
    """Register the control endpoints on ``app`` (before the hub's catch-all route)."""
    from nhlink.testing._hub import device_summary

    routes = web.RouteTableDef()

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
