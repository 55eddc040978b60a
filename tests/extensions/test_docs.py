"""docs/extensions.md: every ``python`` code block on the page runs, against FakeHub."""

from __future__ import annotations

import logging
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from nhlink import NervesHubLink
from nhlink.extensions import HealthExtension, LinuxHealthProvider

from ._support import DEVICE, link_options, make_hub, wait_ext

DOC = Path(__file__).resolve().parents[2] / "docs" / "extensions.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest.fixture(scope="module")
def doc() -> Iterator[types.ModuleType]:
    """The page's code blocks, in order, executed as one module (not as ``__main__``)."""
    blocks = BLOCK.findall(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 5
    module = types.ModuleType("docs_extensions_example")
    module.__file__ = str(DOC)
    sys.modules[module.__name__] = module
    try:
        exec(compile("\n".join(blocks), str(DOC), "exec"), module.__dict__)
        yield module
    finally:
        del sys.modules[module.__name__]


async def test_doc_link_with_every_extension(doc: types.ModuleType) -> None:
    async with make_hub({"health", "logging", "geo", "network_identity"}) as hub:
        link = doc.make_link(**link_options(hub.port))
        assert isinstance(link, NervesHubLink)
        link.extensions.rejoin_delays = (0.01,)
        handler = doc.ship_logs_to_nerveshub(link)
        try:
            async with link:
                report = await wait_ext(hub, "network_identity:report")
                assert report.payload == {
                    "identities": [
                        {"service": "tailscale", "identifier": "gw-0001.tail1234.ts.net"}
                    ]
                }
                assert report.rejected is None
                await wait_ext(hub, "geo:location:update")
                assert hub.devices[DEVICE].locations == [doc.FIXED_SITE]
                await wait_ext(hub, "health:report")
                await wait_ext(hub, "logging:attached")
                logging.getLogger("gateway.app").warning("hello from the docs")
                line = await wait_ext(hub, "logging:send")
                assert line.payload["message"] == "hello from the docs"
                # Pushing at any time through the extension's context.
                extension = link.extensions.get("network_identity")
                assert isinstance(extension, doc.NetworkIdentity)
                new = [{"service": "zerotier", "identifier": "a1b2c3"}]
                assert await extension.identities_changed(new)
                again = await wait_ext(
                    hub, "network_identity:report", predicate=lambda m: m.payload != report.payload
                )
                assert again.payload == {"identities": new}
        finally:
            logging.getLogger().removeHandler(handler)


async def test_doc_health_provider(doc: types.ModuleType, tmp_path: Path) -> None:
    provider = doc.GatewayHealth(queue_depth=lambda: 1500, data_mount=str(tmp_path))
    assert isinstance(provider.linux, LinuxHealthProvider)
    async with make_hub({"health"}) as hub:
        link = NervesHubLink(extensions={"health": provider}, **link_options(hub.port))
        async with link:
            await wait_ext(hub, "health:report")
        value = hub.devices[DEVICE].health_reports[0]
    assert value["metrics"]["mqtt_queue_depth"] == 1500
    assert "cpu_usage_percent" in value["metrics"]
    assert any(name.startswith("disk_used_percentage_") for name in value["metrics"])
    assert value["checks"] == {"mqtt_queue": {"pass": False, "note": "1500 messages waiting"}}
    assert set(value["metadata"]) == {"python"}
    assert isinstance(link.extensions.get("health"), HealthExtension)


async def test_doc_geo_error(doc: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doc, "FIXED_SITE", None)
    with pytest.raises(doc.GeoError):
        doc.fixed_location()
