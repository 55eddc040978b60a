"""The geo extension (PROTOCOL.md §8.5): location updates and error reports."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nhlink.extensions import GeoError, GeoExtension
from nhlink.extensions.geo import location_payload

from ._support import DEVICE, make_hub, running_link, wait_count, wait_ext


async def test_location_update_from_a_resolver() -> None:
    def resolver() -> dict[str, Any]:
        return {"source": "gps", "latitude": 59.33, "longitude": 18.07, "accuracy": 12.4}

    async with make_hub({"geo"}) as hub, running_link(hub, {"geo": resolver}):
        await wait_ext(hub, "geo:location:update")
        assert hub.devices[DEVICE].locations == [
            {"source": "gps", "latitude": 59.33, "longitude": 18.07, "accuracy": 12}
        ]
        # The server may ask again (FEATURES_GEO_INTERVAL_MINUTES).
        assert await hub.push(DEVICE, "extensions", "geo:location:request", {})
        await wait_count(hub, "geo:location:update", 2)


async def test_resolver_errors_are_reported() -> None:
    answers: list[Any] = [GeoError("no_fix", "GPS has no fix yet"), RuntimeError("boom")]

    async def resolver() -> dict[str, Any]:
        raise answers.pop(0)

    async with make_hub({"geo"}) as hub, running_link(hub, {"geo": resolver}):
        await wait_ext(hub, "geo:location:update")
        assert await hub.push(DEVICE, "extensions", "geo:location:request", {})
        await wait_count(hub, "geo:location:update", 2)
        assert hub.devices[DEVICE].locations == [
            {"error_code": "no_fix", "error_description": "GPS has no fix yet"},
            {"error_code": "resolver_error", "error_description": "RuntimeError: boom"},
        ]


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        (None, "not a mapping"),
        ({"source": "gps", "latitude": 91.0, "longitude": 0.0}, "out of range"),
        ({"source": "gps", "latitude": "1", "longitude": 0.0}, "out of range"),
        ({"source": "gps", "latitude": True, "longitude": 0.0}, "out of range"),
        ({"latitude": 1.0, "longitude": 2.0}, "missing source"),
        ({"source": "gps", "latitude": 1, "longitude": 2, "accuracy": "far"}, "accuracy"),
    ],
)
def test_invalid_results(result: Any, problem: str) -> None:
    payload = location_payload(result)
    assert payload["error_code"] == "invalid_location"
    assert problem in payload["error_description"]


def test_valid_result_is_normalised() -> None:
    assert location_payload(
        {"source": "geoip", "latitude": 1, "longitude": -2, "accuracy": None}
    ) == {
        "source": "geoip",
        "latitude": 1.0,
        "longitude": -2.0,
    }


async def test_timeout_and_other_events() -> None:
    async def hangs() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    extension = GeoExtension(hangs, timeout=0.01)
    assert await extension.locate() == {
        "error_code": "timeout",
        "error_description": "resolver took longer than 0.01 s",
    }
    assert await extension.handle_event("other", {}) is None
    with pytest.raises(TypeError):
        GeoExtension(42)  # type: ignore[arg-type]
