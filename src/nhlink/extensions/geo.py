"""The ``geo`` extension (PROTOCOL.md §8.5): answer ``geo:location:request`` from a resolver.

There is no default resolver: configure ``extensions={"geo": resolver}`` with a callable
(plain — run in a worker thread, as lookups usually do I/O — or ``async``) returning
``{"source": str, "latitude": float, "longitude": float, "accuracy": int (optional)}``.
A resolver that raises :class:`GeoError` reports its code and description; any other exception
or a malformed result is reported as an error too, so the server always gets an answer.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeAlias

from ..protocol import wire
from .extension import DEFAULT_VERSION, Extension, ExtensionReply

__all__ = ["GeoError", "GeoExtension", "GeoResolver"]

logger = logging.getLogger(__name__)

# §8.5 — wire strings (events relative to the "geo:" prefix).
NAME: Final = wire.GEO_NAME
EVENT_LOCATION_REQUEST: Final = wire.GEO_EVENT_LOCATION_REQUEST
EVENT_LOCATION_UPDATE: Final = wire.GEO_EVENT_LOCATION_UPDATE
KEY_SOURCE: Final = wire.GEO_KEY_SOURCE
KEY_LATITUDE: Final = wire.GEO_KEY_LATITUDE
KEY_LONGITUDE: Final = wire.GEO_KEY_LONGITUDE
KEY_ACCURACY: Final = wire.GEO_KEY_ACCURACY
KEY_ERROR_CODE: Final = wire.GEO_KEY_ERROR_CODE
KEY_ERROR_DESCRIPTION: Final = wire.GEO_KEY_ERROR_DESCRIPTION
#: error codes nhlink itself reports
ERROR_RESOLVER: Final = wire.GEO_ERROR_RESOLVER
ERROR_INVALID: Final = wire.GEO_ERROR_INVALID
ERROR_TIMEOUT: Final = wire.GEO_ERROR_TIMEOUT

GeoResolver: TypeAlias = Callable[[], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]


class GeoError(Exception):
    """Raised by a resolver that cannot locate the device; sent as ``error_code`` and
    ``error_description``."""

    def __init__(self, code: str, description: str = "") -> None:
        super().__init__(f"{code}: {description}" if description else code)
        self.code = code
        self.description = description


def _finite(value: object) -> float | None:
    """``value`` as a float if it is a finite real number (not a bool), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def location_payload(result: object) -> dict[str, Any]:
    """The ``location:update`` payload for a resolver's ``result`` (an error payload if it is
    not a valid location)."""
    if not isinstance(result, Mapping):
        return _error(ERROR_INVALID, f"resolver returned {type(result).__name__}, not a mapping")
    lat = _finite(result.get(KEY_LATITUDE))
    lon = _finite(result.get(KEY_LONGITUDE))
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return _error(
            ERROR_INVALID,
            "latitude/longitude missing or out of range: "
            f"{result.get(KEY_LATITUDE)!r}, {result.get(KEY_LONGITUDE)!r}",
        )
    source = result.get(KEY_SOURCE)
    if not isinstance(source, str) or not source:
        return _error(ERROR_INVALID, "missing source")
    payload: dict[str, Any] = {str(k): v for k, v in result.items()}
    payload[KEY_LATITUDE] = lat
    payload[KEY_LONGITUDE] = lon
    raw_accuracy = result.get(KEY_ACCURACY)
    if raw_accuracy is None:
        payload.pop(KEY_ACCURACY, None)
    else:
        accuracy = _finite(raw_accuracy)
        if accuracy is None:
            return _error(ERROR_INVALID, f"accuracy is not a number: {raw_accuracy!r}")
        payload[KEY_ACCURACY] = round(accuracy)  # §8.5: an integer (metres)
    return payload


def _error(code: str, description: str) -> dict[str, Any]:
    logger.warning("geo: reporting %s: %s", code, description)
    return {KEY_ERROR_CODE: code, KEY_ERROR_DESCRIPTION: description}


class GeoExtension(Extension):
    """``geo``: every ``geo:location:request`` is answered with ``geo:location:update``."""

    name = NAME
    version = DEFAULT_VERSION

    def __init__(self, resolver: GeoResolver, *, timeout: float = 30.0) -> None:
        if not callable(resolver):
            raise TypeError(f"not a geo resolver: {resolver!r}")
        self.resolver = resolver
        self.timeout = timeout

    async def locate(self) -> dict[str, Any]:
        """Run the resolver once; the payload to send (never raises, except cancellation)."""
        try:
            if inspect.iscoroutinefunction(self.resolver):
                result: Any = self.resolver()
            else:
                result = await asyncio.wait_for(asyncio.to_thread(self.resolver), self.timeout)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, self.timeout)
        except asyncio.CancelledError:
            raise
        except GeoError as exc:
            return _error(exc.code, exc.description)
        except TimeoutError:
            return _error(ERROR_TIMEOUT, f"resolver took longer than {self.timeout:g} s")
        except Exception as exc:
            logger.exception("geo resolver failed")
            return _error(ERROR_RESOLVER, f"{type(exc).__name__}: {exc}")
        return location_payload(result)

    async def handle_event(self, event: str, payload: Any) -> ExtensionReply | None:
        if event == EVENT_LOCATION_REQUEST:
            return EVENT_LOCATION_UPDATE, await self.locate()
        logger.debug("geo: ignoring event %r", event)
        return None
